"""The denial verbs: ``denials``, ``explain``, ``suggest``, ``check``.

Effects live here (reading logs, libvirt, the store); the analysis is in
:mod:`report` and the parsing in :mod:`parse`.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from virt_aa.host.store import Store

from . import sources
from .catalogue import NOT_APPARMOR
from .programs import SERVING, program_of, serves
from .report import Group, group_records, proposals, uuid_of

PROGRESS_EVERY = 4 << 20


class Progress:
    """A progress bar on a terminal's stderr while a large file is read; silent otherwise."""

    def __init__(self, total: int, label: str) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.next = PROGRESS_EVERY
        self.on = total > 64 << 20 and sys.stderr.isatty()

    def update(self, n: int) -> None:
        self.done += n
        if self.on and self.done >= self.next:
            self.next = self.done + PROGRESS_EVERY
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 30)
            sys.stderr.write(f"\r{self.label} [{bar:<30}] {frac * 100:5.1f}% "
                             f"{self.done >> 20}/{self.total >> 20} MiB")
            sys.stderr.flush()

    def close(self) -> None:
        if self.on:
            sys.stderr.write("\r" + " " * 78 + "\r")
            sys.stderr.flush()


GKey = tuple[str, str, str, str, str]     # profile, mode, operation, resource, perms


class Scan:
    """What reading the logs found: groups, and what makes them untrustworthy.

    Big files fill `table` (key -> [count, first, last]: lean, 100k groups fit
    in a few tens of MB); `groups` gives `Group` objects, made from the table
    on first use."""

    def __init__(self) -> None:
        self.table: dict[GKey, list[Any]] = {}
        self._groups: dict[GKey, Group] = {}
        self.notices: dict[str, int] = {}
        self.records = 0
        self.overflow = 0               # records past the scanner's group cap
        self.not_denials = 0            # records that deny nothing (STATUS, AUDIT, HINT ...)
        self.excluded = 0               # of other VMs or profiles, or outside --since/--until
        self.twins = 0                  # journald's second copies of an event
        self.guessed = 0                # records whose time has a guessed year
        self.not_apparmor: dict[int, int] = {}   # catalogue.NOT_APPARMOR index -> lines
        #                                 (the line path's, for explain)
        self.kind = "file"

    @property
    def groups(self) -> dict[GKey, Group]:
        if self.table and not self._groups:
            for key, (n, first, last) in self.table.items():
                key = (key[0], key[1], key[2], key[3] or "?", key[4] or "")
                g = self._groups.get(key) or self._groups.setdefault(key, Group(*key))
                g.add(first, None, n=n)
                if last is not None:
                    g.add(last, None, n=0)
        return self._groups

    @groups.setter
    def groups(self, value: dict[GKey, Group]) -> None:
        self._groups = value

    def profiles(self) -> set[str]:
        """The profiles (child profiles included) that have groups."""
        if self.table:
            return {k[0] for k in self.table}
        return {k[0] for k in self._groups}

    def accounting(self) -> dict[str, int]:
        """How every record is accounted for: records = the groups' counts + not_denials
        + excluded + twins."""
        return {"not_denials": self.not_denials, "excluded": self.excluded,
                "twins": self.twins, "times_guessed": self.guessed}


def _lines(args: Any) -> tuple[str, list[Iterable[str]], int]:
    """(kind, line iterators, total bytes) for the chosen source."""
    if args.file:
        if args.follow and args.file != "-":
            return "file", [sources.follow(args.file)], 0
        size = 0
        if args.file != "-":
            try:
                size = os.path.getsize(args.file)
            except OSError as exc:
                raise sources.SourceError(f"cannot read {args.file}: {exc.strerror}") from None
        return "file", [sources.open_lines(args.file)], size
    kind, files = sources.pick(args.source)
    if kind == "journal":
        return kind, [sources.journal_lines(args.since, args.until, args.follow)], 0
    if kind == "dmesg":
        return kind, [sources.dmesg_lines()], 0
    if args.follow:
        return kind, [sources.follow(files[-1])], 0
    total = sum(os.path.getsize(f) for f in files if os.path.exists(f))
    return kind, [sources.open_lines(f) for f in files], total


