"""The effective file policy of one VM, and the decision for one access.

:func:`effective_rules` collects every file rule the profile P of a VM
reaches: the template's abstractions, the generated ``.files`` include and
the per-VM ``local/`` include, following includes the way ``apparmor_parser
-I`` does (first search directory that has the file; a directory includes
its files).  :func:`decide` then applies AppArmor's semantics to one path and
a set of permissions: the matching allow rules' permissions are united, any
matching deny rule removes what it names (deny wins), and the request is
allowed when everything asked for is left.

Each rule keeps where it came from (``file:line``, ``generated: ...`` for the
``.files`` include, ``per-VM [id] ...`` for the per-VM rules), so a decision
can name the rule that grants or refuses an access.  Not on the VM-start path.
"""

from __future__ import annotations

import os

from virt_aa.policy.aare import (
    AareError,
    Pattern,
    include_targets,
    parse_include,
    parse_variable_line,
)

__all__ = ["Decision", "FileRule", "ParseStats", "decide", "effective_rules", "parse_perms",
           "rules_from_text"]

# AppArmor's permission bits (the user/owner half of the parser's masks):
# AA_MAY_EXEC 1, WRITE 2, READ 4, APPEND 8, LINK 0x10, LOCK 0x20, EXEC_MMAP 0x40
_REQUEST_BITS = {"r": 0x4, "w": 0x2, "a": 0x8, "l": 0x10, "k": 0x20, "m": 0x40, "x": 0x1}
# what a rule's letter grants or denies: 'w' includes append, as in the parser
_RULE_BITS = {"r": 0x4, "w": 0x2 | 0x8, "a": 0x8, "l": 0x10, "k": 0x20, "m": 0x40, "x": 0x1}
PERM_ORDER = "rwaklmx"
_EXEC_PREFIXES = frozenset(("", "i", "u", "U", "p", "P", "c", "C", "pi", "Pi", "ci", "Ci",
                            "pu", "PU", "cu", "CU"))
QUALIFIERS = ("audit", "deny", "owner", "allow")
NON_FILE = frozenset(("capability", "network", "ptrace", "signal", "unix", "dbus", "mount",
                      "umount", "remount", "pivot_root", "change_profile", "change_hat",
                      "rlimit", "set", "abi", "alias", "userns", "io_uring", "mqueue", "link",
                      "all"))
MAX_INCLUDE_DEPTH = 40


class ParseStats:
    """What reading a policy skipped: non-file rules, rules not understood, includes."""

    __slots__ = ("child_blocks", "missing_includes", "non_file", "not_understood")

    def __init__(self) -> None:
        self.non_file = 0
        self.child_blocks = 0
        self.not_understood: list[str] = []      # "source: rule text"
        self.missing_includes: list[str] = []    # "source: include <x>"

    def __repr__(self) -> str:
        return (f"ParseStats(non_file={self.non_file}, not_understood="
                f"{len(self.not_understood)}, missing_includes={len(self.missing_includes)})")


def parse_perms(text: str) -> tuple[frozenset[str], str | None] | None:
    """``rwk`` -> ({r,w,k}, None); ``rmpix`` -> ({r,m,x}, "pix"); None if not permissions.

    Every exec mode (``ix``, ``Px``, ``cux``...) counts as ``x``.
    """
    letters: set[str] = set()
    exec_mode: str | None = None
    prefix = ""
    for ch in text:
        if ch in "rwaklm" and not prefix:
            letters.add(ch)
        elif ch in "iuUpPcC":
            prefix += ch
        elif ch == "x":
            if prefix not in _EXEC_PREFIXES or exec_mode is not None:
                return None
            exec_mode = prefix + "x"
            letters.add("x")
            prefix = ""
        else:
            return None
    if prefix or not letters:
        return None
    return frozenset(letters), exec_mode


