"""Denials grouped per VM, explained against the domain XML, turned into rules.

Pure: records and facts in, plain values out.  The CLI feeds it records
(from any source) and renders the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from virt_aa.generate.paths import escape, has_control, normalize, restricted

from .catalogue import KNOWN, Known
from .programs import program_of

if TYPE_CHECKING:                       # the generator is not loaded to read a log
    from virt_aa.generate.accesses import Rule
    from virt_aa.generate.domain import Domain

FILE_OPS = frozenset({
    "open", "file_mmap", "mknod", "link", "rename_src", "rename_dest", "truncate", "chmod",
    "chown", "unlink", "mkdir", "rmdir", "getattr", "setattr", "file_lock", "file_inherit",
    "file_perm", "exec", "file_receive", "connect", "create"})
NET_FAMILIES = frozenset({"inet", "inet6", "netlink", "packet", "unix", "bluetooth", "x25",
                          "ax25", "ipx", "appletalk", "key", "alg", "vsock", "can", "rds"})
RISKY_CAPS = frozenset({"sys_admin", "sys_module", "sys_rawio", "net_admin", "sys_ptrace",
                        "dac_override", "dac_read_search", "mac_admin", "mac_override"})


def uuid_of(profile: str | None) -> str | None:
    """``libvirt-<uuid>`` (or a child ``libvirt-<uuid>//x``) -> uuid, else None."""
    if not profile or not profile.startswith("libvirt-"):
        return None
    head = profile[8:].split("//", 1)[0]
    if len(head) != 36 or head.count("-") != 4:
        return None
    if not all(c in "0123456789abcdef-" for c in head):
        return None
    return head


class Group:
    """Records that are the same denial: same VM, operation, resource, permission, mode."""

    __slots__ = ("child", "count", "event", "first", "flags", "last", "mode", "operation",
                 "perms", "profile", "program", "resource", "uuid")

    def __init__(self, profile: str, mode: str, operation: str, resource: str,
                 perms: str) -> None:
        self.profile = profile
        self.uuid = uuid_of(profile)
        self.program = program_of(profile)
        self.child = profile.split("//", 1)[1] if "//" in profile else None
        self.mode = mode
        self.operation = operation
        self.resource = resource
        self.perms = perms
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.event: str | None = None          # one event id, for provenance
        self.flags: dict[str, int] = {}

    def add(self, when: float | None, event: str | None, flags: Iterable[str] = (),
            n: int = 1) -> None:
        self.count += n
        if when is not None:
            self.first = when if self.first is None else min(self.first, when)
            self.last = when if self.last is None else max(self.last, when)
        if self.event is None:
            self.event = event
        for f in flags:
            self.flags[f] = self.flags.get(f, 0) + n

    @property
    def is_file(self) -> bool:
        return self.operation in FILE_OPS and self.resource.startswith("/")

    @property
    def kind(self) -> str:
        """file, capability, network, or other (unix, signal, ptrace, dbus)."""
        if self.is_file:
            return "file"
        if self.operation == "capable":
            return "capability"
        words = self.resource.split()
        if words and words[0] in NET_FAMILIES and "=" not in self.resource:
            return "network"
        return "other"

    def to_dict(self, names: dict[str, str]) -> dict[str, Any]:
        vm = names.get(self.uuid or "", self.profile.split("//", 1)[0])
        return {"vm": vm, "program": self.program, "profile": self.profile, "uuid": self.uuid,
                "child": self.child,
                "operation": self.operation, "mode": self.mode, "resource": self.resource,
                "perms": self.perms, "count": int(self.count),
                "first_seen": _iso(self.first), "last_seen": _iso(self.last),
                "event": self.event, "flags": dict(self.flags)}


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def group_records(records: Iterable[Any], want: Callable[[Any], bool] | None = None
                  ) -> dict[tuple[str, str, str, str, str], Group]:
    """Group DENIED/ALLOWED records of every profile (no profile: "?")."""
    groups: dict[tuple[str, str, str, str, str], Group] = {}
    for rec in records:
        if rec.mode not in ("DENIED", "ALLOWED"):
            continue
        if want is not None and not want(rec):
            continue
        profile = rec.profile or rec.label or "?"
        mode = "denied" if rec.mode == "DENIED" else "allowed"
        perms = rec.denied or rec.requested or ""
        key = (profile, mode, rec.operation or "?", rec.resource or "?", perms)
        g = groups.get(key)
        if g is None:
            g = groups[key] = Group(*key)
        g.add(rec.time, rec.event_id, rec.flags)
    return groups


# -- explain --------------------------------------------------------------------------------

def _parent_dirs(path: str) -> list[str]:
    out = []
    cur = path.rstrip("/")
    while "/" in cur.strip("/"):
        cur = cur.rsplit("/", 1)[0]
        out.append(cur or "/")
    return out


def _common(a: str, b: str) -> int:
    """Number of leading path components two paths share."""
    n = 0
    for x, y in zip(a.strip("/").split("/"), b.strip("/").split("/"), strict=False):
        if x != y:
            break
        n += 1
    return n


def _literal(rule_path: str) -> str:
    """A generated rule's path without escapes or its trailing glob."""
    from virt_aa.policy.localrules import literal_prefix

    text = literal_prefix(rule_path)
    return text.rstrip("/") or "/"


def explain(group: Group, dom: Domain | None, generated: list[Rule],
            matches: Callable[[str, str], bool]) -> dict[str, Any]:
    """Why this was denied: the XML element it belongs to (or not), a known gap, a risk."""
    out: dict[str, Any] = {"element": None, "relation": "not named by the domain",
                           "covered_by": None, "known": None, "risk": None,
                           "restricted": False, "rule": None}
    res = group.resource
    tpm = _passthrough_tpm(dom, res) if group.is_file else None
    if tpm is not None:
        out["element"] = "tpm passthrough"
        out["relation"] = (f"named by the domain: <tpm><backend type='passthrough'> device "
                           f"{tpm}; libvirt hands QEMU an open descriptor for it and its "
                           f"helper writes no rule, so QEMU opened it by path itself")
        out["rule"] = f'"{escape(res)}" rw,'
    elif group.is_file:
        covering = [r for r in generated if not r.deny and matches(r.path, res)]
        if covering:
            r = covering[0]
            out["covered_by"] = f'"{r.path}" {r.perms} ({r.origin})'
            out["element"] = r.origin
            missing = "".join(c for c in group.perms if c not in r.perms)
            out["relation"] = (f"named by the domain ({r.origin}) with '{r.perms}', the "
                               f"access needs '{missing or group.perms}'")
            if r.deny_write and "w" in group.perms:
                out["relation"] = (f"{r.origin} is read-only by design (backing files, "
                                   f"read-only disks); a write to it is refused on purpose")
        else:
            best: tuple[int, Rule] | None = None
            for r in generated:
                if r.literal:
                    continue
                n = _common(_literal(r.path), res)
                if n >= 2 and (best is None or n > best[0]):
                    best = (n, r)
            if best is not None:
                r = best[1]
                base = _literal(r.path)
                kind = "directory" if r.dir_path is not None else "file"
                out["element"] = r.origin
                out["relation"] = (f"near {r.origin} ({kind} {base}), but outside it: the "
                                   f"domain does not name {res}")
        if restricted(res.rstrip("/") or "/", readonly="w" not in group.perms):
            out["restricted"] = True
            out["risk"] = ("sensitive host path (DESIGN §5 restricted list): do not allow it "
                           "for a guest unless you know exactly why")
        elif res.startswith("/dev/"):
            out["risk"] = "a host device: allowing it gives the guest's QEMU raw access"
    elif group.kind == "capability":
        cap = res
        if cap in RISKY_CAPS:
            out["risk"] = f"capability {cap} is broad: prefer fixing what QEMU needs it for"
    known = find_known(group, matches)
    if known is not None and tpm is None:
        out["known"] = {"what": known.what, "fix": known.fix, "rule": known.rule,
                        "source": known.source}
    return out


def _passthrough_tpm(dom: Domain | None, res: str) -> str | None:
    """The domain's passthrough TPM device this resource is (or its cancel file), if any."""
    if dom is None:
        return None
    for t in dom.tpms:
        dev = t.device
        if t.backend != "passthrough" or not dev:
            continue
        base = dev.rsplit("/", 1)[-1]
        if res == dev or res in (f"/sys/class/tpm/{base}/device/cancel",
                                 f"/sys/class/misc/{base}/device/cancel"):
            return dev
    return None


def find_known(group: Group, matches: Callable[[str, str], bool]) -> Known | None:
    """The catalogue's entry for this denial of this program, if any."""
    for k in KNOWN:
        if k.operation and k.operation != group.operation:
            continue
        if k.program != group.program:
            continue
        if matches(k.pattern, group.resource):
            return k
    return None


# -- suggest ---------------------------------------------------------------------------------

FILE_PERM_LETTERS = "rwaklmx"


IMAGE_SUFFIXES = (".qcow2", ".qcow", ".img", ".raw", ".iso", ".vmdk", ".vdi", ".vhd",
                  ".vhdx", ".qed", ".fd")


def _perms_for_rule(perms: str, operation: str, path: str = "") -> str:
    if "c" in perms or "d" in perms:    # create, delete: AppArmor's w
        perms += "w"
    if path.lower().endswith(IMAGE_SUFFIXES) and set(perms) <= set("rwakldc"):
        # a disk image: QEMU locks it (k) -- rwk for a writable image, rk read-only
        return "rwk" if set(perms) & set("wa") else "rk"
    letters = "".join(c for c in FILE_PERM_LETTERS if c in perms)
    if "x" in letters:
        letters = letters.replace("x", "") + "ix"   # exec stays confined: inherit
    if operation == "file_mmap" and "m" not in letters:
        letters += "m"
    return letters or "r"


def perms_for_check(perms: str, operation: str) -> str:
    """The denied mask as `check` takes it (create/delete are writes; exec asks for x)."""
    letters = _perms_for_rule(perms, operation)
    return letters.replace("ix", "x")


def proposals(group: Group) -> list[dict[str, Any]]:
    """Candidate rules, narrowest first; restricted targets get none."""
    if group.is_file:
        path = group.resource
        perms = _perms_for_rule(group.perms, group.operation, path)
        readonly = not set(perms) & set("wal")
        if has_control(path) or not path.startswith("/"):
            return []               # no rule can name it literally: never guess
        if restricted(normalize(path), readonly) or "/../" in path + "/" or "/./" in path:
            return []
        parent = path.rstrip("/").rsplit("/", 1)[0] or "/"
        esc = escape(path)
        out = [{"kind": "exact", "rule": f'"{esc}" {perms},'}]
        if parent != "/" and not restricted(parent, readonly, recursive=True):
            out.append({"kind": "same directory",
                        "rule": f'"{escape(parent)}/*" {perms},'})
            out.append({"kind": "subtree", "rule": f'"{escape(parent)}/**" {perms},'})
        out.append({"kind": "owner only", "rule": f'owner "{esc}" {perms},'})
        return out
    if group.kind == "capability":
        cap = group.resource
        if not cap.replace("_", "").isalnum():
            return []
        return [{"kind": "exact", "rule": f"capability {cap},"}]
    if group.kind == "network":
        words = [w for w in group.resource.split() if w.replace("_", "").isalnum()]
        if not words:
            return []
        return [{"kind": "exact", "rule": f"network {' '.join(words[:2])},"}]
    return []