def scan(args: Any, uuid: str | None = None, name: str | None = None) -> Scan:
    """The denials in the chosen logs, of every profile, or of one domain (`uuid`, its
    `name` if known): its own profiles and the helpers that serve it."""
    from .parse import iter_records, notices
    from .twins import Twins

    result = Scan()
    since = sources.parse_time(args.since)
    until = sources.parse_time(args.until)
    if big_file(args):
        return _scan_big(args.file, uuid, name, result)
    want = for_domain(uuid, name)
    kind, streams, total = _lines(args)
    result.kind = kind
    progress = Progress(total, "scanning")

    def lines() -> Iterator[str]:
        for stream in streams:
            for line in stream:           # every line: continuations glue split records
                progress.update(len(line) + 1)
                note = notices(line)
                if note:
                    result.notices[note] = result.notices.get(note, 0) + 1
                if "apparmor=" not in line and "allocate" in line:
                    for i, cause in enumerate(NOT_APPARMOR):
                        if cause[0] in line:
                            result.not_apparmor[i] = result.not_apparmor.get(i, 0) + 1
                yield line

    wanted = _wanted(since, until, want)

    twins = Twins()

    def counted(records: Iterable[Any]) -> Iterator[Any]:
        for rec in records:
            result.records += 1
            if twins.twin(rec):
                result.twins += 1
                continue
            if "year_guessed" in rec.flags:
                result.guessed += 1
            if rec.mode not in ("DENIED", "ALLOWED"):
                result.not_denials += 1
            elif not wanted(rec):
                result.excluded += 1
            else:
                yield rec

    records = (_per_line(lines()) if kind == "file" and _auditd_file(args.file)
               else iter_records(lines()))
    try:
        result.groups = group_records(counted(records))
    finally:
        progress.close()
    return result


def _wanted(since: float | None, until: float | None,
            want: Callable[[Any], bool] | None) -> Callable[[Any], bool]:
    """Records inside --since/--until (a record without a time is kept) and, with a
    domain, of that domain."""
    def wanted(rec: Any) -> bool:
        if since is not None and rec.time is not None and rec.time < since:
            return False
        if until is not None and rec.time is not None and rec.time > until:
            return False
        return want is None or bool(want(rec))
    return wanted


def follow_groups(args: Any, uuid: str | None = None) -> Iterator[Group]:
    """``--follow``: each new record as it is written, as a group of one."""
    from .parse import iter_records
    from .twins import Twins

    since = sources.parse_time(args.since)
    until = sources.parse_time(args.until)
    want = for_domain(uuid)

    wanted = _wanted(since, until, want)

    twins = Twins()
    _, streams, _ = _lines(args)
    for stream in streams:
        for rec in iter_records(stream):
            if not twins.twin(rec):
                yield from group_records([rec], wanted).values()


def _auditd_file(path: str | None) -> bool:
    """An auditd log (as the big-file scanner decides it: its first 64 KiB)."""
    from .scan import _is_auditd

    if not path or path == "-" or path.endswith(".gz"):
        return False
    try:
        with open(path, "rb") as f:
            return _is_auditd(f.read(65536))
    except OSError:
        return False


def _per_line(lines: Iterable[str]) -> Iterator[Any]:
    """auditd writes each record on one line: no gluing of cut lines (as the big-file
    scanner reads it)."""
    from .parse import parse_line

    for n, line in enumerate(lines, 1):
        if 'apparmor="' not in line:   # (the scanner looks for exactly this)
            continue
        rec = parse_line(line.rstrip("\n"))
        if rec is not None:
            rec.lineno = n
            yield rec


BIG = 64 << 20


def big_file(args: Any) -> bool:
    """A plain file of BIG bytes or more, read whole: the parallel scanner's job."""
    return _big_plain_file(args) and args.since is None and args.until is None


