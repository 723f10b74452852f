"""Group the AppArmor records of a big log file, with bounded memory.

`group_file` splits the file into byte ranges that start at line starts, one
per worker process (fork; this process scans the first range itself), and
reads each range in chunks of 8 MB into one reused buffer (the file is never
mapped: mapped pages would count as resident memory).
Groups are keyed the caller's way (`fold`) as they are made; workers stream
theirs back through a pipe in batches, and this process merges them.

Two ways through a chunk:

* auditd logs (``type=... msg=audit(...)`` lines): every ``apparmor="`` is
  found, and a plain AVC record is counted under its raw key: its text
  before `` pid=`` (less a ``parent=N`` right after the operation) plus its
  text after ``comm=X`` up to `` fsuid=`` (pid, parent, comm, fsuid/ouid, the
  ENRICHED suffix and the stamp vary within a group).  The C counter
  (`_avcscan.c`) does this per record; without it, C-level bytes operations
  over the whole chunk do the same (the tests require identical results).
  Each distinct raw key is then decoded once: keys that differ only in the
  name share a cached template (profile, mode, operation, masks), others go
  through the parser's tokenizer (unusual ones through `parse_line`), which
  gives the same groups as parsing every record (the tests check this).  dbus
  USER_AVC lines get raw keys of their own (pid and peer_pid removed; counted
  in C too); anything else on such a line goes through `parse_line`.
* every other log (kern.log, syslog, dmesg, journalctl): line by line through
  `Glue` (full parse of every record), which also re-joins split records.

Groups are keyed by (profile, mode, operation, resource, requested, denied);
each holds a count and the first/last time seen.  In the auditd path "first"
and "last" are the stamps of the first and last occurrence in file order
(auditd writes in time order); in the line path they are the minimum and the
maximum.  At most `MAX_GROUPS` groups are kept: past that, records of new
groups are counted in one group per (profile, mode, operation) and in
``overflow``, so memory stays bounded whatever the size of the file.

Speed (1.49 GB audit.log, 1.48 M records, 149 k groups, 2 workers, C
counter): about 2.4 CPU-seconds, 2.6-2.9x ``grep -c`` on two cores
(``bench/denials_speed.py``).  Peak RSS about 100 MiB per process.
`virt-aa denials --json` of such a file goes further on two cores:
`denials/pair.py`.
"""

from __future__ import annotations

import gc
import os
import pickle
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import accumulate, compress, islice, repeat
from operator import itemgetter
from typing import Any

from virt_aa.denials.parse import (
    _MODE_RE,
    NOTICE_KINDS,
    Glue,
    Record,
    _tokens,
    notices,
    parse_line,
    resource_of,
)

__all__ = ["Group", "GroupKey", "ScanResult", "group_file", "group_lines"]

GroupKey = tuple[str | None, str, str | None, str | None, str | None, str | None]
Keep = Callable[[str | None], bool]     # which profiles (or labels) to group
Fold = Callable[[GroupKey], "tuple[Any, ...] | None"]   # a caller's own grouping (or drop)

CHUNK = 8 << 20             # bytes read per step
MAX_LINE = 16 << 20         # a longer line is cut there (and counted in ``long_lines``)
MAX_GROUPS = 150_000        # beyond this, new groups are folded into one per profile/mode/op
MAX_GROUP_BYTES = 32 << 20  # ... and beyond this many bytes of resource names
RAW_FLUSH = 150_000         # distinct raw keys kept by an auditd worker before decoding them
RAW_BYTES = 32 << 20        # ... and bytes held in them
RAW_BATCH = 20_000          # raw keys decoded at a time
RAW_FLUSH_PY = 100_000      # the pure-Python path's RAW_FLUSH (its keys cost more memory)
TEMPLATES = 65_536          # decoded record templates kept (small tuples)


class Group:
    """All records with the same (profile, mode, operation, resource, requested, denied)."""

    __slots__ = ("count", "denied", "first", "last", "mode", "operation", "profile", "requested",
                 "resource")

    def __init__(self, key: GroupKey, count: int, first: float | None,
                 last: float | None) -> None:
        (self.profile, self.mode, self.operation, self.resource, self.requested,
         self.denied) = key
        self.count = count
        self.first = first
        self.last = last

    @property
    def key(self) -> GroupKey:
        return (self.profile, self.mode, self.operation, self.resource, self.requested,
                self.denied)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in Group.__slots__}

    def __repr__(self) -> str:
        return f"Group({self.key!r} x{self.count})"


