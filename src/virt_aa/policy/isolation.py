"""Isolation between VMs: which files belong to which domain, and which rules reach them.

Pure.  :func:`owned_files` turns one domain and its generated rules (each
with the XML element it came from) into the files that are that VM's own:
disks and their backing chains, NVRAM, TPM state, sockets, serial logs,
shares, memory-backing files, plus the per-VM files libvirt itself keeps
(``/var/log/libvirt/qemu/NAME.log``, the per-VM directory, the pid file,
the swtpm state and log).  :func:`reaches` then decides, with our own AARE
matcher, whether a rule of one VM matches a file of another.

A file both XMLs name is *declared sharing* when both mark the disk
``<shareable/>`` or when the rule grants nothing on it beyond what the
rule's own VM already gets for it from its XML (a common read-only backing
image): shown, never refused.  Anything else is a breach of isolation.

Directories (TPM state, per-VM directories, shares) are probed with the
directory itself and one typical entry in it, so ``/var/lib/libvirt/swtpm/**``
counts as reaching every VM's TPM state.
"""

from __future__ import annotations

from virt_aa.generate.paths import escape

TYPE_CHECKING = False
if TYPE_CHECKING:
    from virt_aa.generate.accesses import Rule
    from virt_aa.generate.domain import Domain
    from virt_aa.policy.effective import FileRule

# generated-rule origins that name files of the host or devices, not of the VM
_NOT_PRIVATE = ("kernel", "initrd", "dtb", "acpi slic table", "loader", "hostdev", "input",
                "sysinfo fw_cfg", "graphics gl", "interface (vhost-net)", "hostdev (vfio)",
                "smartcard")
# a typical entry of a directory, to probe whether a pattern reaches inside it
_DIR_ENTRY = "disk.img"
_FILE_PERMS = "rwaklm"


class Owned:
    """One file (or directory, ``is_dir``) that belongs to a VM."""

    __slots__ = ("is_dir", "name", "path", "perms", "shareable", "uuid", "what")

    def __init__(self, name: str, uuid: str, path: str, what: str, perms: str = "rw",
                 is_dir: bool = False, shareable: bool = False) -> None:
        self.name = name            # the domain's name
        self.uuid = uuid
        self.path = path            # literal path (no escapes)
        self.what = what            # the XML element or libvirt file it is
        self.perms = perms          # what the VM's own XML grants on it
        self.is_dir = is_dir
        self.shareable = shareable  # a <shareable/> disk

    def probes(self) -> tuple[str, ...]:
        if self.is_dir:
            base = self.path.rstrip("/")
            return (base + "/", f"{base}/{_DIR_ENTRY}")
        return (self.path,)

    def as_dict(self) -> dict[str, object]:
        return {"domain": self.name, "uuid": self.uuid, "path": self.path, "what": self.what,
                "dir": self.is_dir}

    def __repr__(self) -> str:
        return f"Owned({self.name!r}, {self.path!r}, {self.what!r})"


class Reach:
    """A rule of one VM that matches a file of another."""

    __slots__ = ("declared", "owned", "perms", "rule", "via")

    def __init__(self, rule: FileRule, owned: Owned, perms: str, via: str,
                 declared: bool) -> None:
        self.rule = rule
        self.owned = owned
        self.perms = perms          # the rule's file permissions on that file
        self.via = via              # "per-VM rule", "policy NAME", "host-wide rule", ...
        self.declared = declared    # sharing both XMLs declare: not a breach

    def describe(self) -> str:
        kind = "declared sharing" if self.declared else "reaches"
        return (f"{self.rule.text()} {kind} {self.owned.name}'s {self.owned.what} "
                f"{self.owned.path}")

    def as_dict(self) -> dict[str, object]:
        return {"rule": self.rule.text(), "source": self.rule.source, "via": self.via,
                "perms": self.perms, "declared": self.declared, "other": self.owned.name,
                "other_uuid": self.owned.uuid, "file": self.owned.path,
                "what": self.owned.what}


def literal(escaped: str) -> str:
    """Undo :func:`virt_aa.generate.paths.escape`."""
    if "\\" not in escaped:
        return escaped
    out: list[str] = []
    i = 0
    while i < len(escaped):
        if escaped[i] == "\\" and i + 1 < len(escaped):
            i += 1
        out.append(escaped[i])
        i += 1
    return "".join(out)


