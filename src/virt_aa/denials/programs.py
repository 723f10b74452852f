"""Which program of the libvirt stack a profile confines, and which VM a helper serves.

A denial stops a VM wherever it lands: in the VM's own profile, in libvirtd's or
virtqemud's, in libvirt's helper (or ours), or in a helper process that serves the
VM (swtpm, virtiofsd, passt) or its network (dnsmasq).  Pure: names in, names out.
"""

from __future__ import annotations

import re

# (program, heading, profile names and attachment paths; children ``NAME//x`` go with NAME)
PROGRAMS: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("vm", "VMs (libvirt-<uuid>)", frozenset()),
    ("daemon", "libvirtd / virtqemud", frozenset({
        "libvirtd", "/usr/sbin/libvirtd", "virtqemud", "/usr/sbin/virtqemud"})),
    ("helper", "virt-aa-helper and virt-aa's hook", frozenset({
        "virt-aa-helper", "/usr/lib/libvirt/virt-aa-helper", "virt-aa-hook",
        "/usr/sbin/virt-aa-hook"})),
    ("swtpm", "swtpm (emulated TPM)", frozenset({"swtpm", "/usr/bin/swtpm"})),
    ("virtiofsd", "virtiofsd (shared directories)", frozenset({
        "virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"})),
    ("passt", "passt (user-mode networking)", frozenset({
        "passt", "/usr/bin/passt", "/usr/bin/passt.avx2", "pasta", "/usr/bin/pasta"})),
    ("dnsmasq", "dnsmasq (libvirt networks)", frozenset({"dnsmasq", "/usr/sbin/dnsmasq"})),
    ("other", "other profiles", frozenset()),
)
ORDER = {p: i for i, (p, _, _) in enumerate(PROGRAMS)}
HEADING = {p: h for p, h, _ in PROGRAMS}
_BY_NAME = {n: p for p, _, names in PROGRAMS for n in names}
SERVING = frozenset({"swtpm", "virtiofsd", "passt"})   # one process per VM


def is_vm_profile(profile: str | None) -> bool:
    """``libvirt-<uuid>`` or a child of it."""
    if not profile or not profile.startswith("libvirt-"):
        return False
    head = profile[8:].split("//", 1)[0]
    return (len(head) == 36 and head.count("-") == 4
            and all(c in "0123456789abcdef-" for c in head))


def program_of(profile: str | None) -> str:
    """vm, daemon, helper, swtpm, virtiofsd, passt, dnsmasq or other."""
    if is_vm_profile(profile):
        return "vm"
    if not profile:
        return "other"
    return _BY_NAME.get(profile.split("//", 1)[0], "other")


def serves(resource: str | None, uuid: str, name: str | None) -> bool:
    """Whether a helper's record names the VM: its UUID anywhere in the resource
    (swtpm's state directory /var/lib/libvirt/swtpm/UUID), or its name as a path
    component libvirt makes for it (NAME-swtpm.log, ID-NAME-swtpm.sock, domain-ID-NAME,
    ID-NAME-net0.pid, ID-NAME-fs0.sock ...)."""
    if not resource:
        return False
    if uuid in resource.lower():
        return True
    if not name:
        return False
    pat = _name_re(name)
    return any(pat.fullmatch(part) for part in resource.split("/") if name in part)


_NAME_RES: dict[str, re.Pattern[str]] = {}


def _name_re(name: str) -> re.Pattern[str]:
    p = _NAME_RES.get(name)
    if p is None:
        p = _NAME_RES[name] = re.compile(
            r"(?:domain-)?(?:[0-9]+-)?" + re.escape(name) + r"(?:-[A-Za-z0-9_.-]*)?"
            r"(?:\.(?:log|pid|sock|socket))?")
    return p
