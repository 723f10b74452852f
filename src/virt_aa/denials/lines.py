"""One log line: its prefix, its audit header, its message read into a `Record`.

The shapes are listed in :mod:`virt_aa.denials.parse`.  A line is split into
a syslog/journal/dmesg prefix (`_Pfx`) and a message; the message's header
(auditd ``type=... msg=audit(...)``, the kernel's ``audit: type=1400
audit(...)``, journald's ``AVC ...``) says how to read the key=value body;
`_analyze` classifies the line (record, fragment, rate-limit notice, wrapped
continuation) for the glue in :mod:`virt_aa.denials.parse`.  Nothing here
raises on bad input.
"""

from __future__ import annotations

import re
from typing import Any

from virt_aa.denials.record import YEAR_GUESSED, Record, _tokens

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


_Body = tuple[dict[str, str], bool, str, str]    # fields, open, source, mode


def _user_body(rest: str) -> _Body | None:
    """A USER_AVC (1107) record: the AppArmor fields sit inside its ``msg='...'``."""
    outer: dict[str, str] = {}
    main, _, _enr = rest.partition("\x1d")
    inner_open = _tokens(main, outer)
    body = outer.get("msg")
    if body is None or "apparmor=" not in body:
        return None
    fields: dict[str, str] = {}
    open_ = _tokens(body, fields) or inner_open
    if "apparmor" not in fields or (not fields["apparmor"] and not open_):
        return None
    op = fields.get("operation", "")
    source = "dbus" if (op.startswith("dbus") or "bus" in fields) else "audit"
    mode = fields["apparmor"]
    if open_ and len(fields) == 1:
        mode = _complete_mode(mode)
    if not _MODE_RE.fullmatch(mode):
        return None
    return fields, open_, source, mode


def _kernel_body(rest: str, typ: str | None, hdr: str) -> _Body | None:
    """A kernel record (AVC/1400, or a pre-2.6.36 APPARMOR_* / 150x type)."""
    legacy = None
    if typ is not None and typ not in _AVC_TYPES:
        legacy = _LEGACY_MODES.get(typ)
        if legacy is None and typ.startswith("APPARMOR_"):
            legacy = typ[9:]
        if legacy is None:
            return None
    main, _, enr = rest.partition("\x1d")
    fields: dict[str, str] = {}
    open_ = _tokens(main, fields)
    if enr:
        _tokens(enr, fields)
    mode = fields.get("apparmor", legacy)
    if mode is None or (not mode and not open_):
        return None
    if open_ and len(fields) == 1:
        mode = _complete_mode(mode)
        if mode == "UNKNOWN" and hdr in ("bare", "search"):
            return None
    if not _MODE_RE.fullmatch(mode):
        return None
    if hdr == "jaudit":
        source = "audit"            # journald's audit transport ("AVC apparmor=...")
    elif hdr in ("bare", "search") and (
            "label" in fields or fields.get("operation", "").startswith("dbus")):
        source = "dbus"
    else:
        source = "kernel"
    return fields, open_, source, mode


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
    body = (_user_body(rest) if typ is not None and typ in _USER_TYPES
            else _kernel_body(rest, typ, hdr))
    if body is None:
        return _Msg(None, False, hdr == "search")
    fields, open_, source, mode = body
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
