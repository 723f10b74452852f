"""Backing-chain discovery from image headers, with libvirt 9.0 virt-aa-helper semantics.

Stock virt-aa-helper calls ``virStorageSourceGetMetadata(src, -1, -1, 200, false)``
(src/storage_file/storage_source.c) for a disk whose XML has a format and no
``<backingStore>``, then emits ``rk`` for every local image of the resulting chain.
This module reproduces which images end up in that chain:

* headers are parsed exactly as ``virStorageFileProbeGetMetadata``
  (src/storage_file/storage_file_probe.c) does, on at most ``VIR_STORAGE_MAX_HEADER``
  bytes, with the same bounds checks and quirks;
* a backing name is turned into a location as ``virStorageSourceNewFromChild`` does:
  relative names are joined to the *given* (not resolved) directory of the parent,
  ``protocol:``/URI/``json:`` names go through ports of libvirt's parsers
  (src/storage_file/storage_source_backingstore.c) because a name libvirt cannot
  parse makes it drop the image that carries the name;
* an error on an image drops that image and ends the chain (``report_broken`` is false).

Headers are guest-influenced: every read is bounded, nothing recurses on input
structure, and no input can raise anything but :class:`ChainError`.

Deliberate differences from stock (safer, and documented in the report):

* the same file reached twice (by canonical path) raises ``ChainError`` (stock
  recurses 200 levels, repeating rules), and so does a chain deeper than ``max_depth``
  (stock silently truncates at 200 levels);
* only regular files and block devices are read (``read_header``): stock also
  includes directories (``fat:`` names, a name starting with NUL, a name naming a
  directory) and character devices, and blocks forever on a FIFO;
* a ``json:`` name with a relative ``filename`` stops the chain (stock resolves it
  against its own working directory and emits no rule for it).
"""

from __future__ import annotations

import os
import stat
import struct

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~8 ms
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "HEADER_BYTES",
    "BackingLink",
    "ChainError",
    "backing_chain",
    "backing_of",
    "probe_format",
    "read_header",
]

HEADER_BYTES = 0x8200
"""VIR_STORAGE_MAX_HEADER: libvirt never looks further into an image than this."""

DEFAULT_MAX_DEPTH = 64


class BackingLink:
    """One backing image: its path as libvirt computes it, and its format.

    A plain class: ``dataclasses`` costs ~10 ms to import on the VM-start path.
    """

    __slots__ = ("format", "path")

    def __init__(self, path: str, format: str | None) -> None:
        self.path = path
        self.format = format

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, BackingLink) and self.path == other.path
                and self.format == other.format)

    def __hash__(self) -> int:
        return hash((self.path, self.format))

    def __repr__(self) -> str:
        return f"BackingLink({self.path!r}, {self.format!r})"


class ChainError(Exception):
    """The backing chain loops or is deeper than allowed (never raised by stock)."""


# --------------------------------------------------------------------------- formats

# virStorageFileFormat, in enum order (the order matters for probing).
_FORMATS = (
    "none", "raw", "dir", "bochs", "cloop", "dmg", "iso", "vpc", "vdi",
    "fat", "vhd", "ploop", "cow", "qcow", "qcow2", "qed", "vmdk",
)
_FORMAT_SET = frozenset(_FORMATS)

# (name, magic offset, magic, big endian, version offset, versions); version
# offset -2 means "any version" (fileTypeInfo[] in storage_file_probe.c).
_MAGICS: tuple[tuple[str, int, bytes, bool, int, tuple[int, ...]], ...] = (
    ("iso", 32769, b"CD001", False, -2, ()),
    ("vpc", 0, b"conectix", True, 12, (0x10000,)),
    ("vdi", 64, b"\x7f\x10\xda\xbe", False, 68, (0x00010001,)),
    ("ploop", 0, b"WithouFreSpacExt", False, -2, ()),
    ("cow", 0, b"OOOM", True, 4, (2,)),
    ("qcow", 0, b"QFI", True, 4, (1,)),
    ("qcow2", 0, b"QFI", True, 4, (2, 3)),
    ("qed", 0, b"QED", False, -2, ()),
    ("vmdk", 0, b"KDMV", False, 4, (1, 2, 3)),
)

# Formats with a getBackingStore callback: offset of the 8-byte capacity field
# and its multiplier, both checked before the backing name is looked at.
_SIZE_FIELD = {
    "cow": (1036, 1), "qcow": (24, 1), "qcow2": (24, 1), "qed": (48, 1), "vmdk": (12, 512),
}
_BIG_ENDIAN = frozenset(("cow", "qcow", "qcow2"))

_QCOW2_EXT_BACKING_FORMAT = 0xE2792ACA
_QED_F_BACKING_FILE = 0x01
_QED_F_BACKING_FORMAT_NO_PROBE = 0x04
_U64_MAX = (1 << 64) - 1


def _field(data: bytes, off: int, size: int) -> bytes:
    """Bytes at a fixed offset; past the data they read as zero, as in libvirt's buffer."""
    return data[off:off + size].ljust(size, b"\0")


