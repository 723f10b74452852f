"""Rules for every VM (``allow --all-vms``) and for the stack's own programs
(``allow --profile swtpm``): written where the installed packages provide a place.

* every VM: the extension point of the installed ``abstractions/libvirt-qemu``:
  ``include if exists <abstractions/libvirt-qemu.d>`` (libvirt >= 9.6) -> our file
  ``abstractions/libvirt-qemu.d/virt-aa``; else ``include <local/abstractions/libvirt-qemu>``
  -> that file.  Found in the abstraction's text, never assumed from a version.
* a program (libvirtd, virtqemud, swtpm, virtiofsd, passt, dnsmasq): the ``local/``
  file its installed profile includes (Debian: ``usr.sbin.libvirtd`` ->
  ``local/usr.sbin.libvirtd``; ``usr.sbin.dnsmasq`` from apparmor-profiles ->
  ``local/usr.sbin.dnsmasq``).  A profile without such an include has no place for
  a rule that survives upgrades: refused, with the reason.

The same checks as per-VM rules (grammar, restricted paths unless --force, the real
parser on the rule and on every affected profile), the same provenance lines, a
history (``history/all-vms.jsonl``, ``history/profile-NAME.jsonl``) and ``revoke``;
every affected loaded profile is replaced (each running VM's, for a host-wide rule).
Any failure puts the file back: a change is complete and recorded, or not there.
"""

from __future__ import annotations

import os
import re
from typing import Any

from virt_aa.host import apparmor
from virt_aa.host.fsutil import read_text, write_atomic
from virt_aa.host.store import Store
from virt_aa.ops.manage import (
    ManageError,
    _looks_like_id,
    compile_rules,
    invoking_user,
    new_rules,
    now,
    parse_checked,
)
from virt_aa.policy.localrules import (
    PROVENANCE,
    RuleError,
    parse_file,
    parse_rule,
    render_blocks,
)

PROGRAM_PROFILES = {             # --profile NAME: the names its profile may have
    "libvirtd": ("libvirtd", "/usr/sbin/libvirtd"),
    "virtqemud": ("virtqemud", "/usr/sbin/virtqemud"),
    "swtpm": ("swtpm", "/usr/bin/swtpm"),
    "virtiofsd": ("virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"),
    "passt": ("passt", "/usr/bin/passt", "/usr/bin/passt{,.avx2}"),
    "dnsmasq": ("dnsmasq", "/usr/sbin/dnsmasq", "/usr/{bin,sbin}/dnsmasq"),
}
_DOT_D = re.compile(r"^\s*#?include\s+if\s+exists\s+<abstractions/libvirt-qemu\.d/?>", re.M)
_LOCAL_ABS = re.compile(r"^\s*#?include\s+(?:if\s+exists\s+)?<local/abstractions/libvirt-qemu>",
                        re.M)
_LOCAL = re.compile(r"^\s*#?include\s+(?:if\s+exists\s+)?<(local/[^>\s]+)>", re.M)


class Target:
    """Where a host-wide or program rule goes, and what it affects."""

    def __init__(self, key: str, label: str, path: str, profiles: list[str],
                 probe: bool = False) -> None:
        self.key = key              # history file name
        self.label = label          # for messages: "every VM", "swtpm"
        self.path = path            # the file our rules live in
        self.profiles = profiles    # profile files to compile and reload
        self.probe = probe          # no VM profile on disk: compile a probe that includes it


def _etc(store: Store, rel: str) -> str | None:
    """The installed file `rel` under etc/apparmor.d: the --root's, else the host's."""
    for base in (store.path("etc/apparmor.d"), "/etc/apparmor.d"):
        p = os.path.join(base, rel)
        if os.path.isfile(p):
            return p
    return None


