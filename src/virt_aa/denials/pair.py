"""`virt-aa denials --file BIG --json` on two cores from the first byte to the last.

`scan.group_file` merges all groups in one process, which then renders them:
for 100k+ groups that merge and render are a third of the run, on one core.
Here the two processes split the *VMs* instead, once both have scanned their
half of the file:

    worker                             this process
    scan + fold the second half        scan + fold the first half
    -> counters, groups per profile    (reads them)
                                       names, VM order; the first VMs (about
                                       half the groups) go to the worker
    (reads its VMs)                 <- its VMs; the head of the document (stdout)
    -> groups of this process's VMs    (merges them)
    (merges them)                   <- groups of the worker's VMs
    -> its overflow count
    renders its VMs, writes them       renders its VMs (to memory)
    to stdout, exits                   waits, writes them and the warnings

so every group is merged and rendered once, by one of the two, in parallel.
The document is the one the other paths print.
Messages are pickles of plain data between two processes of this program.
"""

from __future__ import annotations

import json
import os
import pickle
from collections import Counter
from collections.abc import Callable
from typing import IO, Any

from . import scan as S
from .commands import Scan, child_code, keep_fold, raise_for_child
from .groups import _Acc
from .parse import NOTICE_KINDS
from .rows import _by_vm, json_renderer


class _Chan:
    """Length-prefixed pickles over a pair of pipes, and a swap that sends and receives at
    once (two big messages crossing in blocking pipes would deadlock)."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.buf = bytearray()

    def send(self, obj: Any) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(len(data).to_bytes(8, "little") + data)
        while view:
            view = view[os.write(self.wfd, view):]

    def _more(self) -> None:
        b = os.read(self.rfd, 1 << 20)
        if not b:
            raise RuntimeError("the other scan process stopped early")
        self.buf += b

    def _complete(self) -> bool:
        return len(self.buf) >= 8 and len(self.buf) >= 8 + int.from_bytes(self.buf[:8],
                                                                            "little")

    def _take(self) -> Any:
        n = int.from_bytes(self.buf[:8], "little")
        obj = pickle.loads(memoryview(self.buf)[8:8 + n])
        del self.buf[:8 + n]
        return obj

    def recv(self) -> Any:
        while not self._complete():
            self._more()
        return self._take()

    def swap(self, obj: Any) -> Any:
        """Send `obj` while receiving the other side's: its object."""
        import select

        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(len(data).to_bytes(8, "little") + data)
        os.set_blocking(self.wfd, False)
        try:
            while view or not self._complete():
                rl, wl, _ = select.select([] if self._complete() else [self.rfd],
                                          [self.wfd] if view else [], [])
                if wl:
                    try:
                        view = view[os.write(self.wfd, view[:1 << 16]):]
                    except BlockingIOError:
                        pass
                if rl:
                    self._more()
        finally:
            os.set_blocking(self.wfd, True)
        return self._take()


def _route(acc: _Acc, profiles: set[str], theirs: bool) -> tuple[list[Any], list[Any]]:
    """Take the groups of the other process's VMs out of `acc`, for it: those of
    `profiles` (`theirs`), or those of every other profile.  Sent as the keys' columns
    and the values (half the pickling of (key, value) pairs: `_merge` rebuilds them)."""
    groups = acc.groups
    if theirs:
        give = [k for k in groups if k[0] in profiles]
    else:
        give = [k for k in groups if k[0] not in profiles]
    pop = groups.pop
    return [list(c) for c in zip(*give, strict=True)], [pop(k) for k in give]


def _merge(acc: _Acc, routed: tuple[list[Any], list[Any]]) -> None:
    """Add what `_route` took out of the other process's groups to `acc`."""
    cols, values = routed
    acc.put_many(zip(zip(*cols, strict=True), values, strict=True))


def denials_json(path: str, uuid: str | None, out: IO[str],
                 names_for: Callable[[set[str]], dict[str, str]],
                 warnings_for: Callable[[Scan, set[str]], list[str]],
                 tick: Callable[[int], None] | None = None) -> bool:
    """Write the `denials --json` document of the big log `path` to `out` (a real file
    descriptor), or return False when two processes cannot share it (one CPU, a
    one-line file): the caller then takes the one-process path."""
    try:
        fd_out = out.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    if (os.cpu_count() or 1) < 2:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        auditd = S._is_auditd(os.pread(fd, 65536, 0))
        ranges = S._ranges(fd, size, 2) if size else []
    finally:
        os.close(fd)
    if len(ranges) != 2:
        return False
    keep, fold = keep_fold(uuid)
    out.flush()
    up_r, up_w = os.pipe()              # worker -> this process
    down_r, down_w = os.pipe()          # this process -> worker
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(up_r)
            os.close(down_w)
            code = _worker(path, ranges[1], auditd, keep, fold, up_w, down_r, fd_out)
        except BaseException as exc:   # EPIPE (`| head`), ENOSPC: told by the exit code
            code = child_code(exc)
        finally:
            os._exit(code)
    os.close(up_w)
    os.close(down_r)
    done = False
    try:
        _lead(path, ranges[0], auditd, keep, fold, up_r, down_w, out, names_for,
              warnings_for, tick, pid)
        done = True
    finally:
        for f in (up_r, down_w):
            try:
                os.close(f)
            except OSError:
                pass
        if not done:                    # stop the worker; it may be reaped already
            import signal
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    return True


