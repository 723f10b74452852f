"""Which libvirt is installed, found without a libvirt connection, in one syscall.

libvirt's library carries its version in its file name: ``libvirt.so.0`` is a
symlink to ``libvirt.so.0.MAJOR*1000+MINOR.MICRO`` (``libvirt.so.0.11003.0``
is 11.3.0).  The helper and the library come from the same source package,
so one ``readlink`` (~5 µs) tells which helper we stand in for; the dpkg
status file (MBs) or ``libvirtd --version`` (a process) would cost more than
the whole generation.  ``VIRT_AA_LIBVIRT_VERSION=X.Y.Z`` overrides it.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~8 ms
if TYPE_CHECKING:
    from virt_aa.generate.versions import Libvirt

ENV = "VIRT_AA_LIBVIRT_VERSION"
LIBRARY = "libvirt.so.0"


def library_dirs() -> tuple[str, ...]:
    multiarch = getattr(sys.implementation, "_multiarch", "") or ""
    dirs = [f"/usr/lib/{multiarch}"] if multiarch else []
    return (*dirs, "/usr/lib64", "/usr/lib", "/lib64")


def from_library(target: str) -> tuple[int, int] | None:
    """``libvirt.so.0.11003.0`` -> (11, 3)."""
    if not target.startswith(LIBRARY + "."):
        return None
    packed = target[len(LIBRARY) + 1:].split(".", 1)[0]
    if not packed.isdigit():
        return None
    number = int(packed)
    return number // 1000, number % 1000


def installed(dirs: tuple[str, ...] | None = None) -> tuple[int, int] | None:
    for d in library_dirs() if dirs is None else dirs:
        try:
            target = os.readlink(f"{d}/{LIBRARY}")
        except OSError:
            continue
        found = from_library(os.path.basename(target))
        if found is not None:
            return found
    return None


def detect(environ: dict[str, str] | None = None,
           dirs: tuple[str, ...] | None = None) -> tuple[tuple[int, int], list[str]]:
    """The version to emulate and the notes to print once (stderr warnings).

    Raises :class:`virt_aa.generate.versions.VersionError` for a malformed
    override: a typo must not silently select another libvirt's rules.
    """
    from virt_aa.generate.versions import BASELINE, emulated, parse_version

    env = os.environ if environ is None else environ
    notes: list[str] = []
    given = env.get(ENV)
    if given:
        version = parse_version(given)
    else:
        found = installed(dirs)
        if found is None:
            notes.append(f"cannot tell the installed libvirt version (no {LIBRARY} found); "
                         f"generating as libvirt {BASELINE[0]}.{BASELINE[1]} does "
                         f"(set {ENV}=X.Y.Z to choose)")
            found = BASELINE
        version = found
    version, note = emulated(version)
    if note:
        notes.append(note)
    return version, notes


def host_libvirt() -> Libvirt:
    """The installed libvirt's model for the admin commands (notes are the helper's)."""
    from virt_aa.generate.versions import VersionError, libvirt

    try:
        version, _notes = detect()
    except VersionError:
        version = installed() or (9, 0)
    return libvirt(version)