class FileRule:
    """One file rule: the path pattern as written, its permissions and qualifiers."""

    __slots__ = ("_pattern", "audit", "deny", "error", "exec_mode", "owner", "path", "perms",
                 "source", "target", "variables")

    def __init__(self, path: str, perms: str | frozenset[str] | set[str], *, deny: bool = False,
                 owner: bool = False, audit: bool = False, source: str = "",
                 exec_mode: str | None = None, target: str | None = None,
                 variables: dict[str, list[str]] | None = None) -> None:
        if isinstance(perms, str):
            parsed = parse_perms(perms)
            if parsed is None:
                raise ValueError(f"not file permissions: {perms!r}")
            perms, mode = parsed
            exec_mode = exec_mode or mode
        self.path = path                  # the pattern as written, without quotes
        self.perms: frozenset[str] = frozenset(perms)
        self.exec_mode = exec_mode        # "ix", "Px"... when the rule has an exec mode
        self.deny = deny
        self.owner = owner
        self.audit = audit
        self.source = source
        self.target = target              # "-> target" of an exec or link rule
        self.variables = variables
        self.error: str | None = None     # why the pattern cannot be compiled
        self._pattern: Pattern | None = None

    @property
    def pattern(self) -> Pattern | None:
        if self._pattern is None and self.error is None:
            try:
                self._pattern = Pattern(self.path, self.variables)
            except AareError as exc:
                self.error = str(exc)
        return self._pattern

    def matches(self, path: str) -> bool:
        pattern = self.pattern
        return pattern is not None and pattern.matches(path)

    @property
    def bits(self) -> int:
        out = 0
        for letter in self.perms:
            out |= _RULE_BITS[letter]
        if self.exec_mode and "i" in self.exec_mode:
            out |= _RULE_BITS["m"]  # ix implies m (parser_regex.c process_dfa_entry)
        return out

    @property
    def perms_text(self) -> str:
        letters = "".join(p for p in PERM_ORDER if p in self.perms and p != "x")
        return letters + (self.exec_mode or "")

    def text(self) -> str:
        """The rule in profile syntax (normalised)."""
        quals = [q for q, on in (("audit", self.audit), ("deny", self.deny),
                                 ("owner", self.owner)) if on]
        quoted = f'"{self.path}"' if any(c in self.path for c in ' \t"#') else self.path
        rule = " ".join(quals + [quoted, self.perms_text])
        if self.target:
            rule += f" -> {self.target}"
        return rule + ","

    def __repr__(self) -> str:
        return f"FileRule({self.text()!r}, source={self.source!r})"


class Decision:
    """The verdict for one path and permission set, with the rules behind it."""

    __slots__ = ("allow_rules", "allowed", "deny_rules", "path", "perms", "perms_denied",
                 "perms_missing")

    def __init__(self, path: str, perms: str, allowed: bool, perms_missing: str,
                 perms_denied: str, allow_rules: list[FileRule],
                 deny_rules: list[FileRule]) -> None:
        self.path = path
        self.perms = perms
        self.allowed = allowed
        self.perms_missing = perms_missing   # requested letters not granted (denied ones too)
        self.perms_denied = perms_denied     # requested letters a deny rule refuses
        self.allow_rules = allow_rules       # matching allow rules granting a requested perm
        self.deny_rules = deny_rules         # matching deny rules refusing a requested perm

    def explain(self) -> str:
        head = (f"{self.path} {self.perms}: " + ("allowed" if self.allowed else
                f"denied (missing {self.perms_missing})"))
        lines = [head]
        lines += [f"  allow {r.text()}  [{r.source}]" for r in self.allow_rules]
        lines += [f"  deny  {r.text()}  [{r.source}]" for r in self.deny_rules]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Decision({self.path!r}, {self.perms!r}, allowed={self.allowed}, "
                f"missing={self.perms_missing!r})")


def _request(perms: str) -> tuple[list[str], int]:
    parsed = parse_perms(perms)
    if parsed is None:
        raise ValueError(f"not file permissions: {perms!r}")
    letters = [p for p in PERM_ORDER if p in parsed[0]]
    bits = 0
    for p in letters:
        bits |= _REQUEST_BITS[p]
    return letters, bits