def _u32(data: bytes, off: int, big: bool = True) -> int:
    return int.from_bytes(_field(data, off, 4), "big" if big else "little")


def _u64(data: bytes, off: int, big: bool = True) -> int:
    return int.from_bytes(_field(data, off, 8), "big" if big else "little")


def _cstr(raw: bytes) -> bytes:
    """What C sees of a buffer: everything before the first NUL."""
    nul = raw.find(b"\0")
    return raw if nul < 0 else raw[:nul]


def probe_format(data: bytes) -> str | None:
    """Format libvirt guesses from header bytes (virStorageFileProbeFormatFromBuf).

    A known magic with an unknown version, or no known magic, is "raw".
    """
    data = data[:HEADER_BYTES]
    for name, moff, magic, big, voff, versions in _MAGICS:
        if data[moff:moff + len(magic)] != magic:
            continue
        if voff == -2:
            return name
        if voff + 4 > len(data):
            continue
        if struct.unpack_from(">i" if big else "<i", data, voff)[0] in versions:
            return name
    return "raw"


class _Backing:
    """A backing name as recorded in a header (a plain class: @dataclass costs import time)."""

    __slots__ = ("fmt", "raw", "strict")

    def __init__(self, raw: bytes, fmt: str | None, strict: bool) -> None:
        self.raw = raw  # C string, no NUL
        self.fmt = fmt  # recorded format name; None: probe it
        self.strict = strict  # a probed image may not have its own backing (AUTO, not AUTO_SAFE)


_NO_BACKING: tuple[bool, _Backing | None] = (True, None)
_UNUSABLE: tuple[bool, _Backing | None] = (False, None)


def _probe_backing(raw: bytes) -> _Backing:
    return _Backing(raw, None, True)


def _qcow2_backing_format(data: bytes, n: int, ext_end: int) -> tuple[bool, str | None]:
    """Walk qcow2 header extensions (qcow2GetExtensions); (ok, format or None to probe).

    Like libvirt, extension lengths are not rounded up to 8 bytes, a later backing
    format extension overrides an earlier one, and "none" or an unknown name fails.
    """
    version = struct.unpack(">i", _field(data, 4, 4))[0]
    if version < 2:
        return True, None
    off = 72 if version == 2 else _u32(data, 100)
    limit = (ext_end - 8) % (1 << 64)  # size_t arithmetic, as in C
    fmt: str | None = None
    while off < n - 8 and off < limit:
        magic, length = struct.unpack_from(">II", data, off)
        off += 8
        if off + length > n:
            break
        if magic == _QCOW2_EXT_BACKING_FORMAT:
            name = _cstr(data[off:off + length]).decode("latin-1")
            if name not in _FORMAT_SET or name == "none":
                return False, ("none" if name == "none" else None)
            fmt = name
        elif magic == 0:
            break
        off += length
    return True, fmt


def _qcow_backing(data: bytes, n: int) -> tuple[_Backing | None, bool]:
    """qcowXGetBackingStore; the flag says the result was OK rather than INVALID.

    An INVALID result can still carry a name (bad backing format extension).
    """
    if n < 20:
        return None, False
    off = _u64(data, 8)
    if off > n:
        return None, False
    size = _u32(data, 16)
    if off == 0 or size == 0:
        return None, True
    if size > 1023 or off + size > n:
        return None, False
    raw = _cstr(data[off:off + size])
    ok, fmt = _qcow2_backing_format(data, n, off)
    return _Backing(raw, fmt, True), ok


def _qed_backing(data: bytes, n: int) -> _Backing | None:
    """qedGetBackingStore: a raw backing is flagged, anything else is probed (AUTO_SAFE)."""
    if n < 24:
        return None
    flags = _u64(data, 16, big=False)
    if not flags & _QED_F_BACKING_FILE or n < 64:
        return None
    off, size = _u32(data, 56, big=False), _u32(data, 60, big=False)
    if off > n or size == 0 or off + size > n:
        return None
    raw = _cstr(data[off:off + size])
    if flags & _QED_F_BACKING_FORMAT_NO_PROBE:
        return _Backing(raw, "raw", False)
    return _Backing(raw, None, False)


def _vmdk_backing(data: bytes, n: int) -> _Backing | None:
    """vmdk4GetBackingStore: parentFileNameHint in the descriptor at byte 0x200."""
    if n <= 0x200:
        return None
    desc = _cstr(data[0x200:n])
    prefix = b'parentFileNameHint="'
    start = desc.find(prefix)
    if start < 0:
        return None
    start += len(prefix)
    end = desc.find(b'"', start)
    if end <= start:
        return None
    return _probe_backing(desc[start:end])


def _cow_backing(data: bytes, n: int) -> _Backing | None:
    """cowGetBackingStore: a 1024-byte name field at offset 8."""
    if n < 8 + 1024 or data[8] == 0:
        return None
    return _probe_backing(_cstr(data[8:8 + 1024]))


