"""One AppArmor audit record, and the key=value tokenizer that reads its fields.

A quoted value is taken whole, so text inside it can never become a key (a
forged ``profile="libvirt-..."`` inside a name stays inside the name), and
the first occurrence of a key wins.  Unquoted values of the keys the kernel
writes with ``audit_log_untrustedstring()`` that are upper-case hex are
decoded to bytes and kept as ``str`` with ``surrogateescape``.  Line shapes
and headers are :mod:`virt_aa.denials.lines`' business.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["HEX_KEYS", "YEAR_GUESSED", "Record", "resource_of"]

YEAR_GUESSED = frozenset({"year_guessed"})   # a time whose year the log did not give


class Record:
    """One AppArmor audit record (one occurrence in the log)."""

    __slots__ = ("comm", "denied", "fields", "flags", "host", "klass", "label", "lineno", "mode",
                 "name", "node", "operation", "pid", "profile", "requested", "serial", "source",
                 "stamp", "time")

    source: str            # "kernel" (kernel record via auditd/printk), "audit" (journald's
    #                        audit transport), "dbus" (dbus-daemon's mediation)
    mode: str              # DENIED / ALLOWED / AUDIT / STATUS / HINT / ERROR / KILL ...
    operation: str | None
    profile: str | None    # profile= (for dbus records: label=)
    label: str | None      # label= (dbus)
    name: str | None       # decoded path / resource name
    requested: str | None  # requested_mask= or requested= (dbus: mask=)
    denied: str | None     # denied_mask= or denied= (dbus: mask=)
    klass: str | None      # class=
    time: float | None     # epoch seconds
    serial: int | None     # audit serial
    node: str | None       # auditd node= prefix
    host: str | None       # syslog / journal host name
    pid: int | None
    comm: str | None
    fields: dict[str, str]  # every decoded key=value of the record (ENRICHED ones upper case)
    flags: frozenset[str]   # subset of {"split", "truncated", "year_guessed"}
    stamp: str | None       # "EPOCH.mmm:SERIAL" as written in the log
    lineno: int | None      # 1-based line where the record starts (set by iter_records)

    def __init__(self, source: str, mode: str, fields: dict[str, str],
                 flags: frozenset[str] = frozenset()) -> None:
        self.source = source
        self.mode = mode
        self.fields = fields
        self.flags = flags
        g = fields.get
        self.operation = g("operation")
        self.label = g("label")
        self.profile = g("profile") or self.label
        self.name = g("name")
        req = g("requested_mask")
        if req is None:
            req = g("requested")
        den = g("denied_mask")
        if den is None:
            den = g("denied")
        if req is None and den is None and "mask" in fields and source == "dbus":
            req = den = fields["mask"]
        self.requested = req
        self.denied = den
        self.klass = g("class")
        self.comm = g("comm")
        p = g("pid")
        self.pid = int(p) if p is not None and p.isdigit() and len(p) < 12 else None
        self.time = None
        self.serial = None
        self.node = None
        self.host = None
        self.stamp = None
        self.lineno = None

    @property
    def event_id(self) -> str | None:
        """``"EPOCH.mmm:SERIAL"`` (the audit event id), when the log line carries it."""
        if self.stamp is not None:
            return self.stamp
        if self.time is not None and self.serial is not None:
            return f"{self.time:.3f}:{self.serial}"
        return None

    @property
    def resource(self) -> str | None:
        """What was accessed, as one string: the path, capability, socket, peer or dbus name."""
        return resource_of(self.fields, self.operation, self.source)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in Record.__slots__}
        d["flags"] = sorted(self.flags)
        d["fields"] = dict(self.fields)
        d["event_id"] = self.event_id
        return d

    def __repr__(self) -> str:
        return "Record({} {} {} profile={!r} name={!r} {})".format(
            self.source, self.mode, self.operation, self.profile, self.name,
            ",".join(sorted(self.flags)))


def resource_of(fields: dict[str, str], operation: str | None, source: str) -> str | None:
    """The "what" of a record for grouping: path, capability, socket, peer, dbus name."""
    g = fields.get
    if source == "dbus" or (operation or "").startswith("dbus"):
        parts = [f"{k}={g(k)}" for k in ("bus", "path", "interface", "member", "name")
                 if g(k) is not None]
        return " ".join(parts) or None
    fam = g("family")
    if fam is not None:
        parts = [fam, g("sock_type") or "", g("protocol") or ""]
        for k in ("addr", "peer_addr", "peer"):
            v = g(k)
            if v is not None:
                parts.append(f"{k}={v}")
        return " ".join(parts)
    if operation == "capable":
        return g("capname") or ("capability=" + g("capability", "?"))
    if operation == "signal" or "signal" in fields:
        return "signal={} peer={}".format(g("signal"), g("peer"))
    if operation == "ptrace":
        return "peer={}".format(g("peer"))
    name = g("name")
    if name is not None:
        return name
    if "peer" in fields:
        return "peer={}".format(g("peer"))
    return None


# ---------------------------------------------------------------- key=value tokenizer

# Keys whose values the kernel writes with audit_log_untrustedstring(): quoted when
# printable, otherwise upper-case hex without quotes.
HEX_KEYS = frozenset({
    "name", "name2", "comm", "profile", "label", "peer", "peer_label", "peer_profile", "target",
    "addr", "peer_addr", "exe", "namespace", "srcname", "fstype", "execpath", "subj",
    "interface", "member", "path", "bus",
})

_KV_RE = re.compile(r"""([A-Za-z_][A-Za-z0-9_-]*)=("[^"]*"?|'[^']*'?|[^\s"']*)""")
_HEX_RE = re.compile(r"[0-9A-F]+")


def _unhex(raw: str) -> tuple[str, bool]:
    """Decode kernel hex; (value, cut) where cut means an odd length (record truncated)."""
    cut = len(raw) & 1
    if cut:
        raw = raw[:-1]
    return bytes.fromhex(raw).decode("utf-8", "surrogateescape"), bool(cut)


def _tokens(text: str, fields: dict[str, str]) -> bool:
    """Add the key=value pairs of `text` to `fields` (first one wins).

    Returns True when the last value is open: a quote that is never closed
    or an odd-length hex string (the text was cut inside that value)."""
    parts = _KV_RE.split(text)      # [before, key, value, between, key, value, ..., after]
    if len(parts) == 1:
        return False
    open_last = False
    raw = ""
    for key, raw in zip(parts[1::3], parts[2::3], strict=True):
        open_last = False
        q = raw[:1]
        if q == '"' or q == "'":
            if len(raw) >= 2 and raw[-1] == q:
                val = raw[1:-1]
            else:
                val = raw[1:]
                open_last = True
        elif key in HEX_KEYS and raw and _HEX_RE.fullmatch(raw) is not None:
            val, open_last = _unhex(raw)
        else:
            val = raw
        if key not in fields:
            fields[key] = val
    if not open_last:
        if parts[-1].strip():
            open_last = True            # cut inside a key: "... comm="x" fam"
        elif not raw or raw[-1] == "=":
            open_last = True            # cut right after "key="
    return open_last