class ScanResult:
    """What `group_file` found.

    `raw` maps each group key to [count, first, last]; `groups` gives them as
    `Group` objects (made on first use: a caller with 100k groups may not need
    them)."""

    __slots__ = ("_groups", "bytes", "elapsed", "filtered", "lines", "long_lines", "method",
                 "non_apparmor_lines", "notices", "overflow", "raw", "records", "split",
                 "truncated", "workers")

    def __init__(self) -> None:
        self.raw: dict[GroupKey, list[Any]] = {}
        self._groups: dict[GroupKey, Group] | None = None
        self.records = 0                # AppArmor records seen (before `keep`)
        self.lines = 0
        self.non_apparmor_lines = 0
        self.split = 0                  # records flagged split
        self.truncated = 0              # records flagged truncated
        self.notices: dict[str, int] = {}
        self.filtered = 0               # records of profiles `keep` turned down
        self.overflow = 0               # records folded because of the group cap
        self.long_lines = 0
        self.bytes = 0
        self.workers = 0
        self.method = ""                # "auditd" (raw-key path) or "lines"
        self.elapsed = 0.0

    @property
    def groups(self) -> dict[GroupKey, Group]:
        if self._groups is None:
            self._groups = {k: Group(k, v[0], v[1], v[2]) for k, v in self.raw.items()}
        return self._groups

    def sorted_groups(self) -> list[Group]:
        return sorted(self.groups.values(), key=lambda g: (-g.count, str(g.key)))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in ScanResult.__slots__
                             if k not in ("_groups", "raw")}
        d["groups"] = [g.to_dict() for g in self.sorted_groups()]
        return d


# ---------------------------------------------------------------- accumulation


class _Acc:
    """Per-process accumulator: groups plus counters."""

    def __init__(self, keep: Keep | None, max_groups: int, fold: Fold | None = None) -> None:
        self.keep = keep
        self.fold = fold
        self.max_groups = max_groups
        self.room = MAX_GROUP_BYTES     # bytes of resource names new groups may still add
        self.groups: dict[Any, list[Any]] = {}     # GroupKey, or what `fold` makes of it
        self.interned: dict[str, str] = {}
        self.records = 0
        self.lines = 0
        self.split = 0
        self.truncated = 0
        self.notices: Counter[str] = Counter()
        self.filtered = 0
        self.overflow = 0
        self.long_lines = 0
        self.nbytes = 0

    def add(self, rec: Record, n: int = 1, first: float | None = None,
            last: float | None = None) -> None:
        """Count `n` records like `rec` (first/last default to rec.time)."""
        self.records += n
        fl = rec.flags
        if fl:
            if "split" in fl:
                self.split += n
            if "truncated" in fl:
                self.truncated += n
        if self.keep is not None and not self.keep(rec.profile or rec.label):
            self.filtered += n
            return
        if first is None:
            first = last = rec.time
        key = group_key(rec)
        self.put(key, n, first, last)

    def put(self, key: GroupKey, n: int, first: float | None, last: float | None) -> None:
        """Count `n` records under the group key `key` (folded, capped, its strings shared)."""
        fold = self.fold
        fk: Any = key if fold is None else fold(key)
        if fk is None:
            self.filtered += n
            return
        g = self.groups.get(fk)
        if g is None:
            if len(self.groups) >= self.max_groups or self.room <= 0:
                self.overflow += n
                key = (key[0], key[1], key[2], None, None, None)
                fk = key if fold is None else fold(key)
                if fk is None:
                    self.filtered += n
                    return
                g = self.groups.get(fk)
            if g is None:
                if fold is None:        # share the strings that repeat across groups
                    i = self._intern
                    fk = (i(key[0]), i(key[1]) or "", i(key[2]), key[3], i(key[4]),
                          i(key[5]))
                self.groups[fk] = [n, first, last]
                self.room -= len(key[3] or "")
                return
        _widen(g, n, first, last)

    def _intern(self, v: str | None) -> str | None:
        if v is None:
            return None
        return self.interned.setdefault(v, v)

    def state(self) -> dict[str, Any]:
        return {"groups": self.groups, "records": self.records, "lines": self.lines,
                "split": self.split, "truncated": self.truncated,
                "notices": dict(self.notices), "filtered": self.filtered,
                "overflow": self.overflow, "long_lines": self.long_lines, "bytes": self.nbytes}

    def put_many(self, items: list[tuple[Any, list[Any]]]) -> None:
        """`put` for each (key, [count, first, last]) of another worker (the lists are
        taken over)."""
        groups = self.groups
        gget = groups.get
        cap = self.max_groups
        for key, v in items:
            g = gget(key)
            if g is None:
                if len(groups) < cap and self.room > 0:
                    groups[key] = v
                    self.room -= sum(len(x) for x in key if isinstance(x, str))
                    continue
                self.overflow += v[0]
                key = key[:3] + (None,) * (len(key) - 3)
                g = gget(key)
                if g is None:
                    groups[key] = v
                    continue
            _widen(g, v[0], v[1], v[2])

    def merge(self, st: dict[str, Any]) -> None:
        for k in ("records", "lines", "split", "truncated", "filtered", "overflow", "long_lines"):
            setattr(self, k, getattr(self, k) + st[k])
        self.nbytes += st["bytes"]
        self.notices.update(st["notices"])
        put = self.put
        for key, (n, first, last) in st["groups"].items():
            put(key, n, first, last)


