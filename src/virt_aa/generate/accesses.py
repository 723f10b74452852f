"""Domain (+ host facts) -> the ordered file rules libvirt's helper emits.

This is the pure core of the generator: the host is reached only through
the :class:`Host` protocol (tests pass a fake one), and the result is a list
of :class:`Rule` values that :mod:`virt_aa.generate.profile` renders.  Order and
permissions follow libvirt 9.0's ``get_files``; the differences are the
safety rules of DESIGN §5 (escaping, control characters, canonical and
component-wise restricted checks, backing-chain loops and depth).
"""

from __future__ import annotations

from virt_aa.generate import images
from virt_aa.generate.domain import SMARTCARD_DEFAULT_DB
from virt_aa.generate.paths import canonical, escape, has_control, restricted
from virt_aa.generate.versions import Libvirt, libvirt

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~8 ms

if TYPE_CHECKING:
    from typing import Protocol

    from virt_aa.generate.domain import Chardev, Domain, Hostdev, Storage

    class Host(Protocol):
        """Facts about the host the rules depend on (see :mod:`virt_aa.host.hostfacts`)."""

        def exists(self, path: str) -> bool: ...
        def realpath(self, path: str) -> str: ...
        def read_header(self, path: str) -> bytes | None: ...
        def pci_files(self, address: str) -> list[str] | None: ...
        def usb_files(self, hostdev: Hostdev) -> list[str] | None: ...
        def render_node(self) -> str | None: ...

VIRTIO_MODELS = frozenset({"virtio", "virtio-transitional", "virtio-non-transitional"})
# -f/-F paths come from libvirtd; these suffixes mean "this directory and below".
SUBTREE_SUFFIXES = ("/{,**}", "/**")
RUNSTATEDIR = "/run"
LOCALSTATEDIR = "/var"


class Rule:
    """One rule of the .files include, with the XML element it came from."""

    __slots__ = ("comment", "deny", "deny_write", "dir_path", "literal", "origin", "path",
                 "perms")

    def __init__(self, path: str, perms: str, origin: str, deny_write: bool = False,
                 dir_path: str | None = None, deny: bool = False,
                 comment: str | None = None, literal: bool = False) -> None:
        self.path = path              # AppArmor path expression (already escaped)
        self.perms = perms
        self.origin = origin
        self.deny_write = deny_write  # followed by the "don't audit writes" deny rule
        self.dir_path = dir_path      # recursive rule: also "<dir>/" r
        self.deny = deny              # a deny rule in its own right
        self.comment = comment        # comment line printed before the rule
        self.literal = literal        # fixed text of ours, not derived from a path

    def __repr__(self) -> str:
        return f"Rule({self.path!r}, {self.perms!r}, {self.origin!r})"

    def render(self) -> str:
        out = []
        if self.comment:
            out.append(f"  # {self.comment}\n")
        out.append(f'  {"deny " if self.deny else ""}"{self.path}" {self.perms},\n')
        if self.deny_write:
            out.append("  # don't audit writes to readonly files\n")
            out.append(f'  deny "{self.path}" w,\n')
        if self.dir_path is not None:
            out.append(f'  "{self.dir_path}" r,\n')
        return "".join(out)


class GenerationError(Exception):
    """The domain cannot be confined; ``lines`` are the error messages."""

    def __init__(self, *lines: str) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


class Generated:
    __slots__ = ("rules", "warnings")

    def __init__(self, rules: list[Rule], warnings: list[str]) -> None:
        self.rules = rules
        self.warnings = warnings


def _name_bytes(name: str, limit: int) -> str:
    """The first ``limit`` bytes of ``name`` (as C's %.*s), bytes kept raw."""
    return name.encode("utf-8", "surrogateescape")[:limit].decode("utf-8", "surrogateescape")


