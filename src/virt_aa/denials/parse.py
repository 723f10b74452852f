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
needed.  The pieces: :mod:`virt_aa.denials.record` (the record and its
key=value tokenizer), :mod:`virt_aa.denials.lines` (prefixes, headers, one
message, notices) and, here, `parse_line` and the glue that re-joins split
records.  Every name other modules use is importable from here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

from virt_aa.denials.lines import (
    _CONT_KEY_RE,
    _KHDR_RE,
    TRUNC_LEN,
    _analyze,
    _Line,
    _parse_message,
    _ring,
    notices,
)
from virt_aa.denials.lines import _MODE_RE as _MODE_RE
from virt_aa.denials.lines import NOTICE_KINDS as NOTICE_KINDS
from virt_aa.denials.record import YEAR_GUESSED as YEAR_GUESSED
from virt_aa.denials.record import Record, resource_of
from virt_aa.denials.record import _tokens as _tokens

__all__ = ["NOTICE_KINDS", "Glue", "Record", "iter_file", "iter_records", "notices", "parse_line",
           "resource_of"]


# ---------------------------------------------------------------- one line


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