def all_vms(store: Store) -> Target:
    """The extension point of the installed abstractions/libvirt-qemu."""
    abstraction = _etc(store, "abstractions/libvirt-qemu")
    if abstraction is None:
        raise ManageError("abstractions/libvirt-qemu is not installed (libvirt-daemon-"
                          "system): there is no place for a rule for every VM")
    text = read_text(abstraction) or ""
    if _DOT_D.search(text):
        path = store.path("etc/apparmor.d/abstractions/libvirt-qemu.d/virt-aa")
    elif _LOCAL_ABS.search(text):
        path = store.path("etc/apparmor.d/local/abstractions/libvirt-qemu")
    else:
        raise ManageError(f"{abstraction} includes neither <abstractions/libvirt-qemu.d> nor "
                          f"<local/abstractions/libvirt-qemu>: no place for a rule that "
                          f"survives a libvirt upgrade; use per-VM rules")
    vmdir = store.path("etc/apparmor.d/libvirt")
    try:
        names = sorted(os.listdir(vmdir))
    except OSError:
        names = []
    profiles = [os.path.join(vmdir, n) for n in names
                if n.startswith("libvirt-") and not n.endswith((".files", ".tmp"))]
    return Target("all-vms", "every VM", path, profiles, probe=not profiles)


def program(store: Store, name: str) -> Target:
    """The local file the installed profile of program `name` includes."""
    names = PROGRAM_PROFILES.get(name)
    if names is None:
        raise ManageError(f"--profile takes one of {', '.join(PROGRAM_PROFILES)} (a VM's "
                          f"own rules: virt-aa allow DOMAIN RULE)")
    found = _profile_file(store, names)
    if found is None:
        raise ManageError(f"no AppArmor profile for {name} is installed here (looked for "
                          f"profile {' or '.join(names)} in /etc/apparmor.d)")
    text = read_text(found) or ""
    m = _LOCAL.search(text)
    if m is None:
        raise ManageError(f"{found} includes no <local/...> file: there is no place for a "
                          f"rule that survives an upgrade of {name}; ask its packager, or "
                          f"edit the profile yourself")
    return Target(f"profile-{name}", name, store.path("etc/apparmor.d/" + m.group(1)),
                  [found])


def _profile_file(store: Store, names: tuple[str, ...]) -> str | None:
    heads = [re.compile(r"^\s*profile\s+" + re.escape(n) + r"[\s{]", re.M) for n in names] + [
        re.compile(r"^\s*" + re.escape(n) + r"\s+(?:flags=\([^)]*\)\s*)?\{", re.M)
        for n in names if n.startswith("/")]
    for base in (store.path("etc/apparmor.d"), "/etc/apparmor.d"):
        try:
            entries = sorted(os.listdir(base))
        except OSError:
            continue
        for n in entries:
            p = os.path.join(base, n)
            if n.startswith(".") or not os.path.isfile(p):
                continue
            text = read_text(p, 1 << 20) or ""
            if any(h.search(text) for h in heads):
                return p
    return None


def _header(target: Target) -> str:
    return (f"# Rules for {target.label}, added with `virt-aa allow "
            f"{'--all-vms' if target.key == 'all-vms' else '--profile ' + target.label}`; "
            f"each after its provenance line\n")


def allow(store: Store, target: Target, rules: list[str], comment: str = "",
          force: bool = False, denial: str = "") -> dict[str, Any]:
    """Add rules to the target's file (checked, compiled, reloaded, recorded)."""
    parsed = parse_checked(rules, force)
    with store:
        text = read_text(target.path) or ""
        fresh = new_rules(parsed, text, comment, denial, force)
        if not fresh:
            return {"target": target.label, "file": target.path, "added": [],
                    "status": "already allowed: nothing changed"}
        problem = compile_rules(store, [r.text for r in fresh])
        if problem:
            raise ManageError(f"apparmor_parser refused the rule: {problem}")
        if not text.strip():
            text = _header(target)
        elif not text.endswith("\n"):
            text += "\n"
        status = _transaction(store, target, text + render_blocks(fresh), [{
            "time": r.fields["added"], "user": r.fields["by"], "action": "allow",
            "target": target.label, "rule": r.text, "id": r.id,
            "why": r.fields.get("comment", ""), "denial": r.fields.get("denial", ""),
            "force": bool(r.fields.get("force"))} for r in fresh])
    return {"target": target.label, "file": target.path,
            "added": [r.as_dict() for r in fresh], "status": status}


