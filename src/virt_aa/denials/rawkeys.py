"""Raw keys of the auditd fast path, taken apart and put back together.

A plain AVC raw key (see `auditscan`) whose name is the kernel's usual one
splits into its *template* (the text around the name) and the name; a dbus
USER_AVC raw key of the usual shape is read from its ``msg='...'`` alone.
The C counter (`_avcscan.c`) splits the same way; the tests compare them.
"""

from __future__ import annotations

import re

from virt_aa.denials.lines import _incomplete
from virt_aa.denials.parse import _MODE_RE, _tokens
from virt_aa.denials.record import Record

_TRUNCATED = frozenset({"truncated"})


def _dbus_record(head: bytes, mid: bytes, tail: bytes) -> Record | None:
    """The record of a dbus raw key (see `_Audit._dbus`) when its msg='...' is the usual
    one: no quote or ENRICHED separator inside, nothing after it but the ENRICHED part;
    what the parser makes of it, without parsing the line around it.  None: the parser
    decides."""
    text = b"".join((head, b"0", mid, b"0" if mid.endswith(b" peer_pid=") else b"", tail))
    q = text.find(b"'")
    if q < 0 or text[q + 1:q + 2] not in (b"", b"\x1d") or b"\x1d" in text[:q]:
        return None
    body = 'apparmor="' + text[:q].decode("utf-8", "surrogateescape")
    fields: dict[str, str] = {}
    cut = _tokens(body, fields)
    mode = fields.get("apparmor")
    if not mode or (cut and len(fields) == 1) or not _MODE_RE.fullmatch(mode):
        return None
    op = fields.get("operation", "")
    source = "dbus" if (op.startswith("dbus") or "bus" in fields) else "audit"
    cut = cut or _incomplete(fields, source)
    return Record(source, mode, fields, _TRUNCATED if cut else frozenset())


def _name(nm: bytes) -> str | None:
    """A name= value as the kernel writes it: quoted, or upper-case hex (None: anything else)."""
    if len(nm) >= 2 and nm[:1] == b'"' and nm[-1:] == b'"' and b'"' not in nm[1:-1]:
        return nm[1:-1].decode("utf-8", "surrogateescape")
    if nm and not len(nm) & 1 and _HEX_B.fullmatch(nm) is not None:
        return bytes.fromhex(nm.decode("ascii")).decode("utf-8", "surrogateescape")
    return None


def _split(key: bytes) -> tuple[bytes, str | None]:
    """A raw key as (text before name= NUL text after comm=, the name) when its name is
    the kernel's usual one (`_name`) and not empty, else (the raw key, None).  The C
    counter's `take` does the same (and numbers the first part)."""
    head, _, rest = key.partition(b" pid=")
    pre, nsep, nm = head.partition(b" name=")
    if nsep:
        name = _name(nm)
        if name:
            return pre + b"\0" + rest, name
    return key, None


def _unsplit(tk: bytes, name: str) -> bytes:
    """The raw key `_split` took apart (the name in hex, which decodes the same)."""
    pre, _, rest = tk.partition(b"\0")
    return b"".join((pre, b" name=", name.encode("utf-8", "surrogateescape").hex().upper()
                     .encode("ascii"), b" pid=", rest))


_HEX_B = re.compile(rb"[0-9A-F]+")
