"""Group the AppArmor records of a big log file, with bounded memory.

`group_file` splits the file into byte ranges that start at line starts, one
per worker process (fork; this process scans the first range itself), and
reads each range in chunks of 8 MB (the file is never mapped whole: mapped
pages would count as resident memory).  Workers stream their groups back
through a pipe in batches and this process merges them.

Two ways through a chunk:

* auditd logs (``type=... msg=audit(...)`` lines): the chunk is cut at every
  ``apparmor="`` with C-level byte operations; an AVC record's raw key is its
  text before `` pid=`` plus its text after ``comm=X`` up to `` fsuid=`` (pid,
  comm, fsuid/ouid, the ENRICHED suffix and the stamp vary within a group),
  records are counted per distinct raw key, and each distinct raw key is
  decoded once with the parser's own tokenizer (unusual ones with
  `parse_line`), which gives the same groups as parsing every record (the
  tests check this).  dbus USER_AVC lines get raw keys of their own (pid and
  peer_pid removed); anything else on such a line goes through `parse_line`.
* every other log (kern.log, syslog, dmesg, journalctl): line by line through
  `Glue` (full parse of every record), which also re-joins split records.

Groups are keyed by (profile, mode, operation, resource, requested, denied);
each holds a count and the first/last time seen.  In the auditd path "first"
and "last" are the stamps of the first and last occurrence in file order
(auditd writes in time order); in the line path they are the minimum and the
maximum.  At most `MAX_GROUPS` groups are kept: past that, records of new
groups are counted in one group per (profile, mode, operation) and in
``overflow``, so memory stays bounded whatever the size of the file.

Speed (1.49 GB audit.log, 1.48 M records, 2 workers): about 10 CPU-seconds,
i.e. 10-12x ``grep -c`` on two cores; about 7 us per record, most of it
CPython's per-object cost of the C-level bytes operations, the dict updates
and the decoding of ~240 k distinct raw keys.  Peak RSS ~140 MiB per process.
"""

from __future__ import annotations

import os
import pickle
import re
import time
from collections import Counter
from collections.abc import Callable
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

CHUNK = 8 << 20             # bytes read per step
MAX_LINE = 16 << 20         # a longer line is cut there (and counted in ``long_lines``)
MAX_GROUPS = 150_000        # beyond this, new groups are folded into one per profile/mode/op
RAW_FLUSH = 100_000         # distinct raw keys kept by an auditd worker before decoding them


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
    """What `group_file` found."""

    __slots__ = ("bytes", "elapsed", "filtered", "groups", "lines", "long_lines", "method",
                 "non_apparmor_lines", "notices", "overflow", "records", "split", "truncated",
                 "workers")

    def __init__(self) -> None:
        self.groups: dict[GroupKey, Group] = {}
        self.records = 0                # AppArmor records seen (before `want`)
        self.lines = 0
        self.non_apparmor_lines = 0
        self.split = 0                  # records flagged split
        self.truncated = 0              # records flagged truncated
        self.notices: dict[str, int] = {}
        self.filtered = 0               # records `want` turned down
        self.overflow = 0               # records folded because of the group cap
        self.long_lines = 0
        self.bytes = 0
        self.workers = 0
        self.method = ""                # "auditd" (raw-key path) or "lines"
        self.elapsed = 0.0

    def sorted_groups(self) -> list[Group]:
        return sorted(self.groups.values(), key=lambda g: (-g.count, str(g.key)))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in ScanResult.__slots__ if k != "groups"}
        d["groups"] = [g.to_dict() for g in self.sorted_groups()]
        return d


# ---------------------------------------------------------------- accumulation


