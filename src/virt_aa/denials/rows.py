"""The rows `virt-aa denials` prints: dicts in a fixed order, and the same as a JSON
document rendered in pieces (100k+ groups never sit in memory as dicts).

Rows are ordered by VM name, then count (biggest first), operation, resource,
mode, perms and profile (`group_dicts`); the table of a big scan gives the same
rows without making `Group` objects (`rows`, `json_renderer`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .programs import program_of
from .report import Group, uuid_of

if TYPE_CHECKING:
    from .commands import Scan


def group_dicts(groups: Iterable[Group], names: dict[str, str]) -> list[dict[str, Any]]:
    rows = [g.to_dict(names) for g in groups]
    rows.sort(key=_row_order)
    return rows


def _row_order(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["vm"], -r["count"], r["operation"], r["resource"], r["mode"], r["perms"],
            r["profile"])


Ordered = tuple[int, str, str, str, str, str, Any, Any]


def _by_vm(scan_: Scan, names: dict[str, str]) -> tuple[list[list[Ordered]], dict[str, Any]]:
    """The table's groups as (-count, operation, resource, mode, perms, profile, first,
    last), one unsorted list per VM in VM-name order (each sorted, they give the
    `group_dicts` order); and per profile its (vm, uuid, child)."""
    info: dict[str, tuple[str, str | None, str | None]] = {}
    for prof in scan_.profiles():
        u = uuid_of(prof)
        info[prof] = (names.get(u or "", prof.split("//", 1)[0]), u,
                      prof.split("//", 1)[1] if "//" in prof else None)
    per_vm: dict[str, list[Ordered]] = {}
    lists = {p: per_vm.setdefault(i[0], []) for p, i in info.items()}
    for k, (n, first, last) in scan_.table.items():   # None: an overflow group's resource
        if first is None or last is None:               # as Group.add has them
            first = last = last if first is None else first
        lists[k[0]].append((-n, k[2], k[3] or "?", k[1], k[4] or "", k[0], first, last))
    return [per_vm[vm] for vm in sorted(per_vm)], info


def _sorted(parts: list[list[Ordered]]) -> Iterator[Ordered]:
    for part in parts:                  # small sorts with an int first: much faster
        part.sort()
        yield from part


class _Iso:
    """`report._iso` for many stamps: the date once per day, the text up to the minute once
    per minute (`quote`: with the JSON quotes around it)."""

    def __init__(self, quote: str = "") -> None:
        self.days: dict[int, str] = {}
        self.mins: dict[float, str] = {}
        self.hm = [f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60)]
        # divmod(-1e-20, 60) is (-1.0, 60.0): the 61st is second 59 of the minute before
        self.ss = [f"{s:02d}Z{quote}" for s in range(60)] + [f"59Z{quote}"]
        self.quote = quote

    def __call__(self, t: float | None) -> str | None:
        if t is None:
            return None
        m, r = divmod(t, 60)            # floored, as gmtime does
        return (self.mins.get(m) or self.minute(m)) + self.ss[int(r)]

    def minute(self, m: float) -> str:
        """The text of minute `m` since the epoch, up to its seconds (cached)."""
        d, r = divmod(int(m), 1440)
        day = self.days.get(d)
        if day is None:
            day = self.days[d] = time.strftime("%Y-%m-%dT", time.gmtime(d * 86400))
        if len(self.mins) > 65536:
            self.mins.clear()
        s = self.mins[m] = f"{self.quote}{day}{self.hm[r]}"
        return s


def rows(scan_: Scan, names: dict[str, str]) -> Iterator[dict[str, Any]]:
    """The groups as output rows, in `group_dicts` order; from the table without making
    `Group` objects (100k groups: a fraction of the time and memory)."""
    if not scan_.table:
        yield from group_dicts(scan_.groups.values(), names)
        return
    parts, info = _by_vm(scan_, names)
    iso = _Iso()
    for negn, op, resource, mode, perms, prof, first, last in _sorted(parts):
        vm, u, child = info[prof]
        yield {"vm": vm, "program": program_of(prof), "profile": prof, "uuid": u,
               "child": child, "operation": op,
               "mode": mode, "resource": resource, "perms": perms, "count": -negn,
               "first_seen": iso(first), "last_seen": iso(last), "event": None, "flags": {}}


def write_json_rows(scan_: Scan, names: dict[str, str], out: Any, per: int = 2000) -> None:
    """`rows` written to the text stream `out` as JSON (``json.dumps`` of each row, joined
    by ", "), `per` rows at a time: big tables never sit in memory as one document."""
    import json

    if not scan_.table:
        it = rows(scan_, names)
        sep = ""
        while True:
            chunk = list(itertools.islice(it, per))
            if not chunk:
                return
            out.write(sep + json.dumps(chunk, ensure_ascii=True)[1:-1])
            sep = ", "
    parts, info = _by_vm(scan_, names)
    render = json_renderer(info, per)

    sep = ""
    for piece in render(parts):
        out.write(sep + piece)
        sep = ", "


def json_renderer(info: dict[str, Any], per: int = 2000
                  ) -> Callable[[list[list[Ordered]]], Iterator[str]]:
    """JSON text of `_by_vm` parts, `per` rows a piece (`info`: `_by_vm`'s per profile)."""
    import json
    from json.encoder import encode_basestring_ascii as enc

    head = {p: f'{{"vm": {enc(vm)}, "program": "{program_of(p)}", "profile": {enc(p)}, '
                  f'"uuid": {json.dumps(u)}, '
                  f'"child": {json.dumps(child, ensure_ascii=True)}, "operation": '
            for p, (vm, u, child) in info.items()}

    def render(parts: list[list[Ordered]]) -> Iterator[str]:
        iso = _Iso('"')
        mins, minute, ss = iso.mins, iso.minute, iso.ss
        lead: dict[tuple[str, str, str], str] = {}    # the row up to its resource
        words: dict[str, str] = {}

        def start(prof: str, op: str, mode: str) -> str:
            s = lead[prof, op, mode] = (
                f'{head[prof]}{enc(op)}, "mode": {enc(mode)}, "resource": ')
            return s

        rows_: list[str] = []
        add = rows_.append
        for negn, op, resource, mode, perms, prof, first, last in _sorted(parts):
            # stamps: `_Iso`, inline (one dict lookup per stamp, no string made)
            if first is None:
                fm, fs = "null", ""
            else:
                m, sec = divmod(first, 60)
                fm, fs = mins.get(m) or minute(m), ss[int(sec)]
            if last == first:
                lm, ls = fm, fs
            elif last is None:
                lm, ls = "null", ""
            else:
                m, sec = divmod(last, 60)
                lm, ls = mins.get(m) or minute(m), ss[int(sec)]
            p = words.get(perms) or words.setdefault(perms, enc(perms))
            add(f'{lead.get((prof, op, mode)) or start(prof, op, mode)}{enc(resource)}, '
                f'"perms": {p}, "count": {-negn}, "first_seen": {fm}{fs}, "last_seen": '
                f'{lm}{ls}, "event": null, "flags": {{}}}}')
            if len(rows_) == per:
                yield ", ".join(rows_)
                rows_.clear()
        if rows_:
            yield ", ".join(rows_)

    return render
