"""A ``--root`` sandbox: the directory tree virt-aa writes to instead of ``/``.

Tests, the demo and the benchmarks run the real code against a sandbox, so
no host file is touched.  Seeding puts libvirt's profile templates where the
helper looks for them (``<root>/etc/apparmor.d/libvirt/TEMPLATE.<type>``).
"""

from __future__ import annotations

import os
from importlib import resources

TEMPLATES = ("TEMPLATE.qemu", "TEMPLATE.lxc")


def template_text(name: str) -> str:
    return resources.files("virt_aa").joinpath("data", name).read_text(encoding="utf-8")


def seed(root: str) -> list[str]:
    """Create the sandbox layout; return the files written (existing ones kept)."""
    written = []
    libvirt_dir = os.path.join(root, "etc/apparmor.d/libvirt")
    for sub in (libvirt_dir, os.path.join(root, "etc/apparmor.d/local"),
                os.path.join(root, "etc/virt-aa")):
        os.makedirs(sub, exist_ok=True)
    for name in TEMPLATES:
        path = os.path.join(libvirt_dir, name)
        if not os.path.exists(path):
            with open(path, "w", encoding="utf-8") as f:
                f.write(template_text(name))
            written.append(path)
    return written
