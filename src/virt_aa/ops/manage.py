"""Per-VM rules and mode: check, store, apply live, record.

Every change runs under the store lock: validate -> compile -> write the
per-VM file or settings atomically -> rewrite P if it exists -> replace the
loaded profile (or compile-check it where the kernel has no AppArmor) ->
append to the history.  If applying fails, the previous files are put back
and nothing is recorded: no half state, never a wider profile.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from virt_aa.generate.domain import Domain, DomainError, parse_domain
from virt_aa.generate.profile import TemplateError
from virt_aa.host import apparmor, vmprofile
from virt_aa.host.fsutil import read_text, write_atomic
from virt_aa.host.journal import Journal
from virt_aa.host.libvirtversion import host_libvirt
from virt_aa.host.store import MODES, Store, StoreError
from virt_aa.ops.errors import ManageError as ManageError
from virt_aa.ops.profilecheck import compile_text
from virt_aa.policy.localrules import (
    PROVENANCE,
    LocalRule,
    Parsed,
    RuleError,
    grants_restricted,
    parse_file,
    parse_rule,
    render_blocks,
    render_file,
    rule_id,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from virt_aa.policy.isolation import Owned


class VM:
    """The domain a command acts on: identity, XML, and whether it runs."""

    __slots__ = ("dom", "peers", "peers_note", "running")

    def __init__(self, dom: Domain, running: bool | None) -> None:
        self.dom = dom
        self.running = running   # None: unknown (domain given offline with --xml)
        self.peers: list[Domain] | None = None   # the host's domains (None: ask libvirt)
        self.peers_note = ""     # why the host's domains are not known

    def host_domains(self) -> list[Domain]:
        """Every domain defined on the host, for the isolation checks (asked once)."""
        if self.peers is None:
            from virt_aa.ops.isolation import host_domains

            self.peers, self.peers_note = host_domains(None)
        return self.peers

    @property
    def uuid(self) -> str:
        return self.dom.uuid

    @property
    def profile(self) -> str:
        return self.dom.profile_name


def vm_from_xml(xml: bytes, running: bool | None = None, source: str = "XML") -> VM:
    try:
        return VM(parse_domain(xml, host_libvirt()), running)
    except DomainError as exc:
        raise ManageError(f"{source}: " + "; ".join(m for _, m in exc.lines)) from None


def invoking_user() -> str:
    """Who asked: the sudo caller where there is one, else the process owner."""
    sudo = os.environ.get("SUDO_USER")
    if sudo:
        return sudo
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError):
        return str(os.getuid())


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _clean(value: str) -> str:
    return " ".join(value.replace("\x00", " ").split())


def compile_rules(store: Store, rules: list[str]) -> str | None:
    """Compile ``rules`` inside a minimal profile with the real parser.

    A rule's meaning does not depend on the rest of the profile (only on the
    tunables' variables, which are included), so this is the syntax and
    regex check at a fraction of the cost of the whole profile.
    """
    body = "".join(f"  {r}\n" for r in rules)
    text = f"#include <tunables/global>\nprofile virt-aa-rule-check {{\n{body}}}\n"
    return compile_text(store, text, "<rule>", "rule")


def apply_live(store: Store, vm: VM) -> str:
    """Rewrite P if it exists and get it into the kernel; raise on failure (P restored)."""
    path = store.profile(vm.profile)
    old = read_text(path)
    if old is None:
        return "no profile on disk yet: it takes effect when the VM starts"
    files, mode, refusals = vmprofile.policy_files(store, vm.dom)
    if refusals:
        raise ManageError("; ".join(refusals))
    try:
        new = vmprofile.render(store, vm.profile, vm.dom.virt_type, mode=mode,
                               policies=tuple(files))
        vmprofile.ensure_local(store, vm.profile)
    except TemplateError as exc:
        raise ManageError(f"{store.template(vm.dom.virt_type)}: {exc}") from None
    if new != old:
        write_atomic(path, new.encode("utf-8", "surrogateescape"))
    loaded = apparmor.loaded_profiles() if (os.path.normpath(store.root) == "/" or
                                            os.environ.get("VIRT_AA_SECURITYFS")) else None
    if loaded is not None:
        if vm.profile not in loaded:
            return f"{path} updated; the profile is not loaded (VM not running)"
        res = apparmor.run("-r", path, store.root, "virt-aa")
        verb = "replaced the loaded profile"
    elif vm.running is False:
        return f"{path} updated; the VM is not running"
    else:
        res = apparmor.compile_check(path, store.root)
        verb = "compiled (no AppArmor in this kernel: nothing loaded)" \
            if os.path.normpath(store.root) == "/" else "compiled (--root sandbox: nothing loaded)"
    if not res.ok:
        if new != old:
            write_atomic(path, old.encode("utf-8", "surrogateescape"))
        raise ManageError(f"{path}: {res.message or 'apparmor_parser failed'}; the previous "
                          f"profile stays on disk and loaded")
    return f"{path} updated and {verb}"


def _restore(path: str, old: str | None) -> None:
    """Put a file back as it was (absent if it was absent)."""
    if old is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    else:
        write_atomic(path, old.encode("utf-8", "surrogateescape"))


def _transaction(store: Store, vm: VM, new_local: str | None, new_mode: str | None,
                 records: list[dict[str, Any]], checked: str = "") -> str:
    """One change as a unit: per-VM file and/or settings, P, the kernel, the history.

    If any step fails, every file is put back as it was (and P re-applied),
    so a change is either complete and recorded, or not there at all.
    """
    local_path, settings_path = store.local(vm.profile), store.settings_path(vm.uuid)
    old_local = read_text(local_path)
    old_settings_text = read_text(settings_path)
    new_dirs = [d for d in (os.path.dirname(local_path), os.path.dirname(settings_path))
                if not os.path.isdir(d)]
    settings = store.settings(vm.uuid)
    mode = new_mode or settings.get("mode", "enforce")
    with Journal(store, [local_path, settings_path, store.profile(vm.profile)],
                 [store.history_path(vm.uuid)], store.profile(vm.profile)):
        status = _apply(store, vm, new_local, new_mode, records, settings, mode,
                        (local_path, old_local), (settings_path, old_settings_text), new_dirs)
        if checked:   # inside the journal: a death while caching rolls back, then tidies
            remember(store, vm.uuid, checked)
        return status


def _apply(store: Store, vm: VM, new_local: str | None, new_mode: str | None,
           records: list[dict[str, Any]], settings: dict[str, str], mode: str,
           local: tuple[str, str | None], settings_old: tuple[str, str | None],
           new_dirs: list[str]) -> str:
    (local_path, old_local), (settings_path, old_settings_text) = local, settings_old
    applied = False
    try:
        if new_local is not None:
            store.write_local(vm.profile, new_local)
        if new_mode is not None or settings.get("name") != vm.dom.name or \
                "mode" not in settings:
            extra = {k: v for k, v in settings.items() if k not in ("name", "mode")}
            store.write_settings(vm.uuid, {"name": vm.dom.name, "mode": mode, **extra})
        status = apply_live(store, vm)
        applied = True
        for rec in records:
            store.append_history(vm.uuid, rec)
        return status
    except (ManageError, StoreError, OSError) as exc:
        try:
            _restore(local_path, old_local)
            _restore(settings_path, old_settings_text)
            for d in new_dirs:
                if os.path.isdir(d) and not os.listdir(d):
                    os.rmdir(d)
            if applied:
                apply_live(store, vm)
        except (ManageError, StoreError, OSError) as again:
            raise ManageError(f"{exc}; and undoing it failed too: {again}") from None
        if isinstance(exc, ManageError):
            problems = vmprofile.local_problems(store, vm.profile)
            if problems:
                raise ManageError(f"{exc} (the per-VM file has broken lines: "
                                  f"{'; '.join(problems)})") from None
        raise


def parse_checked(rules: list[str], force: bool) -> list[Parsed]:
    """Parse rule texts; a restricted path needs ``force`` (every kind of rule target)."""
    parsed = []
    for text in rules:
        try:
            p = parse_rule(text)
        except RuleError as exc:
            raise ManageError(f"rule {text.strip()!r}: {exc}") from None
        if grants_restricted(p) and not force:
            raise ManageError(f"rule {p.text!r} grants a restricted path (DESIGN §5: /etc, "
                              f"/root, /proc, /sys, /dev/mem ...); add --force if you mean it")
        parsed.append(p)
    return parsed


def new_rules(parsed: list[Parsed], text: str, comment: str, denial: str,
              force: bool) -> list[LocalRule]:
    """The rules of `parsed` that the rules file `text` does not hold yet (each once), with
    their provenance: id, when, who, the admin's comment and denial, force."""
    existing, _ = parse_file(text)
    have = {r.id for r in existing}
    fresh: list[LocalRule] = []
    for p in parsed:
        rid = rule_id(p.text)
        if rid in have:
            continue
        have.add(rid)
        fields = {"id": rid, "added": now(), "by": invoking_user()}
        if comment:
            fields["comment"] = _clean(comment)
        if denial:
            fields["denial"] = _clean(denial)
        if force and grants_restricted(p):
            fields["force"] = "yes"
        fresh.append(LocalRule(p.text, fields))
    return fresh