class _Acc:
    """Per-process accumulator: groups plus counters."""

    def __init__(self, want: Callable[[Record], bool] | None, max_groups: int) -> None:
        self.want = want
        self.max_groups = max_groups
        self.groups: dict[GroupKey, list[Any]] = {}
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
        if self.want is not None and not self.want(rec):
            self.filtered += n
            return
        if first is None:
            first = last = rec.time
        key = group_key(rec)
        self.put(key, n, first, last)

    def put(self, key: GroupKey, n: int, first: float | None, last: float | None) -> None:
        g = self.groups.get(key)
        if g is None:
            # share the strings that repeat across groups (memory: ~150 k groups)
            i = self._intern
            key = (i(key[0]), i(key[1]) or "", i(key[2]), key[3], i(key[4]), i(key[5]))
            if len(self.groups) >= self.max_groups:
                self.overflow += n
                key = (key[0], key[1], key[2], None, None, None)
                g = self.groups.get(key)
            if g is None:
                self.groups[key] = [n, first, last]
                return
        g[0] += n
        if first is not None and (g[1] is None or first < g[1]):
            g[1] = first
        if last is not None and (g[2] is None or last > g[2]):
            g[2] = last

    def _intern(self, v: str | None) -> str | None:
        if v is None:
            return None
        return self.interned.setdefault(v, v)

    def state(self) -> dict[str, Any]:
        return {"groups": self.groups, "records": self.records, "lines": self.lines,
                "split": self.split, "truncated": self.truncated,
                "notices": dict(self.notices), "filtered": self.filtered,
                "overflow": self.overflow, "long_lines": self.long_lines, "bytes": self.nbytes}

    def merge(self, st: dict[str, Any]) -> None:
        for k in ("records", "lines", "split", "truncated", "filtered", "overflow", "long_lines"):
            setattr(self, k, getattr(self, k) + st[k])
        self.nbytes += st["bytes"]
        self.notices.update(st["notices"])
        put = self.put
        for key, (n, first, last) in st["groups"].items():
            put(key, n, first, last)


def group_key(rec: Record) -> GroupKey:
    return (rec.profile, rec.mode, rec.operation, resource_of(rec.fields, rec.operation,
                                                                rec.source),
            rec.requested, rec.denied)


# ---------------------------------------------------------------- auditd fast path

_G0, _G1, _G2, _GL = itemgetter(0), itemgetter(1), itemgetter(2), itemgetter(-1)
_WIN = slice(-36, None)     # the bytes before apparmor=": "...audit(EPOCH.mmm:SERIAL): "
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


def _stamp_time(win: bytes) -> float | None:
    """Epoch of the audit(EPOCH:SERIAL) stamp at the end of `win`."""
    try:
        return float(win.rpartition(b"audit(")[2].partition(b":")[0])
    except ValueError:
        return None


