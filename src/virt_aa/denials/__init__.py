"""AppArmor denial logs: one parser for every log shape, and fast grouping of big files.

`virt_aa.denials.parse` turns lines of audit.log, kern.log/syslog, dmesg,
journalctl (short and JSON) into `Record`s; `virt_aa.denials.scan` groups
the records of a big file with several worker processes.

Nothing is imported until it is used (``from virt_aa.denials import
parse_line`` loads the parser then), so importing a sibling module stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Record", "group_file", "iter_records", "notices", "parse_line"]


def __getattr__(name: str) -> Any:
    if name in ("Record", "iter_records", "notices", "parse_line"):
        from virt_aa.denials import parse
        return getattr(parse, name)
    if name == "group_file":
        from virt_aa.denials import scan
        return scan.group_file
    raise AttributeError(name)