def allow(store: Store, vm: VM, rules: list[str], comment: str = "", force: bool = False,
          denial: str = "") -> dict[str, Any]:
    """Add per-VM rules (checked, compiled with the whole profile, applied, recorded).

    A rule that reaches another VM's file is refused unless ``force``; then
    it is stored with ``force=yes reaches="vm:path ..."`` and recorded so.
    """
    parsed = parse_checked(rules, force)
    from virt_aa.ops.isolation import files_of, with_vm

    files = files_of(with_vm(vm.host_domains(), vm.dom))   # before the lock: image headers
    with store:
        text = store.read_local(vm.profile) or ""
        fresh = new_rules(parsed, text, comment, denial, force)
        if not fresh:
            return {"added": [], "status": "already allowed: nothing changed" +
                    repair(store, vm)}
        _isolate(vm, fresh, files, force)
        if not text.strip():
            text = render_file(vm.dom.name, vm.uuid, [])
        elif not text.endswith("\n"):
            text += "\n"
        new_text = text + render_blocks(fresh)
        key = check_whole(store, vm, text, new_text, [r.text for r in fresh])
        status = _transaction(store, vm, new_text, None, [{
            "time": r.fields["added"], "user": r.fields["by"], "action": "allow",
            "domain": vm.dom.name, "rule": r.text, "id": r.id,
            "why": r.fields.get("comment", ""), "denial": r.fields.get("denial", ""),
            "force": bool(r.fields.get("force")),
            **({"reaches": r.fields["reaches"]} if r.fields.get("reaches") else {})}
            for r in fresh], key)
    out: dict[str, Any] = {"added": [r.as_dict() for r in fresh], "status": status}
    if vm.peers_note:
        out["isolation"] = f"not checked against other domains: {vm.peers_note}"
    return out