def _big_plain_file(args: Any) -> bool:
    f = args.file
    if not f or f == "-" or f.endswith(".gz") or args.follow:
        return False
    try:
        return os.path.isfile(f) and os.path.getsize(f) >= BIG
    except OSError:
        return False


EXCLUDED = "\0excluded"                  # the fold's one group for records of other profiles


def _scan_big(path: str, uuid: str | None, name: str | None, result: Scan) -> Scan:
    """Big files: the parallel scanner (both cores, bounded memory), same groups."""
    from .scan import group_file

    size = os.path.getsize(path)
    progress = Progress(size, "scanning")
    done = [0]

    def tick(now: int, total: int) -> None:
        progress.update(now - done[0])
        done[0] = now

    keep, fold = keep_fold(uuid)
    try:
        res = group_file(path, workers=max(1, min(2, os.cpu_count() or 1)), keep=keep,
                         progress=tick, fold=fold)
    finally:
        progress.close()
    result.kind = "file"
    result.records = res.records
    result.notices = dict(res.notices)
    result.overflow = res.overflow
    result.not_denials = res.filtered   # the fold drops only records that deny nothing
    result.twins = res.twins
    result.guessed = res.guessed
    result.table = res.raw              # type: ignore[assignment]
    if uuid is not None:
        result.excluded = _only_domain(result.table, uuid, name)
    return result


def _only_domain(table: dict[Any, list[Any]], uuid: str, name: str | None) -> int:
    """Drop from `table` what the fold set aside and the helpers' records that do not name
    the domain; the records dropped."""
    n = 0
    for key in list(table):
        prof = key[0]
        if prof == EXCLUDED or (uuid_of(prof) != uuid
                                and not serves(key[3], uuid, name)):
            n += table.pop(key)[0]
    return n


def keep_fold(uuid: str | None) -> tuple[None, Callable[[Any], GKey | None]]:
    """How the scanner folds its groups into ours (DENIED/ALLOWED only, perms = denied or
    requested; no profile: "?"): with `uuid`, records of profiles that are neither the
    domain's nor a serving helper's all go to one EXCLUDED group (`_only_domain`)."""
    modes = {"DENIED": "denied", "ALLOWED": "allowed"}
    kept: dict[str | None, bool] = {}
    excluded = (EXCLUDED, "denied", "?", "?", "")

    def fold(k: Any) -> GKey | None:    # a scan group -> ours (in each scan worker)
        m = modes.get(k[1])
        if m is None:
            return None
        prof = k[0] or "?"
        if uuid is not None:
            ok = kept.get(prof)
            if ok is None:
                ok = kept[prof] = (uuid_of(prof) == uuid
                                   or program_of(prof) in SERVING)
            if not ok:
                return excluded
        return (prof, m, k[2] or "?", k[3] or "?", k[5] or k[4] or "")

    return None, fold


def vm_names(store: Store, uuids: set[str], uri: str | None) -> dict[str, str]:
    """Names for profiles: what virt-aa stored, then libvirt (if it answers)."""
    names = {}
    for u in uuids:
        name = store.settings(u).get("name")
        if name:
            names[u] = name
    missing = uuids - set(names)
    if missing and uri is not None:
        from virt_aa.host import libvirt as lv

        try:
            conn = lv.connect(uri)
            for u in missing:
                try:
                    names[u] = conn.lookupByUUIDString(u).name()
                except Exception:  # unknown to libvirt: keep the profile name
                    continue
        except lv.LibvirtError:
            pass
    return names


