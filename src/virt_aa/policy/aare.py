"""AppArmor path patterns (AARE), matched the way ``apparmor_parser`` 3.0 compiles them.

A rule path goes through the same stages as in the parser, each a port of
the parser's own code, so that the corner cases come out the same:

1. the rule lexer's escape processing (``processunquoted``: ``\\x2a`` becomes
   ``\\*``, ``\\101`` becomes ``A``, ``\\"`` becomes ``"``);
2. variable expansion: variables inside a variable's values first, every
   combination a value of its own (``parser_symtab.c``), then
   ``expand_entry_variables``: a variable with several values becomes an
   alternation ``{a,b}``, with the slashes next to it trimmed;
3. ``filter_slashes`` (``//`` becomes ``/``, except a leading ``//``);
4. ``convert_aaregex_to_pcre`` (``*`` is ``[^/\\x00]*``, ``**`` is
   ``[^\\x00]*``, and both must match at least one character when they are a
   whole path component: ``/foo/*`` does not match ``/foo/``);
5. libapparmor_re's regex grammar (``parse.y``), turned into a Python
   ``re`` pattern over bytes: AppArmor matches bytes, so ``?`` is one byte,
   not one character.

Not on the VM-start path: :mod:`re` is fine here.  The tests compare
:meth:`Pattern.matches` with the DFA the real parser builds.
"""

from __future__ import annotations

import os
import re

__all__ = ["AareError", "Pattern", "compile_aare", "include_targets", "load_tunables",
           "parse_variable_line", "read_variables"]


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


# ------------------------------------------------------------------ stage 1: AARE -> pcre


def to_pcre(aare: bytes) -> bytes:
    """parser_regex.c convert_aaregex_to_pcre (glob_default), byte for byte."""
    out = bytearray()
    escape = False
    group = 0
    counts = [0] * 50
    inclass = False
    i = 0
    n = len(aare)
    while i < n:
        c = aare[i]
        if c == 0x5C:  # backslash
            if escape:
                out += b"\\\\"
            else:
                escape = True
                i += 1
                continue
        elif c == 0x2A:  # *
            if escape:
                out += b"\\*"
            else:
                if out and out[-1] == 0x2F:
                    j = i
                    while j < n and aare[j] == 0x2A:
                        j += 1
                    if j == n or aare[j] == 0x2F:
                        out += b"[^/\\x00]"
                if i + 1 < n and aare[i + 1] == 0x2A:
                    out += b"[^\\x00]*"
                    i += 1
                else:
                    out += b"[^/\\x00]*"
        elif c == 0x3F:  # ?
            out += b"?" if escape else b"[^/\\x00]"
        elif c == 0x5B:  # [
            if escape:
                out += b"\\["
            else:
                inclass = True
                out.append(c)
        elif c == 0x5D:  # ]
            if escape:
                out += b"\\]"
            else:
                if not inclass:
                    raise AareError("invalid close ], no matching open [")
                inclass = False
                out.append(c)
        elif c == 0x7B:  # {
            if escape:
                out += b"\\{"
            elif inclass:
                out.append(c)
            else:
                group += 1
                if group >= 50:
                    raise AareError("exceeded maximum nesting of {}")
                counts[group] = 0
                out += b"("
        elif c == 0x7D:  # }
            if escape:
                out += b"\\}"
            elif inclass:
                out.append(c)
            else:
                if counts[group] == 0:
                    raise AareError("invalid number of items between {}")
                group -= 1
                if group < 0:
                    raise AareError("invalid close }, no matching open {")
                out += b")"
        elif c == 0x2C:  # ,
            if escape:
                out += b"\\," if inclass else b","
            elif group and not inclass:
                counts[group] += 1
                out += b"|"
            else:
                out.append(c)
        elif c in (0x5E, 0x24):  # ^ $
            if inclass:
                out.append(c)
            else:
                out += bytes((0x5C, c))
        else:
            if c in b".+|()":
                out.append(0x5C)
            if escape:
                val, j = _escseq(aare, i, b"")
                if val != -1:
                    out.append(0x5C)
                    out += aare[i:j]
                    i = j - 1
                else:
                    out.append(c)
            else:
                out.append(c)
        escape = False
        i += 1
    if group > 0 or inclass:
        raise AareError("unclosed grouping or character class")
    if escape:
        raise AareError("trailing '\\' escape character")
    return bytes(out)


