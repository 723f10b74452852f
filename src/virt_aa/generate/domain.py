"""Domain XML -> the model of :mod:`virt_aa.generate.model`, as libvirt parses it.

Only the parts of libvirt's domain schema that change the generated rules
are read.  Where the emulated libvirt's own parser would refuse a document
that matters here (unknown enum values, a second serial console, ...) we
refuse it too, so the helper fails exactly where the stock one does.
"""

from __future__ import annotations

from virt_aa.generate import model
from virt_aa.generate.model import (
    OS_TYPES,
    QEMU_TYPES,
    RULE_FREE_DEVICES,
    SMARTCARD_DEFAULT_DB,
    VIRT_TYPES,
    Chardev,
    Disk,
    Domain,
    DomainError,
    Filesystem,
    Graphics,
    Hostdev,
    Interface,
    Shmem,
    Smartcard,
    Storage,
    Tpm,
    _bytes,
    _check,
    _check_loadparm,
    _int,
    _pci_address,
    _text,
    _unparsable,
    _yes,
    disk_index,
    domain_root,
    insert_disk,
    parse_uuid,
    read_metadata,
    valid_disk_name,
    valid_name,
)
from virt_aa.generate.versions import Libvirt, libvirt
from virt_aa.generate.xmlsafe import Node

__all__ = ["QEMU_TYPES", "SMARTCARD_DEFAULT_DB", "Chardev", "Disk", "Domain", "DomainError",
           "Filesystem", "Graphics", "Hostdev", "Interface", "Shmem", "Smartcard", "Storage",
           "Tpm", "disk_index", "domain_root", "insert_disk", "parse_domain", "parse_uuid",
           "valid_disk_name", "valid_name"]

def _check_memory(root: Node, devices: Node) -> None:
    """libvirt's virDomainDefPostParseMemory: some memory must be left for boot."""
    cpu = root.find("cpu")
    numa = cpu.find("numa") if cpu is not None else None
    if numa is not None and any(_bytes(_as_memory(c)) for c in numa.findall("cell")):
        return
    total = _bytes(root.find("memory"))
    hotplug = sum(_bytes(m.path("target", "size")) for m in devices.findall("memory"))
    if total - hotplug <= 0:
        raise _unparsable("memory size must be specified via <memory> or in the <numa> "
                          "configuration, and exceed the memory devices")


def _as_memory(cell: Node) -> Node:
    node = Node("memory", {"unit": cell.get("unit") or "KiB"})
    node.text = cell.get("memory") or ""
    return node


def _storage(node: Node, type_: str, depth: int = 0, data_files: bool = False) -> Storage:
    """A disk or backingStore element -> Storage (with any explicit chain).

    ``data_files``: the emulated libvirt reads ``<source><dataStore>`` (>= 10.10).
    """
    src = node.find("source")
    path: str | None = None
    if src is not None:
        if type_ == "file":
            path = src.get("file")
        elif type_ == "block":
            path = src.get("dev")
        elif type_ == "dir":
            path = src.get("dir")
        elif type_ in ("vhostuser",):
            path = src.get("path")
    fmt_node = node.find("driver") if node.tag == "disk" else node.find("format")
    fmt = fmt_node.get("type") if fmt_node is not None else None
    _check("format", "type", fmt)
    if fmt == "aio":
        fmt = "raw"
    backing: tuple[Storage, ...] | None = None
    bs = node.find("backingStore")
    if bs is not None:
        btype = bs.get("type")
        if btype is None:
            backing = ()
        else:
            _check("disk", "type", btype)
            backing = (_storage(bs, btype, depth + 1, data_files),)
    data_file = None
    store = src.find("dataStore") if data_files and src is not None else None
    if store is not None:
        stype = store.get("type") or "file"
        _check("disk", "type", stype)
        data_file = _storage(store, stype, depth)
    return Storage(type_, path or None, fmt, node.find("readonly") is not None, backing,
                   data_file)