class _Audit:
    """Raw-key counting for the auditd path.

    A raw key is the record's text from ``apparmor="`` to `` pid=`` followed by
    its text after ``comm=X`` up to `` fsuid=`` (kept as a marker), so
    records differing only in pid, comm, fsuid/ouid or stamp share it."""

    def __init__(self, acc: _Acc) -> None:
        self.acc = acc
        self.cnt: Counter[bytes] = Counter()
        self.first: dict[bytes, bytes] = {}
        self.last: dict[bytes, bytes] = {}
        self.dcnt: Counter[bytes] = Counter()      # dbus USER_AVC raw keys
        self.dfirst: dict[bytes, bytes] = {}
        self.dlast: dict[bytes, bytes] = {}
        self.pre_cache: dict[bytes, tuple[dict[str, str], bool]] = {}
        self.tpl_cache: dict[bytes, tuple[Any, ...] | None] = {}
        self.rest_cache: dict[bytes, tuple[dict[str, str], bool]] = {}

    def chunk(self, c: bytes) -> None:
        acc = self.acc
        acc.lines += _count_lines(c)
        if b"queue-full" in c:
            self._notices(c, b"queue-full")
        pieces = c.split(_SEP)
        n = len(pieces) - 1
        if n <= 0:
            return
        part = bytes.partition
        wins: list[bytes] = list(map(bytes.__getitem__, pieces, repeat(_WIN)))
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
        if not all(ok) or not all(ok2):
            okk = list(map(min, ok, ok2))
            keys = list(compress(keys, okk))
            wins = list(compress(wins, okk))
            self._fallback(c, pieces, okk)
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
        if len(cnt) > RAW_FLUSH:
            self.flush()

    def _fallback(self, c: bytes, pieces: list[bytes], ok: list[bool]) -> None:
        """Records that are not plain AVC lines: dbus USER_AVC by raw key, others parsed."""
        offs = list(accumulate(map(len, pieces)))
        seen: set[int] = set()
        acc = self.acc
        dcnt, dfirst, dlast = self.dcnt, self.dfirst, self.dlast
        for i in compress(range(len(ok)), map((1).__sub__, ok)):
            o = offs[i] + i * _NSEP
            ls = c.rfind(b"\n", 0, o) + 1
            if ls in seen:
                continue
            seen.add(ls)
            le = c.find(b"\n", o)
            if le < 0:
                le = len(c)
            pre = c[ls:o]
            if (pre.endswith(b"msg='") and b"type=USER_AVC msg=audit(" in pre
                    and c.find(_SEP, o + _NSEP, le) < 0):
                head, sep, tail = c[o + _NSEP:le].partition(b" pid=")
                a, sep2, b = tail.lstrip(_DIGITS).partition(b" peer_pid=")
                key = head + sep + b"\0" + a + sep2 + b"\0" + b.lstrip(_DIGITS)
                dcnt[key] += 1
                if key not in dfirst:
                    dfirst[key] = pre
                dlast[key] = pre
                continue
            rec = parse_line(c[ls:le].decode("utf-8", "surrogateescape"))
            if rec is not None:
                acc.add(rec)

    def _notices(self, c: bytes, needle: bytes) -> None:
        i = c.find(needle)
        while i >= 0:
            ls = c.rfind(b"\n", 0, i) + 1
            le = c.find(b"\n", i)
            if le < 0:
                le = len(c)
            kind = notices(c[ls:le].decode("utf-8", "surrogateescape"))
            if kind is not None:
                self.acc.notices[kind] += 1
            i = c.find(needle, le)

    @staticmethod
    def _cached(raw: bytes, cache: dict[bytes, tuple[dict[str, str], bool]],
                lead: str) -> tuple[dict[str, str], bool]:
        got = cache.get(raw)
        if got is None:
            f: dict[str, str] = {}
            got = (f, _tokens(lead + raw.decode("utf-8", "surrogateescape"), f))
            if len(cache) >= 8192:
                cache.clear()
            cache[raw] = got
        return got

    def _head_fields(self, head: bytes) -> tuple[dict[str, str], bool]:
        """Fields of the text before pid=: cached tokens of the part before name=,
        the name decoded directly (it is the last field there)."""
        pre, sep, nm = head.partition(b" name=")
        pf, popen = self._cached(pre, self.pre_cache, 'apparmor="')
        f = dict(pf)
        if not sep:
            return f, popen
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

    def _template(self, pre: bytes, rest: bytes) -> tuple[Any, ...] | None:
        """(profile, mode, operation, requested, denied, cut) shared by every record with
        this text before name= and after comm=, if the name is what it is about."""
        f, popen = self._cached(pre, self.pre_cache, 'apparmor="')
        mode = f.get("apparmor", "")
        if popen or "name" in f or not _MODE_RE.fullmatch(mode):
            return None
        f = dict(f)
        f["name"] = "\0probe"
        ropen = False
        if rest:
            rf, ropen = self._cached(rest, self.rest_cache, "")
            for k, v in rf.items():
                if k not in f:
                    f[k] = v
        op = f.get("operation")
        if resource_of(f, op, "kernel") != "\0probe":
            return None
        req, den = _masks(f)
        i = self.acc._intern
        return (i(f.get("profile") or f.get("label")), i(mode), i(op), i(req), i(den), ropen)

    def flush(self) -> None:
        """Decode every distinct raw key once and add its count to the groups."""
        acc = self.acc
        first, last = self.first, self.last
        want = acc.want
        put = acc.put
        cnt = self.cnt
        pop_first, pop_last = first.pop, last.pop
        tcache = self.tpl_cache
        while cnt:                      # consume as we go: raw keys and groups never peak together
            key, n = cnt.popitem()
            head, _, rest = key.partition(b" pid=")
            marker = rest.endswith(b" fsuid=")
            if marker:
                rest = rest[:-7]
            if want is None:
                # the common case: everything but the name is shared with other keys
                pre, nsep, nm = head.partition(b" name=")
                if nsep:
                    tk = pre + b"\0" + rest
                    tpl = tcache.get(tk)
                    if tpl is None:
                        if len(tcache) >= 8192:
                            tcache.clear()
                        tpl = tcache[tk] = self._template(pre, rest)
                    if tpl:
                        name = _name(nm)
                        if name is not None:
                            prof, mode, op, req, den, ropen = tpl
                            acc.records += n
                            if ropen:
                                acc.truncated += n
                            fw = pop_first(key, None)
                            lw = pop_last(key, None)
                            put((prof, mode, op, name, req, den), n,
                                _stamp_time(fw) if fw else None, _stamp_time(lw) if lw else None)
                            continue
            f, hopen = self._head_fields(head)
            if rest:
                rf, ropen = self._cached(rest, self.rest_cache, "")
                for k, v in rf.items():
                    if k not in f:
                        f[k] = v
            else:
                ropen = False
            mode = f.get("apparmor", "")
            if hopen or not _MODE_RE.fullmatch(mode):
                # not the usual shape: let the full parser decide
                text = 'type=AVC msg=audit(0.000:0): apparmor="{} pid=0 comm="?" {}{}'.format(
                    head.decode("utf-8", "surrogateescape"),
                    rest.decode("utf-8", "surrogateescape"), " fsuid=0 ouid=0" if marker else "")
                rec = parse_line(text)
                if rec is None:
                    continue
            elif want is None:
                acc.records += n
                if ropen:
                    acc.truncated += n
                op = f.get("operation")
                req, den = _masks(f)
                fw = pop_first(key, None)
                lw = pop_last(key, None)
                put((f.get("profile") or f.get("label"), mode, op,
                     resource_of(f, op, "kernel"), req, den), n,
                    _stamp_time(fw) if fw else None, _stamp_time(lw) if lw else None)
                continue
            else:
                rec = Record("kernel", mode, f, _TRUNC if ropen else _NOFLAGS)
            fw = pop_first(key, None)
            lw = pop_last(key, None)
            acc.add(rec, n, _stamp_time(fw) if fw else None, _stamp_time(lw) if lw else None)
        for key, n in self.dcnt.items():
            head, _, rest = key.partition(b"\0")
            mid, _, tail = rest.partition(b"\0")
            text = "".join((
                "type=USER_AVC msg=audit(0.000:0): pid=0 uid=0 msg='apparmor=\"",
                head.decode("utf-8", "surrogateescape"), "0",
                mid.decode("utf-8", "surrogateescape"),
                "0" if mid.endswith(b" peer_pid=") else "",
                tail.decode("utf-8", "surrogateescape")))
            rec = parse_line(text)
            if rec is None:
                continue
            fw = self.dfirst.get(key)
            lw = self.dlast.get(key)
            acc.add(rec, n, _stamp_time(fw) if fw else None, _stamp_time(lw) if lw else None)
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