def fixed_rules(dom: Domain) -> list[Rule]:
    """The per-domain rules stock writes first for qemu/kqemu/kvm domains."""
    name = escape(dom.name)
    short = escape(_name_bytes(dom.name, 20))
    o = "domain"
    return [
        Rule(f"{LOCALSTATEDIR}/log/libvirt/**/{name}.log", "w", o, literal=True),
        Rule(f"{LOCALSTATEDIR}/lib/libvirt/qemu/domain-{name}/monitor.sock", "rw", o,
             literal=True),
        Rule(f"{LOCALSTATEDIR}/lib/libvirt/qemu/domain-{dom.id}-{short}/*", "rw", o,
             literal=True),
        Rule(f"{RUNSTATEDIR}/libvirt/**/{name}.pid", "rwk", o, literal=True),
        Rule(f"{RUNSTATEDIR}/libvirt/**/*.tunnelmigrate.dest.{name}", "rw", o, literal=True),
    ]


GL_RULES = (
    ("/usr/lib{,32,64}/dri/*.so*", "mr", "DRI/Mesa/(e)GL config and driver paths"),
    ("/usr/lib/@{multiarch}/dri/*.so*", "mr", None),
    ("/usr/lib/fglrx/dri/*.so*", "mr", None),
    ("/etc/drirc", "r", None),
    ("/usr/share/drirc.d/{,*.conf}", "r", None),
    ("/etc/glvnd/egl_vendor.d/{,*}", "r", None),
    ("/usr/share/glvnd/egl_vendor.d/{,*}", "r", None),
    ("/usr/share/egl/egl_external_platform.d/", "r", None),
    ("/usr/share/egl/egl_external_platform.d/*", "r", None),
    ("/proc/modules", "r", None),
    ("/proc/driver/nvidia/params", "r", None),
    ("/dev/nvidiactl", "rw", None),
    ("/dev/dri/", "r", "Probe DRI device attributes"),
    ("/sys/devices/**/{uevent,vendor,device,subsystem_vendor,subsystem_device,config,"
     "revision}", "r", None),
)


