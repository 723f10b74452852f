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

Stages 1-3 live in :mod:`virt_aa.policy.aaretext`, the tunables reader in
:mod:`virt_aa.policy.tunables` (both re-exported here); stages 4-5 and the
API here.  Not on the VM-start path: :mod:`re` is fine here.  The tests compare
:meth:`Pattern.matches` with the DFA the real parser builds.
"""

from __future__ import annotations

import re

from virt_aa.policy.aaretext import AareError, _escseq, _unquote, expand_variables, filter_slashes
from virt_aa.policy.tunables import include_targets as include_targets
from virt_aa.policy.tunables import load_tunables as load_tunables
from virt_aa.policy.tunables import parse_include as parse_include
from virt_aa.policy.tunables import parse_variable_line as parse_variable_line
from virt_aa.policy.tunables import read_variables as read_variables

__all__ = ["AareError", "Pattern", "compile_aare", "include_targets", "load_tunables",
           "parse_variable_line", "read_variables"]


# ------------------------------------------------------------------ stage 4: AARE -> pcre


def _star(aare: bytes, i: int, out: bytearray) -> int:
    """``*`` or ``**`` at ``aare[i]``; returns the index of its last ``*``.

    A whole path component of stars must match at least one character."""
    n = len(aare)
    if out and out[-1] == 0x2F:
        j = i
        while j < n and aare[j] == 0x2A:
            j += 1
        if j == n or aare[j] == 0x2F:
            out += b"[^/\\x00]"
    if i + 1 < n and aare[i + 1] == 0x2A:
        out += b"[^\\x00]*"
        return i + 1
    out += b"[^/\\x00]*"
    return i


def _literal(aare: bytes, i: int, escape: bool, out: bytearray) -> int:
    """Any other byte, or the escape sequence it starts; returns its last index."""
    c = aare[i]
    if c in b".+|()":
        out.append(0x5C)
    if escape:
        val, j = _escseq(aare, i, b"")
        if val != -1:
            out.append(0x5C)
            out += aare[i:j]
            return j - 1
    out.append(c)
    return i


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
        if escape and c in b"\\*[]{}":
            out += bytes((0x5C, c))     # an escaped special stands for itself
        elif c == 0x5C:  # backslash
            escape = True
            i += 1
            continue
        elif c == 0x2A:  # *
            i = _star(aare, i, out)
        elif c == 0x3F:  # ?
            out += b"?" if escape else b"[^/\\x00]"
        elif c == 0x5B:  # [
            inclass = True
            out.append(c)
        elif c == 0x5D:  # ]
            if not inclass:
                raise AareError("invalid close ], no matching open [")
            inclass = False
            out.append(c)
        elif c == 0x7B:  # {
            if inclass:
                out.append(c)
            else:
                group += 1
                if group >= 50:
                    raise AareError("exceeded maximum nesting of {}")
                counts[group] = 0
                out += b"("
        elif c == 0x7D:  # }
            if inclass:
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
            i = _literal(aare, i, escape, out)
        escape = False
        i += 1
    if group > 0 or inclass:
        raise AareError("unclosed grouping or character class")
    if escape:
        raise AareError("trailing '\\' escape character")
    return bytes(out)


# ------------------------------------------------------------------ stage 5: pcre -> re

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