# ------------------------------------------------------------------ stage 2: pcre -> re

_OPS = b"*+.|^-[]()"
_CHAR = -1  # token kind of a literal byte


def _lex(pcre: bytes) -> list[tuple[int, int]]:
    """libapparmor_re regex_lex: (kind, byte) with kind an operator byte or _CHAR."""
    toks: list[tuple[int, int]] = []
    i = 0
    n = len(pcre)
    while i < n:
        c = pcre[i]
        i += 1
        if c in _OPS:
            toks.append((c, c))
        elif c == 0x5C:
            val, j = _escseq(pcre, i, b"*+.|^$-[](){}")
            if val == -1:
                toks.append((_CHAR, 0x5C))  # the C code backs up to re-read the char
                i = j - 1
            else:
                toks.append((_CHAR, val))
                i = j
        else:
            toks.append((_CHAR, c))
    return toks


def _byte(c: int) -> str:
    if 0x30 <= c <= 0x39 or 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A or c in (0x2F, 0x5F):
        return chr(c)
    return f"\\x{c:02x}"


def _class(chars: set[int], negate: bool) -> str:
    members = sorted(set(range(256)) - chars) if negate else sorted(chars)
    if not members:
        return "(?!)"
    if len(members) == 1:
        return _byte(members[0])
    parts = []
    start = prev = members[0]
    for c in members[1:] + [-2]:
        if c == prev + 1:
            prev = c
            continue
        parts.append(_byte(start) if start == prev else f"{_byte(start)}-{_byte(prev)}")
        start = prev = c
    return "[" + "".join(parts) + "]"


