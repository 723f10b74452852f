"""The variables every profile gets: ``tunables/global`` and what it includes.

Read as the parser reads them (``#include`` and ``include if exists``,
directory includes without the files the parser skips, ``@{X}=`` and
``@{X}+=``), for :mod:`virt_aa.policy.aare` and :mod:`virt_aa.policy.effective`.
"""

from __future__ import annotations

import os
import re

from virt_aa.policy.aaretext import AareError, _unquote

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
