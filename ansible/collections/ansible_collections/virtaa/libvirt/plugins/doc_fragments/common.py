# virtaa.libvirt doc fragments: the options every module shares, written once.

from __future__ import annotations


class ModuleDocFragment:
    # virt-aa's root on the managed host
    DOCUMENTATION = r"""
options:
  root:
    description: virt-aa's C(--root) on the managed host (a sandbox prefix).
    type: path
    default: /
"""

    # how a module names the domain it acts on
    DOMAIN = r"""
options:
  domain:
    description: The libvirt domain (name, UUID or id) on O(uri).  Exclusive with O(xml).
    type: str
  xml:
    description: A domain given offline, a domain XML file on the managed host.
    type: path
  uri:
    description: libvirt URI (default C($LIBVIRT_DEFAULT_URI) or C(qemu:///system)).
    type: str
"""
