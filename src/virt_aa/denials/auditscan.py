"""The auditd fast path of the scanner: raw-key counting of ``type=AVC`` lines.

A raw key is a record's text from ``apparmor="`` to `` pid=`` (less a
``parent=N`` right after the operation) plus its text after ``comm=X`` up to
`` fsuid=``: records that differ only in pid, parent, comm, fsuid/ouid or
stamp share it.  The C counter (`_avcscan.c`) counts them per record; without
it, C-level bytes operations over the whole chunk do the same.  Each distinct
raw key is decoded once (`_Audit.flush`): see the module `scan` for the whole.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import accumulate, compress, islice, repeat
from operator import itemgetter
from typing import Any, NamedTuple

from virt_aa.denials.groups import _Acc
from virt_aa.denials.parse import _MODE_RE, _tokens, notices, parse_line, resource_of
from virt_aa.denials.rawkeys import _HEX_B, _dbus_record, _split, _unsplit

TEMPLATES = 65_536          # record templates numbered before the numbering restarts (as in C)


class Limits(NamedTuple):
    """When an `_Audit` decodes its raw keys (the module `scan` owns the values)."""

    flush: int              # distinct raw keys kept before decoding them (C counter)
    raw_bytes: int          # ... and bytes held in them
    batch: int              # raw keys decoded at a time
    flush_py: int           # the pure-Python path's `flush`



_G0, _G1, _G2, _GL = itemgetter(0), itemgetter(1), itemgetter(2), itemgetter(-1)
_PROBE = "\0probe"          # a name no record has: what a template does with the name
_MODES = frozenset({"DENIED", "ALLOWED", "AUDIT", "STATUS", "HINT", "ERROR", "KILL"})
# fields of a record's head that neither `resource_of` nor the masks read
_INERT = frozenset({"apparmor", "operation", "class", "info", "error", "profile", "label"})
# `MODE" operation="OP" parent=N`: the parent's pid varies like the pid (raw keys drop it)
_PARENT_RE = re.compile(rb'^([A-Z]+" operation="[a-z_]+") parent=[0-9]+(?= )')
_WIN = slice(-36, None)     # the bytes before apparmor=": "...audit(EPOCH.mmm:SERIAL): "
_WINLEN = 36
_DIGITS = b"0123456789"
_SEP = b'apparmor="'
_NSEP = len(_SEP)


def _masks(f: dict[str, str]) -> tuple[str | None, str | None]:
    """(requested, denied) in either kernel spelling: *_mask= (older) or plain (newer)."""
    req = f.get("requested_mask")
    den = f.get("denied_mask")
    return (f.get("requested") if req is None else req,
            f.get("denied") if den is None else den)


def _count_lines(b: bytes) -> int:
    """Newlines in b (bytes.find is memchr; bytes.count(b"\\n") is a byte loop, 3x slower)."""
    n = -1
    i = -1
    f = b.find
    while True:
        i = f(b"\n", i + 1)
        n += 1
        if i < 0:
            return n


def _finds(c: bytes, needle: bytes) -> Iterator[int]:
    i = c.find(needle)
    while i >= 0:
        yield i
        i = c.find(needle, i + len(needle))


def _stamp_time(win: bytes) -> float | None:
    """Epoch of the audit(EPOCH:SERIAL) stamp at the end of `win` (None unless it is the
    parser's SECONDS[.FRAC]:SERIAL): ``float`` alone would take "1_0.5" or "17e8")."""
    m = _STAMP_RE.fullmatch(win.rpartition(b"audit(")[2])
    return float(m.group(1)) if m is not None else None


# the parser's auditd header, at most HDR bytes (the C counter's `header`)
_HDR_RE = re.compile(rb"(?=.{0,256}\Z)(?:node=[^ \t-\r\x1c-\x1f]+ )?type=(?:[0-9]+|[A-Z_]+) "
                     rb"msg=audit\([0-9]+(?:\.[0-9]+)?:[0-9]+\): ", re.S)
_STAMP_RE = re.compile(rb"([0-9]+(?:\.[0-9]+)?)(?::[0-9]+\): )?")   # dbus: seconds alone


class _Audit:
    """Raw-key counting for the auditd path.

    A raw key is the record's text from ``apparmor="`` to `` pid=`` (without
    a ``parent=N`` right after the operation) followed by its text after
    ``comm=X`` up to `` fsuid=`` (kept as a marker), so records differing only
    in pid, parent, comm, fsuid/ouid or stamp share it."""

    def __init__(self, acc: _Acc, limits: Limits, fast: bool | None = None) -> None:
        self.acc = acc
        self.limits = limits
        self.table: Any = None          # the C counter (_avcscan.Table), when built
        if fast is not False:
            try:
                from virt_aa.denials import _avcscan
            except ImportError:
                if fast:
                    raise
            else:
                self.table = _avcscan.Table(os.urandom(8))
        self.cnt: Counter[bytes] = Counter()
        self.first: dict[bytes, bytes] = {}
        self.last: dict[bytes, bytes] = {}
        self.dcnt: Counter[bytes] = Counter()      # dbus USER_AVC raw keys
        self.dfirst: dict[bytes, bytes] = {}
        self.dlast: dict[bytes, bytes] = {}
        self.pre_cache: dict[bytes, tuple[dict[str, str], bool]] = {}
        self.tpls: list[tuple[Any, ...]] = []   # decoded templates, by number
        self.tids: dict[bytes, int] = {}        # the pure-Python path's numbering
        self.rest_cache: dict[bytes, tuple[dict[str, str], bool]] = {}
        self.heads: dict[bytes, tuple[Any, ...]] = {}               # `_plain_head`
        self.dbus_fast = True           # `_dbus_record` first (the tests compare without)
        self.rests: dict[tuple[str, bytes], tuple[Any, ...]] = {}   # `_plain_rest`

    def chunk(self, c: bytes | bytearray, end: int | None = None) -> None:
        """Count the records of c[:end], whole lines (the last one may lack its newline)."""
        acc = self.acc
        table = self.table
        if end is None:
            end = len(c)
        if table is not None:
            with memoryview(c) as whole, whole[:end] as view:
                lines, bad, qf = table.feed(view)
            if end and c[end - 1] != 10:
                lines += 1
            acc.lines += lines
            if qf:
                self._notices(c, qf, end)
            if bad:
                self._fallback(c, bad, end)
            lim = self.limits
            if (len(table) > lim.flush or table.kbytes > lim.raw_bytes
                    or table.dbus_len > lim.flush):
                self.flush()
            return
        self._chunk_py(bytes(c[:end]) if end != len(c) or not isinstance(c, bytes) else c)

    def _chunk_py(self, c: bytes) -> None:
        """`chunk` without the C counter: bytes operations over the whole chunk at a time."""
        acc = self.acc
        if c[-1:] != b"\n":
            c += b"\n"
        acc.lines += _count_lines(c)
        if b"queue-full" in c:
            self._notices(c, _finds(c, b"queue-full"), len(c))
        pieces = c.split(_SEP)
        n = len(pieces) - 1
        if n <= 0:
            return
        part = bytes.partition
        # the bytes before each apparmor=" on its line (at most 36: the audit(...) stamp)
        wins: list[bytes] = list(map(_G2, map(bytes.rpartition, map(
            bytes.__getitem__, pieces, repeat(_WIN)), repeat(b"\n"))))
        wins.pop()
        ok = list(map(bytes.endswith, wins, repeat(b"): ")))
        hp = list(map(part, map(_G0, map(part, pieces[1:], repeat(b"\n"))), repeat(b" pid=")))
        t2 = list(map(bytes.lstrip, map(_G2, hp), repeat(_DIGITS)))
        ok2 = list(map(bytes.startswith, t2, repeat(b" comm=")))
        # " comm=X REST" -> REST ("comm=X" itself when nothing follows: only adds raw keys)
        rp = list(map(part, map(_GL, map(bytes.split, t2, repeat(b" "), repeat(2))),
                      repeat(b" fsuid=")))
        # head + " pid=" + rest-after-comm (+ " fsuid=" marker when there was one)
        keys = list(map(bytes.__add__, map(bytes.__add__, map(_G0, hp), map(_G1, hp)),
                        map(bytes.__add__, map(_G0, rp), map(_G1, rp))))
        if b" parent=" in c:
            has = list(map(bytes.__contains__, keys, repeat(b" parent=")))
            if any(has):
                keys = [_PARENT_RE.sub(rb"\1", k, 1) if h else k
                        for k, h in zip(keys, has, strict=True)]
        # only a line's first apparmor=" starts a record (a later one is text in it)
        lead = [True, *map(bytes.__contains__, pieces[1:-1], repeat(b"\n"))]
        if not all(lead):
            ok = list(map(min, ok, lead))
        # ... and only after exactly the parser's auditd header (else the parser decides)
        hdr = [bool(h) for h in map(_HDR_RE.fullmatch, map(_G2, map(
            bytes.rpartition, pieces[:-1], repeat(b"\n"))))]
        if not all(hdr):
            ok = list(map(min, ok, hdr))
        if not all(ok) or not all(ok2):
            okk = list(map(min, ok, ok2))
            keys = list(compress(keys, okk))
            wins = list(compress(wins, okk))
            offs = list(accumulate(map(len, pieces)))
            self._fallback(c, [offs[i] + i * _NSEP for i in compress(range(n), map(
                (1).__sub__, okk)) if lead[i]], len(c))
        cnt = self.cnt
        before = len(cnt)
        cnt.update(keys)
        self.last.update(dict(zip(keys, wins, strict=True)))
        new = len(cnt) - before
        if new:
            first = self.first
            fresh = set(islice(reversed(cnt), new))
            for k, w in zip(keys, wins, strict=True):
                if k in fresh:
                    first[k] = w
                    fresh.discard(k)
                    if not fresh:
                        break
        if len(cnt) > self.limits.flush_py or len(self.dcnt) > self.limits.flush_py:
            self.flush()

    def _fallback(self, c: bytes | bytearray, offsets: list[int], end: int) -> None:
        """Records that are not plain AVC lines (`offsets`: their apparmor=" in c[:end]):
        dbus USER_AVC by raw key, others parsed."""
        seen: set[int] = set()
        acc = self.acc
        dcnt, dfirst, dlast = self.dcnt, self.dfirst, self.dlast
        for off in offsets:
            ls = c.rfind(b"\n", 0, off) + 1
            if ls in seen:
                continue
            seen.add(ls)
            le = c.find(b"\n", off, end)
            if le < 0:
                le = end
            line = bytes(c[ls:le])
            o = off - ls
            pre = line[:o]
            if (pre.endswith(b"msg='") and b"type=USER_AVC msg=audit(" in pre
                    and line.find(_SEP, o + _NSEP) < 0 and b"\x1d" not in pre):
                # the stamp's text, if it is short (a longer one: the parser decides)
                st = pre.rpartition(b"audit(")[2].partition(b":")[0]
                head, sep, tail = line[o + _NSEP:].partition(b" pid=")
                if len(st) <= _WINLEN and sep:          # (cut before its pid: parsed)
                    a, sep2, b = tail.lstrip(_DIGITS).partition(b" peer_pid=")
                    key = head + sep + b"\0" + a + sep2 + b"\0" + b.lstrip(_DIGITS)
                    dcnt[key] += 1
                    if key not in dfirst:
                        dfirst[key] = st
                    dlast[key] = st
                    continue
            rec = parse_line(line.decode("utf-8", "surrogateescape"))
            if rec is not None:
                acc.add(rec)

    def _raw(self) -> Iterator[tuple[list[tuple[Any, str | None, int, float | None,
                                                float | None]], list[bytes], bool]]:
        """Batches of every plain AVC raw key, emptying the counter: (items, the templates
        numbered in the batch, whether the numbering restarted); an item is (template
        number, name, count, first, last) when the name is the usual one (`_split`), else
        (raw key, None, count, first, last)."""
        if self.table is not None:
            take = self.table.take
            batch = self.limits.batch
            while True:                 # in batches: raw keys and groups never peak together
                got = take(batch)
                if not got[0]:
                    return
                yield got
        cnt = self.cnt
        pop_first, pop_last = self.first.pop, self.last.pop
        tids = self.tids
        restart = len(tids) >= TEMPLATES
        if restart:
            tids.clear()
        items: list[tuple[Any, str | None, int, float | None, float | None]] = []
        fresh: list[bytes] = []
        while cnt:
            key, n = cnt.popitem()
            fw = pop_first(key, None)
            lw = pop_last(key, None)
            first = _stamp_time(fw) if fw else None
            last = _stamp_time(lw) if lw else None
            tk, name = _split(key)
            if name is None:
                items.append((key, None, n, first, last))
                continue
            tid = tids.get(tk)
            if tid is None:
                tid = tids[tk] = len(tids)
                fresh.append(tk)
            items.append((tid, name, n, first, last))
        if items:
            yield items, fresh, restart

    def _notices(self, c: bytes | bytearray, offsets: Iterable[int], end: int) -> None:
        """The notices on the lines of `offsets` in c[:end] (each line once)."""
        le = -1
        for i in offsets:
            if i < le:
                continue
            ls = c.rfind(b"\n", 0, i) + 1
            le = c.find(b"\n", i, end)
            if le < 0:
                le = end
            kind = notices(c[ls:le].decode("utf-8", "surrogateescape"))
            if kind is not None:
                self.acc.notices[kind] += 1

    @staticmethod
    def _cached(raw: bytes, cache: dict[bytes, tuple[dict[str, str], bool]],
                lead: str) -> tuple[dict[str, str], bool]:
        got = cache.get(raw)
        if got is None:
            f: dict[str, str] = {}
            got = (f, _tokens(lead + raw.decode("utf-8", "surrogateescape"), f))
            if len(cache) >= 32768:
                cache.clear()
            cache[raw] = got
        return got

    def _head_fields(self, head: bytes) -> tuple[dict[str, str], bool]:
        """Fields of the text before pid=: cached tokens of the part before name=,
        the name decoded directly (it is the last field there)."""
        pre, sep, nm = head.partition(b" name=")
        pf, popen = self._cached(pre, self.pre_cache, 'apparmor="')
        if not sep:
            return pf, popen            # the cached dict: callers do not change it
        f = dict(pf)
        if b" " not in nm and not popen:
            if len(nm) >= 2 and nm[:1] == b'"' and nm[-1:] == b'"' and b'"' not in nm[1:-1]:
                f.setdefault("name", nm[1:-1].decode("utf-8", "surrogateescape"))
                return f, False
            if nm and not len(nm) & 1 and _HEX_B.fullmatch(nm) is not None:
                f.setdefault("name", bytes.fromhex(nm.decode("ascii")).decode(
                    "utf-8", "surrogateescape"))
                return f, False
        f = {}
        return f, _tokens('apparmor="' + head.decode("utf-8", "surrogateescape"), f)

    def _template(self, tk: bytes) -> tuple[Any, ...]:
        """What every record with this text before name= and after comm= (`tk`: the two
        joined by NUL) shares, if the name is what it is about: the group key around the
        name (head, tail: head + (name,) + tail, or head alone when `fold` drops the
        name), cut, kept, and the same for the unfolded key.  Else (None, tk, False,
        None, None, None): each such record is decoded on its own."""
        unusual = (None, tk, False, None, None, None)
        if b"\x1d" in tk:               # ENRICHED's separator inside the record: parsed
            return unusual
        pre, _, rest = tk.partition(b"\0")
        if rest.endswith(b" fsuid="):
            rest = rest[:-7]
        f, popen = self._cached(pre, self.pre_cache, 'apparmor="')
        mode = f.get("apparmor", "")
        if popen or "name" in f or not _MODE_RE.fullmatch(mode):
            return unusual
        f = dict(f)
        f["name"] = _PROBE
        ropen = False
        if rest:
            rf, ropen = self._cached(rest, self.rest_cache, "")
            for k, v in rf.items():
                if k not in f:
                    f[k] = v
        op = f.get("operation")
        if resource_of(f, op, "kernel") != _PROBE:
            return unusual
        req, den = _masks(f)
        i = self.acc._intern
        prof = i(f.get("profile") or f.get("label"))
        raw_head, raw_tail = (prof, mode, i(op)), (i(req), i(den))
        keep, fold = self.acc.keep, self.acc.fold
        if keep is not None and not keep(prof):
            return (None, None, ropen, False, raw_head, raw_tail)
        if fold is None:
            return (raw_head, raw_tail, ropen, True, raw_head, raw_tail)
        fk = fold((prof, mode, raw_head[2], _PROBE, raw_tail[0], raw_tail[1]))
        if fk is None:
            return (None, None, ropen, False, raw_head, raw_tail)
        if _PROBE in fk:                # the caller's key with the name in it
            j = fk.index(_PROBE)
            return (fk[:j], fk[j + 1:], ropen, True, raw_head, raw_tail)
        return (fk, None, ropen, True, raw_head, raw_tail)

    def flush(self) -> None:
        """Decode every distinct raw key once and add its count to the groups."""
        acc = self.acc
        groups = acc.groups
        gget = groups.get
        cap = acc.max_groups
        put = acc.put
        tpls = self.tpls
        records = truncated = filtered = 0
        for items, fresh, restart in self._raw():
            if restart:
                tpls.clear()
            tpls.extend(map(self._template, fresh))
            for tid, name, n, first, last in items:
                if name is None:
                    self._decode(tid, n, first, last)
                    continue
                # the common case: everything but the name is shared with other keys
                head, tail, ropen, kept, raw_head, raw_tail = tpls[tid]
                if not kept:
                    if kept is None:    # not the usual shape: the raw key's own way
                        self._decode(_unsplit(tail, name), n, first, last)
                        continue
                    records += n
                    if ropen:
                        truncated += n
                    filtered += n
                    continue
                records += n
                if ropen:
                    truncated += n
                gk = head if tail is None else head + (name,) + tail
                g = gget(gk)
                if g is None:
                    if len(groups) < cap and acc.room > 0:
                        groups[gk] = [n, first, last]
                        acc.room -= len(name)
                    else:
                        put(raw_head + (name,) + raw_tail, n, first, last)
                    continue
                g[0] += n               # _widen, inline: the loop runs per raw key
                if first is not None and (g[1] is None or first < g[1]):
                    g[1] = first
                if last is not None and (g[2] is None or last > g[2]):
                    g[2] = last
        acc.records += records
        acc.truncated += truncated
        acc.filtered += filtered
        self._dbus()

    def _decode(self, key: bytes, n: int, first: float | None, last: float | None) -> None:
        """A raw key whose name is not the usual one (most have none: signals, sockets,
        capabilities): from what its head and its rest say, each decoded once (`_plain`),
        else from its fields, or the full parser."""
        acc = self.acc
        head, _, rest = key.partition(b" pid=")
        h = self.heads.get(head)
        if h is None:
            h = self._plain_head(head)
        if h:
            prof, mode, op, kept = h
            r = self.rests.get((op, rest))
            if r is None:
                r = self._plain_rest(op, rest)
            if r:
                res, req, den, ropen = r
                acc.records += n
                if ropen:
                    acc.truncated += n
                if kept:
                    acc.put((prof, mode, op, res, req, den), n, first, last)
                else:
                    acc.filtered += n
                return
        marker = rest.endswith(b" fsuid=")
        if marker:
            rest = rest[:-7]
        f, hopen = self._head_fields(head)
        if rest:
            rf, ropen = self._cached(rest, self.rest_cache, "")
            f = {**rf, **f}             # the head's fields win, as in the record
        else:
            ropen = False
        mode = f.get("apparmor", "")
        if hopen or (mode not in _MODES and not _MODE_RE.fullmatch(mode)) or b"\x1d" in key:
            # not the usual shape: let the full parser decide
            text = 'type=AVC msg=audit(0.000:0): apparmor="{} pid=0 comm="?" {}{}'.format(
                head.decode("utf-8", "surrogateescape"),
                rest.decode("utf-8", "surrogateescape"), " fsuid=0 ouid=0" if marker else "")
            rec = parse_line(text)
            if rec is not None:
                acc.add(rec, n, first, last, stamped=True)
            return
        # what acc.add(Record(...)) would do, without the Record
        acc.records += n
        if ropen:
            acc.truncated += n
        prof = f.get("profile") or f.get("label")
        if acc.keep is not None and not acc.keep(prof):
            acc.filtered += n
            return
        op = f.get("operation")
        req, den = _masks(f)
        acc.put((prof, mode, op, resource_of(f, op, "kernel"), req, den), n, first, last)

    def _plain_head(self, head: bytes) -> tuple[Any, ...]:
        """(profile, mode, operation, kept) of the text before pid= when it names only what
        never enters the resource or the masks (else empty: `_decode` takes the long way)."""
        got: tuple[Any, ...] = ()
        if b"\x1d" not in head and b" name=" not in head:
            f, hopen = self._cached(head, self.pre_cache, 'apparmor="')
            mode = f.get("apparmor", "")
            prof = f.get("profile")
            op = f.get("operation")
            if (not hopen and prof and op is not None and f.keys() <= _INERT
                    and (mode in _MODES or _MODE_RE.fullmatch(mode))):
                i = self.acc._intern
                keep = self.acc.keep
                got = (i(prof), mode, i(op), keep is None or bool(keep(prof)))
        if len(self.heads) >= 32768:
            self.heads.clear()
        self.heads[head] = got
        return got

    def _plain_rest(self, op: str, rest: bytes) -> tuple[Any, ...]:
        """(resource, requested, denied, cut) of the text after comm= for `op`, when the
        head names nothing it depends on (`_plain_head`); empty when it holds ENRICHED's
        separator (the full parser decides)."""
        got: tuple[Any, ...] = ()
        if b"\x1d" not in rest:
            body = rest[:-7] if rest.endswith(b" fsuid=") else rest
            rf, ropen = self._cached(body, self.rest_cache, "") if body else ({}, False)
            i = self.acc._intern
            req, den = _masks(rf)
            got = (resource_of(rf, op, "kernel"), i(req), i(den), ropen)
        if len(self.rests) >= 32768:
            self.rests.clear()
        self.rests[op, rest] = got
        return got

    def _dbus_raw(self) -> Iterator[tuple[bytes, int, float | None, float | None]]:
        """(raw key, count, first, last) of the dbus USER_AVC records, oldest key first."""
        if self.table is not None:
            yield from self.table.take_dbus()
        first, last = self.dfirst, self.dlast
        for key, n in self.dcnt.items():
            fw = first.get(key)
            lw = last.get(key)
            yield key, n, _stamp_time(fw) if fw else None, _stamp_time(lw) if lw else None

    def _dbus(self) -> None:
        acc = self.acc
        fast = self.dbus_fast
        for key, n, first, last in self._dbus_raw():
            head, _, rest = key.partition(b"\0")
            mid, _, tail = rest.partition(b"\0")
            if fast:
                rec = _dbus_record(head, mid, tail)
                if rec is not None:
                    acc.add(rec, n, first, last, stamped=True)
                    continue
            text = "".join((
                "type=USER_AVC msg=audit(0.000:0): pid=0 uid=0 msg='apparmor=\"",
                head.decode("utf-8", "surrogateescape"), "0",
                mid.decode("utf-8", "surrogateescape"),
                "0" if mid.endswith(b" peer_pid=") else "",
                tail.decode("utf-8", "surrogateescape")))
            rec = parse_line(text)
            if rec is not None:
                acc.add(rec, n, first, last, stamped=True)
        self.cnt = Counter()
        self.first = {}
        self.last = {}
        self.dcnt = Counter()
        self.dfirst = {}
        self.dlast = {}