def decide(rules: list[FileRule], path: str, perms: str, owner: bool = True) -> Decision:
    """AppArmor's verdict for ``perms`` on ``path`` under ``rules``.

    ``owner``: whether the process owns the file (``owner`` rules apply only
    then).  Exec modes in ``perms`` (``ix``, ``px``...) ask for ``x``.
    """
    letters, want = _request(perms)
    allow_bits = deny_bits = 0
    allow_rules: list[FileRule] = []
    deny_rules: list[FileRule] = []
    for rule in rules:
        if rule.owner and not owner:
            continue
        if not rule.matches(path):
            continue
        bits = rule.bits
        if rule.deny:
            deny_bits |= bits
            if bits & want:
                deny_rules.append(rule)
        else:
            allow_bits |= bits
            if bits & want:
                allow_rules.append(rule)
    granted = allow_bits & ~deny_bits
    missing = "".join(p for p in letters if not _REQUEST_BITS[p] & granted)
    denied = "".join(p for p in letters if _REQUEST_BITS[p] & deny_bits)
    return Decision(path, perms, not missing, missing, denied, allow_rules, deny_rules)


# ----------------------------------------------------------------------------- reading policy


class _Stmt:
    """One statement of profile text (see :func:`_statements`)."""

    __slots__ = ("include", "kind", "line", "text", "var")

    def __init__(self, kind: str, line: int, text: str = "",
                 include: tuple[str, bool] | None = None,
                 var: tuple[str, bool, list[str]] | None = None) -> None:
        self.kind = kind
        self.line = line
        self.text = text
        self.include = include
        self.var = var

    def __repr__(self) -> str:
        return f"_Stmt({self.kind!r}, {self.line}, {self.text or self.include or self.var!r})"


def _line_statement(line: str, lineno: int) -> tuple[bool, _Stmt | None]:
    """A line read on its own (no statement pending): (True, statement) for an
    include, a variable or a provenance comment; (True, None) for a blank
    line, another comment or a boolean variable; (False, None) for the rest."""
    s = line.strip()
    if not s:
        return True, None
    inc = parse_include(s)
    if inc is not None:
        return True, _Stmt("include", lineno, include=inc)
    if s.startswith("#"):
        return True, _Stmt("provenance", lineno, s) if s.startswith("# virt-aa:") else None
    var = parse_variable_line(s)
    if var is not None:
        return True, _Stmt("var", lineno, var=var)
    return s.startswith("${"), None     # ${bool} = ...: a boolean variable


def _statements(text: str) -> list[_Stmt]:
    """Split profile text into statements.

    Kinds: ``include`` (``.include`` = (spec, optional)), ``var`` (``.var`` =
    (name, append, values)), ``provenance`` (a ``# virt-aa:`` comment),
    ``open`` (a block header), ``close``, ``rule`` (text without the final
    comma), ``junk`` (text left without a terminating comma).
    """
    out: list[_Stmt] = []
    buf: list[str] = []
    start = 0
    quoted = False
    paren = alt = 0
    for lineno, line in enumerate(text.split("\n"), 1):
        if not "".join(buf).strip():
            buf = []
            whole, stmt = _line_statement(line, lineno)
            if stmt is not None:
                out.append(stmt)
            if whole:
                continue
        if not buf:
            start = lineno
        i, n = 0, len(line)
        while i < n:
            ch = line[i]
            nxt = line[i + 1] if i + 1 < n else ""
            if quoted:
                buf.append(ch)
                if ch == "\\" and nxt:
                    buf.append(nxt)
                    i += 1
                elif ch == '"':
                    quoted = False
                i += 1
                continue
            if ch == "#" and (i == 0 or line[i - 1] in " \t" or not "".join(buf).strip()):
                break
            if ch == "\\" and nxt:
                buf += [ch, nxt]
                i += 2
                continue
            if ch == '"':
                quoted = True
            elif ch == "(":
                paren += 1
            elif ch == ")":
                paren = max(0, paren - 1)
            elif ch == "{":
                if alt == 0 and paren == 0 and (nxt in ("", " ", "\t", "}")):
                    out.append(_Stmt("open", start, "".join(buf).strip()))
                    buf = []
                    i += 1
                    start = lineno
                    continue
                alt += 1
            elif ch == "}":
                if alt > 0:
                    alt -= 1
                elif paren == 0:
                    if "".join(buf).strip():
                        out.append(_Stmt("junk", start, "".join(buf).strip()))
                    out.append(_Stmt("close", lineno))
                    buf = []
                    i += 1
                    start = lineno
                    continue
            elif ch == "," and alt == 0 and paren == 0 and nxt in ("", " ", "\t", "#"):
                out.append(_Stmt("rule", start, "".join(buf).strip()))
                buf = []
                i += 1
                start = lineno
                continue
            buf.append(ch)
            i += 1
        if buf:
            buf.append(" ")
    if "".join(buf).strip():
        out.append(_Stmt("junk", start, "".join(buf).strip()))
    return out


