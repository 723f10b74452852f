"""``json:`` backing names: a strict JSON reader with libvirt's quirks and the
per-driver checks libvirt applies before it accepts such a name."""

from __future__ import annotations

import os

from virt_aa.generate.images.names import (
    _BAD,
    _FILE,
    _HEXCHARS,
    _STOP,
    _parse_port,
    _rbd_colon_ok,
    _strtoul,
    _uip,
    _uri_protocol,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

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


def json_target(raw: bytes) -> tuple[str, str]:
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