def _chardev(kind: str, node: Node) -> Chardev:
    type_ = node.get("type", "null") or "null"
    _check("chardev", "type", type_)
    path = None
    attrs: tuple[tuple[str, str], ...] = ()
    for src in node.findall("source"):
        p = src.get("path")
        if p is not None and path is None:
            path = p
            attrs = tuple(sorted(src.attrs.items()))
    if type_ not in ("pty", "dev", "file", "pipe", "unix"):
        path = None
    target = node.find("target")
    target_type = target.get("type") if target is not None else None
    return Chardev(kind, type_, path, target_type, attrs)


def _console_compat(os_type: str, serials: list[Chardev],
                    consoles: list[Chardev]) -> None:
    """libvirt's serial-console aliasing (virDomainDefAddConsoleCompat)."""
    for extra in consoles[1:]:
        if extra.target_type == "serial":
            raise _unparsable("only the first console can be a serial port")
    if os_type != "hvm" or not consoles:
        return
    first = consoles[0]
    if first.target_type not in (None, "serial"):
        return
    stub = Chardev("console", "pty", None, "serial")
    if not serials:
        serials.append(Chardev("serial", first.type, first.path, "isa-serial",
                               first.source_attrs))
        consoles[0] = stub
    elif not (serials[0].type == first.type and
              serials[0].source_attrs == first.source_attrs):
        consoles[0] = stub


def _graphics(node: Node) -> Graphics:
    type_ = node.get("type") or ""
    _check("graphics", "type", type_)
    gl = node.find("gl")
    rendernode = gl.get("rendernode") if gl is not None else None
    auto = False
    if type_ in ("spice", "dbus"):
        enabled = gl is not None and _yes(gl.get("enable"))
        if not enabled:
            rendernode = None
        auto = enabled and not rendernode
    elif type_ == "egl-headless":
        auto = not rendernode
    else:
        rendernode = None
    sockets: list[str] = []
    legacy = node.get("socket")
    listens = node.findall("listen")
    if legacy is not None and not any(li.get("type") == "socket" for li in listens):
        sockets.append(legacy)
    for li in listens:
        if li.get("type") == "socket" and li.get("socket"):
            sockets.append(li.get("socket") or "")
    xauth = node.get("xauth") if type_ == "sdl" else None
    return Graphics(type_, rendernode or None, auto, tuple(sockets), xauth)


def _hostdev(node: Node) -> Hostdev | None:
    mode = node.get("mode", "subsystem")
    _check("hostdev", "mode", mode)
    type_ = node.get("type")
    _check("hostdev", "type", type_)
    if mode != "subsystem" or type_ is None:
        return None
    src = node.find("source")
    if type_ == "pci":
        driver = node.find("driver")
        backend = (driver.get("name") if driver is not None else None) or "default"
        addr = _pci_address(src.find("address") if src is not None else None)
        hd = Hostdev("pci", pci_address=addr, pci_backend=backend)
        hd.iommufd = driver is not None and _yes(driver.get("iommufd"))
        return hd
    if type_ == "usb":
        vendor = src.find("vendor") if src is not None else None
        product = src.find("product") if src is not None else None
        address = src.find("address") if src is not None else None
        return Hostdev(
            "usb",
            usb_vendor=_int(vendor.get("id")) if vendor is not None else None,
            usb_product=_int(product.get("id")) if product is not None else None,
            usb_bus=_int(address.get("bus"), 10) if address is not None else None,
            usb_device=_int(address.get("device"), 10) if address is not None else None)
    if type_ == "mdev":
        model = node.get("model")
        if model is None:
            raise _unparsable("mdev hostdev without model")
        _check("mdev", "model", model)
        return Hostdev("mdev")
    return Hostdev(type_)


