"""virt_aa.policy.aare against the real parser: for each pattern, the DFA that
``apparmor_parser -D dfa-states`` builds decides which byte strings match,
and :meth:`Pattern.matches` must agree on every candidate.

Candidates come from the DFA itself (random walks to accepting states, so
the parser's language is sampled, not our idea of it), from mutations of
those (one byte deleted, a ``/`` or a letter inserted, a trailing ``/``), and
from a fixed list of paths with empty components, ``//`` and the AARE
special characters.  :func:`test_the_comparison_catches_a_wrong_matcher`
shows that a matcher whose ``*`` crosses ``/`` fails it.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import tempfile
import zlib
from collections.abc import Iterator

import pytest

from aadfa import _BYTE, dfa, transitions
from conftest import FEATURES, PARSER
from virt_aa.generate.paths import escape
from virt_aa.policy import aare
from virt_aa.policy.aare import AareError, Pattern, compile_aare, load_tunables, parse_variable_line

# ----------------------------------------------------------------------------- the DFA dump

_NAMED = {"a": 0x07, "e": 0x1B, "f": 0x0C, "n": 0x0A, "r": 0x0D, "t": 0x09}
_HEX = "0123456789abcdefABCDEF"
# bytes the dump prints as a one-digit \xH (the others below 0x10 have names)
_ONE_DIGIT = {0x0, 0x1, 0x2, 0x3, 0x4, 0x5, 0x6, 0x8, 0xB, 0xE, 0xF}


def class_bytes(text: str) -> set[int]:
    """The bytes listed in a dump class label's body (``\\x0/`` -> {0, 0x2f})."""
    out: set[int] = set()
    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            out.add(ord(c))
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "x":
            # \xH or \xHH, and "\x1a" is 0x1a or 0x1 then "a": the dump lists
            # bytes in ascending order, which settles it but in rare cases
            prev = max(out, default=-1)
            one = int(text[i + 2], 16)
            two = int(text[i + 2:i + 4], 16) if i + 3 < len(text) and \
                text[i + 3] in _HEX else None
            one_ok = one in _ONE_DIGIT and one > prev
            two_ok = two is not None and two > prev and two >= 0x10 and two != 0x1B and \
                not 0x20 <= two < 0x7F
            if one_ok and two_ok:
                raise AssertionError(f"ambiguous class label {text!r}")
            if two_ok and two is not None:
                out.add(two)
                i += 4
            else:
                assert one_ok, text
                out.add(one)
                i += 3
        elif nxt in _NAMED:
            out.add(_NAMED[nxt])
            i += 2
        else:
            out.add(ord(nxt))
            i += 2
    return out


