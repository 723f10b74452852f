"""Domain XML -> a model of what AppArmor rules depend on.

Only the parts of libvirt's domain schema that change the generated rules
are modelled, as plain slotted classes: ``dataclasses`` and ``typing``
cost ~10 ms each to import, and this runs at every VM start.  Where libvirt
9.0's own parser would refuse a document that matters here (unknown enum
values, a second serial console, ...) we refuse it too, so the helper fails
exactly where the stock one does.
"""

from __future__ import annotations

from virt_aa.generate.versions import Libvirt, libvirt
from virt_aa.generate.xmlsafe import Node, XMLError, parse
from virt_aa.policy.named import Meta, PolicyError, find_metadata, parse_metadata

# libvirt's enums (9.0.0).  An attribute outside these makes libvirt's parser
# fail with "could not parse XML", so it does here as well.
VIRT_TYPES = frozenset({
    "none", "qemu", "kqemu", "kvm", "xen", "lxc", "uml", "openvz", "test",
    "vmware", "hyperv", "vbox", "phyp", "parallels", "bhyve", "vz", "hvf"})
OS_TYPES = frozenset({"hvm", "xen", "linux", "exe", "uml", "xenpvh"})
QEMU_TYPES = frozenset({"qemu", "kqemu", "kvm"})
_ENUMS: dict[tuple[str, str], frozenset[str]] = {
    ("disk", "type"): frozenset({"file", "block", "dir", "network", "volume", "nvme",
                                 "vhostuser"}),
    ("disk", "device"): frozenset({"disk", "cdrom", "floppy", "lun"}),
    ("chardev", "type"): frozenset({"null", "vc", "pty", "dev", "file", "pipe", "stdio",
                                    "udp", "tcp", "unix", "spicevmc", "spiceport", "nmdm",
                                    "qemu-vdagent", "dbus"}),
    ("graphics", "type"): frozenset({"sdl", "vnc", "rdp", "desktop", "spice",
                                     "egl-headless", "dbus"}),
    ("hostdev", "mode"): frozenset({"subsystem", "capabilities"}),
    ("hostdev", "type"): frozenset({"usb", "pci", "scsi", "scsi_host", "mdev",
                                    "storage", "misc", "net"}),
    ("mdev", "model"): frozenset({"vfio-pci", "vfio-ccw", "vfio-ap"}),
    ("filesystem", "type"): frozenset({"mount", "block", "file", "template", "ram", "bind",
                                       "volume"}),
    ("fsdriver", "type"): frozenset({"default", "path", "handle", "loop", "nbd", "ploop",
                                     "virtiofs"}),
    ("input", "type"): frozenset({"mouse", "tablet", "keyboard", "passthrough", "evdev"}),
    ("interface", "type"): frozenset({"user", "ethernet", "vhostuser", "server", "client",
                                      "mcast", "network", "bridge", "internal", "direct",
                                      "hostdev", "udp", "vdpa", "null", "vds"}),
    ("memory", "model"): frozenset({"dimm", "nvdimm", "virtio-pmem", "virtio-mem",
                                    "sgx-epc"}),
    ("shmem", "model"): frozenset({"ivshmem", "ivshmem-plain", "ivshmem-doorbell"}),
    ("tpm", "model"): frozenset({"tpm-tis", "tpm-crb", "tpm-spapr", "spapr-tpm-proxy"}),
    ("tpmbackend", "type"): frozenset({"passthrough", "emulator", "external"}),
    ("tpmbackend", "version"): frozenset({"1.2", "2.0"}),
    ("smartcard", "mode"): frozenset({"host", "host-certificates", "passthrough"}),
    ("watchdog", "model"): frozenset({"i6300esb", "ib700", "diag288"}),
    ("watchdog", "action"): frozenset({"reset", "shutdown", "poweroff", "pause", "dump",
                                       "none", "inject-nmi"}),
    ("rngbackend", "model"): frozenset({"random", "egd", "builtin"}),
    ("format", "type"): frozenset({"none", "raw", "dir", "bochs", "cloop", "dmg", "iso",
                                   "vpc", "vdi", "fat", "vhd", "ploop", "cow", "qcow",
                                   "qcow2", "qed", "vmdk", "luks", "aio"}),
    ("launchsecurity", "type"): frozenset({"sev", "s390-pv"}),
    ("acpitable", "type"): frozenset({"slic"}),
}
# Values the emulated version added to these enums (versions.ENUM_SINCE).  Set
# by parse_domain for the duration of one parse; the generator is one-shot and
# single-threaded, and this keeps the version out of every small parser below.
_added: dict[tuple[str, str], frozenset[str]] = {}
# libvirt's other device elements: none of them gives a file rule in any
# helper up to 12.8.  A device element outside these and the ones modelled
# here is reported (never silently dropped): a future one may need a rule.
RULE_FREE_DEVICES = frozenset({
    "emulator", "controller", "lease", "sound", "audio", "video", "redirdev",
    "redirfilter", "hub", "memballoon", "panic", "iommu", "vsock", "nvram", "crypto",
    "watchdog", "rng"})
