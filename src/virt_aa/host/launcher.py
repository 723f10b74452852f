"""Lean launchers for the entry points libvirt runs at every VM start.

pip's console-script wrappers run the interpreter with ``site`` and import
``re`` before our code: ~5 ms of the ~14 ms the C helper takes in total.
The launchers written here start Python with ``-I -S`` (isolated: no
PYTHON* variables, no user or site directories) and put only virt-aa's own
directory on ``sys.path``.  ``virt-aa install`` writes them where libvirt
looks; the benchmarks measure them.
"""

from __future__ import annotations

import os
import sys

ENTRY_POINTS = {
    "virt-aa-helper": "virt_aa.helper",
    "virt-aa-hook": "virt_aa.hook",
}


def package_dir() -> str:
    """The directory that holds the ``virt_aa`` package."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def is_system_install() -> bool:
    """virt-aa runs from a system-wide install (``/usr/...``, e.g. the Debian
    package), not from a virtualenv or a checkout that may move or vanish."""
    if sys.prefix != sys.base_prefix:
        return False
    return os.path.realpath(package_dir()).startswith("/usr/")


def render(entry: str, python: str | None = None, path: str | None = None) -> str:
    """The text of a launcher script for ``entry`` (a key of ENTRY_POINTS)."""
    module = ENTRY_POINTS[entry]
    interpreter = python or sys.executable
    where = path or package_dir()
    return (f"#!{interpreter} -IS\n"
            f"# virt-aa launcher for {entry}: isolated, site-less start-up\n"
            f"import sys\n"
            f"sys.path.insert(0, {where!r})\n"
            f"from {module} import main\n"
            f"sys.exit(main())\n")


def write(entry: str, dest: str, python: str | None = None) -> str:
    text = render(entry, python)
    tmp = dest + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)
    return dest
