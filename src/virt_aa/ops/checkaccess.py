"""``virt-aa check``: would this VM's effective profile allow this access?

The effective profile is what the kernel would get at the next start: P
rendered from the stored state, the device rules generated from the XML,
the per-VM rules, and everything they include.  It is assembled in a
temporary directory first on the include search path, so nothing on disk
changes, and evaluated with our AppArmor matcher (tested against the
parser's own DFA).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

from virt_aa.generate.accesses import Rule
from virt_aa.generate.profile import TemplateError, files_content, render_rules
from virt_aa.host import vmprofile
from virt_aa.host.store import Store
from virt_aa.ops.manage import VM
from virt_aa.policy.effective import ParseStats, decide, effective_rules


class CheckError(RuntimeError):
    """The profile cannot be assembled (one line)."""


def check(store: Store, vm: VM, generated: list[Rule], path: str,
          perms: str) -> dict[str, Any]:
    return checker(store, vm, generated)(path, perms)


def checker(store: Store, vm: VM, generated: list[Rule]
            ) -> Callable[[str, str], dict[str, Any]]:
    """`check` for many accesses: the effective profile is assembled once."""
    try:
        text = vmprofile.render(store, vm.profile, vm.dom.virt_type)
    except TemplateError as exc:
        raise CheckError(f"{store.template(vm.dom.virt_type)}: {exc}") from None
    stats = ParseStats()
    with tempfile.TemporaryDirectory(prefix="virt-aa-check-") as tmp:
        os.makedirs(os.path.join(tmp, "libvirt"))
        p = os.path.join(tmp, "libvirt", vm.profile)
        with open(p, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        with open(p + ".files", "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(files_content(render_rules(generated)))
        search = [tmp, store.path("etc/apparmor.d"), "/etc/apparmor.d"]
        rules = effective_rules(p, search, stats)

    def show(r: Any) -> str:
        return f"{r.text()}  [{r.source.replace(tmp, '<generated>')}]"

    def one(path: str, perms: str) -> dict[str, Any]:
        decision = decide(rules, path, perms)
        return {"domain": vm.dom.name, "profile": vm.profile, "path": path, "perms": perms,
                "allowed": decision.allowed, "missing": decision.perms_missing,
                "allow_rules": [show(r) for r in decision.allow_rules],
                "deny_rules": [show(r) for r in decision.deny_rules],
                "rules_considered": len(rules)}
    return one