# Characters stock refuses in a domain name; we also refuse control characters.
_BAD_NAME_CHARS = frozenset('/[]{}?^,"*')
SMARTCARD_DEFAULT_DB = "/etc/pki/nssdb"


class DomainError(Exception):
    """The XML cannot be turned into a domain; ``lines`` are (level, message)."""

    def __init__(self, *lines: tuple[str, str]) -> None:
        super().__init__("; ".join(m for _, m in lines))
        self.lines = lines


def _unparsable(detail: str) -> DomainError:
    return DomainError(("error", f"could not parse XML: {detail}"))


class Storage:
    """A storage source: a disk's image, one of its backing files, or nvram.

    ``backing`` is None when the XML gives no chain (probe the image headers)
    and ``()`` when it ends the chain explicitly (``<backingStore/>``).
    """

    __slots__ = ("backing", "data_file", "format", "path", "readonly", "type")

    def __init__(self, type: str, path: str | None, format: str | None,
                 readonly: bool = False, backing: tuple[Storage, ...] | None = None,
                 data_file: Storage | None = None) -> None:
        self.type = type          # file, block, dir, network, volume, nvme, vhostuser, none
        self.path = path
        self.format = format
        self.readonly = readonly
        self.backing = backing
        self.data_file = data_file  # qcow2 external data file given in the XML (>= 10.10)

    @property
    def local(self) -> bool:
        return self.type in ("file", "block", "dir")


class Disk:
    __slots__ = ("bus", "device", "index", "source", "target")

    def __init__(self, target: str, device: str, source: Storage, bus: str | None = None) -> None:
        self.target = target
        self.index = disk_index(target)
        self.device = device
        self.source = source
        self.bus = bus


class Chardev:
    """serial, console, parallel, channel, or a vhost-user NIC's socket."""

    __slots__ = ("kind", "path", "source_attrs", "target_type", "type")

    def __init__(self, kind: str, type: str, path: str | None, target_type: str | None = None,
                 source_attrs: tuple[tuple[str, str], ...] = ()) -> None:
        self.kind = kind
        self.type = type
        self.path = path
        self.target_type = target_type
        self.source_attrs = source_attrs


class Graphics:
    __slots__ = ("needs_auto_rendernode", "rendernode", "sockets", "type", "xauth")

    def __init__(self, type: str, rendernode: str | None, needs_auto_rendernode: bool,
                 sockets: tuple[str, ...], xauth: str | None) -> None:
        self.type = type
        self.rendernode = rendernode
        self.needs_auto_rendernode = needs_auto_rendernode
        self.sockets = sockets
        self.xauth = xauth