def _shareable_paths(dom: Domain) -> set[str]:
    out: set[str] = set()
    for disk in dom.disks:
        if disk.shareable and disk.source.path:
            out.add(disk.source.path)
    return out


def _short(dom: Domain) -> str:
    name = dom.name.encode("utf-8", "surrogateescape")[:20].decode("utf-8", "surrogateescape")
    return f"{dom.id if dom.id >= 0 else 1}-{name}"


def libvirt_files(dom: Domain) -> list[Owned]:
    """The files libvirt keeps for every QEMU domain, whatever its XML says."""
    n, u, short = dom.name, dom.uuid, _short(dom)
    out = [Owned(n, u, f"/var/log/libvirt/qemu/{n}.log", "log", "w"),
           Owned(n, u, f"/var/lib/libvirt/qemu/domain-{short}", "per-VM directory", "rw",
                 is_dir=True),
           Owned(n, u, f"/var/lib/libvirt/qemu/ram/{short}", "memory-backing directory",
                 "rw", is_dir=True),
           Owned(n, u, f"/run/libvirt/qemu/{n}.pid", "pid file", "rwk")]
    if any(t.backend == "emulator" for t in dom.tpms):
        out += [Owned(n, u, f"/var/lib/libvirt/swtpm/{u}", "TPM state", "rwk", is_dir=True),
                Owned(n, u, f"/var/log/swtpm/libvirt/qemu/{n}-swtpm.log", "TPM log", "w")]
    return out


def owned_files(dom: Domain, rules: list[Rule]) -> list[Owned]:
    """Every file of ``dom``: from its generated rules (by origin) and libvirt's own."""
    shareable = {escape(p) for p in _shareable_paths(dom)}
    out = libvirt_files(dom) if dom.is_qemu else []
    seen = {o.path for o in out}
    for r in rules:
        if r.literal or r.deny or r.origin.startswith(_NOT_PRIVATE):
            continue
        if "rendernode" in r.origin:
            continue
        is_dir = r.dir_path is not None
        path = literal(r.dir_path.rstrip("/") if r.dir_path is not None else r.path)
        if path in seen or path in ("", "/"):
            continue
        seen.add(path)
        out.append(Owned(dom.name, dom.uuid, path, r.origin, r.perms.replace("R", "r"),
                         is_dir=is_dir, shareable=r.path in shareable))
    return out


def _granted(rule: FileRule) -> str:
    letters = set(rule.perms) - {"x"}
    if "w" in letters:
        letters.add("a")
    return "".join(p for p in _FILE_PERMS if p in letters) + ("x" if "x" in rule.perms else "")


def _covered(want: str, have: str) -> bool:
    have_set = set(have) | ({"a"} if "w" in have else set())
    return set(want) <= have_set


def reaches(rules: list[FileRule], uuid: str, files: list[Owned],
            via: str = "per-VM rule") -> list[Reach]:
    """The (allow) rules of VM ``uuid`` that match another VM's file.

    ``files``: every VM's owned files (those of ``uuid`` are used to tell
    declared sharing from a breach).
    """
    mine = {o.path: o for o in files if o.uuid == uuid}
    out: list[Reach] = []
    for rule in rules:
        if rule.deny or rule.pattern is None:
            continue
        for o in files:
            if o.uuid == uuid:
                continue
            if not any(rule.matches(p) for p in o.probes()):
                continue
            perms = _granted(rule)
            own = mine.get(o.path)
            declared = own is not None and ((own.shareable and o.shareable)
                                            or _covered(perms.replace("x", ""), own.perms))
            out.append(Reach(rule, o, perms, via, declared))
    return out


def breaches(found: list[Reach]) -> list[Reach]:
    return [r for r in found if not r.declared]


def refusal(found: list[Reach], flag: str = "--force") -> str:
    """One line for the admin naming the other VM(s) and file(s)."""
    bad = breaches(found)
    per_vm: dict[str, Reach] = {}
    for r in bad:
        per_vm.setdefault(r.owned.name, r)
    named = [f"VM {r.owned.name}'s {r.owned.what} {r.owned.path}"
             for r in list(per_vm.values())[:4]]
    more = len(bad) - len(named)
    return (f"rule {bad[0].rule.text()!r} reaches {', '.join(named)}"
            f"{f' (and {more} more)' if more > 0 else ''}: one VM must not reach another's "
            f"files (DESIGN §5); use the exact path of this VM's own file, or add {flag} if "
            f"the VMs really share it")
