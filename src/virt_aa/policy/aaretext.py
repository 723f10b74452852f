"""AARE text before it becomes a regex: stages 1-3 of :mod:`virt_aa.policy.aare`.

The rule lexer's escape processing (``processunquoted``), variable
expansion (``parser_symtab.c``, ``expand_entry_variables``) and
``filter_slashes``, each a port of the parser's own code.  Also the error
every stage raises.
"""

from __future__ import annotations

import re


class AareError(ValueError):
    """A pattern the parser would refuse (one line, says why)."""


# ----------------------------------------------------------------------------- escapes

_SIMPLE_ESCAPES = {ord("a"): 0x07, ord("e"): 0x1B, ord("f"): 0x0C, ord("n"): 0x0A,
                   ord("r"): 0x0D, ord("t"): 0x09, ord("\\"): 0x5C, ord('"'): 0x22}


def _digit(c: int, base: int) -> int:
    if 0x30 <= c <= 0x39:
        val = c - 0x30
    elif 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A:
        val = (c | 0x20) - 0x61 + 10
    else:
        return -1
    return val if val < base else -1


def _strntol(s: bytes, i: int, base: int, ndigits: int) -> tuple[int, int]:
    """lib.c strntol with maxval 255: the value and the index after the digits taken."""
    val = 0
    while ndigits and i < len(s):
        d = _digit(s[i], base)
        if d < 0 or val * base + d > 255:
            break
        val = val * base + d
        i += 1
        ndigits -= 1
    return val, i


def _escseq(s: bytes, i: int, chrs: bytes) -> tuple[int, int]:
    """lib.c str_escseq for the sequence starting at ``s[i]`` (after the backslash).

    Returns the byte and the index after the sequence, or ``-1`` and the index
    the C code leaves behind (one past the character it looked at).
    """
    if i < len(s) and 0x30 <= s[i] <= 0x37:
        return _strntol(s, i, 8, 3)
    if i >= len(s):
        return -1, i + 1
    c = s[i]
    i += 1
    if c in (0x64, 0x78):  # \d decimal, \x hex
        val, j = _strntol(s, i, 10 if c == 0x64 else 16, 3 if c == 0x64 else 2)
        if j == i:
            return -1, i
        return val, j
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], i
    if c in chrs:
        return c, i
    return -1, i


_LEX_SPECIAL = b"*?[]{}^,\\"


def unescape(text: bytes) -> bytes:
    """The rule lexer's ``processunquoted``: decode escapes, keep AARE specials escaped."""
    if b"\\" not in text:
        return text
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        if text[i] == 0x5C and i + 1 < n:
            c, j = _escseq(text, i + 1, b"")
            if c != -1:
                if c == 0:
                    out += text[i:j]
                elif c in _LEX_SPECIAL:
                    out += bytes((0x5C, c))
                else:
                    out.append(c)
                i = j
                continue
        out.append(text[i])
        i += 1
    return bytes(out)


def _unquote(text: bytes) -> bytes:
    if len(text) >= 2 and text[:1] == b'"' and text[-1:] == b'"':
        text = text[1:-1]
    return unescape(text)


# ----------------------------------------------------------------------------- variables


def _var_at(s: bytes, i: int) -> int:
    """Index of the ``}`` closing a variable name that starts at ``s[i]``, or -1."""
    j = i
    while j < len(s):
        c = s[j]
        if c == 0x7D:
            return j
        if j == i:
            if not (0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A):
                return -1
        elif not (c == 0x5F or 0x30 <= c <= 0x39 or 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A):
            return -1
        j += 1
    return -1


def _split_var(s: bytes) -> tuple[bytes, bytes, bytes] | None:
    """parser_variable.c split_out_var: the first unescaped ``@{NAME}``."""
    escaped = False
    i = 0
    while i < len(s):
        c = s[i]
        if c == 0x5C:
            escaped = not escaped
        elif c == 0x40:
            if escaped:
                escaped = False
            elif s[i + 1:i + 2] == b"{":
                end = _var_at(s, i + 2)
                if end == i + 2:
                    raise AareError("empty variable name")
                if end > 0:
                    return s[:i], s[i + 2:end], s[end + 1:]
        elif escaped:
            escaped = False
        i += 1
    return None


def _values_of(key: str, variables: dict[str, list[str]], cache: dict[str, list[bytes]],
               seen: tuple[str, ...] = ()) -> list[bytes]:
    """parser_symtab.c __expand_variable: a variable's values with the variables
    inside them expanded, every combination a value of its own (no alternation,
    no slash trimming at this level)."""
    if key in cache:
        return cache[key]
    if key not in variables:
        raise AareError(f"variable @{{{key}}} is not defined")
    if key in seen:
        raise AareError(f"variable @{{{key}}} is referenced recursively")
    out: list[bytes] = []
    for value in variables[key]:
        work = [value.encode("utf-8", "surrogateescape")]
        while work:
            item = work.pop()
            split = _split_var(item)
            if split is None:
                out.append(item)
                continue
            prefix, var, suffix = split
            for ref in _values_of(var.decode("ascii"), variables, cache, seen + (key,)):
                work.append(prefix + ref + suffix)
    cache[key] = out
    return out


def expand_variables(name: bytes, variables: dict[str, list[str]]) -> bytes:
    """parser_variable.c expand_entry_variables (values are lexed already)."""
    cache: dict[str, list[bytes]] = {}
    for _ in range(10000):
        split = _split_var(name)
        if split is None:
            return name
        prefix, var, suffix = split
        values = _values_of(var.decode("ascii"), variables, cache)
        if not values:
            raise AareError(f"variable @{{{var.decode()}}} has no value")
        if len(values) == 1:
            name = prefix + values[0] + suffix
            continue
        lead = prefix.endswith(b"/")
        trail = suffix.startswith(b"/")
        parts = []
        for v in values:
            if lead:
                v = v.lstrip(b"/")
            if trail:
                v = v.rstrip(b"/")
            parts.append(v)
        name = prefix + b"{" + b",".join(parts) + b"}" + suffix
    raise AareError("too many variable references")


def filter_slashes(s: bytes) -> bytes:
    """parser_regex.c filter_slashes: ``//`` -> ``/`` except a leading ``//x``."""
    if len(s) < 2:
        return s
    head = b""
    if s[:2] == b"//" and s[2:3] != b"/":
        head, s = b"//", s[2:]
    return head + re.sub(rb"/{2,}", b"/", s)