class _Parser:
    """Recursive descent over parse.y's grammar, emitting a Python regex."""

    _CSET_CHAR = frozenset((_CHAR, 0x5B, 0x2A, 0x2B, 0x2E, 0x7C, 0x28, 0x29))
    _CSET_CHAR1 = _CSET_CHAR | {0x5D, 0x2D}
    _CSET_CHARN = _CSET_CHAR | {0x5E}
    _TERM_START = frozenset((0x2E, _CHAR, 0x5E, 0x2D, 0x5D, 0x5B, 0x28))

    def __init__(self, toks: list[tuple[int, int]]) -> None:
        self.toks = toks
        self.i = 0

    def peek(self) -> int | None:
        return self.toks[self.i][0] if self.i < len(self.toks) else None

    def take(self) -> tuple[int, int]:
        if self.i >= len(self.toks):
            raise AareError("regex syntax error: unexpected end")
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, kind: int) -> None:
        if self.peek() != kind:
            raise AareError(f"regex syntax error: expected '{chr(kind)}'")
        self.i += 1

    def parse(self) -> str:
        out = self.regex()
        if self.i != len(self.toks):
            raise AareError("regex syntax error")
        return out

    def regex(self) -> str:
        if self.peek() in (None, 0x29):
            return ""
        return self.expr()

    def expr(self) -> str:
        alts: list[str] = []
        if self.peek() == 0x7C:
            self.i += 1
            alts += ["", self.terms0()]
        else:
            alts.append(self.terms())
        while self.peek() == 0x7C:
            self.i += 1
            alts.append(self.terms0())
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    def terms0(self) -> str:
        return self.terms() if self.peek() in self._TERM_START else ""

    def terms(self) -> str:
        out = [self.qterm()]
        while self.peek() in self._TERM_START:
            out.append(self.qterm())
        return "".join(out)

    def qterm(self) -> str:
        term = self.term()
        if self.peek() in (0x2A, 0x2B):
            op = "*" if self.take()[0] == 0x2A else "+"
            return f"(?:{term}){op}"
        return term

    def term(self) -> str:
        kind, val = self.take()
        if kind == 0x2E:
            return "[\\x00-\\xff]"
        if kind in (_CHAR, 0x5E, 0x2D, 0x5D):
            return _byte(val)
        if kind == 0x28:
            inner = self.regex()
            self.expect(0x29)
            return f"(?:{inner})"
        if kind == 0x5B:
            negate = False
            if self.peek() == 0x5E:
                self.i += 1
                negate = True
                if self.peek() == 0x5E:
                    self.i += 1
                    chars = self.cset_chars()
                    chars.add(0x5E)
                    self.expect(0x5D)
                    return _class(chars, True)
            chars = self.charset()
            self.expect(0x5D)
            return _class(chars, negate)
        raise AareError(f"regex syntax error at '{chr(val)}'")

    def _one(self, allowed: frozenset[int]) -> int:
        if self.peek() not in allowed:
            raise AareError("regex syntax error in a character class")
        return self.take()[1]

    def charset(self) -> set[int]:
        first = self._one(self._CSET_CHAR1)
        if self.peek() == 0x2D:
            self.i += 1
            last = self._one(self._CSET_CHARN)
            chars = self.cset_chars()
            lo, hi = sorted((first, last))
            chars.update(range(lo, hi + 1))
            return chars
        chars = self.cset_chars()
        chars.add(first)
        return chars

    def cset_chars(self) -> set[int]:
        chars: set[int] = set()
        while self.peek() in self._CSET_CHARN:
            a = self.take()[1]
            if self.peek() == 0x2D:
                self.i += 1
                b = self._one(self._CSET_CHARN)
                lo, hi = sorted((a, b))
                chars.update(range(lo, hi + 1))
            else:
                chars.add(a)
        return chars


def pcre_to_re(pcre: bytes) -> str:
    """A Python regex (for bytes, ASCII text) equivalent to the parser's regex."""
    return _Parser(_lex(pcre)).parse()


# ----------------------------------------------------------------------------- API


class Pattern:
    """One rule path, compiled once, matched many times.

    ``aare`` is the path as written in a profile, quoted or not (quotes are
    stripped and escapes decoded as the parser's lexer does).  ``variables``
    maps a name to its values (``{"HOME": ["/home/*/", "/root/"]}``); values
    are taken as already lexed, as :func:`load_tunables` returns them.
    """

    __slots__ = ("aare", "expanded", "pcre", "regex")

    def __init__(self, aare: str, variables: dict[str, list[str]] | None = None) -> None:
        self.aare = aare
        raw = _unquote(aare.encode("utf-8", "surrogateescape"))
        expanded = filter_slashes(expand_variables(raw, variables or {}))
        self.expanded = expanded.decode("utf-8", "surrogateescape")
        self.pcre = to_pcre(expanded)
        self.regex: re.Pattern[bytes] = re.compile(pcre_to_re(self.pcre).encode("ascii"))

    def matches(self, path: str | bytes) -> bool:
        data = path if isinstance(path, bytes) else path.encode("utf-8", "surrogateescape")
        return self.regex.fullmatch(data) is not None

    def __repr__(self) -> str:
        return f"Pattern({self.aare!r})"


def compile_aare(aare: str, variables: dict[str, list[str]] | None = None) -> Pattern:
    return Pattern(aare, variables)


# ----------------------------------------------------------------------------- tunables

