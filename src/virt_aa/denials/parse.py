"""One parser for AppArmor audit records in every log shape a libvirt host produces.

Shapes: auditd's audit.log (``type=AVC``/``USER_AVC``/``APPARMOR_*`` with
``msg=audit(EPOCH:SERIAL):``, optional ``node=`` prefix, ENRICHED ``\\x1d``
suffix), kern.log/syslog (RFC 3339 or BSD time stamps, ``kernel: [uptime]
audit: type=1400 audit(...)``, the pre-3.x ``type=1400 audit(...)``,
journald-forwarded ``audit[PID]: AVC ...`` and ``dbus-daemon[PID]: ...``),
dmesg and ``dmesg -T``, ``journalctl -o short`` and ``journalctl -o json``.

The body of a record is read as key=value pairs from left to right; a quoted
value is taken whole, so text inside it can never become a key (a forged
``profile="libvirt-..."`` inside a name stays inside the name), and the first
occurrence of a key wins.  Unquoted values of the keys the kernel writes with
``audit_log_untrustedstring()`` (name, comm, profile, addr, ...) that are
upper-case hex are decoded to bytes and kept as ``str`` with
``surrogateescape``.

Records cut by the kernel (printk limit, ~1000 characters) or split by rate
limiting (the rest printed on a later line, after a notice) are recovered as
far as the text allows and flagged ``truncated`` / ``split``;
`iter_records` glues a continuation line back to its record.  Nothing here
raises on bad input: a line that is not an AppArmor record gives ``None``.

Standard library only; ``json`` and ``datetime`` are imported when first
needed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["NOTICE_KINDS", "Glue", "Record", "iter_file", "iter_records", "notices", "parse_line",
           "resource_of"]

# ---------------------------------------------------------------- record


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


# ---------------------------------------------------------------- line framing

_AUDITD_RE = re.compile(
    r"(?:node=(?P<node>\S+) )?type=(?P<type>[A-Z_]+|\d+) "
    r"msg=audit\((?P<stamp>(?P<sec>\d+(?:\.\d+)?):(?P<serial>\d+))\):\s?")
_KHDR_RE = re.compile(
    r"(?:audit: )?type=(?P<type>\d+|[A-Z_]+) "
    r"audit\((?P<stamp>(?P<sec>\d+(?:\.\d+)?):(?P<serial>\d+))\):\s?")
_JAUDIT_RE = re.compile(r"(?P<type>AVC|USER_AVC|APPARMOR_[A-Z]+|1[14]\d\d|15\d\d) ")
_SYSLOG_RE = re.compile(
    r"(?:(?P<rfc>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)"
    r"|(?P<bsd>(?:[A-Z][a-z]{2} +)?\d{1,2} \d\d:\d\d:\d\d(?:\.\d+)?))"
    r" (?P<host>\S+) (?P<ident>[^\s\[:]+)(?:\[(?P<ipid>\d+)\])?: ")
_DMESG_RE = re.compile(
    r"\[ *(?:(?P<up>\d+\.\d+)|(?P<dt>[A-Z][a-z]{2} [A-Z][a-z]{2} +\d{1,2} "
    r"\d\d:\d\d:\d\d \d{4}))\] ")

_LEGACY_MODES = {"1501": "AUDIT", "1502": "ALLOWED", "1503": "DENIED", "1504": "HINT",
                 "1505": "STATUS", "1506": "ERROR", "1507": "KILL"}
_AVC_TYPES = frozenset({"AVC", "1400"})
_USER_TYPES = frozenset({"USER_AVC", "1107"})

# Records longer than this (from the "audit:"/"type=" header on) that end early were cut
# at the kernel's printk limit (about 1000 characters) rather than split.
TRUNC_LEN = 950

_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


class _Pfx:
    """What came before the message: syslog/journal prefix, dmesg time."""

    __slots__ = ("host", "ident", "ipid", "kind", "ts", "tsk", "up")

    def __init__(self) -> None:
        self.kind = ""          # "syslog" | "dmesg" | "dmesgT" | "json" | ""
        self.host: str | None = None
        self.ident: str | None = None
        self.ipid: str | None = None
        self.ts: str | None = None
        self.tsk = ""           # "rfc" | "bsd" | "dt" | "us" (json, microseconds)
        self.up: str | None = None

    def key(self) -> tuple[str, str | None, str | None]:
        return (self.kind, self.ident, self.host)

    def time(self) -> float | None:
        ts = self.ts
        if ts is None:
            return None
        try:
            if self.tsk == "us":
                return int(ts) / 1e6
            if self.tsk == "rfc":
                from datetime import datetime
                return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
            import time as _t
            if self.tsk == "dt":        # Wed Nov 25 10:00:00 2026 (local time)
                _, mon_s, day_s, hms, year_s = ts.split()
                hh, mm, ss = hms.split(":")
                return _t.mktime((int(year_s), _MONTHS[mon_s], int(day_s), int(hh), int(mm),
                                  int(ss), 0, 0, -1))
            parts = ts.split()          # BSD: [Mon] D HH:MM:SS[.frac], no year: guess it
            day = int(parts[-2])
            mon = _MONTHS.get(parts[0], 0) if len(parts) > 2 else 0
            if not mon:
                return None
            hh, mm, ss = parts[-1].split(":")
            now = _t.time()
            year = _t.localtime(now).tm_year
            sec = float(ss)
            t = _t.mktime((year, mon, day, int(hh), int(mm), int(sec), 0, 0, -1)) + sec % 1
            if t > now + 86400 * 2:
                t = _t.mktime((year - 1, mon, day, int(hh), int(mm), int(sec), 0, 0, -1)) + sec % 1
            return t
        except (ValueError, KeyError, OverflowError, IndexError):
            return None


def _split_prefix(s: str) -> tuple[_Pfx | None, int]:
    """Recognise a syslog/journal-short or dmesg prefix; (prefix, offset of the message)."""
    c = s[:1]
    if c == "[":
        m = _DMESG_RE.match(s)
        if m is None:
            return None, 0
        p = _Pfx()
        if m.group("up") is not None:
            p.kind, p.up = "dmesg", m.group("up")
        else:
            p.kind, p.ts, p.tsk = "dmesgT", m.group("dt"), "dt"
        return p, m.end()
    if c.isdigit() or c.isupper():
        m = _SYSLOG_RE.match(s)
        if m is None:
            return None, 0
        p = _Pfx()
        p.kind = "syslog"
        p.host, p.ident, p.ipid = m.group("host"), m.group("ident"), m.group("ipid")
        if m.group("rfc") is not None:
            p.ts, p.tsk = m.group("rfc"), "rfc"
        else:
            p.ts, p.tsk = m.group("bsd"), "bsd"
        pos = m.end()
        if p.ident == "kernel" and s[pos:pos + 1] == "[":
            m2 = _DMESG_RE.match(s, pos)
            if m2 is not None and m2.group("up") is not None:
                p.up = m2.group("up")
                pos = m2.end()
        return p, pos
    return None, 0


# ---------------------------------------------------------------- message -> record

_FILE_OPS = frozenset({
    "open", "file_mmap", "mknod", "link", "rename_src", "rename_dest", "truncate", "chmod",
    "chown", "unlink", "mkdir", "rmdir", "getattr", "setattr", "file_lock", "file_inherit",
    "file_perm", "file_receive", "exec", "connect", "sendmsg", "inode_permission",
})


_MODE_RE = re.compile(r"[A-Z][A-Z_]{0,31}")
_MODES = ("ALLOWED", "DENIED", "AUDIT", "STATUS", "HINT", "ERROR", "KILL")


def _complete_mode(cut: str) -> str:
    """A mode value cut short: the known mode it is the start of, if only one, else UNKNOWN."""
    hits = [m for m in _MODES if m.startswith(cut)]
    return hits[0] if len(hits) == 1 and cut else "UNKNOWN"


def _incomplete(fields: dict[str, str], source: str) -> bool:
    """Fields that a complete record of this kind always carries are missing."""
    g = fields.get
    if source == "dbus":
        if "mask" not in fields or ("label" not in fields and "profile" not in fields):
            return True
        return "peer_pid" in fields and "peer_label" not in fields
    if "apparmor" not in fields:        # pre-2.6.36 records: no fixed layout to check
        return False
    if "comm" not in fields:            # pid= comm= come with every kernel record
        return True
    if ("requested_mask" in fields) != ("denied_mask" in fields):
        return True
    if ("requested" in fields) != ("denied" in fields):
        return True
    if "fsuid" in fields and "ouid" not in fields:
        return True
    op = g("operation")
    mode = g("apparmor")
    fam = g("family")
    if fam is not None:
        if "sock_type" not in fields or "protocol" not in fields:
            return True
        if fam == "unix" or g("class") == "net":
            if "denied_mask" not in fields and "denied" not in fields:
                return True
            if fam == "unix" and "addr" not in fields:
                return True
        return False
    if op == "capable":
        return "capname" not in fields
    if op == "signal":
        return "signal" not in fields or "peer" not in fields
    if op == "ptrace":
        return "peer" not in fields
    if "signal" in fields and "peer" not in fields:
        return True
    if op in _FILE_OPS and mode in ("DENIED", "ALLOWED", "AUDIT"):
        return "denied_mask" not in fields or "ouid" not in fields
    return False


class _Msg:
    """Result of reading one message: the record (or None) and how it was framed."""

    __slots__ = ("headerless", "open", "rec")

    def __init__(self, rec: Record | None, open_: bool, headerless: bool) -> None:
        self.rec = rec
        self.open = open_              # record looks unfinished (split/truncated)
        self.headerless = headerless   # apparmor= found after text that is no known header


def _parse_message(msg: str, pfx: _Pfx | None, jmeta: dict[str, Any] | None = None) -> _Msg:
    """Parse the message part of a line (after any syslog/dmesg prefix)."""
    typ: str | None = None
    node = stamp = sec = serial = None
    hdr_at = 0
    m = _AUDITD_RE.match(msg)
    if m is not None:
        hdr = "auditd"
        typ, node = m.group("type"), m.group("node")
    else:
        m = _KHDR_RE.match(msg)
        if m is not None:
            hdr = "kernel"
        else:
            m2 = _JAUDIT_RE.match(msg)
            if m2 is not None:
                hdr = "jaudit"
                typ = m2.group("type")
                rest = msg[m2.end():]
            elif msg.startswith("apparmor="):
                hdr = "bare"
                rest = msg
            else:
                i = msg.find("apparmor=")
                if i < 0:
                    return _Msg(None, False, False)
                m = _KHDR_RE.search(msg, 0, i)
                if m is not None:
                    hdr = "kernel"
                else:
                    hdr = "search"
                    rest = msg[i:]
                    hdr_at = i
    if m is not None:
        if typ is None:
            typ = m.group("type")
        stamp, sec, serial = m.group("stamp"), m.group("sec"), m.group("serial")
        rest = msg[m.end():]
        hdr_at = m.start()
    if typ is not None and typ in _USER_TYPES:
        outer: dict[str, str] = {}
        main, _, _enr = rest.partition("\x1d")
        inner_open = _tokens(main, outer)
        body = outer.get("msg")
        if body is None or "apparmor=" not in body:
            return _Msg(None, False, hdr == "search")
        fields: dict[str, str] = {}
        open_ = _tokens(body, fields) or inner_open
        if "apparmor" not in fields or (not fields["apparmor"] and not open_):
            return _Msg(None, False, hdr == "search")
        op = fields.get("operation", "")
        source = "dbus" if (op.startswith("dbus") or "bus" in fields) else "audit"
        mode = fields["apparmor"]
        if open_ and len(fields) == 1:
            mode = _complete_mode(mode)
        if not _MODE_RE.fullmatch(mode):
            return _Msg(None, False, hdr == "search")
    else:
        legacy = None
        if typ is not None and typ not in _AVC_TYPES:
            legacy = _LEGACY_MODES.get(typ)
            if legacy is None and typ.startswith("APPARMOR_"):
                legacy = typ[9:]
            if legacy is None:
                return _Msg(None, False, hdr == "search")
        main, _, enr = rest.partition("\x1d")
        fields = {}
        open_ = _tokens(main, fields)
        if enr:
            _tokens(enr, fields)
        mode_v = fields.get("apparmor", legacy)
        if mode_v is None or (not mode_v and not open_):
            return _Msg(None, False, hdr == "search")
        mode = mode_v
        if open_ and len(fields) == 1:
            mode = _complete_mode(mode)
            if mode == "UNKNOWN" and hdr in ("bare", "search"):
                return _Msg(None, False, hdr == "search")
        if not _MODE_RE.fullmatch(mode):
            return _Msg(None, False, hdr == "search")
        if hdr == "jaudit":
            source = "audit"            # journald's audit transport ("AVC apparmor=...")
        elif hdr in ("bare", "search") and (
                "label" in fields or fields.get("operation", "").startswith("dbus")):
            source = "dbus"
        else:
            source = "kernel"
    if jmeta is not None and jmeta.get("_TRANSPORT") == "audit" and source == "kernel":
        source = "audit"
    open_ = open_ or _incomplete(fields, source)
    flags: frozenset[str] = frozenset()
    if open_:
        if hdr == "auditd" or (hdr == "kernel" and len(msg) - hdr_at >= TRUNC_LEN):
            flags = frozenset({"truncated"})
        else:
            flags = frozenset({"split"})
    rec = Record(source, mode, fields, flags)
    rec.node = node
    if stamp is not None and sec is not None and serial is not None:
        rec.stamp = stamp
        rec.time = float(sec)
        rec.serial = int(serial)
    if pfx is not None:
        rec.host = pfx.host
        if rec.pid is None and pfx.ipid is not None and pfx.ident == "audit":
            rec.pid = int(pfx.ipid)
    if jmeta is not None:
        _apply_json_meta(rec, jmeta)
    elif rec.time is None and pfx is not None:
        rec.time = pfx.time()
        if rec.time is not None and pfx.tsk == "bsd":     # "May 18 16:42:57": no year
            rec.flags = rec.flags | YEAR_GUESSED
    return _Msg(rec, open_, hdr == "search")


def _apply_json_meta(rec: Record, j: dict[str, Any]) -> None:
    def _int(k: str) -> int | None:
        v = j.get(k)
        if isinstance(v, str) and v.isdigit() and len(v) < 20:
            return int(v)
        return None
    rec.host = j.get("_HOSTNAME") if isinstance(j.get("_HOSTNAME"), str) else None
    if rec.pid is None:
        rec.pid = _int("_PID")
    if rec.stamp is None:
        serial = _int("_AUDIT_ID")
        src = _int("_SOURCE_REALTIME_TIMESTAMP")
        if serial is not None and src is not None:
            rec.stamp = f"{src // 1000000}.{src % 1000000 // 1000:03d}:{serial}"
            rec.serial = serial
            rec.time = src / 1e6
        else:
            us = src if src is not None else _int("__REALTIME_TIMESTAMP")
            if us is not None:
                rec.time = us / 1e6
            rec.serial = serial


def _json_message(obj: dict[str, Any]) -> str | None:
    """MESSAGE of a journal entry (rebuilt from _AUDIT_FIELD_* when it is missing)."""
    msg = obj.get("MESSAGE")
    if isinstance(msg, list):           # journalctl prints non-UTF-8 fields as byte arrays
        try:
            msg = bytes(msg).decode("utf-8", "surrogateescape")
        except (ValueError, TypeError):
            return None
    if isinstance(msg, str):
        return msg
    if "_AUDIT_FIELD_APPARMOR" not in obj:
        return None
    parts = []
    for k, v in obj.items():
        if k.startswith("_AUDIT_FIELD_") and isinstance(v, str):
            key = k[13:].lower()
            if key == "name":
                v = f'"{v}"' if '"' not in v and " " not in v else v.encode(
                    "utf-8", "surrogateescape").hex().upper()
            parts.append(f"{key}={v}")
    comm = obj.get("_COMM")
    if isinstance(comm, str) and '"' not in comm:
        parts.append(f'comm="{comm}"')
    typ = obj.get("_AUDIT_TYPE_NAME")
    return "{} {}".format(typ if isinstance(typ, str) else "AVC", " ".join(parts))


# ---------------------------------------------------------------- lines

_KINDS_RING = frozenset({"dmesg", "dmesgT"})
_FRAG_STARTS = ("audit: type=1400", "audit: type=1107", "type=1400 audit(", "type=1107 audit(")


class _Line:
    """One line, classified."""

    __slots__ = ("cont", "kind", "msg", "pfx", "res", "text")

    def __init__(self, kind: str, text: str, pfx: _Pfx | None, msg: str,
                 res: _Msg | None = None) -> None:
        self.kind = kind        # "rec" | "frag" | "notice" | "wrap" | "other" | "blank"
        self.text = text
        self.pfx = pfx
        self.msg = msg
        self.res = res
        self.cont = False       # set by the glue for json lines (never continued)


def _ring(pfx: _Pfx | None) -> bool:
    """Kernel-ring text (dmesg, kern.log, journal kernel transport): records can be split."""
    return pfx is not None and (pfx.kind in _KINDS_RING or pfx.ident == "kernel")


_WRAP_RE = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_-]*=")
_CONT_KEY_RE = re.compile(r"(?:^|\s)[a-z_]+=")


def _analyze(line: str) -> _Line:
    s = line.rstrip("\r\n")
    if not s.strip():
        return _Line("blank", s, None, s)
    if s[:1] == "{":
        return _analyze_json(s)
    pfx, pos = _split_prefix(s)
    msg = s[pos:] if pos else s
    if "apparmor=" in msg or "type=APPARMOR" in msg or "type=15" in msg:
        res = _parse_message(msg, pfx)
        if res.rec is not None:
            return _Line("rec", s, pfx, msg, res)
    note = notices(s)
    if note is not None:
        return _Line("notice", s, pfx, msg)
    if msg.startswith(_FRAG_STARTS):
        hm = _KHDR_RE.match(msg)
        after = msg[hm.end():] if hm is not None else ""
        if hm is None or after == "" or "apparmor=".startswith(after) or (
                hm.group("type") == "1107" and "apparmor=" not in after
                and "avc:" not in after):
            return _Line("frag", s, pfx, msg)
    if pfx is None and _WRAP_RE.match(s) is not None:
        return _Line("wrap", s, None, s)
    return _Line("other", s, pfx, msg)


def _analyze_json(s: str) -> _Line:
    if "apparmor=" not in s and "_AUDIT_FIELD_APPARMOR" not in s:
        note = notices(s)
        return _Line("notice" if note else "other", s, None, s)
    import json
    try:
        obj = json.loads(s)
    except (ValueError, RecursionError):
        return _Line("other", s, None, s)
    if not isinstance(obj, dict):
        return _Line("other", s, None, s)
    msg = _json_message(obj)
    if msg is None:
        return _Line("other", s, None, s)
    p = _Pfx()
    p.kind = "json"
    tr = obj.get("_TRANSPORT")
    p.ident = tr if isinstance(tr, str) else None
    res = _parse_message(msg, p, obj)
    if res.rec is None:
        return _Line("other", s, None, s)
    ln = _Line("rec", s, p, msg, res)
    ln.cont = True
    return ln


def parse_line(line: str) -> Record | None:
    """Parse one log line; None when it holds no AppArmor record.

    A record that ends early is returned with what is there and flagged
    ``split`` (or ``truncated`` when it ran into the printk limit)."""
    try:
        ln = _analyze(line)
    except (ValueError, OverflowError, RecursionError):
        return None
    if ln.kind == "rec" and ln.res is not None:
        return ln.res.rec
    return None


# ---------------------------------------------------------------- notices

NOTICE_KINDS = ("callbacks suppressed", "rate limit", "audit_lost", "backlog limit",
                "journal missed", "journal suppressed", "imjournal lost", "auditd queue full")

_NOTICE_TESTS: tuple[tuple[str, str, str], ...] = (
    ("callbacks suppressed", "", "callbacks suppressed"),
    ("rate limit exceeded", "", "rate limit"),
    ("audit_lost=", "", "audit_lost"),
    ("backlog limit exceeded", "", "backlog limit"),
    ("Missed ", " kernel messages", "journal missed"),
    ("Suppressed ", " messages from ", "journal suppressed"),
    ("imjournal", " lost", "imjournal lost"),
    ("op=queue-full", "", "auditd queue full"),
)


def notices(line: str) -> str | None:
    """Kind of a "records were lost" notice in this line, else None.

    Kinds: "callbacks suppressed" (kauditd_printk_skb/printk rate limit),
    "rate limit" (audit: rate limit exceeded), "audit_lost", "backlog limit",
    "journal missed" (systemd-journald: Missed N kernel messages), "journal
    suppressed", "imjournal lost" (rsyslog), "auditd queue full"."""
    if "apparmor=" in line:
        return None
    for a, b, kind in _NOTICE_TESTS:
        if a in line and (not b or b in line):
            return kind
    return None