def _inspect(fmt: str, data: bytes) -> tuple[bool, _Backing | None]:
    """virStorageFileProbeGetMetadata for a known format: (usable, backing or None).

    Not usable means libvirt fails on this image, which drops it from the chain.
    """
    if fmt not in _FORMAT_SET or fmt == "none":
        return _UNUSABLE
    if fmt not in _SIZE_FIELD:
        return _NO_BACKING
    data = data[:HEADER_BYTES]
    n = len(data)
    size_off, mult = _SIZE_FIELD[fmt]
    if size_off + 8 > n or _u64(data, size_off, fmt in _BIG_ENDIAN) > _U64_MAX // mult:
        return _NO_BACKING
    if fmt == "qed":
        return True, _qed_backing(data, n)
    if fmt == "vmdk":
        return True, _vmdk_backing(data, n)
    if fmt == "cow":
        return True, _cow_backing(data, n)
    backing, ok = _qcow_backing(data, n)
    if ok and fmt == "qcow2" and struct.unpack(">i", _field(data, 4, 4))[0] != 2 and n < 100:
        return _UNUSABLE  # qcow2GetFeatures: a non-v2 header shorter than 100 bytes
    return True, backing


def backing_of(fmt: str, data: bytes) -> tuple[str, str | None] | None:
    """Backing name and recorded backing format from a header of format ``fmt``.

    The format is None when libvirt would probe it, and "none" when the header
    records that (libvirt then fails on the backing image). None: no backing.
    """
    usable, backing = _inspect(fmt, data)
    if not usable or backing is None:
        return None
    return os.fsdecode(backing.raw), backing.fmt


# -------------------------------------------------------------- backing locations

_FILE = "file"  # a local path to read
_STOP = "stop"  # valid but not followed: network, NVMe, fat:, relative json path
_BAD = "bad"  # libvirt cannot parse it: the image carrying the name is dropped

_PROTOCOLS = frozenset(
    ("none", "nbd", "rbd", "sheepdog", "gluster", "iscsi", "http", "https",
     "ftp", "ftps", "tftp", "ssh", "vxhs", "nfs")
)
_TRANSPORTS = frozenset(("tcp", "unix", "rdma"))
_C_SPACE = b" \t\n\v\f\r"


def _g_dirname(path: str) -> str:
    """g_path_get_dirname: unlike os.path.dirname, "//a" gives "/" and "a" gives "."."""
    cut = path.rfind("/")
    if cut < 0:
        return "."
    while cut > 0 and path[cut] == "/":
        cut -= 1
    return path[:cut + 1]


def _is_file_name(raw: bytes) -> bool:
    """virStorageSourceBackinStoreStringIsFile: a ':' before any '/' means a protocol."""
    colon = raw.find(b":")
    if colon < 0:
        return True
    slash = raw.find(b"/")
    return 0 <= slash < colon


def _strtoul(s: bytes, pos: int, base: int) -> tuple[int, int, bool] | None:
    """C strtoul from ``pos``: (value, end, negative), or None when no digits."""
    n = len(s)
    while pos < n and s[pos] in _C_SPACE:
        pos += 1
    neg = False
    if pos < n and s[pos] in b"+-":
        neg = s[pos] == ord("-")
        pos += 1
    if base == 16 and s[pos:pos + 2] in (b"0x", b"0X") and _at(s, pos + 2) in _HEX:
        pos += 2
    digits = "0123456789abcdef"[:base]
    end = pos
    while end < n and chr(s[end]).lower() in digits:
        end += 1
    if end == pos:
        return None
    text = s[pos:end].lstrip(b"0") or b"0"
    value = int(text, base) if len(text) <= 20 else 1 << 128
    return value, end, neg


def _parse_port(s: bytes | None) -> bool:
    """virStringParsePort: absent is fine, else a whole decimal number up to 65535."""
    if s is None:
        return True
    r = _strtoul(s, 0, 10)
    return r is not None and r[1] == len(s) and not r[2] and r[0] <= 0xFFFF


def _uip(s: str) -> int | None:
    """virStrToLong_uip on a whole string (used for array keys)."""
    b = s.encode("utf-8", "surrogatepass")
    r = _strtoul(b, 0, 10)
    if r is None or r[1] != len(b) or r[2] or r[0] > 0xFFFFFFFF:
        return None
    return r[0]


# ---- URIs: xmlParseURI of libxml2 2.9.14 (RFC 3986 absolute form), then libvirt's checks

_ALPHA = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DIGIT = frozenset(b"0123456789")
_HEXCHARS = "0123456789abcdefABCDEF"
_HEX = frozenset(_HEXCHARS.encode())
_UNRESERVED = _ALPHA | _DIGIT | frozenset(b"-._~")
_SUBDELIM = frozenset(b"!$&'()*+,;=")
_SCHEME = _ALPHA | _DIGIT | frozenset(b"+-.")
_REGNAME = _UNRESERVED | _SUBDELIM
_USERINFO = _REGNAME | frozenset(b":")
_PCHAR = _USERINFO | frozenset(b"@")
_QUERY = _PCHAR | frozenset(b"/?")
_FRAGMENT = _QUERY | frozenset(b"[]")


