"""Group the AppArmor records of a big log file, with bounded memory.

`group_file` splits the file into byte ranges that start at line starts, one
per worker process (fork; this process scans the first range itself), and
reads each range in chunks of whole lines (8 MB; 1 MB into one reused buffer
for the C counter, which then finds and counts while the chunk is in the
cache).  The file is never mapped: mapped pages would count as resident
memory, and a file truncated under a mapping kills the reader with SIGBUS.
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
counter): about 2.0 CPU-seconds, 2.4x ``grep -c`` on two cores
(``bench/denials_speed.py``).  Peak RSS about 100-120 MiB per process.
`virt-aa denials --json` of such a file goes further on two cores:
`denials/pair.py`.
"""

from __future__ import annotations

import gc
import os
import pickle
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from virt_aa.denials.auditscan import (  # noqa: F401  (the tests reach them here)
    _PARENT_RE,
    Limits,
    _Audit,
    _stamp_time,
)
from virt_aa.denials.groups import Fold, Group, GroupKey, Keep, ScanResult, _Acc
from virt_aa.denials.parse import NOTICE_KINDS, Glue, Record, notices
from virt_aa.denials.rawkeys import _split  # noqa: F401  (the tests reach it here)
from virt_aa.denials.twins import Twins

__all__ = ["Group", "GroupKey", "ScanResult", "group_file", "group_lines"]

CHUNK = 8 << 20             # bytes read per step
C_CHUNK = 1 << 20           # ... by the C path (at most CHUNK): read, then scanned in the cache
MAX_LINE = 16 << 20         # a longer line is cut there (and counted in ``long_lines``)
MAX_GROUPS = 150_000        # beyond this, new groups are folded into one per profile/mode/op
MAX_GROUP_BYTES = 32 << 20  # ... and beyond this many bytes of resource names
RAW_FLUSH = 150_000         # distinct raw keys kept by an auditd worker before decoding them
RAW_BYTES = 32 << 20        # ... and bytes held in them
RAW_BATCH = 20_000          # raw keys decoded at a time
RAW_FLUSH_PY = 100_000      # the pure-Python path's RAW_FLUSH (its keys cost more memory)
WARM = 1024                 # lines before a range its twin check is warmed with


def limits() -> Limits:
    """The auditd path's flush limits, read now (the tests lower them here)."""
    return Limits(RAW_FLUSH, RAW_BYTES, RAW_BATCH, RAW_FLUSH_PY)


# ---------------------------------------------------------------- line path


def _lines_chunk(c: bytes, glue: Glue, acc: _Acc, twins: Twins) -> None:
    text = c.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    acc.lines += len(lines)
    feed = glue.feed
    for line in lines:
        for rec in feed(line):
            _add(acc, twins, rec)
        if ("lost" in line or "ppressed" in line or "exceeded" in line or "Missed" in line
                or "queue-full" in line) and "apparmor=" not in line:
            kind = notices(line)
            if kind is not None:
                acc.notices[kind] += 1


def _add(acc: _Acc, twins: Twins, rec: Record) -> None:
    """`acc.add`, but a journald twin is only counted (in `records` and `twins`)."""
    if twins.twin(rec):
        acc.records += 1
        acc.twins += 1
    else:
        acc.add(rec)


def group_lines(lines: Any, keep: Keep | None = None,
                max_groups: int = MAX_GROUPS) -> ScanResult:
    """Group the records of an iterable of text lines (small inputs, tests)."""
    acc = _Acc(keep, max_groups, room=MAX_GROUP_BYTES)
    glue = Glue()
    twins = Twins()
    for line in lines:
        acc.lines += 1
        for rec in glue.feed(line):
            _add(acc, twins, rec)
        kind = notices(line)
        if kind is not None:
            acc.notices[kind] += 1
    for rec in glue.flush():
        _add(acc, twins, rec)
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


def _warm(fd: int, start: int, twins: Twins) -> None:
    """Feed `twins` the records just before `start`, as the range before saw them: a
    record here is a twin of one there exactly when it would be in one scan."""
    from virt_aa.denials.parse import parse_line

    back = os.pread(fd, min(start, 4 << 20), max(0, start - (4 << 20)))
    lines = back.split(b"\n")[1:-1] if start > 4 << 20 else back.split(b"\n")[:-1]
    for line in lines[-WARM:]:
        rec = parse_line(line.decode("utf-8", "surrogateescape"))
        if rec is not None:
            twins.twin(rec)


def _scan_range(path: str, start: int, end: int, auditd: bool, acc: _Acc,
                report: Callable[[int], None] | None, fast: bool | None = None) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        aud = _Audit(acc, limits(), fast) if auditd else None
        if aud is not None and aud.table is not None:
            _read_into(fd, start, end, aud, acc, report)
            aud.flush()
            return
        glue = None if auditd else Glue()
        twins = Twins()
        if not auditd and start > 0:
            _warm(fd, start, twins)
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
                _lines_chunk(c, glue, acc, twins)
            pos += cut
            acc.nbytes += cut
            if report is not None:
                report(cut)
        if aud is not None:
            aud.flush()
        if glue is not None:
            for rec in glue.flush():
                _add(acc, twins, rec)
    finally:
        os.close(fd)