# ---------------------------------------------------------------- gluing split records


class _Pending:
    __slots__ = ("frag", "glued", "line", "lineno", "msg", "notice", "open", "pfx", "rec",
                 "wrap_open")

    def __init__(self, ln: _Line, lineno: int) -> None:
        self.line = ln
        self.lineno = lineno
        self.pfx = ln.pfx
        self.msg = ln.msg
        self.frag = ln.kind == "frag"
        self.rec = ln.res.rec if ln.res is not None else None
        self.open = True if self.frag else (ln.res.open if ln.res is not None else False)
        self.glued = False
        self.notice = False
        self.wrap_open = ln.msg.rstrip().endswith("\\")


_PARTIAL_HDR_RE = re.compile(r"(?:audit: )?type=(1400|1107)(?: audit\((\d+(?:\.\d+)?):(\d+\)?)?)?")


def _frag_record(p: _Pending) -> Record | None:
    """A kernel record cut before or inside "apparmor=" whose rest never showed up.

    Nothing says which mode or profile it had, but its type (1400/1107, the
    AppArmor types on an AppArmor host) and as much of its stamp as survived
    are kept: mode "UNKNOWN", flagged split."""
    msg = p.msg
    m = _KHDR_RE.match(msg)
    if m is not None:
        typ = m.group("type")
        after = msg[m.end():]
        if typ == "1107":
            inner = after.partition("msg='")[2] if "msg='" in after else ""
            if inner and not "apparmor=".startswith(inner):
                return None
        elif typ != "1400" or (after and not "apparmor=".startswith(after)):
            return None
        sec, serial, stamp = m.group("sec"), m.group("serial"), m.group("stamp")
    else:
        pm = _PARTIAL_HDR_RE.match(msg)
        if pm is None or pm.end() != len(msg.rstrip()):
            return None
        typ = pm.group(1)
        sec = pm.group(2)
        serial = stamp = None
        if pm.group(3) and pm.group(3).endswith(")"):
            serial = pm.group(3)[:-1]
            stamp = f"{sec}:{serial}"
    rec = Record("dbus" if typ == "1107" else "kernel", "UNKNOWN", {}, frozenset({"split"}))
    if sec is not None:
        rec.time = float(sec)
    if serial is not None:
        rec.serial = int(serial)
        rec.stamp = stamp
    rec.lineno = p.lineno
    if p.pfx is not None:
        rec.host = p.pfx.host
    return rec


