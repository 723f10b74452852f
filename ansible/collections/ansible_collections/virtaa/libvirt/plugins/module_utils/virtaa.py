# Shared code of the virtaa.libvirt modules (runs on the managed host).
#
# The modules are thin: every change goes through the virt_aa library that
# is installed on the managed host (the same code as the ``virt-aa``
# command), so a rule or policy is checked, compiled, stored and applied
# exactly as ``virt-aa allow`` / ``virt-aa policy add`` would do it.  What
# this file adds: importing virt_aa with a clear failure, finding the domain
# (libvirt, or an offline XML file), error reporting, and diffs.

from __future__ import annotations

import os
import socket
import sys
import traceback
from typing import Any

MAX_XML = 10 * 1024 * 1024

# options every domain module accepts
DOMAIN_SPEC: dict[str, dict[str, Any]] = {
    "domain": {"type": "str"},
    "xml": {"type": "path"},
    "uri": {"type": "str"},
    "root": {"type": "path", "default": "/"},
}
DOMAIN_RULES: dict[str, Any] = {
    "mutually_exclusive": [("domain", "xml"), ("uri", "xml")],
    "required_one_of": [("domain", "xml")],
}


class VirtAA:
    """The virt_aa modules the Ansible modules use, imported once."""

    def __init__(self) -> None:
        import virt_aa.generate.profile as profile
        import virt_aa.host.fsutil as fsutil
        import virt_aa.host.store as store
        import virt_aa.ops.fleet as fleet
        import virt_aa.ops.manage as manage
        import virt_aa.policy.localrules as localrules
        import virt_aa.policy.named as policies

        self.fleet = fleet
        self.fsutil = fsutil
        self.localrules = localrules
        self.manage = manage
        self.policies = policies
        self.store = store
        # every error virt_aa reports as one line for the admin
        self.errors: tuple[type[BaseException], ...] = (
            manage.ManageError, store.StoreError, policies.PolicyError,
            localrules.RuleError, profile.TemplateError, OSError)

    def libvirt(self) -> Any:
        import virt_aa.host.libvirt as lv

        return lv


def load(module: Any) -> VirtAA:
    """Import virt_aa on the managed host, or fail with what to do about it."""
    try:
        va = VirtAA()
    except ImportError as exc:
        module.fail_json(
            msg=(f"the virt_aa Python package is not importable on {socket.gethostname()} "
                 f"by {sys.executable} ({exc}): install virt-aa on the managed host, or set "
                 f"ansible_python_interpreter to the Python that has it"),
            exception=traceback.format_exc())
        raise  # not reached: fail_json exits
    try:
        va.errors = (*va.errors, va.libvirt().LibvirtError)
    except ImportError:
        pass
    return va


def store(module: Any, va: VirtAA) -> Any:
    root = module.params["root"] or "/"
    if not os.path.isdir(root):
        module.fail_json(msg=f"root {root!r} is not a directory (create it with "
                             f"`virt-aa sandbox {root}`, or leave root at /)")
    return va.store.Store(root)


def find_vm(module: Any, va: VirtAA, write: bool = False) -> tuple[Any, Any]:
    """The VM the task names and a setter for its virt-aa metadata.

    ``xml``: an offline domain XML file on the managed host (the metadata is
    rewritten in place).  ``domain``: a libvirt domain (name, UUID or id) on
    ``uri``; the connection is read-write only when ``write`` (metadata).
    """
    p = module.params
    if p.get("xml"):
        path = p["xml"]
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_XML + 1)
        except OSError as exc:
            module.fail_json(msg=f"cannot read {path}: {exc.strerror or exc}")
        if len(data) > MAX_XML:
            module.fail_json(msg=f"{path}: domain XML larger than 10 MiB")
        vm = va.manage.vm_from_xml(data, None, path)

        def offline(element: str | None) -> None:
            va.fleet.set_offline(path, element)

        return vm, offline
    lv = va.libvirt()
    conn = lv.connect(p.get("uri"), readonly=not write)
    dom = lv.lookup(conn, p["domain"])
    vm = va.manage.vm_from_xml(lv.domain_xml(dom), lv.is_running(dom), f"domain {p['domain']}")
    from virt_aa.ops.isolation import domains_of

    vm.peers = domains_of(conn)   # isolation checked against every domain of this host

    def live(element: str | None) -> None:
        lv.set_metadata(dom, element)

    return vm, live


def where(module: Any, vm: Any) -> str:
    """How a message names the VM: its name, and the file when given offline."""
    xml = module.params.get("xml")
    return f"{vm.dom.name} ({xml})" if xml else vm.dom.name


def lines(items: list[str]) -> str:
    return "".join(f"{i}\n" for i in items)


def diff(before: str, after: str, before_header: str, after_header: str | None = None
         ) -> dict[str, str]:
    return {"before": before, "after": after, "before_header": before_header,
            "after_header": after_header or before_header}


def run(module: Any, va: VirtAA, body: Any) -> None:
    """Run the module's body; virt_aa's one-line errors become fail_json."""
    try:
        body()
    except va.errors as exc:
        module.fail_json(msg=str(exc))
