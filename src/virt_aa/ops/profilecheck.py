"""Check a change against the whole profile the VM will get, before anything is stored.

The complete profile is P as virt-aa renders it (template, libvirt's
abstraction, mode flag) with the generated device rules, the per-VM rules
as they would be after the change and every attached policy written inline,
compiled by the real ``apparmor_parser`` whether or not P is on disk.

Cache (sound by construction): once a complete profile has compiled, its
digest -- over its text and the identity (size, mtime) of the parser, the
tunables and the abstractions it includes -- is kept in
``var/lib/virt-aa/checked/<uuid>``.  A change that only adds rules without
an exec permission to a profile with that digest is checked by compiling
the new rules alone: permissions of non-exec rules only unite, so they
cannot make a compiling profile fail; exec rules can (conflicting ``x``
modifiers, a clash with the abstraction) and always get the whole profile.
"""

from __future__ import annotations

import hashlib
import os

from virt_aa.generate.profile import TemplateError, create_profile, set_mode
from virt_aa.host import apparmor
from virt_aa.host.fsutil import read_text, write_atomic
from virt_aa.host.store import Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from virt_aa.generate.domain import Domain

_IDENTITY_FILES = ("tunables/global", "abstractions/libvirt-qemu", "abstractions/base",
                   "local/abstractions/libvirt-qemu")


class CheckError(RuntimeError):
    """The complete profile does not compile (one line for the admin)."""


def _indent(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())


def generated(dom: Domain) -> str:
    """The device rules libvirt's helper (virt-aa's) writes into F for ``dom``."""
    from virt_aa.generate.accesses import GenerationError, fixed_rules, generate
    from virt_aa.generate.profile import render_rules
    from virt_aa.host.hostfacts import SystemHost

    try:
        gen = generate(dom, SystemHost()).rules
    except GenerationError:
        gen = []    # the VM's start refuses it with the reason; its other rules still count
    return render_rules((fixed_rules(dom) if dom.is_qemu else []) + gen)


def complete_profile(store: Store, dom: Domain, local: str, policies: list[str],
                     mode: str, gen: str | None = None) -> str:
    """The text of the whole profile, every include of ours written inline."""
    template = read_text(store.template(dom.virt_type))
    if template is None:
        raise CheckError(f"{store.template(dom.virt_type)} does not exist")
    parts = ["  # generated device rules\n", generated(dom) if gen is None else gen,
             "  # per-VM rules\n", _indent(local)]
    for text in policies:
        parts += ["  # policy\n", _indent(text)]
    try:
        text = create_profile(template, dom.profile_name, "".join(parts))
    except TemplateError as exc:
        raise CheckError(f"{store.template(dom.virt_type)}: {exc}") from None
    return set_mode(text, dom.profile_name, mode)


def _identity(store: Store) -> str:
    parts = [apparmor.parser_path()]
    for base in (store.path("etc/apparmor.d"), "/etc/apparmor.d"):
        for rel in _IDENTITY_FILES:
            try:
                st = os.stat(os.path.join(base, rel))
                parts.append(f"{base}/{rel} {st.st_size} {st.st_mtime_ns}")
            except OSError:
                continue
    try:
        st = os.stat(apparmor.parser_path())
        parts.append(f"{st.st_size} {st.st_mtime_ns}")
    except OSError:
        pass
    return "\n".join(parts)


def digest(store: Store, text: str) -> str:
    h = hashlib.sha256(_identity(store).encode("utf-8", "surrogateescape"))
    h.update(text.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _stamp_path(store: Store, uuid: str) -> str:
    return store.path(f"var/lib/virt-aa/checked/{uuid}")


def known_good(store: Store, uuid: str, key: str) -> bool:
    try:
        return (read_text(_stamp_path(store, uuid), 4096) or "").strip() == key
    except OSError:
        return False


def remember(store: Store, uuid: str, key: str) -> None:
    """Keep the digest of a profile that compiled (a cache: failure to write is fine)."""
    path = _stamp_path(store, uuid)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, (key + "\n").encode())
    except OSError:
        pass


def compile_text(store: Store, text: str, label: str, what: str = "profile") -> str | None:
    """Compile a profile text with the real parser; None or the parser's complaint (the
    temporary file named `label` in it; `what` was rejected when it says nothing)."""
    # under the state directory (the caller holds the lock, which clears leftovers)
    path = store.path(f"var/lib/virt-aa/rule-check.{os.getpid()}.tmp")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, text.encode("utf-8", "surrogateescape"))
    try:
        res = apparmor.compile_check(path, store.root)
    finally:
        os.unlink(path)
    if res.ok:
        return None
    return res.message.replace(path, label) or f"apparmor_parser rejected the {what}"


def has_exec(rules: list[str]) -> bool:
    from virt_aa.policy.localrules import RuleError, parse_rule

    for text in rules:
        try:
            p = parse_rule(text)
        except RuleError:
            return True
        if "x" in p.perms:
            return True
    return False


def check_change(store: Store, dom: Domain, old_local: str, new_local: str,
                 added: list[str], policies: list[str], mode: str) -> str:
    """Refuse (CheckError) unless the profile after the change compiles; its digest.

    ``added``: the rules the change adds to ``old_local`` (``[]`` for any
    other change, which then always compiles the whole profile).
    """
    from virt_aa.ops.manage import compile_rules

    gen = generated(dom)
    new_text = complete_profile(store, dom, new_local, policies, mode, gen)
    new_key = digest(store, new_text)
    if known_good(store, dom.uuid, new_key):
        return new_key
    if added and not has_exec(added):
        old_key = digest(store, complete_profile(store, dom, old_local, policies, mode, gen))
        if known_good(store, dom.uuid, old_key):
            problem = compile_rules(store, added)
            if problem:
                raise CheckError(f"apparmor_parser refused the rule: {problem}")
            return new_key
    problem = compile_text(store, new_text, f"<the whole profile of {dom.name}>")
    if problem:
        raise CheckError(f"the whole profile of {dom.name} would not compile: {problem}")
    return new_key