class Glue:
    """Line-by-line record reader that glues continuation lines to their record.

    ``feed(line)`` returns the records completed so far, ``flush()`` the last
    one.  Continuations it recognises: the rest of a kernel-ring record printed
    on a later line with the same kind of prefix, after at most one rate-limit
    notice; and lines wrapped by hand (no prefix, starting with ``key=``) after a
    record that is unfinished or ends with a backslash."""

    def __init__(self) -> None:
        self.pending: _Pending | None = None
        self.lineno = 0

    def _finish(self) -> Record | None:
        p = self.pending
        self.pending = None
        if p is None:
            return None
        if p.rec is None:
            return _frag_record(p) if p.frag else None
        rec = p.rec
        rec.lineno = p.lineno
        if p.glued and "split" not in rec.flags:
            rec.flags = rec.flags | {"split"}
        return rec

    def _continues(self, p: _Pending, ln: _Line) -> str | None:
        """The joiner ("" or " ") when `ln` continues `p`, else None."""
        if ln.kind == "wrap" or (ln.kind == "rec" and ln.pfx is None and ln.res is not None
                                 and ln.res.headerless and (p.open or p.wrap_open)
                                 and not ln.text.lstrip().startswith("apparmor=")):
            if p.open or p.wrap_open:
                return " "
            return None
        if not _ring(p.pfx) or ln.pfx is None or p.pfx is None or ln.pfx.key() != p.pfx.key():
            return None
        if ln.kind == "other":
            if not (p.open or p.notice) or len(p.msg) >= TRUNC_LEN:
                return None
            t = ln.msg
            if t.startswith(("audit:", "type=")) or _KHDR_RE.match(t) is not None:
                return None
            if _CONT_KEY_RE.search(t) is not None or (p.open and '"' in t[:200]):
                return ""
            return None
        if ln.kind == "rec" and p.frag and ln.res is not None and (
                ln.res.headerless or ln.msg.startswith("apparmor=")):
            return ""
        return None

    def _glue(self, p: _Pending, ln: _Line, joiner: str) -> None:
        if joiner:
            head = p.msg.rstrip()
            if head.endswith("\\"):
                head = head[:-1].rstrip()
            msg = head + " " + ln.text.strip()
        else:
            msg = p.msg + ln.msg
        res = _parse_message(msg, p.pfx)
        p.msg = msg
        p.glued = True
        p.notice = False
        p.wrap_open = ln.text.rstrip().endswith("\\")
        if res.rec is not None:
            p.rec = res.rec
            p.frag = False
            p.open = res.open
        else:
            p.open = True

    def feed(self, line: str) -> list[Record]:
        out: list[Record] = []
        self.lineno += 1
        p = self.pending
        if p is None and "apparmor=" not in line and "type=1" not in line \
                and "_AUDIT_FIELD_APPARMOR" not in line and "type=APPARMOR" not in line:
            return out                  # fast path: nothing to start, nothing to continue
        try:
            ln = _analyze(line)
        except (ValueError, OverflowError, RecursionError):
            ln = _Line("other", line, None, line)
        if p is not None:
            if ln.kind == "notice" and not p.notice and _ring(p.pfx):
                p.notice = True
                return out
            j = self._continues(p, ln)
            if j is not None:
                self._glue(p, ln, j)
                if not p.open and not p.wrap_open and not _ring(p.pfx):
                    r = self._finish()
                    if r is not None:
                        out.append(r)
                return out
            r = self._finish()
            if r is not None:
                out.append(r)
        if ln.kind == "rec" and ln.res is not None:
            if ln.cont or (not _ring(ln.pfx) and not ln.res.open
                           and not ln.msg.rstrip().endswith("\\")):
                if ln.res.rec is not None:
                    ln.res.rec.lineno = self.lineno
                    out.append(ln.res.rec)
            else:
                self.pending = _Pending(ln, self.lineno)
        elif ln.kind == "frag":
            self.pending = _Pending(ln, self.lineno)
        return out

    def flush(self) -> list[Record]:
        r = self._finish()
        return [r] if r is not None else []


def iter_records(lines: Iterable[str]) -> Iterator[Record]:
    """The AppArmor records of `lines`, in order, continuation lines glued back.

    A record whose rest was printed on a later line (kernel rate limiting) or
    wrapped by hand is returned once, flagged ``split``; one that ends early
    and has no continuation is returned as it is, flagged ``split`` or
    ``truncated``."""
    g = Glue()
    feed = g.feed
    for line in lines:
        yield from feed(line)
    yield from g.flush()


def iter_file(path: str, on_line: Callable[[str], None] | None = None) -> Iterator[Record]:
    """`iter_records` over a file read as UTF-8 with surrogateescape."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        if on_line is None:
            yield from iter_records(f)
        else:
            def _tap() -> Iterator[str]:
                for line in f:
                    on_line(line)
                    yield line
            yield from iter_records(_tap())