class _Collector:
    """Accumulates rules in stock order; applies the path checks to each."""

    def __init__(self, host: Host, max_depth: int, lv: Libvirt | None = None) -> None:
        self.host = host
        self.max_depth = max_depth
        self.lv = lv or libvirt()
        # 12.1+: read-only disk images and backing files get no "deny w" rule
        self.storage_deny = not self.lv.has("readonly-no-deny")
        self.rules: list[Rule] = []
        self.warnings: list[str] = []
        self._seen: dict[str, tuple[str, bool]] = {}

    def _canonical(self, path: str) -> tuple[str, bool]:
        done = self._seen.get(path)
        if done is None:
            done = self._seen[path] = canonical(path, self.host.exists, self.host.realpath)
        return done

    def add_path(self, path: str | None, perms: str, origin: str, recursive: bool = False,
                 suffix: str = "", fatal: bool = True, deny: bool = True) -> None:
        """Stock's vah_add_path, plus our control-character and escaping rules."""
        if path is None:
            raise GenerationError(f"{origin}: no path given")
        if not path.startswith("/"):
            self.warnings.extend((path, "skipped non-absolute path"))
            return
        if has_control(path):
            raise GenerationError(f"{origin}: refusing a path with a control character: "
                                  f"{path!r}")
        canon, exists = self._canonical(path)
        readonly = "w" not in perms
        deny_write = readonly and "R" not in perms and deny
        perms = perms.replace("R", "r")
        if not exists:
            self.warnings.append("path does not exist, skipping file type checks")
        if '"' in canon or restricted(canon, readonly, recursive or bool(suffix),
                                      self.lv.firmware_dirs):
            if fatal:
                raise GenerationError(path, "skipped restricted file")
            self.warnings.append(f"{path}: skipped restricted file")
            return
        base = "" if canon == "/" else canon
        esc = escape(base)
        if recursive:
            self.rules.append(Rule(esc + "/**", perms, origin, deny_write=deny_write,
                                   dir_path=esc + "/"))
        else:
            self.rules.append(Rule((esc + suffix) if suffix else (esc or "/"), perms, origin,
                                   deny_write=deny_write))

    def add_chardev(self, dev: Chardev, origin: str) -> None:
        if dev.type == "pipe" and dev.path is not None:
            self.add_path(dev.path + ".in", "rw", origin)
            self.add_path(dev.path + ".out", "rw", origin)
        else:
            self.add_path(dev.path, "rw", origin)

    def add_storage(self, src: Storage, origin: str, probe: bool) -> None:
        """A disk (or nvram) and its backing chain: top rw or r, the rest rk.

        Each layer's qcow2 data file follows its image (libvirt >= 10.10).
        """
        if src.type == "none" or (src.local and not src.path) or \
                (src.type == "network" and not src.path and src.backing is None
                 and src.data_file is None):
            return
        chain: list[tuple[str | None, str | None]] = [
            (src.path if src.local else None, _data_path(src.data_file))]
        if src.backing is not None:
            node: Storage | None = src
            while node is not None and node.backing:
                node = node.backing[0]
                if node.type == "none":
                    break
                chain.append((node.path if node.local else None, _data_path(node.data_file)))
        elif probe and src.local and src.path:
            chain = self._probed(src, origin, chain[0][1])
        deny = self.storage_deny
        for depth, (path, data) in enumerate(chain):
            if path is not None:
                if depth == 0:
                    self.add_path(path, "rk" if src.readonly else "rwk", origin, deny=deny)
                else:
                    self.add_path(path, "rk", f"{origin} (backing file)", deny=deny)
            if data is not None:
                # storage_source_add_files: the data store at its image's depth; its
                # own readonly flag is never set, so a top-level one is writable
                self.add_path(data, "rwk" if depth == 0 else "rk", f"{origin} (data file)",
                              deny=deny)

    def _probed(self, src: Storage, origin: str,
                xml_data: str | None) -> list[tuple[str | None, str | None]]:
        """The chain read from the image headers, with each layer's data file."""
        assert src.path is not None
        files: list[str | None] | None = [] if self.lv.has("data-file") else None
        try:
            links = images.backing_chain(src.path, src.format, self.host.read_header,
                                         self._canon_only, self.max_depth, files)
        except images.ChainError as exc:
            raise GenerationError(f"{origin}: {exc}") from None
        data: list[str | None] = list(files or ())
        data += [None] * (len(links) + 1 - len(data))
        if not self.lv.has("data-file-every-layer"):
            # before 12.1 only the bottom layer's data file survives the probe
            bottom = data[-1]
            data = [None for _ in links]
            data.append(bottom)
        if xml_data is not None:
            data[0] = xml_data
        paths = [src.path] + [link.path for link in links]
        return list(zip(paths, data, strict=True))

    def _canon_only(self, path: str) -> str:
        return self._canonical(path)[0]

    def literal(self, path: str, perms: str, origin: str, comment: str | None = None,
                deny: bool = False) -> None:
        self.rules.append(Rule(path, perms, origin, comment=comment, deny=deny,
                               literal=True))


def _data_path(store: Storage | None) -> str | None:
    return store.path if store is not None and store.local and store.path else None


