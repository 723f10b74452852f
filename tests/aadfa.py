"""Ask the real apparmor_parser which strings a rule path matches.

``apparmor_parser -D dfa-states`` dumps the DFA it builds for a profile.  For
a rule that must match one literal path only, the DFA is a single chain of
one-byte transitions ending in an accepting state with no way out: that is
what :func:`literal_match` checks, so the tests prove our escaping with the
parser itself rather than with our own idea of AppArmor.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

from conftest import FEATURES, PARSER

_TRANS = re.compile(r"^\s+(.*?)\s*-> \{(\d+)\}")
_BYTE = re.compile(r"0x([0-9a-f]{1,2})$")


def dfa(rule_path: str, perms: str = "r") -> tuple[dict[int, list[tuple[str, int]]], set[int]]:
    """Transitions and accepting states of the file DFA for one rule."""
    body = f'profile t {{\n  "{rule_path}" {perms},\n}}\n'
    with tempfile.NamedTemporaryFile("wb", suffix=".aa", delete=False) as f:
        f.write(body.encode("utf-8", "surrogateescape"))
        name = f.name
    try:
        argv = [PARSER, "-Q", "-K", "-T", "-D", "dfa-states"]
        if os.path.exists(FEATURES):
            argv += ["--features-file", FEATURES]
        proc = subprocess.run(argv + [name], capture_output=True, check=False)
    finally:
        os.unlink(name)
    if proc.returncode != 0:
        raise AssertionError(proc.stderr.decode(errors="replace"))
    lines = proc.stderr.decode("latin-1").splitlines()
    trans: dict[int, list[tuple[str, int]]] = {}
    accepting: set[int] = set()
    i = 0
    # first block: accepting states of the file DFA
    while i < len(lines) and "<== (allow/deny/audit/quiet)" not in lines[i]:
        i += 1
    i += 1
    while i < len(lines) and lines[i].strip():
        m = re.match(r"\{(\d+)\}", lines[i].strip())
        if m:
            accepting.add(int(m.group(1)))
        i += 1
    trans.update(transitions(lines, i))
    return trans, accepting


def transitions(lines: list[str], i: int) -> dict[int, list[tuple[str, int]]]:
    """The state table of one DFA in a dump, read from line ``i`` to the next DFA."""
    trans: dict[int, list[tuple[str, int]]] = {}
    state = None
    while i < len(lines):
        line = lines[i]
        if "<== (allow/deny/audit/quiet)" in line:
            break  # the next DFA (policy rules) starts
        head = re.match(r"^\{(\d+)\} perms", line)
        if head:
            state = int(head.group(1))
            trans.setdefault(state, [])
        else:
            m = _TRANS.match(line)
            if m and state is not None:
                trans[state].append((m.group(1), int(m.group(2))))
        i += 1
    return trans


def literal_match(rule_path: str, literal: bytes) -> bool:
    """Whether the rule matches exactly the byte string ``literal`` and nothing else."""
    trans, accepting = dfa(rule_path)
    state = 1
    for byte in literal:
        out = trans.get(state, [])
        if len(out) != 1:
            return False
        label, nxt = out[0]
        m = _BYTE.search(label)
        if not m or int(m.group(1), 16) != byte:
            return False
        state = nxt
    return state in accepting and not trans.get(state)