def parse_domain(data: bytes, lv: Libvirt | None = None) -> Domain:
    """Parse domain XML bytes; raise :class:`DomainError` as stock would fail.

    ``lv`` is the libvirt version whose parser is emulated (default 9.0).
    """
    root = domain_root(data)
    name_node = root.find("name")
    name = name_node.text if name_node is not None else ""
    if not name:
        raise DomainError(("warning", "Could not find <name>"),
                          ("error", "could not get VM definition"))
    uuid_node = root.find("uuid")
    uuid_text = uuid_node.text if uuid_node is not None else ""
    if not uuid_text:
        raise DomainError(("warning", "Could not find <uuid>"),
                          ("error", "could not get VM definition"))
    virt_type = root.get("type")
    if not virt_type:
        raise DomainError(("error", "domain type is not defined"),
                          ("error", "could not get VM definition"))
    os_node = root.find("os")
    type_node = os_node.find("type") if os_node is not None else None
    os_type = type_node.text if type_node is not None else ""
    if not os_type:
        raise DomainError(("error", "os.type is not defined"),
                          ("error", "could not get VM definition"))
    if os_type not in OS_TYPES:
        raise DomainError(("error", "unknown OS type"),
                          ("error", "could not get VM definition"))
    if virt_type not in VIRT_TYPES:
        raise DomainError(("error", "unknown virtualization type"),
                          ("error", "could not get VM definition"))
    lv = lv or libvirt()
    model.use_enums(lv.enums)
    try:
        return _build(root, name, uuid_text, virt_type, os_type, os_node, lv)
    except DomainError as exc:
        raise DomainError(*exc.lines, ("error", "could not get VM definition")) from None
    finally:
        model.use_enums({})


def _build(root: Node, name: str, uuid_text: str, virt_type: str, os_type: str,
           os_node: Node | None, lv: Libvirt) -> Domain:
    uuid = parse_uuid(uuid_text)
    if uuid is None:
        raise _unparsable(f"malformed uuid '{uuid_text}'")
    if os_type == "linux":
        os_type = "xen"
    dom_id = -1
    if root.get("id") is not None:
        parsed = _int(root.get("id"), 10)
        dom_id = parsed if parsed is not None and parsed >= 0 else -1
    type_node = os_node.find("type") if os_node is not None else None
    dom = Domain(name=name, uuid=uuid, virt_type=virt_type, os_type=os_type,
                 arch=type_node.get("arch") if type_node is not None else None, id=dom_id)
    if os_node is not None:
        _read_os(dom, os_node, lv)
    # libvirt reads "./devices/disk" etc.: every <devices> block, in document order
    devices = Node("devices", {})
    for block in root.findall("devices"):
        devices.children.extend(block.children)
    _read_devices(dom, devices, lv)
    _check_memory(root, devices)
    sec = root.find("launchSecurity")
    if sec is not None:
        dom.launch_security = sec.get("type")
        _check("launchsecurity", "type", dom.launch_security)

    fwcfg: list[str] = []
    for sysinfo in root.findall("sysinfo"):
        if sysinfo.get("type") == "smbios":
            _check_smbios_uuid(sysinfo, uuid)
        if sysinfo.get("type") != "fwcfg":
            continue
        for entry in sysinfo.findall("entry"):
            if entry.get("file") is not None:
                fwcfg.append(entry.get("file") or "")
    dom.fwcfg_files = tuple(fwcfg)
    read_metadata(dom, root)
    return dom


def _check_smbios_uuid(sysinfo: Node, uuid: str) -> None:
    """virSysinfoSystemParseXML: the SMBIOS system UUID must be the domain's."""
    system = sysinfo.find("system")
    for entry in system.findall("entry") if system is not None else []:
        if entry.get("name") != "uuid":
            continue
        given = parse_uuid(entry.text)
        if given is None:
            raise _unparsable("malformed <sysinfo> uuid element")
        if given != uuid:
            raise _unparsable("UUID mismatch between <uuid> and <sysinfo>")
        return