def _isolate(vm: VM, fresh: list[LocalRule], files: list[Owned], force: bool) -> None:
    """Refuse rules that reach another VM's file; with ``force``, mark them."""
    from virt_aa.ops.isolation import check_each, forced_note
    from virt_aa.policy.isolation import breaches, refusal

    try:
        found = check_each([r.text for r in fresh], vm.dom, files, "per-VM rule")
    except ValueError as exc:
        if not force:
            raise ManageError(f"{exc}; add --force if you mean it") from None
        return
    for r in fresh:
        bad = breaches(found.get(r.text, []))
        if bad and not force:
            raise ManageError(refusal(bad))
        if bad:
            r.fields["force"] = "yes"
            r.fields["reaches"] = forced_note(bad)


def check_whole(store: Store, vm: VM, old_local: str, new_local: str,
                added: list[str]) -> str:
    """Compile the whole profile the VM will have after the change; its digest."""
    from virt_aa.ops.profilecheck import CheckError, check_change

    files, mode, _ = vmprofile.policy_files(store, vm.dom)
    policies = [read_text(f) or "" for f in files]
    try:
        return check_change(store, vm.dom, old_local, new_local, added, policies,
                            mode or store.mode(vm.uuid))
    except (CheckError, OSError) as exc:
        raise ManageError(f"{exc}; nothing was stored") from None