def generate(dom: Domain, host: Host, extra_file: str | None = None,
             max_depth: int = images.DEFAULT_MAX_DEPTH, lv: Libvirt | None = None) -> Generated:
    """All device rules for ``dom`` in stock order (fixed rules excluded), as the
    helper of libvirt ``lv`` (default 9.0) writes them."""
    c = _Collector(host, max_depth, lv)
    for disk in dom.disks:
        c.add_storage(disk.source, f"disk {disk.target or disk.device}", probe=True)
    for kind, devs in (("serial", dom.serials), ("console", dom.consoles),
                       ("parallel", dom.parallels), ("channel", dom.channels)):
        for i, dev in enumerate(devs):
            if dev.type in ("pty", "dev", "file", "unix", "pipe") and dev.path:
                if kind == "console":
                    c.add_path(dev.path, "rw", f"console {i}")
                else:
                    c.add_chardev(dev, f"{kind} {i}")
    _boot(c, dom)
    needs_gl = False
    for g in dom.graphics:
        if g.rendernode:
            c.add_path(g.rendernode, "rw", f"graphics {g.type} rendernode", fatal=False)
            needs_gl = True
        elif g.needs_auto_rendernode:
            needs_gl = True
            node = host.render_node()
            if node:
                c.add_path(node, "rw", f"graphics {g.type} rendernode (host default)",
                           fatal=False)
        for sock in g.sockets:
            c.add_path(sock, "rw", f"graphics {g.type} socket")
    if len(dom.graphics) == 1 and dom.graphics[0].type == "sdl":
        if dom.graphics[0].xauth is None:
            raise GenerationError("graphics sdl: no xauth file given")
        c.add_path(dom.graphics[0].xauth, "r", "graphics sdl xauth")
    needs_vfio = _hostdevs(c, dom)
    for fs in dom.filesystems:
        c.add_path(fs.source, "R" if fs.readonly else "rwl",
                   f"filesystem {fs.target or fs.source}", recursive=True)
    for path in dom.inputs:
        c.add_path(path, "rw", "input")
    for i, iface in enumerate(dom.interfaces):
        if iface.type == "vhostuser" and iface.vhostuser is not None:
            c.add_chardev(iface.vhostuser, f"interface {i} vhost-user")
    _memories(c, dom)
    for path in dom.fwcfg_files:
        c.add_path(path, "r", "sysinfo fw_cfg")
    for shm in dom.shmems:
        origin = f"shmem {shm.name}"
        if shm.server_path:
            c.add_path(shm.server_path, "rw", origin)
        elif shm.model == "ivshmem-plain":
            c.add_path(f"/dev/shm/{shm.name}", "rw", origin)
        else:
            c.add_path(f"{LOCALSTATEDIR}/lib/libvirt/shmem-{shm.name}-sock", "rw", origin)
    _tpms(c, dom)
    _smartcards(c, dom)
    if dom.virt_type == "kvm" and any(
            i.model is None or (i.driver != "qemu" and i.model in VIRTIO_MODELS)
            for i in dom.interfaces):
        c.literal("/dev/vhost-net", "rw", "interface (vhost-net)")
    if dom.launch_security in ("sev", "sev-snp") and c.lv.has("dev-sev"):
        c.literal("/dev/sev", "rw", f"launchSecurity {dom.launch_security}")
    if needs_vfio:
        c.literal("/dev/vfio/vfio", "rw", "hostdev (vfio)")
        c.literal("/dev/vfio/[0-9]*", "rw", "hostdev (vfio)")
    if needs_gl:
        for path, perms, comment in GL_RULES:
            c.literal(path, perms, "graphics gl", comment=comment)
        c.literal("/var/lib/libvirt/.cache/", "w", "graphics gl", deny=True,
                  comment="dri libs will trigger that, but t is not requited and DAC "
                          "would deny it anyway")
    if extra_file is not None:
        add_extra_file(c, extra_file)
    return Generated(c.rules, c.warnings)


def add_extra_file(c: _Collector, path: str) -> None:
    """The -f/-F file from libvirtd: rwk, a trailing subtree suffix kept as such."""
    for suffix in SUBTREE_SUFFIXES:
        if path.endswith(suffix) and len(path) > len(suffix):
            c.add_path(path[: -len(suffix)], "rwk", "extra file", suffix=suffix)
            return
    perms = "rwk"
    if c.lv.has("iommufd") and (path == "/dev/iommu" or
                                    path.startswith("/dev/vfio/devices/vfio")):
        perms = "rwm"  # 12.1+: IOMMUFD devices are mapped, not locked
    c.add_path(path, perms, "extra file")


def extra_file_rules(host: Host, path: str, lv: Libvirt | None = None) -> Generated:
    """Only the -F rule (append mode)."""
    c = _Collector(host, images.DEFAULT_MAX_DEPTH, lv)
    add_extra_file(c, path)
    return Generated(c.rules, c.warnings)


def loader_perms(dom: Domain, lv: Libvirt) -> str:
    """9.0: always rk; 11.x: rwk unless readonly='yes'; 12.x: a rom is read-only too."""
    if not lv.has("loader-writable") or dom.loader_readonly:
        return "rk"
    if lv.has("rom-readonly") and dom.loader_type == "rom":
        return "rk"
    return "rwk"


