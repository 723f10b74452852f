"""journald's two copies of one AppArmor event, counted once.

journald stores a kernel audit record twice when both its audit transport and
the kernel's printk reach it: ``audit[655]: AVC apparmor="DENIED" ... pid=655``
and ``kernel: audit: type=1400 audit(1652888577.188:37): apparmor="DENIED" ...
pid=655`` (same host, same pid, same record; written next to each other, the
first without the audit stamp).  A record of one transport is a twin when an
unmatched record of the other one with the same content came within the last
`WINDOW` records of that transport; each record pairs at most once, so two real
events that look alike stay two, and so do two copies whose audit serials (event ids)
differ.
"""

from __future__ import annotations

from collections import deque
from typing import Any

WINDOW = 64
_OTHER = {"audit": "kernel", "kernel": "audit"}


class Twins:
    """`twin(rec)`: whether `rec` is the second copy of an event already counted."""

    __slots__ = ("count", "keys")

    def __init__(self) -> None:
        self.count = 0                  # twins found
        # per transport: the last WINDOW records, [stamp key or None, content key,
        # unmatched], oldest first
        self.keys: dict[str, deque[list[Any]]] = {"audit": deque(), "kernel": deque()}

    def twin(self, rec: Any) -> bool:
        src = rec.source
        eid = rec.event_id
        if (src != "audit" and src != "kernel") or (rec.pid is None and eid is None):
            return False
        # both copies stamped (journal JSON): the audit serial says it, even when the
        # kernel's copy was cut at the printk limit; else the content must agree
        stamp = (rec.host, eid, rec.profile, rec.operation) if eid is not None else None
        content = (rec.host, rec.pid, rec.mode, rec.operation, rec.profile, rec.name,
                   rec.requested, rec.denied, rec.comm)
        for entry in self.keys[_OTHER[src]]:  # pair with the oldest unmatched copy
            if entry[2] and ((entry[0] == stamp) if stamp is not None and entry[0] is not None
                             else entry[1] == content):
                entry[2] = False
                self.count += 1
                return True
        keys = self.keys[src]
        keys.append([stamp, content, True])
        if len(keys) > WINDOW:
            keys.popleft()
        return False