def _read_os(dom: Domain, os_node: Node, lv: Libvirt) -> None:
    dom.kernel = _text(os_node.find("kernel"))
    dom.initrd = _text(os_node.find("initrd"))
    dom.dtb = _text(os_node.find("dtb"))
    if lv.has("shim"):
        dom.shim = _text(os_node.find("shim"))
    acpi = os_node.find("acpi")
    tables = acpi.findall("table") if acpi is not None else []
    if len(tables) > 1 and not lv.has("acpi-tables"):
        raise _unparsable("only one acpi table is supported")
    seen: set[str] = set()
    paths: list[str] = []
    for table in tables:
        ttype = table.get("type") or ""
        _check("acpitable", "type", ttype)
        if ttype in seen and ttype != "raw":  # several raw tables are fine
            raise _unparsable(f"ACPI table type '{ttype}' may only appear once")
        seen.add(ttype)
        path = _text(table)
        if path is not None:
            paths.append(path)
    dom.acpi_tables = tuple(paths)
    lnode = os_node.find("loader")
    if lnode is not None:
        dom.loader = _text(lnode)
        dom.loader_readonly = _yes(lnode.get("readonly"))
        dom.loader_type = lnode.get("type")
    nnode = os_node.find("nvram")
    if nnode is not None:
        dom.nvram = _nvram(nnode)
    vnode = os_node.find("varstore")
    if vnode is not None and lv.has("varstore"):
        dom.varstore = vnode.get("path") or None


def _device_checks(dev: Node) -> None:
    """What libvirt checks on any device: PCI address ranges, boot loadparm."""
    address = dev.find("address")
    if address is not None and address.get("type") == "pci":
        _pci_address(address)  # virPCIDeviceAddressParseXML's range checks
    boot = dev.find("boot")
    if boot is not None and boot.get("loadparm") is not None:
        _check_loadparm(boot.get("loadparm") or "")


def _read_devices(dom: Domain, devices: Node, lv: Libvirt) -> None:
    disks: list[Disk] = []
    chardevs: dict[str, list[Chardev]] = {"serial": [], "console": [], "parallel": [],
                                          "channel": []}
    graphics: list[Graphics] = []
    hostdevs: list[Hostdev] = []
    filesystems: list[Filesystem] = []
    inputs: list[str] = []
    interfaces: list[Interface] = []
    net_hostdevs: list[Hostdev] = []
    memories: list[tuple[str, str | None]] = []
    shmems: list[Shmem] = []
    tpms: list[Tpm] = []
    smartcards: list[Smartcard] = []
    ignored: list[str] = []
    tops: dict[str | None, int] = {}
    for dev in devices.children:
        tag = dev.tag
        _device_checks(dev)
        if tag == "disk":
            insert_disk(disks, _disk(dev, lv), tops)
        elif tag in chardevs:
            chardevs[tag].append(_chardev(tag, dev))
        elif tag == "graphics":
            graphics.append(_graphics(dev))
        elif tag == "hostdev":
            hd = _hostdev(dev)
            if hd is not None:
                hostdevs.append(hd)
        elif tag == "filesystem":
            filesystems.extend(_filesystem(dev))
        elif tag == "input":
            path = _input(dev)
            if path is not None:
                inputs.append(path)
        elif tag == "interface":
            iface, hd = _interface(dev, lv)
            interfaces.append(iface)
            if hd is not None:
                net_hostdevs.append(hd)
        elif tag == "memory":
            model = dev.get("model")
            _check("memory", "model", model)
            memories.append((model or "", _text(dev.path("source", "path"))))
        elif tag == "shmem":
            shmems.append(_shmem(dev))
        elif tag == "tpm":
            tpm = _tpm(dev)
            if tpm is not None:
                tpms.append(tpm)
        elif tag == "smartcard":
            smartcards.append(_smartcard(dev))
        elif tag == "watchdog":
            _check("watchdog", "model", dev.get("model"))
            _check("watchdog", "action", dev.get("action"))
        elif tag == "rng":
            backend = dev.find("backend")
            if backend is not None:
                _check("rngbackend", "model", backend.get("model"))
        elif tag == "pstore":
            if lv.has("pstore") and dom.pstore is None:
                dom.pstore = _text(dev.find("path"))
        elif tag not in RULE_FREE_DEVICES:
            ignored.append(tag)
    _check_usb_none(dom, devices)
    serials, consoles = chardevs["serial"], chardevs["console"]
    _console_compat(dom.os_type, serials, consoles)
    if len(devices.findall("watchdog")) > 1 and not lv.has("watchdog-itco"):
        raise _unparsable("only a single watchdog device is supported")
    dom.disks, dom.serials, dom.consoles = tuple(disks), tuple(serials), tuple(consoles)
    dom.parallels, dom.channels = tuple(chardevs["parallel"]), tuple(chardevs["channel"])
    dom.graphics, dom.hostdevs = tuple(graphics), tuple(net_hostdevs + hostdevs)
    dom.filesystems, dom.inputs = tuple(filesystems), tuple(inputs)
    dom.interfaces, dom.memories = tuple(interfaces), tuple(memories)
    dom.shmems, dom.tpms, dom.smartcards = tuple(shmems), tuple(tpms), tuple(smartcards)
    dom.ignored = tuple(dict.fromkeys(ignored))