class Hostdev:
    __slots__ = ("iommufd", "origin", "pci_address", "pci_backend", "type", "usb_bus",
                 "usb_device", "usb_product", "usb_vendor")

    def __init__(self, type: str, pci_address: str | None = None,
                 pci_backend: str = "default", usb_vendor: int | None = None,
                 usb_product: int | None = None, usb_bus: int | None = None,
                 usb_device: int | None = None, origin: str = "hostdev") -> None:
        self.type = type            # usb, pci, mdev, scsi, scsi_host
        self.pci_address = pci_address
        self.pci_backend = pci_backend
        self.usb_vendor = usb_vendor
        self.usb_product = usb_product
        self.usb_bus = usb_bus
        self.usb_device = usb_device
        self.origin = origin
        self.iommufd = False  # <driver iommufd='yes'/> (PCI)


class Filesystem:
    __slots__ = ("readonly", "source", "target")

    def __init__(self, source: str, target: str | None, readonly: bool) -> None:
        self.source = source
        self.target = target
        self.readonly = readonly


class Interface:
    __slots__ = ("driver", "model", "type", "vhostuser")

    def __init__(self, type: str, model: str | None, driver: str | None,
                 vhostuser: Chardev | None) -> None:
        self.type = type
        self.model = model
        self.driver = driver
        self.vhostuser = vhostuser


class Shmem:
    __slots__ = ("model", "name", "server_path")

    def __init__(self, name: str, model: str, server_path: str | None) -> None:
        self.name = name
        self.model = model
        self.server_path = server_path


class Tpm:
    __slots__ = ("backend", "model", "version")

    def __init__(self, model: str, backend: str, version: str | None) -> None:
        self.model = model
        self.backend = backend
        self.version = version


class Smartcard:
    __slots__ = ("database", "mode")

    def __init__(self, mode: str, database: str | None) -> None:
        self.mode = mode
        self.database = database


class Domain:
    """What the rules depend on; built by :func:`parse_domain`."""

    __slots__ = ("acpi_tables", "arch", "channels", "consoles", "disks", "dtb", "filesystems",
                 "fwcfg_files", "graphics", "hostdevs", "id", "ignored", "initrd", "inputs",
                 "interfaces", "kernel", "launch_security", "loader", "loader_readonly",
                 "loader_type", "memories", "meta", "meta_error", "name", "nvram", "os_type",
                 "parallels", "pstore", "serials", "shim", "shmems", "smartcards", "tpms",
                 "uuid", "varstore", "virt_type")

    def __init__(self, *, name: str, uuid: str, virt_type: str, os_type: str,
                 arch: str | None = None, id: int = -1, disks: tuple[Disk, ...] = (),
                 serials: tuple[Chardev, ...] = (), consoles: tuple[Chardev, ...] = (),
                 parallels: tuple[Chardev, ...] = (), channels: tuple[Chardev, ...] = (),
                 kernel: str | None = None, initrd: str | None = None,
                 dtb: str | None = None, acpi_tables: tuple[str, ...] = (),
                 loader: str | None = None, loader_readonly: bool = False,
                 nvram: Storage | None = None, graphics: tuple[Graphics, ...] = (),
                 hostdevs: tuple[Hostdev, ...] = (),
                 filesystems: tuple[Filesystem, ...] = (), inputs: tuple[str, ...] = (),
                 interfaces: tuple[Interface, ...] = (),
                 memories: tuple[tuple[str, str | None], ...] = (),
                 fwcfg_files: tuple[str, ...] = (), shmems: tuple[Shmem, ...] = (),
                 tpms: tuple[Tpm, ...] = (), smartcards: tuple[Smartcard, ...] = ()) -> None:
        self.name = name
        self.uuid = uuid              # canonical lowercase
        self.virt_type = virt_type
        self.os_type = os_type
        self.arch = arch
        self.id = id
        self.disks = disks
        self.serials = serials
        self.consoles = consoles
        self.parallels = parallels
        self.channels = channels
        self.kernel = kernel
        self.initrd = initrd
        self.dtb = dtb
        self.acpi_tables = acpi_tables   # paths, in XML order (one slic table before 11.2)
        self.loader = loader
        self.loader_readonly = loader_readonly
        self.loader_type: str | None = None
        self.shim: str | None = None
        self.pstore: str | None = None
        self.varstore: str | None = None
        self.launch_security: str | None = None
        self.ignored: tuple[str, ...] = ()  # device elements virt-aa does not know
        self.nvram = nvram
        self.graphics = graphics
        self.hostdevs = hostdevs
        self.filesystems = filesystems
        self.inputs = inputs
        self.interfaces = interfaces
        self.memories = memories      # (model, source path) of every <memory> device
        self.fwcfg_files = fwcfg_files
        self.shmems = shmems
        self.tpms = tpms
        self.smartcards = smartcards
        self.meta: Meta | None = None        # virt-aa's <metadata> (named policies, mode)
        self.meta_error: str | None = None   # why that metadata was refused

    @property
    def profile_name(self) -> str:
        return "libvirt-" + self.uuid

    @property
    def is_qemu(self) -> bool:
        return self.virt_type in QEMU_TYPES


