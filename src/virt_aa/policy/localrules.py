"""Per-VM rules: the ``local/libvirt-<uuid>`` file, parsed, checked, rendered.

Pure.  The file is AppArmor syntax that an admin may edit by hand; each rule
virt-aa writes is preceded by one provenance comment::

    # virt-aa: id=1a2b3c4d added=2026-11-25T15:00:00Z by=alice comment="NFS data"
    "/srv/data/**" rwk,

Rule text is trusted-admin input, but typos and copy-pasted snippets are
real: only single-line rule statements of a few known kinds are accepted,
never anything that could close the profile, include files, define
variables or profiles, or run programs unconfined.
"""

from __future__ import annotations

# virt_aa.generate.paths (restricted paths, escaping) is imported where it is
# used: the hook parses the per-VM rules at every VM start and needs none of it.

HEADER = ("# Per-VM AppArmor rules for libvirt domain {name} ({uuid}), included by its\n"
          "# profile libvirt-{uuid}.  Managed by `virt-aa allow` / `virt-aa revoke`;\n"
          "# hand edits are kept: one rule per line, AppArmor syntax, each after its\n"
          "# \"# virt-aa:\" provenance line.\n")
PROVENANCE = "# virt-aa:"
FILE_PERMS = frozenset("rwaklm")
EXEC_SAFE = ("ix", "px", "Px", "cx", "Cx", "pix", "Pix", "cix", "Cix")
KEYWORDS = ("capability", "network", "unix", "signal", "ptrace", "dbus")
QUALIFIERS = ("audit", "deny", "owner", "allow")


class RuleError(ValueError):
    """A rule that may not be stored (one line, says why)."""


class LocalRule:
    """One rule of the per-VM file and where it came from."""

    __slots__ = ("fields", "line", "text")

    def __init__(self, text: str, fields: dict[str, str] | None = None, line: int = 0) -> None:
        self.text = text          # the rule, normalised, ending in ","
        self.fields = fields or {}  # provenance: id, added, by, comment, denial, force
        self.line = line          # 1-based line number in the file (0: not from a file)

    @property
    def id(self) -> str:
        return self.fields.get("id") or rule_id(self.text)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"id": self.id, "rule": self.text, "line": self.line}
        out.update({k: v for k, v in self.fields.items() if k != "id"})
        return out