def honesty(scan_: Scan, store: Store, profiles: Iterable[str]) -> list[str]:
    """Why the logs may not show everything."""
    out = []
    if scan_.kind in ("kern", "dmesg", "journal") and not os.path.exists(sources.AUDIT_LOG):
        out.append("no auditd here: denials come from the kernel ring buffer, which the "
                   "kernel rate-limits, so bursts are lost (install auditd for complete "
                   "logs)")
    labels = {"audit_lost": "audit records were lost (audit_lost)",
              "rate limit": "the audit rate limit was exceeded",
              "callbacks suppressed": "the kernel suppressed log messages "
                                      "(callbacks suppressed)",
              "journal missed": "journald missed kernel messages",
              "imjournal lost": "rsyslog lost journal messages"}
    if scan_.overflow:
        from .scan import MAX_GROUP_BYTES, MAX_GROUPS

        out.append(f"{scan_.overflow} record(s) of rarely seen accesses are counted per VM, "
                   f"mode and operation only (resource '?'): the scan keeps at most "
                   f"{MAX_GROUPS} groups and {MAX_GROUP_BYTES >> 20} MiB of names to bound "
                   f"its memory; name the domain or narrow the file to see them")
    if scan_.guessed:
        out.append(f"{scan_.guessed} record(s) have syslog times without a year: their year "
                   f"is a guess (this year, or the last if that would be in the future); "
                   f"their first/last seen are flagged year_guessed")
    for note, n in sorted(scan_.notices.items()):
        out.append(f"{labels.get(note, note)}: {n} notice(s) in this window; counts are "
                   f"lower bounds")
    for profile in sorted(p for p in set(profiles) if uuid_of(p) is not None):
        quiet = _quiet_denies(store, profile)   # (a VM's: other names are log text)
        if quiet:
            out.append(f"{profile}: {quiet} deny rule(s) in its profile refuse accesses "
                       f"without logging them (e.g. writes to read-only images)")
    return out


def _quiet_denies(store: Store, profile: str) -> int:
    n = 0
    for path in (store.files(profile), store.local(profile)):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    words = line.split()
                    if words and words[0] == "deny":
                        n += 1
        except OSError:
            continue
    return n


def matcher() -> Callable[[str, str], bool]:
    """AppArmor pattern matching with the host's tunables (cached per pattern)."""
    from virt_aa.policy.aare import compile_aare, load_tunables

    variables = load_tunables()
    cache: dict[str, Any] = {}

    def matches(pattern: str, path: str) -> bool:
        p = cache.get(pattern)
        if p is None:
            try:
                p = cache[pattern] = compile_aare(pattern, variables)
            except ValueError:
                return False
        return bool(p.matches(path))

    return matches


def for_domain(uuid: str | None, name: str | None = None) -> Callable[[Any], bool] | None:
    """The domain's records: of its profiles, or of a helper serving it (`serves`)."""
    if uuid is None:
        return None

    def want(rec: Any) -> bool:
        prof = rec.profile or rec.label
        if uuid_of(prof) == uuid:
            return True
        return program_of(prof) in SERVING and serves(rec.resource, uuid, name)
    return want


def raise_for_child(status: int, what: str) -> None:
    """A forked helper's wait status as this process's error: the errno it exited with
    (100 + errno: EPIPE when the reader went away, ENOSPC...), else a failure."""
    code = os.waitstatus_to_exitcode(status)
    if code == 100 + errno.EPIPE:
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
    if code > 100:
        raise OSError(code - 100, os.strerror(code - 100) + " (writing the output)")
    if code != 0:
        raise RuntimeError(f"{what} failed (exit {code})")


def child_code(exc: BaseException) -> int:
    """The exit code that tells `raise_for_child` what went wrong in a forked helper."""
    if isinstance(exc, OSError) and exc.errno and exc.errno < 150:
        return 100 + exc.errno
    return 1


def proposals_for(group: Group, matches: Callable[[str, str], bool]) -> list[dict[str, Any]]:
    """Candidate rules, each saying whether it would cover the denial."""
    out = []
    for p in proposals(group):
        rule = p["rule"]
        covers = True
        if group.is_file:
            words = rule.split()
            path = words[1] if words[0] == "owner" else words[0]
            covers = matches(path.strip('"'), group.resource)
        out.append({**p, "covers": covers})
    return out