def parse_uuid(text: str) -> str | None:
    """libvirt's lenient UUID syntax -> canonical lowercase form, or None."""
    digits = []
    s = text.strip(" \t\n\r\v\f")
    for ch in s:
        if ch in "- ":
            continue
        if ch not in "0123456789abcdefABCDEF":
            return None
        digits.append(ch.lower())
    # libvirt reads exactly 16 pairs; separators may only sit between pairs
    if len(digits) != 32:
        return None
    pos = 0
    for ch in s:
        if ch in "- ":
            if pos % 2:
                return None
        else:
            pos += 1
    h = "".join(digits)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def valid_name(name: str) -> bool:
    """Stock's forbidden characters, plus control characters (our addition)."""
    if not name:
        return False
    return not any(ch in _BAD_NAME_CHARS or ord(ch) < 0x20 or ch == "\x7f" for ch in name)


_SCALES = {"b": 1, "bytes": 1, "kb": 10**3, "k": 2**10, "kib": 2**10, "mb": 10**6,
           "m": 2**20, "mib": 2**20, "gb": 10**9, "g": 2**30, "gib": 2**30, "tb": 10**12,
           "t": 2**40, "tib": 2**40, "pb": 10**15, "p": 2**50, "pib": 2**50, "eb": 10**18,
           "e": 2**60, "eib": 2**60}


def _bytes(node: Node | None) -> int:
    """A libvirt scaled integer (``<memory unit='MiB'>512</memory>``) in bytes; 0 if absent."""
    if node is None or not node.text.strip():
        return 0
    scale = _SCALES.get((node.get("unit") or "KiB").lower())
    try:
        value = int(node.text.strip(), 10)
    except ValueError:
        raise _unparsable(f"bad memory size '{node.text.strip()}'") from None
    if scale is None or value < 0:
        raise _unparsable(f"bad memory unit '{node.get('unit')}'")
    return value * scale


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


def disk_index(name: str) -> int:
    """libvirt's virDiskNameToIndex: ``vda`` -> 0, ``sdaa`` -> 26; -1 if not a disk name."""
    for prefix in ("fd", "hd", "vd", "sd", "xvd", "ubd"):
        if name.startswith(prefix):
            rest = name[len(prefix):]
            break
    else:
        return -1
    letters = len(rest) - len(rest.lstrip("abcdefghijklmnopqrstuvwxyz"))
    if not 0 < letters <= 7 or not all(c in "0123456789" for c in rest[letters:]):
        return -1
    idx = 0
    for i, c in enumerate(rest[:letters]):
        idx = (idx + (1 if i else 0)) * 26 + ord(c) - 97
    return idx


def valid_disk_name(name: str) -> bool:
    return disk_index(name) >= 0