def _at(s: bytes, i: int) -> int:
    return s[i] if i < len(s) else 0


def _span(s: bytes, i: int, allowed: frozenset[int]) -> int:
    """Advance over allowed bytes and %XX escapes (libxml2's NEXT loop)."""
    while True:
        c = _at(s, i)
        if c in allowed:
            i += 1
        elif c == 0x25 and _at(s, i + 1) in _HEX and _at(s, i + 2) in _HEX:
            i += 3
        else:
            return i


def _path_segments(s: bytes, i: int) -> int:
    """*( "/" segment ) as in xmlParse3986PathAbEmpty."""
    while _at(s, i) == 0x2F:
        i = _span(s, i + 1, _PCHAR)
    return i


def _uri_parse(s: bytes) -> tuple[bytes, bytes] | None:
    """(scheme, unescaped path) if libxml2 accepts ``s`` as an absolute URI."""
    if _at(s, 0) not in _ALPHA:
        return None
    i = _span(s, 1, _SCHEME)
    scheme = s[:i]
    if _at(s, i) != 0x3A:
        return None
    i += 1
    start = i
    if s[i:i + 2] == b"//":
        i += 2
        j = _span(s, i, _USERINFO)
        if _at(s, j) == 0x40:
            i = j + 1
        if _at(s, i) == 0x5B:
            close = s.find(b"]", i + 1)
            if close < 0:
                return None
            i = close + 1
        else:
            i = _span(s, i, _REGNAME)
        if _at(s, i) == 0x3A:
            j = i + 1
            while _at(s, j) in _DIGIT:
                j += 1
            if j == i + 1 or int(s[i + 1:j].lstrip(b"0")[:11] or b"0") > 0x7FFFFFFF:
                return None
            i = j
        start = i
        i = _path_segments(s, i)
    elif _at(s, i) == 0x2F:
        j = _span(s, i + 1, _PCHAR)
        i = _path_segments(s, j) if j > i + 1 else i + 1
    elif _span(s, i, _PCHAR) > i:
        i = _path_segments(s, _span(s, i, _PCHAR))
    path = s[start:i]
    if _at(s, i) == 0x3F:
        i = _span(s, i + 1, _QUERY)
    if _at(s, i) == 0x23:
        i = _span(s, i + 1, _FRAGMENT)
    if i != len(s):
        return None
    return scheme, _cstr(_unescape(path))