def _widen(g: list[Any], n: int, first: float | None, last: float | None) -> None:
    """Add `n` records seen from `first` to `last` to the group [count, first, last]."""
    g[0] += n
    if first is not None and (g[1] is None or first < g[1]):
        g[1] = first
    if last is not None and (g[2] is None or last > g[2]):
        g[2] = last


def group_key(rec: Record) -> GroupKey:
    return (rec.profile, rec.mode, rec.operation, resource_of(rec.fields, rec.operation,
                                                                rec.source),
            rec.requested, rec.denied)


# ---------------------------------------------------------------- auditd fast path

_G0, _G1, _G2, _GL = itemgetter(0), itemgetter(1), itemgetter(2), itemgetter(-1)
_PROBE = "\0probe"          # a name no record has: what a template does with the name
_MODES = frozenset({"DENIED", "ALLOWED", "AUDIT", "STATUS", "HINT", "ERROR", "KILL"})
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
    """Epoch of the audit(EPOCH:SERIAL) stamp at the end of `win`."""
    try:
        return float(win.rpartition(b"audit(")[2].partition(b":")[0])
    except ValueError:
        return None


class _Audit:
    """Raw-key counting for the auditd path.

    A raw key is the record's text from ``apparmor="`` to `` pid=`` (without
    a ``parent=N`` right after the operation) followed by its text after
    ``comm=X`` up to `` fsuid=`` (kept as a marker), so records differing only
    in pid, parent, comm, fsuid/ouid or stamp share it."""

    def __init__(self, acc: _Acc, fast: bool | None = None) -> None:
        self.acc = acc
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
        self.tpl_cache: dict[bytes, tuple[Any, ...]] = {}
        self.rest_cache: dict[bytes, tuple[dict[str, str], bool]] = {}

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
            if (len(table) > RAW_FLUSH or table.kbytes > RAW_BYTES
                    or table.dbus_len > RAW_FLUSH):
                self.flush()
            return
        c = bytes(c[:end]) if end != len(c) or not isinstance(c, bytes) else c
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
        if not all(ok) or not all(ok2):
            okk = list(map(min, ok, ok2))
            keys = list(compress(keys, okk))
            wins = list(compress(wins, okk))
            offs = list(accumulate(map(len, pieces)))
            self._fallback(c, [offs[i] + i * _NSEP
                               for i in compress(range(n), map((1).__sub__, okk))], len(c))
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
        if len(cnt) > RAW_FLUSH_PY or len(self.dcnt) > RAW_FLUSH_PY:
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
                    and line.find(_SEP, o + _NSEP) < 0):
                # the stamp's text, if it is short (a longer one: the parser decides)
                st = pre.rpartition(b"audit(")[2].partition(b":")[0]
                if len(st) <= _WINLEN:
                    head, sep, tail = line[o + _NSEP:].partition(b" pid=")
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

    def _raw(self) -> Iterator[tuple[bytes, str | None, int, float | None, float | None,
                                     bytes]]:
        """(tk, name, count, first, last, raw key) of every plain AVC raw key (tk and name:
        see `_split`), emptying the counter."""
        if self.table is not None:
            take = self.table.take
            while True:                 # in batches: raw keys and groups never peak together
                items = take(RAW_BATCH)
                if not items:
                    return
                yield from items
        cnt = self.cnt
        pop_first, pop_last = self.first.pop, self.last.pop
        while cnt:
            key, n = cnt.popitem()
            fw = pop_first(key, None)
            lw = pop_last(key, None)
            tk, name = _split(key)
            yield (tk, name, n, _stamp_time(fw) if fw else None,
                   _stamp_time(lw) if lw else None, key)

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
        joined by NUL) shares, if the name is what it is about (else empty): the group key
        around the name (head, tail: head + (name,) + tail, or head alone when `fold`
        drops the name), cut, kept, and the same for the unfolded key."""
        pre, _, rest = tk.partition(b"\0")
        f, popen = self._cached(pre, self.pre_cache, 'apparmor="')
        mode = f.get("apparmor", "")
        if popen or "name" in f or not _MODE_RE.fullmatch(mode):
            return ()
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
            return ()
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
        tcache = self.tpl_cache
        tget = tcache.get
        records = truncated = filtered = 0
        for tk, name, n, first, last, key in self._raw():
            if name:
                # the common case: everything but the name is shared with other keys
                tpl = tget(tk)
                if tpl is None:
                    if len(tcache) >= TEMPLATES:
                        tcache.clear()
                    tpl = tcache[tk] = self._template(tk)
                if tpl:
                    head, tail, ropen, kept, raw_head, raw_tail = tpl
                    records += n
                    if ropen:
                        truncated += n
                    if not kept:
                        filtered += n
                        continue
                    gk = head if tail is None else head + (name,) + tail
                    g = gget(gk)
                    if g is None:
                        if len(groups) < cap and acc.room > 0:
                            groups[gk] = [n, first, last]
                            acc.room -= len(name)
                        else:
                            put(raw_head + (name,) + raw_tail, n, first, last)
                        continue
                    g[0] += n           # _widen, inline: the loop runs per raw key
                    if first is not None and (g[1] is None or first < g[1]):
                        g[1] = first
                    if last is not None and (g[2] is None or last > g[2]):
                        g[2] = last
                    continue
            self._decode(key, n, first, last)
        acc.records += records
        acc.truncated += truncated
        acc.filtered += filtered
        self._dbus()

    def _decode(self, key: bytes, n: int, first: float | None, last: float | None) -> None:
        """A raw key whose name is not the usual one: its fields, or the full parser."""
        acc = self.acc
        head, _, rest = key.partition(b" pid=")
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
        if hopen or (mode not in _MODES and not _MODE_RE.fullmatch(mode)):
            # not the usual shape: let the full parser decide
            text = 'type=AVC msg=audit(0.000:0): apparmor="{} pid=0 comm="?" {}{}'.format(
                head.decode("utf-8", "surrogateescape"),
                rest.decode("utf-8", "surrogateescape"), " fsuid=0 ouid=0" if marker else "")
            rec = parse_line(text)
            if rec is not None:
                acc.add(rec, n, first, last)
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
        for key, n, first, last in self._dbus_raw():
            head, _, rest = key.partition(b"\0")
            mid, _, tail = rest.partition(b"\0")
            text = "".join((
                "type=USER_AVC msg=audit(0.000:0): pid=0 uid=0 msg='apparmor=\"",
                head.decode("utf-8", "surrogateescape"), "0",
                mid.decode("utf-8", "surrogateescape"),
                "0" if mid.endswith(b" peer_pid=") else "",
                tail.decode("utf-8", "surrogateescape")))
            rec = parse_line(text)
            if rec is not None:
                acc.add(rec, n, first, last)
        self.cnt = Counter()
        self.first = {}
        self.last = {}
        self.dcnt = Counter()
        self.dfirst = {}
        self.dlast = {}


def _name(nm: bytes) -> str | None:
    """A name= value as the kernel writes it: quoted, or upper-case hex (None: anything else)."""
    if len(nm) >= 2 and nm[:1] == b'"' and nm[-1:] == b'"' and b'"' not in nm[1:-1]:
        return nm[1:-1].decode("utf-8", "surrogateescape")
    if nm and not len(nm) & 1 and _HEX_B.fullmatch(nm) is not None:
        return bytes.fromhex(nm.decode("ascii")).decode("utf-8", "surrogateescape")
    return None


def _split(key: bytes) -> tuple[bytes, str | None]:
    """A raw key as (text before name= NUL text after comm= without the fsuid marker, the
    name) when its name is the kernel's usual one (`_name`), else (the raw key, None).
    The C counter's `take` does the same."""
    head, _, rest = key.partition(b" pid=")
    pre, nsep, nm = head.partition(b" name=")
    if nsep:
        name = _name(nm)
        if name is not None:
            if rest.endswith(b" fsuid="):
                rest = rest[:-7]
            return pre + b"\0" + rest, name
    return key, None