def _tokens(rule: str) -> list[str]:
    """Whitespace-separated words, quoted parts kept whole."""
    tokens: list[str] = []
    cur: list[str] = []
    quoted = False
    i = 0
    while i < len(rule):
        ch = rule[i]
        if quoted:
            cur.append(ch)
            if ch == "\\" and i + 1 < len(rule):
                cur.append(rule[i + 1])
                i += 1
            elif ch == '"':
                quoted = False
        elif ch in " \t":
            if cur:
                tokens.append("".join(cur))
                cur = []
        else:
            if ch == '"':
                quoted = True
            elif ch == "\\" and i + 1 < len(rule):
                cur.append(ch)
                i += 1
                ch = rule[i]
            cur.append(ch)
        i += 1
    if cur:
        tokens.append("".join(cur))
    return tokens


def _is_path(token: str) -> bool:
    return token.startswith(("/", "@{", '"/', '"@{'))


def _unquote(token: str) -> str:
    if len(token) >= 2 and token.startswith('"') and token.endswith('"'):
        return token[1:-1]
    return token


def _file_rule(text: str, source: str,
               variables: dict[str, list[str]]) -> FileRule | str | None:
    """A FileRule, "non-file" for a rule of another kind, None when not understood."""
    words: list[str] = []
    for word in _tokens(text):
        if "->" in word and not word.startswith('"') and word != "->":
            before, _, after = word.partition("->")
            words += [w for w in (before, "->", after) if w]
        else:
            words.append(word)
    quals: set[str] = set()
    while words and words[0] in QUALIFIERS:
        quals.add(words.pop(0))
    if not words:
        return None
    head = words[0]
    if head in NON_FILE or head.split("(")[0] in NON_FILE:
        return "non-file"
    if head == "file":
        words.pop(0)
        if not words:
            return FileRule("/{**,}", "rwalkm", exec_mode="ix", deny="deny" in quals,
                            owner="owner" in quals, audit="audit" in quals, source=source,
                            variables=variables)
    if len(words) >= 2 and _is_path(words[0]):
        path, perms, rest = words[0], words[1], words[2:]
    elif len(words) >= 2 and _is_path(words[1]):
        perms, path, rest = words[0], words[1], words[2:]
    else:
        return None
    target = None
    if rest:
        if len(rest) == 2 and rest[0] == "->":
            target = rest[1]
        else:
            return None
    parsed = parse_perms(perms)
    if parsed is None:
        return None
    letters, exec_mode = parsed
    return FileRule(_unquote(path), letters, deny="deny" in quals, owner="owner" in quals,
                    audit="audit" in quals, source=source, exec_mode=exec_mode, target=target,
                    variables=variables)


def _origin(path: str) -> str:
    """``generated`` for a ``.files`` include, ``per-VM`` for a per-VM file, else ``""``."""
    name = os.path.basename(path)
    parent = os.path.basename(os.path.dirname(path))
    if parent == "libvirt" and name.startswith("libvirt-") and name.endswith(".files"):
        return "generated"
    if parent == "local" and name.startswith("libvirt-"):
        return "per-VM"
    return ""


def _provenance_id(comment: str) -> str | None:
    for word in comment[len("# virt-aa:"):].split():
        if word.startswith("id="):
            return word[3:].strip('"') or None
    return None


