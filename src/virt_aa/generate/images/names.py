"""Backing names to locations, as libvirt parses them: plain paths, URIs and the
old ``protocol:host:port`` spellings (src/storage_file/storage_source_backingstore.c).

A name libvirt cannot parse makes it drop the image that carries the name, so the
parsers only need to say whether libvirt would accept the name."""

from __future__ import annotations

import os


def _cstr(raw: bytes) -> bytes:
    """What C sees of a buffer: everything before the first NUL."""
    nul = raw.find(b"\0")
    return raw if nul < 0 else raw[:nul]


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



def locate(parent: str, raw: bytes) -> tuple[str, str]:
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
        from virt_aa.generate.images.jsonnames import json_target

        return json_target(raw[5:])
    if b"://" in raw:
        return (_STOP, "") if _uri_protocol(raw) is not None else (_BAD, "")
    return (_STOP, "") if _colon_ok(raw) else (_BAD, "")