def remember(store: Store, uuid: str, key: str) -> None:
    from virt_aa.ops.profilecheck import remember as keep

    keep(store, uuid, key)


def repair(store: Store, vm: VM) -> str:
    """When a command finds nothing to change: re-apply P if it is stale.

    The journal has already rolled back any change a dead process left half
    done; P can still lag behind (hand edits, upgrades, an attach whose
    libvirt metadata -- outside the journal -- was set before a crash).
    """
    path = store.profile(vm.profile)
    on_disk = read_text(path)
    if on_disk is None or on_disk == vmprofile.expected(store, vm.dom):
        return ""
    return "; " + apply_live(store, vm)


def revoke(store: Store, vm: VM, key: str) -> dict[str, Any]:
    """Remove the rule with this id (or this exact text) and its provenance line."""
    with store:
        text = store.read_local(vm.profile) or ""
        rules, _ = parse_file(text)
        target = None
        try:
            wanted = parse_rule(key).text if not _looks_like_id(key) else None
        except RuleError:
            wanted = None
        for r in rules:
            if r.id == key or (wanted is not None and r.text == wanted):
                target = r
                break
        if target is None:
            raise ManageError(f"{vm.dom.name} has no per-VM rule {key!r} "
                              f"(see `virt-aa rules {vm.dom.name}`)")
        lines = text.split("\n")
        drop = {target.line - 1}
        prev = target.line - 2
        if prev >= 0 and lines[prev].strip().startswith(PROVENANCE):
            drop.add(prev)
        new = "\n".join(line for i, line in enumerate(lines) if i not in drop)
        status = _transaction(store, vm, new, None, [{
            "time": now(), "user": invoking_user(), "action": "revoke",
            "domain": vm.dom.name, "rule": target.text, "id": target.id}])
    return {"revoked": target.as_dict(), "status": status}


def _looks_like_id(key: str) -> bool:
    return len(key) == 8 and all(c in "0123456789abcdef" for c in key)


def set_mode(store: Store, vm: VM, mode: str, why: str = "") -> dict[str, Any]:
    if mode not in MODES:
        raise ManageError(f"mode must be one of {', '.join(MODES)}")
    with store:
        before = store.mode(vm.uuid)
        settings = store.settings(vm.uuid)
        if settings.get("mode") == mode and settings.get("name") == vm.dom.name:
            return {"mode": mode, "previous": before,
                    "status": f"already in {mode} mode: nothing changed" +
                    repair(store, vm)}
        status = _transaction(store, vm, None, mode, [{
            "time": now(), "user": invoking_user(), "action": mode, "domain": vm.dom.name,
            "from": before, "why": _clean(why)}])
    return {"mode": mode, "previous": before, "status": status}


def reload(store: Store, vm: VM) -> str:
    with store:
        return apply_live(store, vm)


def list_rules(store: Store, vm: VM) -> dict[str, Any]:
    text = store.read_local(vm.profile) or ""
    rules, problems = parse_file(text)
    path = store.local(vm.profile)
    out = []
    for r in rules:
        d = r.as_dict()
        d["restricted"] = grants_restricted(parse_rule(r.text))
        out.append(d)
    return {"domain": vm.dom.name, "uuid": vm.uuid, "file": path, "rules": out,
            "problems": [{"line": n, "reason": why} for n, why in problems]}


def profile_status(store: Store, vm: VM) -> dict[str, Any]:
    """Whether P is on disk, current, and loaded."""
    path = store.profile(vm.profile)
    on_disk = read_text(path)
    expected = vmprofile.expected(store, vm.dom)
    loaded_set = apparmor.loaded_profiles()
    return {
        "path": path,
        "on_disk": on_disk is not None,
        "current": on_disk is not None and on_disk == expected,
        "loaded": None if loaded_set is None else vm.profile in loaded_set,
        "kernel": "AppArmor" if loaded_set is not None else "no AppArmor in this kernel",
    }


def warn(msg: str) -> None:
    print(f"virt-aa: warning: {msg}", file=sys.stderr)
