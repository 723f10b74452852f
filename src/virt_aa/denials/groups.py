"""The groups of a scan: `Group`, `ScanResult`, and the per-process accumulator `_Acc`.

Records are counted under a group key (profile, mode, operation, resource,
requested, denied), or under a caller's own key (`Fold`); at most
`max_groups` groups and `room` bytes of resource names are kept, past that
new groups fold into one per (profile, mode, operation).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from virt_aa.denials.parse import Record, resource_of

GroupKey = tuple[str | None, str, str | None, str | None, str | None, str | None]
Keep = Callable[[str | None], bool]     # which profiles (or labels) to group
Fold = Callable[[GroupKey], "tuple[Any, ...] | None"]   # a caller's own grouping (or drop)



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

    __slots__ = ("_groups", "bytes", "elapsed", "filtered", "guessed", "lines", "long_lines",
                 "method", "non_apparmor_lines", "notices", "overflow", "raw", "records",
                 "split", "truncated", "twins", "workers")

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
        self.twins = 0                  # journald's second copies of an event (not grouped)
        self.guessed = 0                # records whose time has a guessed year
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

    def __init__(self, keep: Keep | None, max_groups: int, fold: Fold | None = None, *,
                 room: int) -> None:
        self.keep = keep
        self.fold = fold
        self.max_groups = max_groups
        self.room = room                # bytes of resource names new groups may still add
        self.groups: dict[Any, list[Any]] = {}     # GroupKey, or what `fold` makes of it
        self.interned: dict[str, str] = {}
        self.records = 0
        self.lines = 0
        self.split = 0
        self.truncated = 0
        self.notices: Counter[str] = Counter()
        self.filtered = 0
        self.overflow = 0
        self.twins = 0
        self.guessed = 0
        self.long_lines = 0
        self.nbytes = 0

    def add(self, rec: Record, n: int = 1, first: float | None = None,
            last: float | None = None, stamped: bool = False) -> None:
        """Count `n` records like `rec` (first/last default to rec.time, unless `stamped`:
        they are the stamps seen, None when there were none)."""
        self.records += n
        fl = rec.flags
        if fl:
            if "split" in fl:
                self.split += n
            if "truncated" in fl:
                self.truncated += n
            if "year_guessed" in fl:
                self.guessed += n
        if self.keep is not None and not self.keep(rec.profile or rec.label):
            self.filtered += n
            return
        if first is None and not stamped:
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
                "overflow": self.overflow, "twins": self.twins, "guessed": self.guessed,
                "long_lines": self.long_lines, "bytes": self.nbytes}

    def put_many(self, items: Iterable[tuple[Any, list[Any]]]) -> None:
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
                    res = key[3] if len(key) > 3 else None     # the resource, as in `put`
                    if isinstance(res, str):
                        self.room -= len(res)
                    continue
                self.overflow += v[0]
                key = key[:3] + (None,) * (len(key) - 3)
                g = gget(key)
                if g is None:
                    groups[key] = v
                    continue
            _widen(g, v[0], v[1], v[2])

    def merge(self, st: dict[str, Any]) -> None:
        for k in ("records", "lines", "split", "truncated", "filtered", "overflow", "twins",
                  "guessed", "long_lines"):
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