def _unescape(s: bytes) -> bytes:
    """xmlURIUnescapeString."""
    out = bytearray()
    i = 0
    while i < len(s):
        if s[i] == 0x25 and _at(s, i + 1) in _HEX and _at(s, i + 2) in _HEX:
            out.append(int(s[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(s[i])
            i += 1
    return bytes(out)


def _uri_protocol(s: bytes) -> str | None:
    """virStorageSourceParseBackingURI: the protocol, or None when libvirt fails."""
    parsed = _uri_parse(s)
    if parsed is None:
        return None
    scheme, path = parsed
    proto, plus, transport = scheme.decode("ascii").partition("+")
    if proto not in _PROTOCOLS or (plus and transport not in _TRANSPORTS):
        return None
    if proto == "gluster":
        if path.startswith(b"/"):
            path = path[1:]
        if path.find(b"/") <= 0:
            return None
    return proto


# ---- legacy "protocol:" strings

def _nbd_colon_ok(s: bytes) -> bool:
    """virStorageSourceParseNBDColonString."""
    cut = s.find(b":exportname=")
    if cut >= 0:
        s = s[:cut]
    host = s[4:]
    if not host:
        return False
    if host.startswith(b"unix:"):
        return len(host) > 5
    if host[0] == 0x3A:
        return False
    if host[0] == 0x5B:
        end = host.find(b"]:", 1)
        if end < 0 or end == 1:
            return False
        return _parse_port(host[end + 2:])
    colon = host.find(b":")
    return colon >= 0 and _parse_port(host[colon + 1:])


def _rbd_host_ok(hostport: bytes) -> bool:
    """virStorageSourceRBDAddHost: only the port can make it fail."""
    bracket = hostport.find(b"]")
    if bracket >= 0:
        port_at = bracket + 3
    else:
        esc = hostport.find(b"\\:")
        if esc < 0:
            return True
        port_at = esc + 2
    if port_at > len(hostport):
        return False  # libvirt would read past the string
    return _parse_port(hostport[port_at:])


def _rbd_colon_ok(s: bytes) -> bool:
    """virStorageSourceParseRBDColonString: duplicate id= or a bad mon_host port fail."""
    if s.startswith(b"rbd:"):
        s = s[4:]
    colon = s.find(b":")
    if colon < 0:
        return True
    opts = s[colon + 1:]
    seen_id = False
    p, n = 0, len(opts)
    while p < n:
        e = p
        while e < n and opts[e] != 0x3A:
            if opts[e] == 0x5C:
                e += 1
                if e >= n:
                    break
            e += 1
        e = min(e, n)
        kv = opts[p:e]
        if kv.startswith(b"id="):
            if seen_id:
                return False
            seen_id = True
        if kv.startswith(b"mon_host=") and not _rbd_hosts_ok(kv[9:]):
            return False
        p = e + 1
    return True


def _rbd_hosts_ok(hosts: bytes) -> bool:
    h, n = 0, len(hosts)
    while h < n:
        sep = h
        end = n
        while sep < n:
            if hosts[sep] == 0x5C and _at(hosts, sep + 1) in b",; ":
                end, sep = sep, sep + 2
                break
            sep += 1
        if not _rbd_host_ok(hosts[h:end]):
            return False
        h = sep
    return True


def _colon_ok(s: bytes) -> bool:
    """virStorageSourceParseBackingColon: only nbd: and rbd: strings are understood."""
    proto = s[:s.find(b":")]
    if proto == b"nbd":
        return _nbd_colon_ok(s)
    if proto == b"rbd":
        return _rbd_colon_ok(s)
    return False


# ---- json: pseudo-protocol (json-c in strict mode, then libvirt's deflattening)


class _JSONError(Exception):
    pass


class _Num:
    """A JSON number; libvirt keeps numbers as text and converts on use."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def is_int(self) -> bool:
        return not any(c in self.text for c in ".eE")


class _Null:
    pass


_NULL = _Null()
_JSON_WS = " \t\n\r"
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}

JSONValue = object


def _ws(t: str, i: int) -> int:
    while i < len(t) and t[i] in _JSON_WS:
        i += 1
    return i


def _json_string(t: str, i: int) -> tuple[str, int]:
    """A JSON string at t[i] == '"'; libvirt sees it up to the first NUL."""
    if i >= len(t) or t[i] != '"':
        raise _JSONError
    i += 1
    parts: list[str] = []
    q = -1
    while True:
        if q < i:
            q = t.find('"', i)
        b = t.find("\\", i, q if q >= 0 else len(t))
        stop = b if b >= 0 else q
        if stop < 0:
            raise _JSONError
        chunk = t[i:stop]
        if any(c < " " for c in chunk):
            raise _JSONError
        parts.append(chunk)
        if stop == q:
            return _cstr_text("".join(parts)), q + 1
        esc = t[b + 1:b + 2]
        if esc in _ESCAPES:
            parts.append(_ESCAPES[esc])
            i = b + 2
        elif esc == "u":
            code, i = _json_unicode(t, b + 2)
            parts.append(code)
        else:
            raise _JSONError


def _hex4(t: str, i: int) -> int:
    h = t[i:i + 4]
    if len(h) != 4 or any(c not in _HEXCHARS for c in h):
        raise _JSONError
    return int(h, 16)


def _json_unicode(t: str, i: int) -> tuple[str, int]:
    code = _hex4(t, i)
    i += 4
    if 0xD800 <= code < 0xDC00 and t[i:i + 2] == "\\u":
        low = _hex4(t, i + 2)
        if 0xDC00 <= low < 0xE000:
            return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)), i + 6
    if 0xD800 <= code < 0xE000:
        return "\ufffd", i
    return chr(code), i


def _cstr_text(s: str) -> str:
    nul = s.find("\0")
    return s if nul < 0 else s[:nul]


def _json_number(t: str, i: int) -> tuple[_Num, int]:
    """RFC 8259 number; json-c strict rejects "01", "1." and "-"."""
    start = i
    if t.startswith("-", i):
        i += 1
    if t.startswith("0", i):
        i += 1
    else:
        j = _digits(t, i)
        if j == i:
            raise _JSONError
        i = j
    if t.startswith(".", i):
        j = _digits(t, i + 1)
        if j == i + 1:
            raise _JSONError
        i = j
    if t[i:i + 1] in ("e", "E"):
        i += 1
        if t[i:i + 1] in ("+", "-"):
            i += 1
        j = _digits(t, i)
        if j == i:
            raise _JSONError
        i = j
    return _Num(t[start:i]), i


def _digits(t: str, i: int) -> int:
    while i < len(t) and "0" <= t[i] <= "9":
        i += 1
    return i


def _json_scalar(t: str, i: int) -> tuple[JSONValue, int]:
    c = t[i:i + 1]
    if c == '"':
        return _json_string(t, i)
    if c != "" and c in "-0123456789":
        return _json_number(t, i)
    for word, value in (("true", True), ("false", False), ("null", _NULL)):
        if t.startswith(word, i):
            return value, i + len(word)
    raise _JSONError


def _json_key(t: str, i: int) -> tuple[str, int]:
    key, i = _json_string(t, _ws(t, i))
    i = _ws(t, i)
    if t[i:i + 1] != ":":
        raise _JSONError
    return key, _ws(t, i + 1)


def _json_loads(t: str) -> JSONValue:
    """Strict JSON without recursion (libvirt accepts any nesting depth).

    Duplicate keys are an error, as libvirt refuses them when converting json-c data.
    """
    stack: list[tuple[dict[str, JSONValue] | list[JSONValue], str]] = []
    i = _ws(t, 0)
    while True:
        value: JSONValue
        c = t[i:i + 1]
        if c in ("{", "["):
            container: dict[str, JSONValue] | list[JSONValue] = {} if c == "{" else []
            i = _ws(t, i + 1)
            if t[i:i + 1] != ("}" if c == "{" else "]"):
                key = ""
                if c == "{":
                    key, i = _json_key(t, i)
                stack.append((container, key))
                continue
            value, i = container, i + 1
        else:
            value, i = _json_scalar(t, i)
        while True:
            if not stack:
                if _ws(t, i) != len(t):
                    raise _JSONError
                return value
            container, key = stack[-1]
            if isinstance(container, dict):
                if key in container:
                    raise _JSONError
                container[key] = value
            else:
                container.append(value)
            i = _ws(t, i)
            if t[i:i + 1] == ",":
                i = _ws(t, i + 1)
                if isinstance(container, dict):
                    key, i = _json_key(t, i)
                    stack[-1] = (container, key)
                break
            if t[i:i + 1] != ("}" if isinstance(container, dict) else "]"):
                raise _JSONError
            stack.pop()
            value, i = container, i + 1


def _deflatten(root: dict[str, JSONValue]) -> JSONValue:
    """virJSONValueObjectDeflatten: "a.b": v becomes "a": {"b": v}; then arrays."""
    out: dict[str, JSONValue] = {}
    work = [(root, out)]
    while work:
        src, dst = work.pop()
        for key, value in src.items():
            *heads, last = key.split(".")
            target = dst
            for head in heads:
                nxt = target.setdefault(head, {})
                if not isinstance(nxt, dict):
                    raise _JSONError
                target = nxt
            if last in target:
                raise _JSONError
            if isinstance(value, dict):
                copy: dict[str, JSONValue] = {}
                target[last] = copy
                work.append((value, copy))
            else:
                target[last] = value
    return _deflatten_arrays(out)


def _deflatten_arrays(root: dict[str, JSONValue]) -> JSONValue:
    """virJSONValueObjectDeflattenArrays: objects keyed "0".."n-1" become arrays."""
    found: list[tuple[dict[str, JSONValue] | None, str, dict[str, JSONValue]]] = [(None, "", root)]
    k = 0
    while k < len(found):
        obj = found[k][2]
        found.extend((obj, key, v) for key, v in obj.items() if isinstance(v, dict))
        k += 1
    result: JSONValue = root
    for parent, key, obj in reversed(found):
        array = _as_array(obj)
        if array is None:
            continue
        if parent is None:
            result = array
        else:
            parent[key] = array
    return result


def _as_array(obj: dict[str, JSONValue]) -> list[JSONValue] | None:
    members: list[JSONValue] = [None] * len(obj)
    used = [False] * len(obj)
    for key, value in obj.items():
        num = _uip(key)
        if num is None or num >= len(obj) or used[num]:
            return None
        members[num], used[num] = value, True
    return members


def _jstr(obj: JSONValue, key: str) -> str | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, str) else None


def _jobj(obj: JSONValue, key: str) -> dict[str, JSONValue] | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else None


def _jarr(obj: JSONValue, key: str) -> list[JSONValue] | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, list) else None


def _jhas(obj: JSONValue, key: str) -> bool:
    return isinstance(obj, dict) and key in obj


def _jint(obj: JSONValue, key: str, bits: int, signed: bool) -> bool:
    """virJSONValueObjectGetNumber{Ulong,Int}: json-c integers only, no doubles."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, _Num) or not value.is_int():
        return False
    if not signed:
        return True  # virStrToLong_ull takes any integer, wrapping negatives
    digits = value.text.lstrip("-").lstrip("0")
    return len(digits) <= 10 and -(1 << (bits - 1)) <= int(value.text) < 1 << (bits - 1)


def _port_text(port: str | None) -> bool:
    return _parse_port(None if port is None else port.encode("utf-8", "surrogatepass"))


def _inet_ok(server: JSONValue) -> bool:
    return isinstance(server, dict) and _jstr(server, "host") is not None and _port_text(
        _jstr(server, "port")
    )


def _socket_ok(server: JSONValue) -> bool:
    kind = _jstr(server, "type")
    if kind in ("tcp", "inet"):
        return _inet_ok(server)
    if kind == "unix":
        return _jstr(server, "path") is not None or _jstr(server, "socket") is not None
    return False


def _uri_json_ok(url: str | None, proto: str) -> bool:
    return url is not None and _uri_protocol(url.encode("utf-8", "surrogatepass")) == proto


def _json_uri_driver(obj: dict[str, JSONValue], proto: str) -> bool:
    """virStorageSourceParseBackingJSONUri (http, https, ftp, ftps, tftp)."""
    verify = obj.get("sslverify", "off")
    if proto in ("https", "ftps") and verify != "off" and not isinstance(verify, bool):
        return False
    if proto in ("http", "https") and _jhas(obj, "cookie"):
        cookies = _jstr(obj, "cookie")
        if cookies is None or (cookies and any("=" not in c for c in cookies.split(";"))):
            return False
    for key in ("readahead", "timeout"):
        if _jhas(obj, key) and not _jint(obj, key, 64, False):
            return False
    return _uri_json_ok(_jstr(obj, "url"), proto)


def _json_gluster(obj: dict[str, JSONValue]) -> bool:
    if _jstr(obj, "filename") is not None:
        return _uri_json_ok(_jstr(obj, "filename"), "gluster")
    servers = _jarr(obj, "server")
    if _jstr(obj, "volume") is None or _jstr(obj, "path") is None or not servers:
        return False
    return all(_socket_ok(s) for s in servers)


def _json_iscsi(obj: dict[str, JSONValue]) -> bool:
    if _jstr(obj, "filename") is not None:
        return _uri_json_ok(_jstr(obj, "filename"), "iscsi")
    portal = _jstr(obj, "portal")
    if _jstr(obj, "transport") != "tcp" or portal is None or _jstr(obj, "target") is None:
        return False
    colon = portal.rfind(":")
    return colon < 0 or "]" in portal[colon:] or _port_text(portal[colon + 1:])


def _json_nbd(obj: dict[str, JSONValue]) -> bool:
    server = _jobj(obj, "server")
    path, host = _jstr(obj, "path"), _jstr(obj, "host")
    if server is not None:
        return _socket_ok(server)
    return path is not None or (host is not None and _port_text(_jstr(obj, "port")))


def _json_sheepdog(obj: dict[str, JSONValue]) -> bool:
    filename = _jstr(obj, "filename")
    if filename is not None:
        return "://" in filename and _uri_json_ok(filename, "sheepdog")
    return _jstr(obj, "vdi") is not None and _socket_ok(_jobj(obj, "server"))


def _json_ssh(obj: dict[str, JSONValue]) -> bool:
    server = _jobj(obj, "server")
    if _jstr(obj, "path") is None or (server is None and _jstr(obj, "host") is None):
        return False
    return _inet_ok(server) if server is not None else _port_text(_jstr(obj, "port"))


def _json_rbd(obj: dict[str, JSONValue]) -> bool:
    filename = _jstr(obj, "filename")
    if filename is not None:
        return _rbd_colon_ok(filename.encode("utf-8", "surrogatepass"))
    if _jstr(obj, "pool") is None or _jstr(obj, "image") is None:
        return False
    return all(_inet_ok(s) for s in _jarr(obj, "server") or ())


def _json_nfs(obj: dict[str, JSONValue]) -> bool:
    server = _jobj(obj, "server")
    if server is None or not (_jint(obj, "user", 32, True) and _jint(obj, "group", 32, True)):
        return False
    return _jstr(obj, "path") is not None and _inet_ok(server)


def _json_vxhs(obj: dict[str, JSONValue]) -> bool:
    return _jstr(obj, "vdisk-id") is not None and _inet_ok(_jobj(obj, "server"))


def _json_nvme(obj: dict[str, JSONValue]) -> bool:
    device = _jstr(obj, "device")
    if device is None or not _pci_address_ok(device.encode("utf-8", "surrogatepass")):
        return False
    value = obj.get("namespace")
    return _jint(obj, "namespace", 64, False) and isinstance(value, _Num) and value.text.strip(
        "-0"
    ) != ""


def _pci_address_ok(s: bytes) -> bool:
    """virPCIDeviceAddressParse: four hex numbers, each followed by one separator."""
    pos = 0
    for part in range(4):
        r = _strtoul(s, pos, 16)
        if r is None or r[0] > 0xFFFFFFFF:
            return False
        pos = r[1] + 1
        if part < 3 and pos > len(s):
            return False
    return True


_JSON_NETWORK: dict[str, Callable[[dict[str, JSONValue]], bool]] = {
    "http": lambda o: _json_uri_driver(o, "http"),
    "https": lambda o: _json_uri_driver(o, "https"),
    "ftp": lambda o: _json_uri_driver(o, "ftp"),
    "ftps": lambda o: _json_uri_driver(o, "ftps"),
    "tftp": lambda o: _json_uri_driver(o, "tftp"),
    "gluster": _json_gluster,
    "iscsi": _json_iscsi,
    "nbd": _json_nbd,
    "sheepdog": _json_sheepdog,
    "ssh": _json_ssh,
    "rbd": _json_rbd,
    "nfs": _json_nfs,
    "vxhs": _json_vxhs,
    "nvme": _json_nvme,
}


def _json_driver(obj: JSONValue, allow_format: bool) -> tuple[str, str]:
    """virStorageSourceParseBackingJSONInternal, iterating through "raw" wrappers."""
    while True:
        if not isinstance(obj, dict):
            return _BAD, ""
        driver = _jstr(obj, "driver")
        if driver in ("file", "host_device", "host_cdrom"):
            filename = _jstr(obj, "filename")
            if filename is None:
                return _BAD, ""
            return _FILE, filename
        if driver == "raw" and allow_format:
            for key in ("offset", "size"):
                if _jhas(obj, key) and not _jint(obj, key, 64, False):
                    return _BAD, ""
            inner = _jobj(obj, "file")
            if inner is None:
                return _BAD, ""
            obj, allow_format = inner, False
            continue
        check = _JSON_NETWORK.get(driver or "")
        return (_STOP, "") if check is not None and check(obj) else (_BAD, "")


def _json_target(raw: bytes) -> tuple[str, str]:
    """virStorageSourceParseBackingJSON on the text after "json:"."""
    try:
        root = _json_loads(raw.decode("utf-8"))
        if not isinstance(root, dict):
            return _BAD, ""
        tree = _deflatten(root)
    except (_JSONError, UnicodeDecodeError):
        return _BAD, ""
    node: JSONValue = tree
    if not _jhas(tree, "driver"):
        file = _jobj(tree, "file")
        node = tree if file is None else file
    kind, filename = _json_driver(node, True)
    if kind == _FILE:
        path = os.fsdecode(filename.encode("utf-8", "surrogatepass"))
        if not path.startswith("/"):
            return _STOP, ""  # deviation: stock resolves this against its own cwd
        return _FILE, path
    return kind, filename


def _locate(parent: str, raw: bytes) -> tuple[str, str]:
    """Where a backing name points: (_FILE, path), (_STOP, "") or (_BAD, "")."""
    if _is_file_name(raw):
        name = os.fsdecode(raw)
        if name.startswith("/"):
            return _FILE, name
        base = _g_dirname(parent)
        return _FILE, (f"{base}/{name}" if base != "/" else f"/{name}")
    if raw.startswith(b"fat:"):
        return _STOP, ""  # deviation: a directory, never given a rule here
    if raw.startswith(b"json:"):
        return _json_target(raw[5:])
    if b"://" in raw:
        return (_STOP, "") if _uri_protocol(raw) is not None else (_BAD, "")
    return (_STOP, "") if _colon_ok(raw) else (_BAD, "")


# ------------------------------------------------------------------------- chains


def _describe(backing: _Backing, data: bytes) -> tuple[str | None, bool, _Backing | None]:
    """Format, usability and own backing of a backing image, given its parent's record."""
    fmt_used = backing.fmt if backing.fmt is not None else probe_format(data)
    if fmt_used is None:
        return None, False, None
    usable, own = _inspect(fmt_used, data)
    if usable and backing.fmt is None and backing.strict and own is not None:
        usable = False  # a probed image may not bring a backing of its own
    return fmt_used, usable, own


def backing_chain(
    path: str,
    fmt: str | None,
    read_header: Callable[[str], bytes | None],
    canonical: Callable[[str], str],
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> list[BackingLink]:
    """Backing images of ``path`` (excluding ``path`` itself), nearest first, stock semantics.

    ``read_header(p)`` returns up to HEADER_BYTES bytes or None if ``p`` cannot be
    opened/read as a regular file or block device. ``canonical(p)`` gives the realpath
    used for loop detection. Raises ChainError on a loop or a chain deeper than
    ``max_depth`` backing images.
    """
    if fmt is None or fmt not in _SIZE_FIELD:
        return []
    data = read_header(path)
    if data is None:
        return []
    usable, backing = _inspect(fmt, data)
    if not usable or backing is None:
        return []
    where = _locate(path, backing.raw)
    if where[0] == _BAD:
        return []
    links: list[BackingLink] = []
    seen = {canonical(path)}
    while where[0] == _FILE:
        child = where[1]
        data = read_header(child)
        if data is None:
            break
        child_fmt, usable, own = _describe(backing, data)
        if not usable:
            break
        where = _locate(child, own.raw) if own is not None else (_STOP, "")
        if where[0] == _BAD:
            break
        key = canonical(child)
        if key in seen:
            raise ChainError(f"backing chain of {path!r} loops: {child!r} is already in it")
        if len(links) >= max_depth:
            raise ChainError(f"backing chain of {path!r} is deeper than {max_depth} images")
        seen.add(key)
        links.append(BackingLink(child, child_fmt))
        if own is None:
            break
        backing = own
    return links


# ---------------------------------------------------------------------------- I/O


def read_header(path: str) -> bytes | None:
    """First HEADER_BYTES of a regular file or block device, else None.

    The type is checked before opening (opening some character devices has side
    effects), the open never blocks (O_NONBLOCK) and the type is checked again on
    the descriptor, so a file swapped for a FIFO in between is refused too.
    """
    try:
        if not _readable_type(os.stat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        if not _readable_type(os.fstat(fd).st_mode):
            return None
        chunks: list[bytes] = []
        left = HEADER_BYTES
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _readable_type(mode: int) -> bool:
    return stat.S_ISREG(mode) or stat.S_ISBLK(mode)