def rule_id(text: str) -> str:
    """A short, stable id for a rule: its text's sha256, as git abbreviates hashes."""
    import hashlib

    return hashlib.sha256(normalize(text).encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _quoting(text: str) -> tuple[list[tuple[str, bool]], bool]:
    """Each character with whether it is inside a double-quoted string (the opening
    quote counts as outside, the closing one as inside; ``\\`` escapes inside),
    and whether the text ends inside an unterminated quote."""
    out = []
    quoted = escaped = False
    for ch in text:
        out.append((ch, quoted))
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
    return out, quoted


def normalize(text: str) -> str:
    """Collapse whitespace outside quotes; ensure the trailing comma."""
    out: list[str] = []
    space = False
    for ch, inside in _quoting(text.strip())[0]:
        if inside:
            out.append(ch)
            continue
        if ch in " \t":
            space = True
            continue
        if space and out:
            out.append(" ")
        space = False
        out.append(ch)
    rule = "".join(out).rstrip()
    if not rule.endswith(","):
        rule += ","
    return rule


def _tokens(rule: str) -> list[str]:
    """Split a rule body on spaces, keeping quoted strings whole."""
    tokens: list[str] = []
    cur: list[str] = []
    chars, unterminated = _quoting(rule)
    if unterminated:
        raise RuleError("unterminated quote")
    for ch, inside in chars:
        if ch == " " and not inside:
            if cur:
                tokens.append("".join(cur))
                cur = []
            continue
        cur.append(ch)
    if cur:
        tokens.append("".join(cur))
    return tokens


def _unquote(path: str) -> str:
    if path.startswith('"'):
        return path[1:-1]
    return path


def _check_perms(perms: str) -> None:
    rest = perms
    for mode in sorted(EXEC_SAFE, key=len, reverse=True):
        if mode in rest:
            rest = rest.replace(mode, "", 1)
            break
    if "x" in rest or "X" in rest:
        raise RuleError(f"exec permission in '{perms}' is not allowed in a per-VM rule "
                        f"(only {', '.join(EXEC_SAFE)}; never unconfined exec)")
    bad = set(rest) - FILE_PERMS
    if bad or not perms:
        raise RuleError(f"unknown permission(s) '{''.join(sorted(bad))}' in '{perms}' "
                        f"(file permissions are r w a k l m, plus ix/px/cx)")


class Parsed:
    """What validation learned about a rule: its kind and, for file rules, the path."""

    __slots__ = ("kind", "path", "perms", "text")

    def __init__(self, text: str, kind: str, path: str | None = None,
                 perms: str = "") -> None:
        self.text = text
        self.kind = kind
        self.path = path
        self.perms = perms


def parse_rule(text: str) -> Parsed:
    """Validate one rule statement; raise :class:`RuleError` with the reason."""
    if "\n" in text.strip() or "\r" in text or "\x00" in text:
        raise RuleError("a rule is one line")
    if any(ord(c) < 0x20 and c != "\t" for c in text):
        raise RuleError("control characters are not allowed in a rule")
    rule = normalize(text)
    body = rule[:-1].rstrip()
    if not body:
        raise RuleError("empty rule")
    if body.count(",") and not _commas_quoted_or_braced(body):
        raise RuleError("one rule per argument: a ',' ends a rule")
    tokens = _tokens(body)
    for tok in tokens:
        if tok.startswith("#") or tok in ("include", "#include") or tok.startswith("include"):
            raise RuleError("includes and comments are not rules")
    if "=" in body and (tokens[0].startswith("@{") or (len(tokens) > 1 and tokens[1] in
                                                         ("=", "+="))):
        raise RuleError("variable definitions are not allowed per VM")
    for tok in tokens:
        if tok.startswith('"'):
            continue
        is_path = tok.startswith(("/", "@{"))
        if ("{" in tok or "}" in tok) and (not is_path or _unbalanced(tok)):
            raise RuleError("braces outside a path alternation are not allowed")
    words = list(tokens)
    while words and words[0] in QUALIFIERS:
        words.pop(0)
    if not words:
        raise RuleError("a rule needs more than qualifiers")
    head = words[0]
    if head in ("profile", "hat", "^", "change_profile", "pivot_root", "mount", "umount",
                "remount", "rlimit", "set", "abi", "alias") or head.startswith("^"):
        raise RuleError(f"'{head}' rules are not allowed per VM")
    if head in KEYWORDS:
        if any(c in body for c in "{}\\"):
            raise RuleError(f"{head} rules may not contain braces or backslashes")
        return Parsed(rule, head)
    if head == "file":
        words.pop(0)
        if not words:
            return Parsed(rule, "file", "/**", "rwaklm")
    if len(words) >= 2 and (words[0].startswith(("/", '"/', "@{"))):
        path, perms, rest = words[0], words[1], words[2:]
    elif len(words) >= 2 and words[1].startswith(("/", '"/', "@{")):
        perms, path, rest = words[0], words[1], words[2:]
    else:
        raise RuleError(f"not a rule virt-aa accepts per VM: '{rule}' (file rules "
                        f"'/path perms,', or {', '.join(KEYWORDS)} rules)")
    if rest and rest[0] != "->":
        raise RuleError(f"unexpected '{' '.join(rest)}' after the permissions")
    if rest and ("x" not in perms or len(rest) != 2):
        raise RuleError("'-> target' only follows an exec permission")
    _check_perms(perms)
    inner = _unquote(path)
    if not inner.startswith(("/", "@{")):
        raise RuleError(f"path '{path}' is not absolute")
    return Parsed(rule, "file", inner, perms)


def _commas_quoted_or_braced(body: str) -> bool:
    """True when every ',' sits inside quotes or a {a,b} alternation (or parentheses)."""
    depth = 0
    for ch, inside in _quoting(body)[0]:
        if inside:
            continue
        if ch in "{(":
            depth += 1
        elif ch in "})":
            depth -= 1
        elif ch == "," and depth <= 0:
            return False
    return True


def _unbalanced(text: str) -> bool:
    depth = 0
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                return True
    return depth != 0


def literal_prefix(pattern: str) -> str:
    """The part of an AppArmor path pattern before its first special character."""
    from virt_aa.generate.paths import AARE_SPECIAL

    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(pattern[i + 1])
            i += 2
            continue
        if ch in AARE_SPECIAL:
            break
        out.append(ch)
        i += 1
    return "".join(out)


def grants_restricted(parsed: Parsed) -> bool:
    """Whether a file rule may reach a path that DESIGN §5 restricts.

    Conservative: a pattern is judged by its literal prefix, so ``/srv/**``
    is fine while ``/**`` or ``/e*`` (which could match ``/etc``) are not.
    """
    from virt_aa.generate.paths import restricted

    if parsed.kind != "file" or parsed.path is None:
        return False
    if parsed.text.split()[0] == "deny" or " deny " in f" {parsed.text} ":
        return False
    prefix = literal_prefix(parsed.path)
    readonly = not (set(parsed.perms) & set("wal"))
    if prefix != parsed.path or parsed.path.startswith("@{"):
        # a pattern: everything below the literal directory prefix may match
        base = prefix.rsplit("/", 1)[0] or "/"
        return restricted(base, readonly, recursive=True) or restricted(prefix, readonly)
    return restricted(parsed.path.rstrip("/") or "/", readonly)


def path_rule(path: str, perms: str, recursive: bool) -> str:
    """A correctly quoted and escaped rule for one literal path (or its subtree)."""
    from virt_aa.generate.paths import escape

    _check_perms(perms)
    target = escape(path.rstrip("/") if recursive else path)
    if recursive:
        target += "/{,**}"
    return f'"{target}" {perms},'


def _provenance(line: str) -> dict[str, str]:
    """Parse ``key=value key="quoted value"`` pairs after ``# virt-aa:``."""
    fields: dict[str, str] = {}
    rest = line[len(PROVENANCE):].strip()
    i = 0
    while i < len(rest):
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip()
        if eq + 1 < len(rest) and rest[eq + 1] == '"':
            j = eq + 2
            val: list[str] = []
            while j < len(rest) and rest[j] != '"':
                if rest[j] == "\\" and j + 1 < len(rest):
                    j += 1
                val.append(rest[j])
                j += 1
            fields[key] = "".join(val)
            i = j + 1
        else:
            end = rest.find(" ", eq)
            end = len(rest) if end < 0 else end
            fields[key] = rest[eq + 1:end]
            i = end + 1
    return fields


def parse_file(text: str) -> tuple[list[LocalRule], list[tuple[int, str]]]:
    """Rules of a per-VM file, and (line, reason) for lines that are not valid rules."""
    rules: list[LocalRule] = []
    problems: list[tuple[int, str]] = []
    pending: dict[str, str] | None = None
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith(PROVENANCE):
            pending = _provenance(line)
            continue
        if line.startswith("#"):
            continue
        if not line.endswith(","):
            problems.append((lineno, "missing ',' at the end of the rule"))
            pending = None
            continue
        try:
            parsed = parse_rule(line)
        except RuleError as exc:
            problems.append((lineno, str(exc)))
            pending = None
            continue
        rules.append(LocalRule(parsed.text, pending or {}, lineno))
        pending = None
    return rules, problems


def _quote(value: str) -> str:
    if value and not any(c in value for c in ' "\\='):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_file(name: str, uuid: str, rules: list[LocalRule]) -> str:
    return HEADER.format(name=" ".join(name.split()), uuid=uuid) + render_blocks(rules)


def render_blocks(rules: list[LocalRule]) -> str:
    """Each rule after its provenance comment."""
    out = []
    for rule in rules:
        fields = dict(rule.fields)
        fields["id"] = rule.id
        order = ["id"] + [k for k in ("added", "by", "comment", "denial", "force")
                          if k in fields] + sorted(set(fields) - {"id", "added", "by",
                                                                 "comment", "denial", "force"})
        meta = " ".join(f"{k}={_quote(fields[k])}" for k in order
                        if "\n" not in fields[k])
        out.append(f"{PROVENANCE} {meta}\n{rule.text}\n")
    return "".join(out)
