#!/usr/bin/python
# virtaa.libvirt.policy: a named virt-aa policy on a hypervisor.

from __future__ import annotations

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.virtaa.libvirt.plugins.module_utils import virtaa

DOCUMENTATION = r"""
module: policy
short_description: Install, update or remove a named virt-aa policy on a hypervisor
description:
  - A named policy is a host file C(<root>/etc/virt-aa/policies/<name>) in virt-aa's
    per-VM rule syntax (one AppArmor rule a line).  VMs reference it by name and sha256
    from their domain metadata (M(virtaa.libvirt.attachment)); the host where a VM starts
    or migrates to resolves the name, and refuses the VM if the policy is missing or
    differs.
  - The content is checked like C(virt-aa policy add) checks it (rule grammar, restricted
    paths, the real C(apparmor_parser)) before it is written atomically.
  - Changing the content changes its sha256; VMs attached to the old content refuse to
    start until re-attached (run M(virtaa.libvirt.attachment) again, as the rollout
    playbook does).
  - Runs the virt_aa library on the managed host; fails clearly if it is not importable.
version_added: "0.1.0"
author: virt-aa
extends_documentation_fragment:
  - virtaa.libvirt.common
options:
  name:
    description: Policy name (a-z 0-9 . _ -, at most 64, not starting with . _ -).
    type: str
    required: true
  content:
    description:
      - The policy text, one rule a line (comments allowed).  A missing final newline is
        added.  Required with O(state=present).
    type: str
  state:
    description: Whether the policy is installed.
    type: str
    choices: [present, absent]
    default: present
  force:
    description: Allow rules that reach restricted paths (C(/etc), C(/root), C(/proc) ...).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: Install the web-data policy
  virtaa.libvirt.policy:
    name: web-data
    content: |
      "/srv/web/**" rwk,
      "/srv/shared/**" r,

- name: Remove it
  virtaa.libvirt.policy:
    name: web-data
    state: absent
"""

RETURN = r"""
name:
  description: The policy name.
  type: str
  returned: always
sha256:
  description: sha256 of the installed content (what VMs reference).
  type: str
  returned: when state=present
path:
  description: The policy file on the managed host.
  type: str
  returned: always
"""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "content": {"type": "str"},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "force": {"type": "bool", "default": False},
            "root": {"type": "path", "default": "/"},
        },
        required_if=[("state", "present", ("content",))],
        supports_check_mode=True,
    )
    va = virtaa.load(module)
    virtaa.run(module, va, lambda: _policy(module, va))


def _policy(module: AnsibleModule, va: virtaa.VirtAA) -> None:
    p = module.params
    name = p["name"]
    if not va.policies.valid_name(name):
        module.fail_json(msg=f"invalid policy name {name!r} (a-z 0-9 . _ -, at most 64)")
    store = virtaa.store(module, va)
    path = store.policy(name)
    old = va.fsutil.read_text(path, 1 << 20)
    header = f"virt-aa policy {name} ({path})"
    result: dict[str, Any] = {"name": name, "path": path}
    if p["state"] == "absent":
        result["changed"] = old is not None
        if old is not None and not module.check_mode:
            va.fleet.remove_policy(store, name)
        if module._diff and old is not None:
            result["diff"] = virtaa.diff(old, "", header)
        module.exit_json(**result)
    text = p["content"]
    if text and not text.endswith("\n"):
        text += "\n"
    result["sha256"] = va.policies.digest(text)
    result["changed"] = old != text
    if old == text:
        module.exit_json(**result)
    if module.check_mode:
        _precheck(module, va, text, p["force"])
    else:
        res = va.fleet.add_policy(store, name, text, p["force"])
        result["changed"] = res["changed"]
        result["sha256"] = res["sha256"]
    if module._diff:
        result["diff"] = virtaa.diff(old or "", text, header)
    module.exit_json(**result)


def _precheck(module: AnsibleModule, va: virtaa.VirtAA, text: str, force: bool) -> None:
    """What check mode can verify without writing: grammar and restricted paths.

    (The compile with apparmor_parser writes a scratch file under the state
    directory and takes the lock, so it runs only for real.)"""
    lr = va.localrules
    rules, problems = lr.parse_file(text)
    if problems:
        line, why = problems[0]
        module.fail_json(msg=f"line {line}: {why}")
    if not rules:
        module.fail_json(msg="the policy has no rules")
    for r in rules:
        if lr.grants_restricted(lr.parse_rule(r.text)) and not force:
            module.fail_json(msg=f"rule {r.text!r} grants a restricted path; set force: true "
                                 f"if you mean it")


if __name__ == "__main__":
    main()