class Dfa:
    """A DFA from the dump: explicit byte transitions, else the default
    transition (``[^...]`` lists the bytes that have none)."""

    def __init__(self, trans: dict[int, list[tuple[str, int]]],
                 perms: dict[int, tuple[int, int, int, int]]) -> None:
        self.perms = perms
        self.table: dict[int, tuple[dict[int, int], tuple[set[int], int] | None]] = {}
        for state, edges in trans.items():
            explicit: dict[int, int] = {}
            default: tuple[set[int], int] | None = None
            for label, nxt in edges:
                m = _BYTE.search(label)
                if m and not (label.startswith("[") and label.endswith("]")):
                    explicit[int(m.group(1), 16)] = nxt
                else:
                    assert label.startswith("[") and label.endswith("]"), label
                    body = label[1:-1]
                    assert body == "" or body.startswith("^"), label
                    default = (class_bytes(body[1:]), nxt)
            self.table[state] = (explicit, default)

    def step(self, state: int, byte: int) -> int | None:
        explicit, default = self.table.get(state, ({}, None))
        if byte in explicit:
            return explicit[byte]
        if default is not None and byte not in default[0]:
            return default[1]
        return None

    def final(self, data: bytes) -> int | None:
        state: int | None = 1
        for byte in data:
            assert state is not None
            state = self.step(state, byte)
            if state is None:
                return None
        return state

    def accepts(self, data: bytes) -> bool:
        state = self.final(data)
        return state is not None and state in self.perms and self.perms[state][0] != 0

    def masks(self, data: bytes) -> tuple[int, int, int, int]:
        """allow/deny/audit/quiet of the state ``data`` ends in (zeros: no match)."""
        state = self.final(data)
        return self.perms.get(state, (0, 0, 0, 0)) if state is not None else (0, 0, 0, 0)

    def sample(self, rng: random.Random, tries: int = 40) -> Iterator[bytes]:
        """Strings the DFA accepts, by random walks (short ones preferred)."""
        prefer = b"ab/x.-_9*?[]{},\\^ @"
        for _ in range(tries):
            state, out = 1, bytearray()
            for _step in range(40):
                if state in self.perms and self.perms[state][0] and rng.random() < 0.35:
                    yield bytes(out)
                    break
                explicit, default = self.table.get(state, ({}, None))
                choices: list[tuple[int, int]] = list(explicit.items())
                if default is not None:
                    ok = [b for b in prefer if b not in default[0]] or \
                        [b for b in range(1, 256) if b not in default[0]]
                    choices += [(rng.choice(ok), default[1])] * 2
                if not choices:
                    if state in self.perms and self.perms[state][0]:
                        yield bytes(out)
                    break
                byte, state = rng.choice(choices)
                out.append(byte)


def parse_dump(text: str, which: int = 0) -> Dfa:
    """DFA number ``which`` of a ``-D dfa-states`` dump: the first is the file
    rules', unless the profile has an attachment (then its xmatch DFA comes first)."""
    lines = text.splitlines()
    heads = [n for n, line in enumerate(lines) if "<== (allow/deny/audit/quiet)" in line]
    assert len(heads) > which, f"no DFA number {which} in the dump"
    i = heads[which]
    perms: dict[int, tuple[int, int, int, int]] = {}
    i += 1
    while i < len(lines) and lines[i].strip():
        m = re.match(r"\{(\d+)\} \(0x ([0-9a-f]+)/([0-9a-f]+)/([0-9a-f]+)/([0-9a-f]+)\)",
                     lines[i].strip())
        if m:
            a, d, au, q = (int(m.group(k), 16) for k in range(2, 6))
            perms[int(m.group(1))] = (a, d, au, q)
        i += 1
    return Dfa(transitions(lines, i), perms)