def _read_into(fd: int, start: int, end: int, aud: _Audit, acc: _Acc,
               report: Callable[[int], None] | None) -> None:
    """The C path's reading: chunks of whole lines into one reused buffer (no copies and
    no fresh pages per chunk; the Python path's lines, `_long_line` included)."""
    size = min(CHUNK, C_CHUNK)
    buf = bytearray(size)
    pos = start
    with memoryview(buf) as mv:
        while pos < end:
            want = min(size, end - pos)
            with mv[:want] as dst:
                n = os.preadv(fd, [dst], pos)
            if not n:
                break
            cut = n
            if pos + n < end and buf[n - 1] != 10:
                k = buf.rfind(b"\n", 0, n) + 1
                if k:
                    cut = k
                else:                   # one line longer than this chunk: as the Python path
                    b = os.pread(fd, min(CHUNK, end - pos), pos)
                    cut = b.rfind(b"\n") + 1
                    if cut and pos + len(b) < end:
                        aud.chunk(b, cut)
                    elif pos + len(b) >= end:
                        cut = len(b)
                        aud.chunk(b, cut)
                    else:               # ... longer than CHUNK: MAX_LINE of it
                        line, cut = _long_line(fd, b, pos, end, acc)
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
    res.twins = acc.twins
    res.guessed = acc.guessed
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
    acc = _Acc(keep, max_groups, fold, room=MAX_GROUP_BYTES)
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
    children = [_fork_worker(path, start, end, auditd, keep, max_groups, fold,
                             progress is not None, fast)
                for start, end in ranges[1:]]
    inbox = _Inbox([r for _, r in children], acc, progress, size)

    def _rep0(k: int) -> None:
        inbox.done += k
        if progress is not None:
            progress(inbox.done, size)
            inbox.drain(False)

    failed = True
    try:
        _scan_range(path, ranges[0][0], ranges[0][1], auditd, acc, _rep0, fast)
        inbox.drain(True)
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
        got = inbox.results[r]
        if got is None:
            raise RuntimeError("scan worker sent no result")
        acc.merge(got)


def _fork_worker(path: str, start: int, end: int, auditd: bool, keep: Keep | None,
                 max_groups: int, fold: Fold | None, report: bool,
                 fast: bool | None) -> tuple[int, int]:
    """(pid, read end of its pipe) of a child scanning [start, end) (see `_worker`)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                        # child
        code = 0
        try:
            os.close(r)
            _worker(path, start, end, auditd, keep, max_groups, fold, report, fast, w)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _worker(path: str, start: int, end: int, auditd: bool, keep: Keep | None,
            max_groups: int, fold: Fold | None, report: bool, fast: bool | None,
            w: int) -> None:
    """Scan [start, end) and send progress (P), groups in batches (G) and the counters (R)
    to the pipe `w`, each as a tag, a length and a pickle."""
    cacc = _Acc(keep, max_groups, fold, room=MAX_GROUP_BYTES)
    wf = os.fdopen(w, "wb", buffering=1 << 16)

    def _rep(k: int) -> None:
        if report:
            wf.write(b"P" + k.to_bytes(8, "little"))
            wf.flush()
    _scan_range(path, start, end, auditd, cacc, _rep, fast)
    st = cacc.state()
    groups = st.pop("groups")
    st["groups"] = {}
    batch: list[tuple[GroupKey, list[Any]]] = []
    while groups:                       # in batches: the parent never holds all of them twice
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


class _Inbox:
    """What the workers send: their groups merged into `acc` as they come, their progress
    added to `done`, their counters kept in `results` (per pipe)."""

    def __init__(self, fds: list[int], acc: _Acc,
                 progress: Callable[[int, int], None] | None, size: int) -> None:
        self.acc = acc
        self.progress = progress
        self.size = size
        self.done = 0
        self.bufs: dict[int, bytearray] = {r: bytearray() for r in fds}
        self.results: dict[int, dict[str, Any] | None] = {r: None for r in fds}
        self.open_fds = set(fds)

    def drain(self, block: bool) -> None:
        """Read what has come (all of it, to the end of every pipe, when `block`)."""
        import select
        while self.open_fds:
            rl, _, _ = select.select(list(self.open_fds), [], [], None if block else 0)
            if not rl:
                return
            for fd in rl:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    self.open_fds.discard(fd)
                    continue
                buf = self.bufs[fd]
                buf += chunk
                self._messages(fd, buf)
            if not block:
                return

    def _messages(self, fd: int, buf: bytearray) -> None:
        while len(buf) >= 9:
            tag = bytes(buf[:1])
            n = int.from_bytes(buf[1:9], "little")
            if tag == b"P":
                del buf[:9]
                self.done += n
                if self.progress is not None:
                    self.progress(self.done, self.size)
            elif tag in (b"R", b"G"):
                if len(buf) < 9 + n:
                    break
                obj = pickle.loads(memoryview(buf)[9:9 + n])
                del buf[:9 + n]
                if tag == b"R":
                    self.results[fd] = obj
                else:
                    self.acc.put_many(obj)
            else:
                raise RuntimeError("bad message from a scan worker")