_HEX_B = re.compile(rb"[0-9A-F]+")


# ---------------------------------------------------------------- line path


def _lines_chunk(c: bytes, glue: Glue, acc: _Acc) -> None:
    text = c.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    acc.lines += len(lines)
    feed = glue.feed
    add = acc.add
    for line in lines:
        for rec in feed(line):
            add(rec)
        if ("lost" in line or "ppressed" in line or "exceeded" in line or "Missed" in line
                or "queue-full" in line) and "apparmor=" not in line:
            kind = notices(line)
            if kind is not None:
                acc.notices[kind] += 1


def group_lines(lines: Any, keep: Keep | None = None,
                max_groups: int = MAX_GROUPS) -> ScanResult:
    """Group the records of an iterable of text lines (small inputs, tests)."""
    acc = _Acc(keep, max_groups)
    glue = Glue()
    for line in lines:
        acc.lines += 1
        for rec in glue.feed(line):
            acc.add(rec)
        kind = notices(line)
        if kind is not None:
            acc.notices[kind] += 1
    for rec in glue.flush():
        acc.add(rec)
    res = ScanResult()
    _fill(res, acc)
    res.method = "lines"
    res.workers = 1
    return res


# ---------------------------------------------------------------- reading


def _is_auditd(sample: bytes) -> bool:
    lines = [ln for ln in sample.split(b"\n")[:-1] if ln.strip()]
    if not lines:
        return False
    good = sum(1 for ln in lines if ln.startswith((b"type=", b"node=")))
    return good * 10 >= len(lines) * 9


