#!/usr/bin/python
# virtaa.libvirt.attachment: a named virt-aa policy attached to a libvirt domain.

from __future__ import annotations

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.virtaa.libvirt.plugins.module_utils import virtaa

DOCUMENTATION = r"""
module: attachment
short_description: Attach a named virt-aa policy to a libvirt domain, or detach it
description:
  - The module form of C(virt-aa attach DOMAIN POLICY) / C(virt-aa detach DOMAIN POLICY).
    The domain's C(<metadata>) gets (or loses) C(<policy name=... sha256=.../>) in virt-aa's
    namespace, through libvirt's metadata API (O(domain), persistent and live) or by
    rewriting a domain XML file in place (O(xml)); the profile of a running VM is updated.
  - The policy must be installed on this host (M(virtaa.libvirt.policy)); the reference
    pins its current sha256.  When the policy's content changed since it was attached, the
    reference is re-pinned (reported as a change).
  - Only a name and a hash ever go into the XML; whoever can edit domain XML cannot grant
    host access with it.  Each host resolves the name at VM start and incoming migration.
  - In check mode, a policy that is not installed yet is assumed to be installed by an
    earlier task (a warning says so), so a whole rollout can be checked before it runs.
  - Runs the virt_aa library on the managed host; fails clearly if it is not importable.
version_added: "0.1.0"
author: virt-aa
extends_documentation_fragment:
  - virtaa.libvirt.common
  - virtaa.libvirt.common.DOMAIN
options:
  policy:
    description: The policy name.
    type: str
    required: true
  state:
    description: Whether the policy is attached.
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
- name: Attach web-data to web01
  virtaa.libvirt.attachment:
    domain: web01
    policy: web-data

- name: Detach it from an offline domain XML
  virtaa.libvirt.attachment:
    xml: /srv/templates/web01.xml
    policy: web-data
    state: absent
"""

RETURN = r"""
policy:
  description: The policy name.
  type: str
  returned: always
sha256:
  description: The hash the domain references now.
  type: str
  returned: when state=present and the policy is installed
domain:
  description: The domain's name.
  type: str
  returned: always
attached:
  description: Every policy the domain references after the task (name and sha256).
  type: list
  elements: dict
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
            "policy": {"type": "str", "required": True},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        },
        supports_check_mode=True,
        **virtaa.DOMAIN_RULES,
    )
    va = virtaa.load(module)
    virtaa.run(module, va, lambda: _attachment(module, va))


def _refs(meta: Any) -> list[str]:
    return [f"policy {r.name} sha256 {r.sha256}" for r in meta.refs]


def _attachment(module: AnsibleModule, va: virtaa.VirtAA) -> None:
    p = module.params
    name = p["policy"]
    if not va.policies.valid_name(name):
        module.fail_json(msg=f"invalid policy name {name!r} (a-z 0-9 . _ -, at most 64)")
    store = virtaa.store(module, va)
    vm, setter = virtaa.find_vm(module, va, write=not module.check_mode)
    if vm.dom.meta_error:
        module.warn(f"{virtaa.where(module, vm)}: its virt-aa metadata is unreadable "
                    f"({vm.dom.meta_error}); a change replaces it")
    meta = va.fleet.attached(vm)
    pinned = {r.name: r.sha256 for r in meta.refs}
    result: dict[str, Any] = {"policy": name, "domain": vm.dom.name}
    if p["state"] == "present":
        text = va.fsutil.read_text(store.policy(name), 1 << 20)
        if text is None:
            if not module.check_mode:
                va.fleet.show_policy(store, name)   # raises: "no policy ... on this host"
            module.warn(f"policy {name!r} is not installed on this host ({store.policy(name)}); "
                        f"check mode assumes an earlier task installs it")
            sha = "(sha256 of the policy once installed)"
        else:
            sha = va.policies.digest(text)
            result["sha256"] = sha
        ref = va.policies.Ref(name, sha)
        new = va.fleet.with_policy(meta, ref)
        changed = pinned.get(name) != sha
    else:
        new = va.fleet.with_policy(meta, None, drop=name)
        changed = name in pinned
    result["changed"] = changed
    if changed and not module.check_mode:
        fn = va.fleet.attach if p["state"] == "present" else va.fleet.detach
        res = fn(store, vm, name, setter)
        result["changed"] = res["changed"]
        result["status"] = res["status"]
    final = new if changed else meta
    result["attached"] = [{"name": r.name, "sha256": r.sha256} for r in final.refs]
    if module._diff and changed:
        result["diff"] = virtaa.diff(virtaa.lines(_refs(meta)), virtaa.lines(_refs(new)),
                                     f"virt-aa policies attached to {virtaa.where(module, vm)}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
