"""libvirt-python adaptor: find a domain by name, UUID or id; get its XML.

Imported lazily (only by commands that name a domain), and never by the
helper or the hook, which must not call back into libvirt.
"""

from __future__ import annotations

import os
from typing import Any

DEFAULT_URI = "qemu:///system"


class LibvirtError(RuntimeError):
    """One line for the admin: what failed and what to try."""


def default_uri(explicit: str | None) -> str:
    return explicit or os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI


def _module() -> Any:
    try:
        import libvirt
    except ImportError:
        raise LibvirtError("the libvirt Python bindings are missing (apt-get install "
                           "python3-libvirt), or name the domain offline with --xml FILE"
                           ) from None
    libvirt.registerErrorHandler(lambda *_: None, None)
    return libvirt


def connect(uri: str | None, readonly: bool = True) -> Any:
    lv = _module()
    target = default_uri(uri)
    try:
        return lv.openReadOnly(target) if readonly else lv.open(target)
    except lv.libvirtError as exc:
        raise LibvirtError(f"cannot connect to {target}: {exc.get_error_message()} "
                           f"(check -c/--connect or LIBVIRT_DEFAULT_URI)") from None


def lookup(conn: Any, ref: str) -> Any:
    """Like virsh: a name, a UUID or a numeric id."""
    lv = _module()
    attempts = [conn.lookupByName]
    if len(ref) == 36 and ref.count("-") == 4:
        attempts.insert(0, conn.lookupByUUIDString)
    if ref.isdigit():
        attempts.append(lambda r: conn.lookupByID(int(r)))
    for attempt in attempts:
        try:
            return attempt(ref)
        except lv.libvirtError:
            continue
    raise LibvirtError(f"no domain '{ref}' on {conn.getURI()} "
                       f"(give a name, UUID or id as 'virsh list --all' shows)")


def domain_xml(dom: Any) -> bytes:
    lv = _module()
    flags = getattr(lv, "VIR_DOMAIN_XML_SECURE", 1)
    try:
        xml: str = dom.XMLDesc(flags)
    except lv.libvirtError:
        xml = dom.XMLDesc(0)
    return xml.encode("utf-8")


def is_running(dom: Any) -> bool:
    return bool(dom.isActive())


def running_domains(conn: Any) -> list[Any]:
    lv = _module()
    flag = getattr(lv, "VIR_CONNECT_LIST_DOMAINS_ACTIVE", 1)
    return list(conn.listAllDomains(flag))


def set_metadata(dom: Any, element: str | None) -> None:
    """Store (or, with None, remove) virt-aa's <metadata> element, persistent and live."""
    from virt_aa.policy.named import NS, PREFIX

    lv = _module()
    kind = lv.VIR_DOMAIN_METADATA_ELEMENT
    config = getattr(lv, "VIR_DOMAIN_AFFECT_CONFIG", 2)
    live = getattr(lv, "VIR_DOMAIN_AFFECT_LIVE", 1)
    attempts = [config | live, config] if dom.isActive() else [config]
    if dom.isActive():
        attempts.append(live)                  # a transient domain has no config
    last: Exception | None = None
    for flags in attempts:
        try:
            if element is None:
                dom.setMetadata(kind, None, None, NS, flags)
            else:
                dom.setMetadata(kind, element, PREFIX, NS, flags)
            return
        except lv.libvirtError as exc:
            last = exc
    raise LibvirtError(f"cannot set the metadata of {dom.name()}: {last}")