def _ranges(fd: int, size: int, parts: int) -> list[tuple[int, int]]:
    """Byte ranges covering [0, size), each starting at a line start."""
    cuts = [0]
    for i in range(1, parts):
        pos = size * i // parts
        if pos <= cuts[-1]:
            continue
        # move to just after the next newline
        while pos < size:
            b = os.pread(fd, 65536, pos)
            if not b:
                pos = size
                break
            j = b.find(b"\n")
            if j >= 0:
                pos += j + 1
                break
            pos += len(b)
        if cuts[-1] < pos < size:
            cuts.append(pos)
    cuts.append(size)
    return [(cuts[i], cuts[i + 1]) for i in range(len(cuts) - 1)]


def _scan_range(path: str, start: int, end: int, auditd: bool, acc: _Acc,
                report: Callable[[int], None] | None, fast: bool | None = None) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        aud = _Audit(acc, fast) if auditd else None
        if aud is not None and aud.table is not None:
            _read_into(fd, start, end, aud, acc, report)
            aud.flush()
            return
        glue = None if auditd else Glue()
        pos = start
        while pos < end:
            b = os.pread(fd, min(CHUNK, end - pos), pos)
            if not b:
                break
            cut = len(b)
            if pos + cut < end and b[-1:] != b"\n":
                k = b.rfind(b"\n") + 1
                if k:
                    cut = k
                else:                   # one line longer than a chunk
                    b, cut = _long_line(fd, b, pos, end, acc)
            c = b if cut == len(b) else b[:cut]
            if c[-1:] != b"\n":
                c += b"\n"
            if aud is not None:
                aud.chunk(c)
            elif glue is not None:
                _lines_chunk(c, glue, acc)
            pos += cut
            acc.nbytes += cut
            if report is not None:
                report(cut)
        if aud is not None:
            aud.flush()
        if glue is not None:
            for rec in glue.flush():
                acc.add(rec)
    finally:
        os.close(fd)