_VAR_LINE = re.compile(r"^\s*@\{([A-Za-z][A-Za-z0-9_]*)\}\s*(\+?=)(.*)$")
# "#include" is an include, "# include" a comment (as in the parser's lexer)
_INCLUDE = re.compile(r'^\s*(?:#include|include)(?:\s+|(?=[<"]))(if\s+exists\s+)?'
                      r'(<[^>]*>|"[^"]*"|[^\s#]+)\s*(?:#.*)?$')
# libapparmor _aa_is_blacklisted: what a directory include skips
_SKIP_SUFFIXES = (".dpkg-new", ".dpkg-old", ".dpkg-dist", ".dpkg-bak", ".dpkg-remove",
                  ".pacsave", ".pacnew", ".rpmnew", ".rpmsave", ".orig", ".rej", "~")


def _values(text: str) -> list[str]:
    """Space-separated values, quoted ones kept whole; a ``#`` after a space ends the line."""
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        if text[i] == "#":
            break
        j = i
        if text[i] == '"':
            j += 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
        else:
            while j < n and not text[j].isspace():
                j += 1
        tok = text[i:j].encode("utf-8", "surrogateescape")
        out.append(_unquote(tok).decode("utf-8", "surrogateescape"))
        i = j
    return out


def parse_variable_line(line: str) -> tuple[str, bool, list[str]] | None:
    """``@{X}=a b`` -> ("X", False, [a, b]); ``@{X}+=c`` -> ("X", True, [c])."""
    m = _VAR_LINE.match(line)
    if not m:
        return None
    return m.group(1), m.group(2) == "+=", _values(m.group(3))


def include_targets(spec: str, search: list[str], current_dir: str | None = None) -> list[str]:
    """The files an include names (``<x>``: first search dir that has it; a
    directory: its files, sorted, without the ones the parser skips).  Empty
    when nothing is found."""
    name = spec.strip()
    found: str | None = None
    if name.startswith("<") and name.endswith(">"):
        rel = name[1:-1].strip()
        for base in search:
            cand = os.path.join(base, rel)
            if os.path.exists(cand):
                found = cand
                break
    else:
        rel = name[1:-1] if name.startswith('"') and name.endswith('"') else name
        if os.path.isabs(rel):
            found = rel if os.path.exists(rel) else None
        else:
            for base in ([current_dir] if current_dir else []) + list(search):
                cand = os.path.join(base, rel)
                if os.path.exists(cand):
                    found = cand
                    break
    if found is None:
        return []
    if os.path.isdir(found):
        try:
            names = sorted(os.listdir(found))
        except OSError:
            return []
        return [os.path.join(found, n) for n in names
                if n and not n.startswith(".") and n != "README"
                and not n.endswith(_SKIP_SUFFIXES) and os.path.isfile(os.path.join(found, n))]
    return [found]


def parse_include(line: str) -> tuple[str, bool] | None:
    """``#include <x>`` / ``include <x>`` / ``include if exists <x>`` -> (spec, optional)."""
    m = _INCLUDE.match(line)
    if not m:
        return None
    return m.group(2), bool(m.group(1))


def read_variables(path: str, search: list[str],
                   variables: dict[str, list[str]] | None = None,
                   _depth: int = 0) -> dict[str, list[str]]:
    """Variable definitions of a file and of everything it includes, in order."""
    out = variables if variables is not None else {}
    if _depth > 50:
        raise AareError(f"includes nest too deeply at {path}")
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError:
        return out
    for line in text.splitlines():
        inc = parse_include(line)
        if inc is not None:
            for target in include_targets(inc[0], search, os.path.dirname(path)):
                read_variables(target, search, out, _depth + 1)
            continue
        var = parse_variable_line(line)
        if var is not None:
            name, append, values = var
            if append:
                out.setdefault(name, []).extend(values)
            else:
                out[name] = values
    return out


def load_tunables(base: str = "/etc/apparmor.d") -> dict[str, list[str]]:
    """The variables every profile gets from ``tunables/global`` (and its includes)."""
    return read_variables(os.path.join(base, "tunables", "global"), [base])