_TRUNC = frozenset({"truncated"})
_HEX_B = re.compile(rb"[0-9A-F]+")
_NOFLAGS: frozenset[str] = frozenset()


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


def group_lines(lines: Any, want: Callable[[Record], bool] | None = None,
                max_groups: int = MAX_GROUPS) -> ScanResult:
    """Group the records of an iterable of text lines (small inputs, tests)."""
    acc = _Acc(want, max_groups)
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
                report: Callable[[int], None] | None) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        aud = _Audit(acc) if auditd else None
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
    res.groups = {k: Group(k, v[0], v[1], v[2]) for k, v in acc.groups.items()}
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


def group_file(path: str, workers: int = 2, want: Callable[[Record], bool] | None = None,
               progress: Callable[[int, int], None] | None = None, *,
               max_groups: int = MAX_GROUPS) -> ScanResult:
    """Group the AppArmor records of the log file `path`.

    `workers` processes (fork) each take a byte range; `want(record)` may
    turn records down (it sees one representative per distinct raw key in
    the auditd path, so it should look at the grouping fields only:
    profile, mode, operation, name/resource, masks, class);
    `progress(done_bytes, total_bytes)` is called in this process as the
    workers advance.  `non_apparmor_lines` counts lines minus records (a
    record glued from two lines counts once)."""
    t0 = time.monotonic()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        auditd = _is_auditd(os.pread(fd, 65536, 0))
        ranges = _ranges(fd, size, max(1, workers)) if size else [(0, 0)]
    finally:
        os.close(fd)
    acc = _Acc(want, max_groups)
    if len(ranges) <= 1 or workers <= 1:
        done = [0]

        def _rep(k: int) -> None:
            done[0] += k
            if progress is not None:
                progress(done[0], size)
        _scan_range(path, ranges[0][0], ranges[0][1], auditd, acc,
                    _rep if progress is not None else None)
    else:
        _run_workers(path, ranges, auditd, acc, want, max_groups, progress, size)
    res = ScanResult()
    _fill(res, acc)
    res.method = "auditd" if auditd else "lines"
    res.workers = len(ranges)
    res.elapsed = time.monotonic() - t0
    return res


def _run_workers(path: str, ranges: list[tuple[int, int]], auditd: bool, acc: _Acc,
                 want: Callable[[Record], bool] | None, max_groups: int,
                 progress: Callable[[int, int], None] | None, size: int) -> None:
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
                cacc = _Acc(want, max_groups)
                wf = os.fdopen(w, "wb", buffering=1 << 16)

                def _rep(k: int, wf: Any = wf) -> None:
                    if progress is not None:
                        wf.write(b"P" + k.to_bytes(8, "little"))
                        wf.flush()
                _scan_range(path, start, end, auditd, cacc, _rep)
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
                            for key, (cnt, first, last) in obj:
                                acc.put(key, cnt, first, last)
                    else:
                        raise RuntimeError("bad message from a scan worker")
            if not block:
                return

    failed = True
    try:
        _scan_range(path, ranges[0][0], ranges[0][1], auditd, acc, _rep0)
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