def _read_into(fd: int, start: int, end: int, aud: _Audit, acc: _Acc,
               report: Callable[[int], None] | None) -> None:
    """The C path's reading: chunks of whole lines into one reused buffer (no copies and
    no fresh pages per chunk; the Python path's lines, `_long_line` included)."""
    buf = bytearray(CHUNK)
    pos = start
    with memoryview(buf) as mv:
        while pos < end:
            want = min(CHUNK, end - pos)
            with mv[:want] as dst:
                n = os.preadv(fd, [dst], pos)
            if not n:
                break
            cut = n
            if pos + n < end and buf[n - 1] != 10:
                k = buf.rfind(b"\n", 0, n) + 1
                if k:
                    cut = k
                else:                   # one line longer than a chunk
                    line, cut = _long_line(fd, bytes(buf[:n]), pos, end, acc)
                    aud.chunk(line)
                    n = 0
            if n:
                aud.chunk(buf, cut)
            pos += cut
            acc.nbytes += cut
            if report is not None:
                report(cut)


def _long_line(fd: int, b: bytes, pos: int, end: int, acc: _Acc) -> tuple[bytes, int]:
    """A line longer than CHUNK: read up to MAX_LINE of it, skip the rest."""
    parts = [b]
    have = len(b)
    while pos + have < end and have < MAX_LINE:
        more = os.pread(fd, min(CHUNK, end - pos - have, MAX_LINE - have), pos + have)
        if not more:
            break
        k = more.find(b"\n")
        if k >= 0:
            parts.append(more[:k + 1])
            have += k + 1
            line = b"".join(parts)
            return line, have
        parts.append(more)
        have += len(more)
    line = b"".join(parts)
    acc.long_lines += 1
    # skip to the end of the line
    skip = pos + have
    while skip < end:
        more = os.pread(fd, min(CHUNK, end - skip), skip)
        if not more:
            break
        k = more.find(b"\n")
        if k >= 0:
            skip += k + 1
            break
        skip += len(more)
    return line + b"\n", skip - pos


def _fill(res: ScanResult, acc: _Acc) -> None:
    res.raw = acc.groups
    res.records = acc.records
    res.lines = acc.lines
    res.non_apparmor_lines = max(0, acc.lines - acc.records)
    res.split = acc.split
    res.truncated = acc.truncated
    res.notices = {k: acc.notices[k] for k in NOTICE_KINDS if acc.notices.get(k)}
    res.filtered = acc.filtered
    res.overflow = acc.overflow
    res.long_lines = acc.long_lines
    res.bytes = acc.nbytes


@contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic collector off: a scan makes ~10^6 short-lived tuples and no cycles, and
    each full collection walks every group kept so far (a fifth of the run time)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def group_file(path: str, workers: int = 2, keep: Keep | None = None,
               progress: Callable[[int, int], None] | None = None, *,
               max_groups: int | None = None, fast: bool | None = None,
               fold: Fold | None = None) -> ScanResult:
    """Group the AppArmor records of the log file `path`.

    `workers` processes (fork) each take a byte range; `keep(profile)`
    may turn the records of a profile (or label) down: they are counted in
    `records` and `filtered` only (it is asked once per record template, not
    per record); `progress(done_bytes, total_bytes)` is called in this process
    as the workers advance; `fast` chooses the C counter (True: required,
    False: the pure-Python path, None: C when built); `fold(key)` keys the
    groups the caller's way, or drops them (None, counted in `filtered`), as
    they are made: it is asked once per record template with the name
    ``"\\0probe"`` in key[3], so it may keep or drop the resource but must not
    look into it (an empty resource is asked as it is); `raw` then holds the
    folded keys and `groups` should not be used.
    `non_apparmor_lines` counts lines minus records (a record glued from two
    lines counts once)."""
    t0 = time.monotonic()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        auditd = _is_auditd(os.pread(fd, 65536, 0))
        ranges = _ranges(fd, size, max(1, workers)) if size else [(0, 0)]
    finally:
        os.close(fd)
    if max_groups is None:
        max_groups = MAX_GROUPS
    acc = _Acc(keep, max_groups, fold)
    with no_gc():
        if len(ranges) <= 1 or workers <= 1:
            done = [0]

            def _rep(k: int) -> None:
                done[0] += k
                if progress is not None:
                    progress(done[0], size)
            _scan_range(path, ranges[0][0], ranges[0][1], auditd, acc,
                        _rep if progress is not None else None, fast)
        else:
            _run_workers(path, ranges, auditd, acc, keep, max_groups, progress, size, fast,
                         fold)
    res = ScanResult()
    _fill(res, acc)
    res.method = "auditd" if auditd else "lines"
    res.workers = len(ranges)
    res.elapsed = time.monotonic() - t0
    return res


