#!/usr/bin/python
# virtaa.libvirt.mode: a libvirt domain's AppArmor mode (complain or enforce).

from __future__ import annotations

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.virtaa.libvirt.plugins.module_utils import virtaa

DOCUMENTATION = r"""
module: mode
short_description: Set a libvirt domain's AppArmor mode (complain or enforce) with virt-aa
description:
  - The module form of C(virt-aa complain DOMAIN) / C(virt-aa enforce DOMAIN).  The mode is
    stored by the domain's UUID under virt-aa's root, applied to the running VM at once
    and recorded in its history; every VM start uses it.
  - Runs the virt_aa library on the managed host; fails clearly if it is not importable.
version_added: "0.1.0"
author: virt-aa
extends_documentation_fragment:
  - virtaa.libvirt.common
  - virtaa.libvirt.common.DOMAIN
options:
  mode:
    description: The mode.
    type: str
    choices: [complain, enforce]
    required: true
  comment:
    description: Why (recorded in the history).
    type: str
    default: ""
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: Put web01 in complain mode while its denials are looked at
  virtaa.libvirt.mode:
    domain: web01
    mode: complain
    comment: collecting denials for the new backup agent
"""

RETURN = r"""
mode:
  description: The mode now.
  type: str
  returned: always
previous:
  description: The mode before.
  type: str
  returned: always
domain:
  description: The domain's name.
  type: str
  returned: always
status:
  description: What happened to the VM's profile.
  type: str
  returned: when changed and not in check mode
"""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **virtaa.DOMAIN_SPEC,
            "mode": {"type": "str", "required": True, "choices": ["complain", "enforce"]},
            "comment": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
        **virtaa.DOMAIN_RULES,
    )
    va = virtaa.load(module)
    virtaa.run(module, va, lambda: _mode(module, va))


def _mode(module: AnsibleModule, va: virtaa.VirtAA) -> None:
    p = module.params
    store = virtaa.store(module, va)
    vm, _setter = virtaa.find_vm(module, va)
    before = store.mode(vm.uuid)
    result: dict[str, Any] = {"mode": p["mode"], "previous": before, "domain": vm.dom.name,
                              "uuid": vm.uuid, "changed": before != p["mode"]}
    if result["changed"] and not module.check_mode:
        res = va.manage.set_mode(store, vm, p["mode"], why=p["comment"])
        result["status"] = res["status"]
    if module._diff and result["changed"]:
        result["diff"] = virtaa.diff(f"mode = {before}\n", f"mode = {p['mode']}\n",
                                     f"AppArmor mode of {virtaa.where(module, vm)} "
                                     f"({store.settings_path(vm.uuid)})")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
