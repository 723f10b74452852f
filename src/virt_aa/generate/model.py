"""The domain model: what AppArmor rules depend on, as plain slotted classes.

``dataclasses`` and ``typing`` cost ~10 ms each to import, and this runs at
every VM start.  Also libvirt's enums (9.0's, plus what the emulated version
added, see :mod:`virt_aa.generate.versions`), the small checks the
parser in :mod:`virt_aa.generate.domain` shares (libvirt's value syntax:
numbers, PCI addresses, scaled sizes, loadparm), and the two steps the
parser and the hook's identity reader share (`domain_root`, `read_metadata`).
"""

from __future__ import annotations

from virt_aa.generate.xmlsafe import Node, XMLError, parse

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~8 ms
if TYPE_CHECKING:
    from virt_aa.policy.named import Meta

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
    __slots__ = ("bus", "device", "index", "shareable", "source", "target")

    def __init__(self, target: str, device: str, source: Storage, bus: str | None = None,
                 shareable: bool = False, index: int | None = None) -> None:
        self.target = target
        self.index = disk_index(target) if index is None else index
        self.device = device
        self.source = source
        self.bus = bus
        self.shareable = shareable  # <shareable/>: declared shared with other VMs


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
    __slots__ = ("backend", "device", "model", "version")

    def __init__(self, model: str, backend: str, version: str | None,
                 device: str | None = None) -> None:
        self.model = model
        self.backend = backend
        self.version = version
        self.device = device        # passthrough: the host TPM (libvirt's default /dev/tpm0)


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


def domain_root(data: bytes) -> Node:
    """The safely parsed document, which must be a <domain> (stock's messages).

    Shared by the full parser and the hook's identity reader.
    """
    try:
        root = parse(data)
    except XMLError as exc:
        raise DomainError(("error", f"could not get VM definition: {exc}")) from None
    if root.tag != "domain":
        raise DomainError(("error", f"could not get VM definition: root element is "
                                    f"<{root.tag}>, expected <domain>"))
    return root


def read_metadata(dom: Domain, root: Node) -> None:
    """virt-aa's own ``<metadata>`` element, if any (named policies, mode).

    Shared by the full parser and the hook's identity reader.  The policy
    module is imported only when the domain has a ``<metadata>`` at all:
    most have none, and this runs at every VM start.
    """
    metadata = root.find("metadata")
    if metadata is None:
        return
    from virt_aa.policy.named import PolicyError, find_metadata, parse_metadata

    ours = find_metadata(metadata, root)
    if ours is not None:
        try:
            dom.meta = parse_metadata(ours)
        except PolicyError as exc:
            dom.meta_error = str(exc)


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


def use_enums(added: dict[tuple[str, str], frozenset[str]]) -> None:
    """The emulated version's enum additions, for the parse under way."""
    global _added
    _added = added


# libvirt's value syntax (numbers, PCI addresses, scaled sizes, loadparm), for the
# device readers of virt_aa.generate.domain.

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


_LOADPARM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789. ")


def _check_loadparm(value: str) -> None:
    """virDomainDeviceLoadparmIsValid: 1 to 8 of [a-zA-Z0-9. ]."""
    if not 1 <= len(value) <= 8:
        raise _unparsable(f"loadparm value '{value}' must be between 1 and 8 characters")
    if not set(value) <= _LOADPARM:
        raise _unparsable(f"invalid loadparm value '{value}', expecting chars in set of "
                          f"[a-zA-Z0-9.] and blank spaces")


def _text(node: Node | None) -> str | None:
    """Element text as libvirt's XPath string() gives it: empty means absent."""
    if node is None or node.text == "":
        return None
    return node.text