def _worker(path: str, rng: tuple[int, int], auditd: bool, keep: Any, fold: Any, up: int,
            down: int, fd_out: int) -> int:
    chan = _Chan(down, up)
    with S.no_gc():
        acc = _Acc(keep, S.MAX_GROUPS, fold, room=S.MAX_GROUP_BYTES)
        S._scan_range(path, rng[0], rng[1], auditd, acc, None)
        st = acc.state()
        st["groups"] = {}
        chan.send((st, Counter(k[0] for k in acc.groups)))
        mine, names = chan.recv()
        st0 = (acc.filtered, acc.overflow)
        _merge(acc, chan.swap(_route(acc, mine, False)))
        found = Scan()
        found.table = acc.groups
        chan.send((acc.filtered - st0[0], acc.overflow - st0[1], len(acc.groups),
                   {k[0] for k in acc.groups}))
        parts, info = _by_vm(found, names)
        sep = ""
        for piece in json_renderer(info)(parts):
            data = (sep + piece).encode("ascii")
            view = memoryview(data)
            while view:
                view = view[os.write(fd_out, view):]
            sep = ", "
    return 0


def _lead(path: str, rng: tuple[int, int], auditd: bool, keep: Any, fold: Any, up: int,
          down: int, out: IO[str], names_for: Callable[[set[str]], dict[str, str]],
          warnings_for: Callable[[Scan, set[str]], list[str]],
          tick: Callable[[int], None] | None, pid: int) -> None:
    from .report import uuid_of

    chan = _Chan(up, down)
    acc = _Acc(keep, S.MAX_GROUPS, fold, room=S.MAX_GROUP_BYTES)
    share = max(1, rng[1] - rng[0])
    total = os.path.getsize(path)
    report = None if tick is None else (lambda k: tick(k * total // share))
    S._scan_range(path, rng[0], rng[1], auditd, acc, report)
    st, theirs = chan.recv()
    acc.merge(st)                       # the worker's counters (its groups come below)
    counts: Counter[str | None] = Counter(k[0] for k in acc.groups)
    counts.update(theirs)
    kept = [p for p in counts if p is not None and (keep is None or keep(p))]
    names = names_for({u for u in map(uuid_of, kept) if u})
    vm_of = {p: names.get(uuid_of(p) or "", p.split("//", 1)[0]) for p in kept}
    per_vm: Counter[str] = Counter()
    for p in kept:
        per_vm[vm_of[p]] += counts[p]
    # the first VMs in name order, about half of the groups, are the worker's
    half = sum(per_vm.values()) // 2
    theirs_vms: set[str] = set()
    got = 0
    for vm in sorted(per_vm)[:-1]:
        if got + per_vm[vm] > half and theirs_vms:
            break
        theirs_vms.add(vm)
        got += per_vm[vm]
    mine = {p for p in kept if vm_of[p] in theirs_vms}
    chan.send((mine, names))
    out.write(json.dumps({"source": "file", "records": acc.records})[:-1] + ', "groups": [')
    out.flush()                         # before the worker writes its VMs
    _merge(acc, chan.swap(_route(acc, mine, True)))
    filtered, overflow, their_rows, their_profiles = chan.recv()
    acc.filtered += filtered
    acc.overflow += overflow
    found = Scan()
    found.kind = "file"
    found.records = acc.records
    found.notices = {k: acc.notices[k] for k in NOTICE_KINDS if acc.notices.get(k)}
    found.overflow = acc.overflow
    found.not_denials = acc.filtered    # the fold drops only records that deny nothing
    found.twins = acc.twins
    found.guessed = acc.guessed
    found.table = acc.groups
    parts, info = _by_vm(found, names)
    pieces = list(json_renderer(info)(parts))
    _, status = os.waitpid(pid, 0)
    raise_for_child(status, "the scan worker")
    sep = ", " if their_rows else ""
    for piece in pieces:
        out.write(sep + piece)
        sep = ", "
    shown = their_profiles | {k[0] for k in acc.groups}
    warnings = warnings_for(found, {p.split("//")[0] for p in shown})
    out.write('], ' + json.dumps(found.accounting())[1:-1] + ', "warnings": '
              + json.dumps(warnings, ensure_ascii=True) + "}\n")