def _run_workers(path: str, ranges: list[tuple[int, int]], auditd: bool, acc: _Acc,
                 keep: Keep | None, max_groups: int,
                 progress: Callable[[int, int], None] | None, size: int,
                 fast: bool | None, fold: Fold | None) -> None:
    """Fork one child per range but the first, which this process scans itself."""
    import select
    children: list[tuple[int, int]] = []
    for start, end in ranges[1:]:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                    # child
            code = 0
            try:
                os.close(r)
                cacc = _Acc(keep, max_groups, fold)
                wf = os.fdopen(w, "wb", buffering=1 << 16)

                def _rep(k: int, wf: Any = wf) -> None:
                    if progress is not None:
                        wf.write(b"P" + k.to_bytes(8, "little"))
                        wf.flush()
                _scan_range(path, start, end, auditd, cacc, _rep, fast)
                st = cacc.state()
                groups = st.pop("groups")
                st["groups"] = {}
                batch: list[tuple[GroupKey, list[Any]]] = []
                while groups:           # in batches: the parent never holds all of them twice
                    batch.append(groups.popitem())
                    if len(batch) == 20_000 or not groups:
                        data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
                        wf.write(b"G" + len(data).to_bytes(8, "little"))
                        wf.write(data)
                        batch = []
                data = pickle.dumps(st, protocol=pickle.HIGHEST_PROTOCOL)
                wf.write(b"R" + len(data).to_bytes(8, "little"))
                wf.write(data)
                wf.close()
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        children.append((pid, r))
    done = [0]

    def _rep0(k: int) -> None:
        done[0] += k
        if progress is not None:
            progress(done[0], size)
            _drain(False)

    bufs: dict[int, bytearray] = {r: bytearray() for _, r in children}
    results: dict[int, dict[str, Any] | None] = {r: None for _, r in children}
    open_fds = set(bufs)

    def _drain(block: bool) -> None:
        while open_fds:
            rl, _, _ = select.select(list(open_fds), [], [], None if block else 0)
            if not rl:
                return
            for fd in rl:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    open_fds.discard(fd)
                    continue
                buf = bufs[fd]
                buf += chunk
                while buf:
                    tag = bytes(buf[:1])
                    if len(buf) < 9:
                        break
                    n = int.from_bytes(buf[1:9], "little")
                    if tag == b"P":
                        del buf[:9]
                        done[0] += n
                        if progress is not None:
                            progress(done[0], size)
                    elif tag in (b"R", b"G"):
                        if len(buf) < 9 + n:
                            break
                        obj = pickle.loads(memoryview(buf)[9:9 + n])
                        del buf[:9 + n]
                        if tag == b"R":
                            results[fd] = obj
                        else:
                            acc.put_many(obj)
                    else:
                        raise RuntimeError("bad message from a scan worker")
            if not block:
                return

    failed = True
    try:
        _scan_range(path, ranges[0][0], ranges[0][1], auditd, acc, _rep0, fast)
        _drain(True)
        failed = False
    finally:
        if failed:                      # our own scan failed or was interrupted: stop the workers
            import signal
            for pid, _ in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for pid, r in children:
            try:
                os.close(r)
            except OSError:
                pass
            _, status = os.waitpid(pid, 0)
            if status != 0 and not failed:
                raise RuntimeError(f"scan worker {pid} failed (status {status})")
    for _, r in children:
        got = results[r]
        if got is None:
            raise RuntimeError("scan worker sent no result")
        acc.merge(got)
