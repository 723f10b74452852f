"""journald's two copies of one AppArmor event, counted once.

journald stores a kernel audit record twice when both its audit transport and
the kernel's printk reach it: ``audit[655]: AVC apparmor="DENIED" ... pid=655``
and ``kernel: audit: type=1400 audit(1652888577.188:37): apparmor="DENIED" ...
pid=655`` (same host, same pid, same record; written next to each other, the
first without the audit stamp).  A record of one transport is a twin when an
unmatched record of the other one with the same content came within the last
`WINDOW` records of that transport; each record pairs at most once, so two real
events that look alike stay two.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

WINDOW = 64
_OTHER = {"audit": "kernel", "kernel": "audit"}


class Twins:
    """`twin(rec)`: whether `rec` is the second copy of an event already counted."""

    __slots__ = ("count", "keys", "live")

    def __init__(self) -> None:
        self.count = 0                  # twins found
        # per transport: the last WINDOW records, [key, unmatched], oldest first
        self.keys: dict[str, deque[list[Any]]] = {"audit": deque(), "kernel": deque()}
        self.live: dict[str, Counter[Any]] = {"audit": Counter(), "kernel": Counter()}

    def twin(self, rec: Any) -> bool:
        src = rec.source
        if (src != "audit" and src != "kernel") or rec.pid is None:
            return False
        key = (rec.host, rec.pid, rec.mode, rec.operation, rec.profile, rec.name,
               rec.requested, rec.denied, rec.comm)
        other = _OTHER[src]
        live = self.live[other]
        if live[key] > 0:               # pair with the oldest unmatched copy
            live[key] -= 1
            for entry in self.keys[other]:
                if entry[1] and entry[0] == key:
                    entry[1] = False
                    break
            self.count += 1
            return True
        keys, mine = self.keys[src], self.live[src]
        keys.append([key, True])
        mine[key] += 1
        if len(keys) > WINDOW:
            old, alive = keys.popleft()
            if alive:
                mine[old] -= 1
                if not mine[old]:
                    del mine[old]
        return False