def _input_bus(dom: Domain, dev: Node) -> str:
    """virDomainInputDefParseXML's bus when the XML gives none."""
    given = dev.get("bus")
    if given:
        return given
    itype = dev.get("type")
    if dom.os_type == "hvm":
        if itype in ("mouse", "keyboard") and dom.arch in (None, "x86_64", "i686"):
            return "ps2"
        if dom.arch in ("s390", "s390x") or itype == "passthrough":
            return "virtio"
        return "none" if itype == "evdev" else "usb"
    return "xen" if dom.os_type in ("xen", "xenpvh") else "other"


def _check_usb_none(dom: Domain, devices: Node) -> None:
    """A ``<controller type='usb' model='none'/>`` disables USB: no other USB
    controller, input, hub or host device (virDomainDefControllersParse & co)."""
    usb = [c.get("model") for c in devices.findall("controller") if c.get("type") == "usb"]
    if "none" not in usb:
        return
    if len(usb) > 1:
        raise _unparsable("Can't add another USB controller: USB is disabled for this domain")
    if any(_input_bus(dom, i) == "usb" for i in devices.findall("input")):
        raise _unparsable("Can't add USB input device. USB bus is disabled")
    if any(h.get("type") == "usb" for h in devices.findall("hub")):
        raise _unparsable("Can't add USB hub: USB is disabled for this domain")
    if any(h.get("type") == "usb" and h.get("mode", "subsystem") == "subsystem"
           for h in devices.findall("hostdev")):
        raise _unparsable("Can't add host USB device: USB is disabled in this host")


def _disk(dev: Node, lv: Libvirt) -> Disk:
    dtype = dev.get("type", "file") or "file"
    _check("disk", "type", dtype)
    device = dev.get("device", "disk") or "disk"
    _check("disk", "device", device)
    target = dev.find("target")
    tdev = (target.get("dev") or "") if target is not None else ""
    # no target at all passes libvirt's parser (the helper skips validation)
    index = disk_index(tdev)
    if tdev and dev.find("address") is None and index < 0:
        raise _unparsable(f"unknown disk name '{tdev}' and no address specified")
    src = dev.find("source")
    if src is not None:  # virDomainDiskDefParseXML: one definition only
        if dtype == "network" and src.find("auth") is not None and \
                dev.find("auth") is not None:
            raise _unparsable("an <auth> definition already found for disk source")
        if src.find("encryption") is not None and dev.find("encryption") is not None:
            raise _unparsable("an <encryption> definition already found for disk source")
    source = _storage(dev, dtype, data_files=lv.has("data-file"))
    if device == "cdrom":  # virDomainDiskDefPostParse: every cdrom is read-only
        source.readonly = True
    return Disk(tdev, device, source, target.get("bus") if target is not None else None,
                dev.find("shareable") is not None, index)