def _boot(c: _Collector, dom: Domain) -> None:
    """kernel, initrd, shim, dtb, ACPI tables, pstore, loader, nvram, varstore."""
    for label, path in (("kernel", dom.kernel), ("initrd", dom.initrd), ("shim", dom.shim),
                        ("dtb", dom.dtb)):
        if path is not None:
            c.add_path(path, "r", label)
    for path in dom.acpi_tables:
        c.add_path(path, "r", "acpi table")
    if dom.pstore is not None:
        c.add_path(dom.pstore, "rw", "pstore")
    if dom.loader is not None:
        c.add_path(dom.loader, loader_perms(dom, c.lv), "loader")
    if dom.nvram is not None:
        c.add_storage(dom.nvram, "nvram", probe=False)
    if dom.varstore is not None:
        c.add_path(dom.varstore, "rw", "varstore")


def _memories(c: _Collector, dom: Domain) -> None:
    pmem_sgx = c.lv.has("memory-pmem-sgx")
    for model, path in dom.memories:
        if model == "nvdimm" or (model == "virtio-pmem" and pmem_sgx):
            if path is not None:
                c.add_path(path, "rw", f"memory {model}")
        elif model == "sgx-epc" and pmem_sgx:
            c.add_path("/dev/sgx_vepc", "rw", "memory sgx-epc")
            c.add_path("/dev/sgx_provision", "r", "memory sgx-epc")


def _hostdevs(c: _Collector, dom: Domain) -> bool:
    needs_vfio = False
    for hd in dom.hostdevs:
        origin = f"{hd.origin} {hd.type}"
        if hd.type == "usb":
            files = c.host.usb_files(hd)
            for f in files or ():
                c.add_path(f, "rw", origin)
        elif hd.type == "mdev":
            needs_vfio = True
        elif hd.type == "pci":
            if hd.pci_backend == "vfio" and hd.iommufd and c.lv.has("iommufd"):
                pass  # 12.1+: QEMU opens /dev/iommu and the cdev (passed as -F), no group
            elif hd.pci_backend in ("vfio", "default"):
                needs_vfio = True
            if hd.pci_address is None:
                continue
            for f in c.host.pci_files(hd.pci_address) or ():
                c.add_path(f, "rw", f"{origin} {hd.pci_address}")
    return needs_vfio


def _tpms(c: _Collector, dom: Domain) -> None:
    name = escape(dom.name)
    short = escape(f"{dom.id}-{_name_bytes(dom.name, 20)}")
    for tpm in dom.tpms:
        if tpm.backend != "emulator":
            continue
        # libvirtd fills the version in before it calls the helper
        # (qemuDomainTPMDefPostParse); XML without one gets stock's literal "(null)"
        # directory: it names nothing, so never more than stock grants
        vdir = {"1.2": "tpm1.2", "2.0": "tpm2"}.get(tpm.version or "", "(null)")
        o = "tpm emulator"
        state = f"{LOCALSTATEDIR}/lib/libvirt/swtpm/{dom.uuid}/{vdir}"
        c.literal(f"{RUNSTATEDIR}/libvirt/qemu/swtpm/{short}-swtpm.sock", "rw", o)
        c.literal(f"{state}/", "r", o)
        c.literal(f"{state}/**", "rwk", o)
        c.literal(f"{LOCALSTATEDIR}/log/swtpm/libvirt/qemu/{name}-swtpm.log", "w", o)
        c.literal(f"{RUNSTATEDIR}/libvirt/qemu/swtpm/{short}-swtpm.pid", "rw", o)


def _smartcards(c: _Collector, dom: Domain) -> None:
    for sc in dom.smartcards:
        origin = f"smartcard {sc.mode}"
        if sc.mode == "passthrough":
            continue
        db = sc.database if sc.mode == "host-certificates" and sc.database else None
        if db is None or db.rstrip("/") == SMARTCARD_DEFAULT_DB:
            c.literal(f"{SMARTCARD_DEFAULT_DB}/{{,*}}", "rk", origin)
            continue
        # Stock emits the database verbatim; we check and escape it like any path,
        # and check it as the directory grant it is: "/" (-> "/{,*}") is refused.
        c.add_path(db.rstrip("/") or "/", "rk", origin, suffix="/{,*}", deny=False)