def compile_dump(profile: str | bytes, includes: tuple[str, ...] = (), which: int = 0) -> Dfa:
    """Run the parser on a whole profile text or file, return its file DFA."""
    argv = [PARSER, "-Q", "-K", "-T", "-D", "dfa-states"]
    for inc in includes:
        argv += ["-I", inc]
    if os.path.exists(FEATURES):
        argv += ["--features-file", FEATURES]
    if isinstance(profile, bytes) or "\n" in profile:
        data = profile if isinstance(profile, bytes) else profile.encode("utf-8",
                                                                         "surrogateescape")
        with tempfile.NamedTemporaryFile("wb", suffix=".aa", delete=False) as f:
            f.write(data)
            name = f.name
        try:
            proc = subprocess.run(argv + [name], capture_output=True, check=False)
        finally:
            os.unlink(name)
    else:
        proc = subprocess.run(argv + [profile], capture_output=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(proc.stderr.decode(errors="replace"))
    return parse_dump(proc.stderr.decode("latin-1"), which)


def rule_dfa(rule_path: str) -> Dfa:
    """The DFA of one ``"rule_path" r,`` rule, through the shared aadfa helper."""
    trans, accepting = dfa(rule_path)
    return Dfa(trans, {s: (0x10004, 0, 0, 0) for s in accepting})


# ----------------------------------------------------------------------------- candidates

FIXED = [b"", b"/", b"//", b"/a", b"/a/", b"/a//", b"/a/b", b"/a//b", b"/a/b/", b"/a/b/c",
         b"/a/b/c/", b"/ab", b"/abc", b"/a/x", b"/a/xb", b"/a/bb", b"/a/.b", b"/a/ /b",
         b"/srv/a*b", b"/srv/axb", b"/srv/a\\*b", b"/srv/a", b"/a/*", b"/a/?", b"/a/[b]",
         b"/a/{b}", b"/a/,", b"/a/\\", b"/a/^", b"/a/b,c", b"/a/\xc3\xa9", b"/a/\xe9",
         b"/home/u/.x", b"/root/.x", b"/home/.x", b"/home//.x", b"/proc/1/status",
         b"/proc/12a/status", b"/proc/0/status", b"/proc/self/status"]


def mutations(s: bytes, rng: random.Random) -> Iterator[bytes]:
    yield s + b"/"
    yield s + b"x"
    yield s[:-1]
    if s.endswith(b"/"):
        yield s.rstrip(b"/")
    for _ in range(3):
        if not s:
            break
        i = rng.randrange(len(s))
        yield s[:i] + s[i + 1:]
        yield s[:i] + b"/" + s[i:]
        yield s[:i] + b"a" + s[i:]
        yield s[:i] + s[i:i + 1] + s[i:]
    if b"/" in s:
        yield s.replace(b"/", b"//", 1)


def skeleton(pattern: str) -> bytes:
    """The pattern with specials dropped and backslashes removed (a near-literal)."""
    out = re.sub(r"\\(.)", r"\1", re.sub(r"(?<!\\)[*?{}\[\]]", "", pattern))
    return out.encode("utf-8", "surrogateescape")


def candidates(pattern: str, d: Dfa, extra: list[bytes] | None = None) -> list[bytes]:
    rng = random.Random(zlib.crc32(pattern.encode("utf-8", "surrogateescape")))
    pool = set(FIXED) | set(extra or ()) | {skeleton(pattern)}
    for s in list(d.sample(rng)):
        pool.add(s)
        pool.update(mutations(s, rng))
    return sorted(x for x in pool if b"\0" not in x)


def disagreements(pattern: str, d: Dfa, variables: dict[str, list[str]] | None = None,
                  extra: list[bytes] | None = None) -> tuple[int, list[tuple[bytes, bool]]]:
    """(number of candidates checked, [(candidate, parser verdict)] where we differ)."""
    p = Pattern(pattern, variables)
    cands = candidates(pattern, d, extra)
    return len(cands), [(c, d.accepts(c)) for c in cands if p.matches(c) != d.accepts(c)]


# ----------------------------------------------------------------------------- patterns

GLOBS = [
    "/a/*", "/a/**", "/a/*/b", "/a/**/b", "/a/*b", "/a/b*", "/a/*b*", "/a/**b", "/a/b**",
    "/*", "/**", "/*/", "/**/", "/a/***", "/a/*/*", "/a/**/*.img", "/a/?", "/a/??b",
    "/a/?*", "/a/*?", "/a/*/", "/a/**/", "/a*", "/a**", "/*/b", "/**/b", "/a/*.*",
    "/a/b/**/c/*", "/a/**.so*", "/{,var/}tmp/**/", "/a/*/**", "/a/x*/",
]
ALTERNATIONS = [
    "/a{b,c}d", "/a/{b,c,{d,e}}", "/{usr/,}lib{,32,64}/**", "/a/{,b/}c", "/a/{b,c}/{d,}",
    "/a/{,**}", "/a/{,*}", "/a/b/{,**}", "/a/{*,b}", "/a/{**,}", "/a/{b,}", "/a/{,}x",
    "/a/{b,{c,{d,}}}e", "/a/{b/,}*", "/a/{b,c}*", "/{dev,run}/shm", "/etc/libnl{,-3}/classid",
    "/a/{x,y}{1,2}", "/a/{b*,c?}", "/a/{[bc],d}", "/a/{\\,,b}", "/sys/bus/nd/devices/{,**/}",
]
CLASSES = [
    "/a/[abc]", "/a/[^abc]", "/a/[a-c]x", "/a/[^a-c]", "/a/[-a]",
    "/dev/vfio/[0-9]*", "/a/[*]", "/a/[?]", "/a/[{,}]", "/a/{[,],b}", "/a/[\\]]", "/a/[\\,]",
    "/a/[^/]", "/a/[^^]", "/a/[^^a]", "/a/[a^]", "/a/[c-a]", "/a/[.+|()]", "/a/[a-cx-z]",
    "/a/[[]", "/a/[\\[]", "/a/[*b]c", "/a/[b*]", "/a/usb[0-9]*/**",
    "/run/udev/data/c16[6,7]*", "/a/[^b]*", "/a/[\\x41-\\x43]", "/a/[^\\x2f]",
]
ESCAPES = [
    "/srv/a\\*b", "/srv/a\\?b", "/a\\{b\\}", "/a\\[b\\]", "/a\\,b", "/a\\\\b", "/a\\^b",
    "/a\\.b", "/a\\x41", "/a\\101", "/a\\d65", '/a\\"b', "/a\\q", "/a\\ b",
    "/a b", "/a$b", "/a^b", "/a.b", "/a+b", "/a(b)", "/a|b", "/a-b", "/a@b", "/a#b",
    "/a%b~", "/a\\x2a", "/a\\052b", "/a\\x5c\\x5c", "/a\\x7b,\\x7d", "/a\\t", "/a/\\**",
    "/a\\\\*", "/a/\\*/b", "/a/*\\*", "/a\\$b", "/a\\-b", "/a\\(b", "/a\\|b", "/a\\+b",
    escape("/srv/x*y?[z]{a,b}^,@q\\"), escape("/srv/vm {1}.img"), escape("/a/[^b]*"),
    escape("/a/b\\"), "/a/\xe9", "/a/?b", "/a/\\xe9",
]
SLASHES = ["//a//b", "/a//*", "/a/*//b", "/a///", "///a", "//a", "/a/**//", "/a//{b,/c}"]

ALL = GLOBS + ALTERNATIONS + CLASSES + ESCAPES + SLASHES


@pytest.mark.parametrize("pattern", ALL)
def test_pattern_agrees_with_parser(pattern: str) -> None:
    d = rule_dfa(pattern)
    n, bad = disagreements(pattern, d)
    assert n >= 20
    assert not bad, f"{pattern!r}: we differ from the parser on {bad[:8]}"


def test_enough_pairs_checked() -> None:
    """The point of the exercise is volume: count the pairs the parametrized test checks."""
    total = positives = 0
    for pattern in ALL[::7]:
        d = rule_dfa(pattern)
        cands = candidates(pattern, d)
        total += len(cands)
        positives += sum(d.accepts(c) for c in cands)
    # a seventh of the patterns already gives hundreds of pairs, both verdicts
    assert total > 400 and positives > 50 and total - positives > 200


# ----------------------------------------------------------------------------- variables

TUNABLE_PATTERNS = [
    "@{HOME}/.pulse-cookie", "@{PROC}/@{pid}/status", "@{PROC}/*/status",
    "@{PROC}/@{pid}/task/@{tid}/comm", "/usr/lib/@{multiarch}/qemu/*.so",
    "@{HOMEDIRS}/.ecryptfs/*/.Private/**", "@{HOME}/.Private/", "@{run}/uuidd/request",
    "@{etc_ro}/ld.so.conf.d/{,*.conf}", "@{sys}/devices/system/cpu/", "@{system_share_dirs}/x",
    "@{user_share_dirs}/y", "@{PROC}/@{pids}/fd/", "@{HOME}/@{XDG_DOWNLOAD_DIR}/**",
]


@pytest.fixture(scope="module")
def tunables() -> dict[str, list[str]]:
    return load_tunables()


@pytest.mark.parametrize("pattern", TUNABLE_PATTERNS)
def test_tunables_agree_with_parser(pattern: str, tunables: dict[str, list[str]]) -> None:
    profile = f'#include <tunables/global>\nprofile t {{\n  "{pattern}" r,\n}}\n'
    d = compile_dump(profile)
    extra = [b"/home/u/.pulse-cookie", b"/root/.pulse-cookie", b"/proc/1234/status",
             b"/proc/1234/task/1/comm", b"/usr/lib/x86_64-linux-gnu/qemu/a.so",
             b"/home/.ecryptfs/u/.Private/k", b"/run/uuidd/request", b"/var/run/uuidd/request",
             b"/usr/etc/ld.so.conf.d/a.conf", b"/usr/local/share/x", b"/root/.local/share/y",
             b"/proc/99/fd/", b"/home/u/Downloads/f", b"/home/u/.Private/",
             b"/sys/devices/system/cpu/", b"/proc/09/status", b"/proc/5000000/status"]
    _, bad = disagreements(pattern, d, tunables, extra)
    assert not bad, f"{pattern!r}: we differ from the parser on {bad[:8]}"
    assert any(Pattern(pattern, tunables).matches(e) for e in extra)


CUSTOM = """\
@{V}=/x/ /y
@{W}=b c/
@{W}+=d
@{ONE}=/only/
@{NEST}=@{V}z @{ONE}
@{GLOB}=* {p,q}
@{Q}="sp ace" plain
"""
CUSTOM_PATTERNS = ["@{V}/a", "/pre/@{V}/suf", "/pre@{V}", "/a/@{W}/e", "/a/@{W}", "@{ONE}f",
                   "@{ONE}/f", "@{NEST}/k", "/g/@{GLOB}/h", "/g/@{GLOB}", "/s/@{Q}",
                   "/{@{V},n}/m", "/a/\\@V", "/b/@{W}@{V}", "@{V}@{W}"]


@pytest.mark.parametrize("pattern", CUSTOM_PATTERNS)
def test_variable_expansion_agrees_with_parser(pattern: str) -> None:
    variables: dict[str, list[str]] = {}
    for line in CUSTOM.splitlines():
        parsed = parse_variable_line(line)
        assert parsed is not None
        name, append, values = parsed
        variables[name] = variables.get(name, []) + values if append else values
    d = compile_dump(CUSTOM + f'profile t {{\n  "{pattern}" r,\n}}\n')
    extra = [b"/x/a", b"/y/a", b"/x//a", b"/pre/x/suf", b"/pre/y/suf", b"/pre/x", b"/prey",
             b"/a/b/e", b"/a/c/e", b"/a/d/e", b"/a/c//e", b"/only/f", b"/only//f",
             b"/x/z/k", b"/xz/k", b"/yz/k", b"/only/k", b"/g/p/h", b"/g/abc/h", b"/g//h",
             b"/s/sp ace", b"/s/plain", b"/x/m", b"/n/m", b"/a/@{V}"]
    _, bad = disagreements(pattern, d, variables, extra)
    assert not bad, f"{pattern!r}: we differ from the parser on {bad[:8]}"


def test_values_are_lexed() -> None:
    assert parse_variable_line('@{X} = a "b c" d\\x41 # comment') == \
        ("X", False, ["a", "b c", "dA"])
    assert parse_variable_line("@{X}+=e") == ("X", True, ["e"])
    assert parse_variable_line("# @{X}=e") is None


def test_load_tunables_follows_includes(tmp_path: os.PathLike[str]) -> None:
    base = os.fspath(tmp_path)
    os.makedirs(os.path.join(base, "tunables", "home.d"))
    with open(os.path.join(base, "tunables", "global"), "w") as f:
        f.write("include <tunables/home>\ninclude if exists <tunables/nope>\n")
    with open(os.path.join(base, "tunables", "home"), "w") as f:
        f.write("@{HOMEDIRS}=/home/\n@{HOME}=@{HOMEDIRS}/*/ /root/\ninclude <tunables/home.d>\n")
    with open(os.path.join(base, "tunables", "home.d", "site"), "w") as f:
        f.write("@{HOMEDIRS}+=/srv/home/ # more\n")
    with open(os.path.join(base, "tunables", "home.d", "site.dpkg-old"), "w") as f:
        f.write("@{HOMEDIRS}+=/old/\n")
    got = load_tunables(base)
    assert got == {"HOMEDIRS": ["/home/", "/srv/home/"], "HOME": ["@{HOMEDIRS}/*/", "/root/"]}
    home = compile_aare("@{HOME}/f", got)
    assert home.matches("/srv/home/u/f") and home.matches("/root/f")
    assert not home.matches("/old/u/f") and not home.matches("/srv/home/f")


def test_system_tunables() -> None:
    t = load_tunables()
    assert t["PROC"] == ["/proc/"] and "/root/" in t["HOME"] and "multiarch" in t
    assert Pattern("@{PROC}/@{pid}/cmdline", t).matches("/proc/4711/cmdline")
    assert not Pattern("@{PROC}/@{pid}/cmdline", t).matches("/proc/self/cmdline")


# ----------------------------------------------------------------------------- errors

INVALID = ["/a/{b", "/a/b}", "/a/]", "/a/[b", "/a/{}", "/a/{b}", "/a/x\\", "/a/[a-]",
           "/a/@{undefined}", "/a/[]x]", "/a/[^]]",
           "/a\\@{x}", "/a/@{}"]


@pytest.mark.parametrize("pattern", INVALID)
def test_invalid_patterns_are_refused_by_both(pattern: str) -> None:
    with pytest.raises(AareError):
        Pattern(pattern)
    with pytest.raises(AssertionError):
        rule_dfa(pattern)


# ----------------------------------------------------------------------------- the harness


def test_the_comparison_catches_a_wrong_matcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutants of the translation (``*`` crossing ``/``; no one-character rule
    for a whole-component ``*``; ``?`` matching ``/``) must be caught."""
    real = aare.to_pcre
    mutants = {
        "star crosses /": lambda b: real(b).replace(b"[^/\\x00]*", b"[^\\x00]*"),
        "empty component": lambda b: real(b).replace(b"/[^/\\x00][^", b"/[^"),
        "? matches /": lambda b: real(b).replace(b"[^/\\x00]", b"[^\\x00]")
        if b"?" in b else real(b),
    }
    for name, mutant in mutants.items():
        monkeypatch.setattr(aare, "to_pcre", mutant)
        caught = 0
        for pattern in GLOBS:
            _, bad = disagreements(pattern, rule_dfa(pattern))
            caught += bool(bad)
        assert caught, f"mutant '{name}' went unnoticed"
    monkeypatch.setattr(aare, "to_pcre", real)


def test_class_labels() -> None:
    assert class_bytes("\\x0/") == {0, 0x2F}
    assert class_bytes("\\x0a") == {0, ord("a")}
    assert class_bytes("\\ \\[\\\\]^\\x7f\\xff") == {0x20, 0x5B, 0x5C, 0x5D, 0x5E, 0x7F, 0xFF}
    assert class_bytes("\\a\\e\\t") == {7, 0x1B, 9}
    with pytest.raises(AssertionError):
        class_bytes("\\x1a")


def test_literal_paths_match_only_themselves() -> None:
    """escape() output is a literal for our matcher too (cross-checks paths.escape)."""
    for path in ["/srv/a*b", "/srv/x?y", "/srv/[a]", "/srv/{a,b}", "/srv/a\\b", "/srv/^,@"]:
        p = Pattern(escape(path))
        assert p.matches(path)
        assert not p.matches(path + "x") and not p.matches(path.replace("/srv/", "/srv/x"))
    assert Pattern("/srv/a\\*b").matches("/srv/a*b")
    assert not Pattern("/srv/a\\*b").matches("/srv/axb")
    with pytest.raises(AareError):
        Pattern("/srv/{")
