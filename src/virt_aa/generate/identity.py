"""The few facts the ``prepare`` hook needs from a domain XML, and nothing else.

The hook writes P (template + includes + mode) and checks stored rules; it
never writes device rules (libvirt's helper does that right after).  So it
reads only the name, UUID, virt type, the AppArmor seclabel and our own
metadata, and accepts any device, element or enum value, of any libvirt
version including future ones: a hook that refused ``<watchdog
model='itco'/>`` would stop every q35 VM from starting on libvirt >= 9.1.
The document itself is still parsed by :mod:`xmlsafe` (entities, DTDs, depth
and size limits), and the name and UUID are checked as strictly as before:
they decide which file is written.
"""

from __future__ import annotations

from virt_aa.generate.model import Domain, DomainError, domain_root, parse_uuid, read_metadata
from virt_aa.generate.xmlsafe import Node


def _text(node: Node | None) -> str:
    return node.text if node is not None else ""


def confined(root: Node) -> bool:
    """False when a seclabel takes the VM out of the generated AppArmor profile.

    libvirt skips ``virt-aa-helper`` for ``type='none'`` (no model: every
    driver) and for a ``static`` AppArmor label (the admin's own profile), so
    our P would not be what confines it.
    """
    for label in root.findall("seclabel"):
        model = label.get("model")
        if model not in (None, "apparmor"):
            continue
        if label.get("type") in ("none", "static"):
            return False
    return True


def read_identity(data: bytes) -> tuple[Domain, bool]:
    """The domain's identity and metadata, and whether our profile confines it."""
    root = domain_root(data)
    name = _text(root.find("name"))
    if not name:
        raise DomainError(("warning", "Could not find <name>"),
                          ("error", "could not get VM definition"))
    uuid_text = _text(root.find("uuid"))
    uuid = parse_uuid(uuid_text) if uuid_text else None
    if uuid is None:
        raise DomainError(("error", f"could not parse XML: malformed uuid '{uuid_text}'"),
                          ("error", "could not get VM definition"))
    os_node = root.find("os")
    dom = Domain(name=name, uuid=uuid, virt_type=root.get("type") or "",
                 os_type=_text(os_node.find("type") if os_node is not None else None))
    read_metadata(dom, root)
    return dom, confined(root)