class _Walker:
    def __init__(self, search: list[str], variables: dict[str, list[str]],
                 stats: ParseStats) -> None:
        self.search = search
        self.variables = variables
        self.stats = stats
        self.rules: list[FileRule] = []

    def walk(self, text: str, source: str, top: bool, depth: int = 0) -> None:
        origin = _origin(source)
        collecting = [True]   # per open block: do its rules belong to the profile?
        main_seen = not top
        pending_id: str | None = None
        for st in _statements(text):
            kind = st.kind
            where = f"{source}:{st.line}"
            if kind == "provenance":
                pending_id = _provenance_id(st.text)
                continue
            if kind == "open":
                if not main_seen and len(collecting) == 1:
                    main_seen = True
                    collecting.append(True)
                else:
                    collecting.append(False)
                    if collecting[-2]:
                        self.stats.child_blocks += 1
                continue
            if kind == "close":
                if len(collecting) > 1:
                    collecting.pop()
                continue
            if st.var is not None:
                name, append, values = st.var
                if append:
                    self.variables.setdefault(name, []).extend(values)
                else:
                    self.variables[name] = list(values)
                continue
            if not collecting[-1]:
                continue
            if st.include is not None:
                spec, optional = st.include
                self.include(spec, optional, where, source, depth)
                continue
            text_ = st.text
            if kind == "junk":
                self.stats.not_understood.append(f"{where}: {text_}")
                continue
            if origin == "generated":
                label = f"generated: {where}"
            elif origin == "per-VM":
                from virt_aa.policy.localrules import rule_id

                label = f"per-VM [{pending_id or rule_id(text_ + ',')}] {where}"
            else:
                label = where
            pending_id = None
            rule = _file_rule(text_, label, self.variables)
            if rule is None:
                self.stats.not_understood.append(f"{where}: {text_},")
            elif isinstance(rule, str):
                self.stats.non_file += 1
            else:
                self.rules.append(rule)

    def include(self, spec: str, optional: bool, where: str, source: str, depth: int) -> None:
        targets = include_targets(spec, self.search, os.path.dirname(source))
        if not targets:
            if not optional:
                self.stats.missing_includes.append(f"{where}: include {spec}")
            return
        if depth >= MAX_INCLUDE_DEPTH:
            self.stats.missing_includes.append(f"{where}: include {spec} (nested too deeply)")
            return
        for target in targets:
            try:
                with open(target, encoding="utf-8", errors="surrogateescape") as f:
                    content = f.read()
            except OSError as exc:
                self.stats.missing_includes.append(f"{where}: include {spec} ({exc.strerror})")
                continue
            self.walk(content, target, top=False, depth=depth + 1)


def _search_list(base: str | list[str]) -> list[str]:
    return [base] if isinstance(base, str) else list(base)


def rules_from_text(text: str, source: str, base: str | list[str],
                    variables: dict[str, list[str]] | None = None,
                    stats: ParseStats | None = None) -> list[FileRule]:
    """The file rules of a profile or abstraction text, includes followed.

    ``base``: the include search path (``[root/etc/apparmor.d, /etc/apparmor.d]``).
    ``variables`` is filled with the definitions met on the way (tunables)
    and used to compile the rules' patterns; pass :func:`~virt_aa.policy.aare.
    load_tunables` output for an abstraction that does not include them.
    In a profile file, the rules of its first profile block count; child
    profiles and hats are skipped (``stats.child_blocks``).  Non-file rules
    are counted in ``stats.non_file``, rules not understood are listed in
    ``stats.not_understood``.
    """
    walker = _Walker(_search_list(base), variables if variables is not None else {},
                     stats if stats is not None else ParseStats())
    walker.walk(text, source, top=True)
    return walker.rules


def effective_rules(profile_path: str, search: list[str],
                    stats: ParseStats | None = None) -> list[FileRule]:
    """Every file rule reachable from P (abstractions, the .files and per-VM includes).

    ``search``: the include search path, as ``apparmor_parser -I`` gets it.
    Rules whose pattern cannot be compiled (an undefined variable...) are
    kept, never match, and are listed in ``stats.not_understood``.
    """
    with open(profile_path, encoding="utf-8", errors="surrogateescape") as f:
        text = f.read()
    stats = stats if stats is not None else ParseStats()
    rules = rules_from_text(text, profile_path, search, {}, stats)
    seen: set[tuple[str, str, bool, bool, frozenset[str]]] = set()
    out = []
    for rule in rules:  # an abstraction included twice contributes its rules once
        key = (rule.source, rule.path, rule.deny, rule.owner, rule.perms)
        if key in seen:
            continue
        seen.add(key)
        if rule.pattern is None:  # compiled now: a broken pattern shows in the stats
            stats.not_understood.append(f"{rule.source}: {rule.text()} ({rule.error})")
        out.append(rule)
    return out