def _input(dev: Node) -> str | None:
    itype = dev.get("type")
    _check("input", "type", itype)
    src = dev.find("source")
    if itype in ("passthrough", "evdev") and src is not None:
        return src.get("evdev") if itype == "passthrough" else src.get("dev")
    return None


def _smartcard(dev: Node) -> Smartcard:
    mode = dev.get("mode")
    _check("smartcard", "mode", mode)
    if mode is None:
        raise _unparsable("smartcard without mode")
    return Smartcard(mode, _text(dev.find("database")))


_EMPTY = Node("devices", {})


def _nvram(node: Node) -> Storage | None:
    ntype = node.get("type")
    if ntype is None:
        path = _text(node)
        return Storage("file", path, None) if path else None
    _check("disk", "type", ntype)
    src = node.find("source")
    path = None
    if src is not None and ntype == "file":
        path = src.get("file")
    elif src is not None and ntype == "block":
        path = src.get("dev")
    return Storage(ntype, path or None, None)


def _filesystem(node: Node) -> list[Filesystem]:
    ftype = node.get("type", "mount") or "mount"
    _check("filesystem", "type", ftype)
    driver = node.find("driver")
    dtype = driver.get("type") if driver is not None else None
    _check("fsdriver", "type", dtype)
    if ftype != "mount" or dtype not in (None, "default", "path"):
        return []
    src = node.find("source")
    source = (src.get("dir") or src.get("socket")) if src is not None else None
    target = node.find("target")
    if source is None:
        return []
    return [Filesystem(source, target.get("dir") if target is not None else None,
                       node.find("readonly") is not None)]


def _interface(node: Node, lv: Libvirt) -> tuple[Interface, Hostdev | None]:
    itype = node.get("type") or ""
    _check("interface", "type", itype)
    net_backend = node.find("backend")
    if net_backend is not None and net_backend.get("type") == "passt":
        if not lv.has("passt-backend"):
            raise _unparsable("the passt backend is not supported by this libvirt")
        if itype == "vhostuser" and not lv.has("passt-vhostuser"):
            raise _unparsable("the passt backend is not supported with interface type "
                              "'vhostuser'")
    model_node = node.find("model")
    model = model_node.get("type") if model_node is not None else None
    driver_node = node.find("driver")
    driver = driver_node.get("name") if driver_node is not None else None
    vhu: Chardev | None = None
    hostdev: Hostdev | None = None
    src = node.find("source")
    if itype == "vhostuser":  # no <source>: no path, which the helper refuses
        stype = (src.get("type", "unix") if src is not None else None) or "unix"
        _check("chardev", "type", stype)
        vhu = Chardev("vhostuser", stype, src.get("path") if src is not None else None)
    elif itype == "hostdev":
        backend = driver or "default"
        addr = _pci_address(src.find("address") if src is not None else None)
        hostdev = Hostdev("pci", pci_address=addr, pci_backend=backend, origin="interface")
    return Interface(itype, model, driver, vhu), hostdev


def _shmem(node: Node) -> Shmem:
    model_node = node.find("model")
    model = (model_node.get("type") if model_node is not None else None) or "ivshmem"
    _check("shmem", "model", model)
    server = node.find("server")
    server_path = server.get("path") if server is not None else None
    return Shmem(node.get("name") or "", model, server_path)


def _tpm(node: Node) -> Tpm | None:
    model = node.get("model") or "tpm-tis"
    _check("tpm", "model", model)
    backend = node.find("backend")
    if backend is None:
        raise _unparsable("tpm without backend")
    btype = backend.get("type")
    _check("tpmbackend", "type", btype)
    version = backend.get("version")
    _check("tpmbackend", "version", version)
    device = None
    if btype == "passthrough":
        dev = backend.find("device")
        device = (dev.get("path") if dev is not None else None) or "/dev/tpm0"
    return Tpm(model, btype or "", version, device)