def insert_disk(disks: list[Disk], disk: Disk, top: dict[str | None, int]) -> None:
    """libvirt's virDomainDiskInsert: next to disks of the same bus, by target index.

    The bus is the XML's ``bus`` attribute as parsed (defaults come later), so
    disks without one form a single group; this is why stock lists ``sdb``
    after ``vdc`` when both lack a bus and ``vdc`` comes later.  ``top`` holds
    the highest index per bus so far: in-order disks are appended in O(1)
    (a 500-disk domain would otherwise cost 125,000 comparisons).
    """
    index = disk.index
    highest = top.get(disk.bus)
    if highest is None or (index >= highest and disks[-1].bus == disk.bus):
        top[disk.bus] = index  # first of its bus, or after the last one: the end
        disks.append(disk)
        return
    top[disk.bus] = max(highest, index)
    at = -1
    for i in range(len(disks) - 1, -1, -1):
        if disks[i].bus == disk.bus:
            if disks[i].index > index:
                at = i
            elif at == -1:
                at = i + 1
    if at == -1:
        disks.append(disk)
    else:
        disks.insert(at, disk)


def _check(kind: str, attr: str, value: str | None) -> None:
    if value is not None and value not in _ENUMS[(kind, attr)] and \
            value not in _added.get((kind, attr), ()):
        raise _unparsable(f"unknown {kind} {attr} '{value}'")


def _yes(value: str | None) -> bool:
    return value in ("yes", "on")


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


def _int(text: str | None, base: int = 0) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip(), base)
    except ValueError:
        raise _unparsable(f"bad number '{text}'") from None


def _pci_address(addr: Node | None) -> str | None:
    if addr is None:
        return None
    parts = [_int(addr.get(k, "0")) for k in ("domain", "bus", "slot", "function")]
    d, b, s, f = (p or 0 for p in parts)
    if not (0 <= d <= 0xFFFF and 0 <= b <= 0xFF and 0 <= s <= 0x1F and 0 <= f <= 7):
        raise _unparsable("PCI address out of range")
    return f"{d:04x}:{b:02x}:{s:02x}.{f:x}"


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
    global _added
    try:
        root = parse(data)
    except XMLError as exc:
        raise DomainError(("error", f"could not get VM definition: {exc}")) from None
    if root.tag != "domain":
        raise DomainError(("error", f"could not get VM definition: root element is "
                                    f"<{root.tag}>, expected <domain>"))
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
    _added = lv.enums
    try:
        return _build(root, name, uuid_text, virt_type, os_type, os_node, lv)
    except DomainError as exc:
        raise DomainError(*exc.lines, ("error", "could not get VM definition")) from None
    finally:
        _added = {}


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
        if sysinfo.get("type") != "fwcfg":
            continue
        for entry in sysinfo.findall("entry"):
            if entry.get("file") is not None:
                fwcfg.append(entry.get("file") or "")
    dom.fwcfg_files = tuple(fwcfg)
    ours = find_metadata(root.find("metadata"), root)
    if ours is not None:
        try:
            dom.meta = parse_metadata(ours)
        except PolicyError as exc:
            dom.meta_error = str(exc)
    return dom


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


def _disk(dev: Node, lv: Libvirt) -> Disk:
    dtype = dev.get("type", "file") or "file"
    _check("disk", "type", dtype)
    device = dev.get("device", "disk") or "disk"
    _check("disk", "device", device)
    target = dev.find("target")
    tdev = (target.get("dev") or "") if target is not None else ""
    if not tdev:
        raise _unparsable("disk without target dev")
    if dev.find("address") is None and not valid_disk_name(tdev):
        raise _unparsable(f"unknown disk name '{tdev}' and no address specified")
    source = _storage(dev, dtype, data_files=lv.has("data-file"))
    if device == "cdrom":  # virDomainDiskDefPostParse: every cdrom is read-only
        source.readonly = True
    return Disk(tdev, device, source, target.get("bus") if target is not None else None)


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


def _text(node: Node | None) -> str | None:
    """Element text as libvirt's XPath string() gives it: empty means absent."""
    if node is None or node.text == "":
        return None
    return node.text


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
    return Tpm(model, btype or "", version)
