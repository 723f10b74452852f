#!/usr/bin/python
# virtaa.libvirt.vm_rule: one per-VM AppArmor rule of a libvirt domain.

from __future__ import annotations

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.virtaa.libvirt.plugins.module_utils import virtaa

DOCUMENTATION = r"""
module: vm_rule
short_description: Add or remove one per-VM AppArmor rule of a libvirt domain (virt-aa)
description:
  - The module form of C(virt-aa allow DOMAIN RULE) / C(virt-aa revoke DOMAIN RULE).  The
    rule is stored by the domain's UUID under virt-aa's root (it survives shutdown and
    redefinition), checked (grammar, restricted paths, the real C(apparmor_parser)),
    applied to the running VM at once and recorded in its history.
  - Idempotent on the normalised rule text; O(comment) is recorded when the rule is added
    and does not make an existing rule change.
  - Runs the virt_aa library on the managed host; fails clearly if it is not importable.
version_added: "0.1.0"
author: virt-aa
extends_documentation_fragment:
  - virtaa.libvirt.common
  - virtaa.libvirt.common.DOMAIN
options:
  rule:
    description: One AppArmor rule, e.g. C("/srv/data/** rwk,").
    type: str
    required: true
  comment:
    description: Why the rule is there (recorded with the rule and in the history).
    type: str
    default: ""
  force:
    description: Allow a rule that reaches a restricted path (recorded and flagged).
    type: bool
    default: false
  state:
    description: Whether the rule is there.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: Let web01 use its data directory
  virtaa.libvirt.vm_rule:
    domain: web01
    rule: '"/srv/data/web01/**" rwk,'
    comment: NFS data

- name: The same for a domain XML file (offline)
  virtaa.libvirt.vm_rule:
    xml: /etc/libvirt/qemu/web01.xml
    rule: '"/srv/data/web01/**" rwk,'
    state: absent
"""

RETURN = r"""
rule:
  description: The rule as stored (normalised).
  type: str
  returned: always
id:
  description: The rule's id (as C(virt-aa rules) shows it).
  type: str
  returned: always
domain:
  description: The domain's name.
  type: str
  returned: always
uuid:
  description: The domain's UUID (what the rule is stored by).
  type: str
  returned: always
file:
  description: The per-VM rules file on the managed host.
  type: str
  returned: always
status:
  description: What happened to the VM's profile (updated and replaced, or takes effect at start).
  type: str
  returned: when changed and not in check mode
"""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **virtaa.DOMAIN_SPEC,
            "rule": {"type": "str", "required": True},
            "comment": {"type": "str", "default": ""},
            "force": {"type": "bool", "default": False},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        },
        supports_check_mode=True,
        **virtaa.DOMAIN_RULES,
    )
    va = virtaa.load(module)
    virtaa.run(module, va, lambda: _rule(module, va))


def _rule(module: AnsibleModule, va: virtaa.VirtAA) -> None:
    p = module.params
    lr = va.localrules
    try:
        parsed = lr.parse_rule(p["rule"])
    except lr.RuleError as exc:
        module.fail_json(msg=f"rule {p['rule'].strip()!r}: {exc}")
    text, rid = parsed.text, lr.rule_id(parsed.text)
    store = virtaa.store(module, va)
    vm, _setter = virtaa.find_vm(module, va)
    listing = va.manage.list_rules(store, vm)
    before = [r["rule"] for r in listing["rules"]]
    present = any(r["id"] == rid or r["rule"] == text for r in listing["rules"])
    result: dict[str, Any] = {"rule": text, "id": rid, "domain": vm.dom.name, "uuid": vm.uuid,
                              "file": listing["file"]}
    if p["state"] == "present":
        if lr.grants_restricted(parsed) and not p["force"]:
            # checked before "is it there already", as virt-aa allow does
            module.fail_json(msg=f"rule {text!r} grants a restricted path (/etc, /root, /proc, "
                                 f"/sys, /dev/mem ...); set force: true if you mean it")
        changed = not present
        after = before + [text] if changed else before
    else:
        changed = present
        after = [r for r in before if r != text] if changed else before
    result["changed"] = changed
    if changed and not module.check_mode:
        if p["state"] == "present":
            res = va.manage.allow(store, vm, [text], comment=p["comment"], force=p["force"])
            result["changed"] = bool(res["added"])
        else:
            res = va.manage.revoke(store, vm, text)
        result["status"] = res["status"]
        after = [r["rule"] for r in va.manage.list_rules(store, vm)["rules"]]
    if module._diff and changed:
        result["diff"] = virtaa.diff(virtaa.lines(before), virtaa.lines(after),
                                     f"per-VM rules of {virtaa.where(module, vm)} "
                                     f"({listing['file']})")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