def revoke(store: Store, target: Target, key: str) -> dict[str, Any]:
    """Remove the rule with this id (or this exact text) and its provenance line."""
    with store:
        text = read_text(target.path) or ""
        rules, _ = parse_file(text)
        try:
            wanted = parse_rule(key).text if not _looks_like_id(key) else None
        except RuleError:
            wanted = None
        hit = [r for r in rules if r.id == key or (wanted is not None and r.text == wanted)]
        if not hit:
            raise ManageError(f"{target.path} has no rule {key!r} (see `virt-aa rules "
                              f"{'--all-vms' if target.key == 'all-vms' else '--profile'}"
                              f"{'' if target.key == 'all-vms' else ' ' + target.label}`)")
        r = hit[0]
        lines = text.split("\n")
        drop = {r.line - 1}
        if r.line >= 2 and lines[r.line - 2].strip().startswith(PROVENANCE):
            drop.add(r.line - 2)
        new = "\n".join(line for i, line in enumerate(lines) if i not in drop)
        status = _transaction(store, target, new, [{
            "time": now(), "user": invoking_user(), "action": "revoke",
            "target": target.label, "rule": r.text, "id": r.id}])
    return {"target": target.label, "file": target.path, "revoked": r.as_dict(),
            "status": status}


def list_rules(target: Target) -> dict[str, Any]:
    rules, problems = parse_file(read_text(target.path) or "")
    return {"target": target.label, "file": target.path,
            "rules": [r.as_dict() for r in rules],
            "problems": [{"line": n, "reason": why} for n, why in problems]}


def _transaction(store: Store, target: Target, new: str,
                 records: list[dict[str, Any]]) -> str:
    """Write the file, compile every affected profile, replace the loaded ones, record;
    on any failure the file is put back (and what was replaced, replaced again)."""
    old = read_text(target.path)
    made = not os.path.isdir(os.path.dirname(target.path))
    os.makedirs(os.path.dirname(target.path), exist_ok=True)
    write_atomic(target.path, new.encode("utf-8", "surrogateescape"))
    replaced: list[str] = []
    try:
        status = _apply(store, target, replaced)
        for rec in records:
            store.append_history(target.key, rec)
        return status
    except Exception:
        if old is None:
            os.unlink(target.path)
            if made:
                try:
                    os.rmdir(os.path.dirname(target.path))
                except OSError:
                    pass
        else:
            write_atomic(target.path, old.encode("utf-8", "surrogateescape"))
        for p in replaced:
            apparmor.run("-r", p, store.root, "virt-aa")
        raise


def _apply(store: Store, target: Target, replaced: list[str]) -> str:
    """Compile every affected profile with the new file, then replace the loaded ones."""
    checks = target.profiles or [_probe(store)]
    try:
        for p in checks:
            res = apparmor.compile_check(p, store.root)
            if not res.ok:
                raise ManageError(f"{p} does not compile with the rule: "
                                  f"{res.message or 'apparmor_parser failed'}; nothing changed")
    finally:
        if target.probe:
            os.unlink(checks[0])
    loaded = apparmor.loaded_profiles() if (os.path.normpath(store.root) == "/" or
                                            os.environ.get("VIRT_AA_SECURITYFS")) else None
    n = len(target.profiles)
    what = f"{n} profile(s)" if not target.probe else "a probe profile (no VM profile on disk)"
    if loaded is None:
        where = ("--root sandbox" if os.path.normpath(store.root) != "/"
                 else "no AppArmor in this kernel")
        return f"{target.path} written; compiled {what} ({where}: nothing loaded)"
    for p in target.profiles:
        name = _declared(p)
        if name is not None and name not in loaded:
            continue
        res = apparmor.run("-r", p, store.root, "virt-aa")
        if not res.ok:
            raise ManageError(f"{p}: apparmor_parser could not replace the loaded profile; "
                              f"nothing changed")
        replaced.append(p)
    return f"{target.path} written; compiled {what}, replaced {len(replaced)} loaded"


def _declared(path: str) -> str | None:
    """The profile name a VM profile file (libvirt-UUID) or a program profile declares."""
    base = os.path.basename(path)
    if base.startswith("libvirt-"):
        return base
    m = re.search(r"^\s*profile\s+(\S+)", read_text(path, 1 << 20) or "", re.M)
    return m.group(1) if m else None


def _probe(store: Store) -> str:
    """A profile that includes the abstraction (the host-wide rule's context) to compile
    when no VM profile is on disk."""
    path = store.path(f"var/lib/virt-aa/all-vms-check.{os.getpid()}.tmp")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, b"#include <tunables/global>\nprofile virt-aa-all-vms-check {\n"
                       b"  #include <abstractions/libvirt-qemu>\n}\n")
    return path
