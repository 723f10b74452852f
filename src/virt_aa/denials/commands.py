"""The denial verbs: ``denials``, ``explain``, ``suggest``, ``check``.

Effects live here (reading logs, libvirt, the store); the analysis is in
:mod:`report` and the parsing in :mod:`parse`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..store import Store
from . import sources
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


class Scan:
    """What reading the logs found: groups, and what makes them untrustworthy."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str, str, str, str], Group] = {}
        self.notices: dict[str, int] = {}
        self.records = 0
        self.kind = "file"


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


def scan(args: Any, want: Callable[[Any], bool] | None = None) -> Scan:
    from .parse import iter_records, notices

    result = Scan()
    since = sources.parse_time(args.since)
    until = sources.parse_time(args.until)
    if _big_plain_file(args) and since is None and until is None:
        return _scan_big(args.file, want, result)
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
                yield line

    def wanted(rec: Any) -> bool:
        if since is not None and rec.time is not None and rec.time < since:
            return False
        if until is not None and rec.time is not None and rec.time > until:
            return False
        return want is None or bool(want(rec))

    try:
        result.groups = group_records(_count(iter_records(lines()), result), wanted)
    finally:
        progress.close()
    return result


BIG = 64 << 20


def _big_plain_file(args: Any) -> bool:
    f = args.file
    if not f or f == "-" or f.endswith(".gz") or args.follow:
        return False
    try:
        return os.path.isfile(f) and os.path.getsize(f) >= BIG
    except OSError:
        return False


def _scan_big(path: str, want: Callable[[Any], bool] | None, result: Scan) -> Scan:
    """Big files: the parallel scanner (both cores, bounded memory), same groups."""
    from .scan import group_file

    size = os.path.getsize(path)
    progress = Progress(size, "scanning")
    done = [0]

    def tick(now: int, total: int) -> None:
        progress.update(now - done[0])
        done[0] = now

    def wanted(rec: Any) -> bool:
        if uuid_of(rec.profile or rec.label) is None:
            return False
        return want is None or bool(want(rec))

    try:
        res = group_file(path, workers=max(1, min(2, os.cpu_count() or 1)), want=wanted,
                         progress=tick)
    finally:
        progress.close()
    result.kind = "file"
    result.records = res.records
    result.notices = dict(res.notices)
    for g in res.groups.values():
        if g.mode not in ("DENIED", "ALLOWED") or g.profile is None:
            continue
        mode = "denied" if g.mode == "DENIED" else "allowed"
        key = (g.profile, mode, g.operation or "?", g.resource or "?",
               g.denied or g.requested or "")
        grp = result.groups.get(key)
        if grp is None:
            grp = result.groups[key] = Group(*key)
        grp.add(g.first, None, n=g.count)
        if g.last is not None:
            grp.add(g.last, None, n=0)
    return result


def _count(records: Iterable[Any], result: Scan) -> Iterator[Any]:
    for rec in records:
        result.records += 1
        yield rec


def vm_names(store: Store, uuids: set[str], uri: str | None) -> dict[str, str]:
    """Names for profiles: what virt-aa stored, then libvirt (if it answers)."""
    names = {}
    for u in uuids:
        name = store.settings(u).get("name")
        if name:
            names[u] = name
    missing = uuids - set(names)
    if missing and uri is not None:
        from .. import libvirt as lv

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
    for note, n in sorted(scan_.notices.items()):
        out.append(f"{labels.get(note, note)}: {n} notice(s) in this window; counts are "
                   f"lower bounds")
    for profile in sorted(set(profiles)):
        quiet = _quiet_denies(store, profile)
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
    from ..aare import compile_aare, load_tunables

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


def for_domain(uuid: str | None) -> Callable[[Any], bool] | None:
    if uuid is None:
        return None
    return lambda rec: uuid_of(rec.profile or rec.label) == uuid


def group_dicts(groups: Iterable[Group], names: dict[str, str]) -> list[dict[str, Any]]:
    rows = [g.to_dict(names) for g in groups]
    rows.sort(key=lambda r: (r["vm"], -r["count"], r["operation"], r["resource"]))
    return rows


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
