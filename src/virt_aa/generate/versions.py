"""What each libvirt version's ``virt-aa-helper`` does differently, as data.

The generator follows one libvirt version (:class:`Libvirt`), chosen by
:mod:`virt_aa.host.libvirtversion` at run time.  Every difference from the
baseline (9.0, Debian 12) is one entry of :data:`SINCE`: a change name and the
first version that has it.  The versions come from upstream's NEWS and
sources (``virt-aa-helper.c`` and ``domain_conf.c`` of 9.0.0 and 11.3.0,
Debian's source packages) and were checked against the real helpers of 9.0,
11.3 and 12.8; where NEWS is silent the version is the best upstream estimate
and marked ``~`` (only 9.0, 11.3 and 12.8 are measured).  Versions older than
9.0 are emulated as 9.0 (no older oracle is available to measure against).
"""

from __future__ import annotations

OLDEST = (8, 0)
BASELINE = (9, 0)
NEWEST = (12, 8)

# change -> first libvirt version with it.
SINCE: dict[str, tuple[int, int]] = {
    "watchdog-itco": (9, 1),           # NEWS 9.1: iTCO; several <watchdog> allowed
    "passt-backend": (9, 2),           # ~ NEWS 9.2: passt with AppArmor (9.0's helper refuses)
    "disk-vhostvdpa": (9, 8),          # NEWS 9.8: <disk type='vhostvdpa'> (no rule)
    "fs-mtp": (10, 2),                 # NEWS 10.2: <driver type='mtp'> (no rule)
    "sev-snp": (10, 5),                # NEWS 10.5: <launchSecurity type='sev-snp'>
    "pstore": (10, 6),                 # NEWS 10.6: <pstore> path rw
    "fw-edk2-ovmf": (10, 6),           # NEWS 10.6: read-only /usr/share/edk2-ovmf
    "data-file": (10, 10),             # NEWS 10.10: qcow2 data-file, rule after its image
    "fw-more-dirs": (11, 0),           # ~ riscv64/loongarch64 EDK II, /usr/share/qemu
    "memory-pmem-sgx": (11, 1),        # NEWS 11.1: sgx-epc devices; ~ virtio-pmem rw
    "passt-vhostuser": (11, 1),        # NEWS 11.1: vhostuser with the passt backend
    "shim": (11, 2),                   # NEWS 11.2: <os><shim> r
    "acpi-tables": (11, 2),            # ~ every <acpi><table> r (raw, rawset, msdm)
    "loader-writable": (11, 2),        # ~ a loader not marked readonly='yes' gets rwk
    "include-if-exists": (11, 3),      # NEWS 11.3 (AppArmor 2.x dropped); for the record:
                                       # virt-aa writes it for every version (DESIGN §5)
    "data-file-every-layer": (12, 1),  # ~ probed chains: every layer's data file (11.x: last)
    "readonly-no-deny": (12, 1),       # no deny w for read-only disks and backing files
    "varstore": (12, 1),               # <varstore path=...> rw
    "iommufd": (12, 1),                # -f/-F /dev/iommu, /dev/vfio/devices/* rwm; a vfio
                                       # hostdev with iommufd='yes' needs no VFIO group
    "rom-readonly": (12, 1),           # ~ a rom loader is read-only whatever it says
    "dev-sev": (12, 1),                # ~ /dev/sev rw for SEV and SEV-SNP
    "tdx": (12, 1),                    # ~ <launchSecurity type='tdx'> (no rule)
}

# Firmware directories each version lets a read-only rule reach (restricted_rw).
FIRMWARE_DIRS: dict[str, tuple[str, ...]] = {
    "fw-edk2-ovmf": ("/usr/share/edk2-ovmf/",),
    "fw-more-dirs": ("/usr/share/qemu-efi-loongarch64/", "/usr/share/qemu-efi-riscv64/",
                     "/usr/share/qemu/"),
}

# Enum values a version's parser added (the rest are 9.0's, in domain.py).
ENUM_SINCE: dict[tuple[str, str], dict[str, str]] = {
    ("watchdog", "model"): {"itco": "watchdog-itco"},
    ("disk", "type"): {"vhostvdpa": "disk-vhostvdpa"},
    ("fsdriver", "type"): {"mtp": "fs-mtp"},
    ("launchsecurity", "type"): {"sev-snp": "sev-snp", "tdx": "tdx"},
    ("acpitable", "type"): {"raw": "acpi-tables", "rawset": "acpi-tables",
                            "msdm": "acpi-tables"},
}


class Libvirt:
    """One libvirt version as the generator emulates it."""

    __slots__ = ("changes", "enums", "firmware_dirs", "version")

    def __init__(self, version: tuple[int, int]) -> None:
        self.version = version
        self.changes = frozenset(k for k, v in SINCE.items() if version >= v)
        self.enums = {key: frozenset(val for val, change in values.items()
                                     if change in self.changes)
                      for key, values in ENUM_SINCE.items()}
        dirs: list[str] = []
        for change, entries in FIRMWARE_DIRS.items():
            if change in self.changes:
                dirs.extend(entries)
        self.firmware_dirs = tuple(dirs)

    def has(self, change: str) -> bool:
        return change in self.changes

    def __repr__(self) -> str:
        return f"Libvirt({self.version[0]}.{self.version[1]})"


class VersionError(ValueError):
    """A version string that is not X.Y or X.Y.Z."""


def parse_version(text: str) -> tuple[int, int]:
    """``"11.3.0"`` -> (11, 3); the micro number never changes the helper."""
    parts = text.strip().split(".")
    if not 2 <= len(parts) <= 3 or not all(p.isdigit() and len(p) < 6 for p in parts):
        raise VersionError(f"invalid libvirt version {text!r} (expected X.Y.Z, e.g. 11.3.0)")
    return int(parts[0]), int(parts[1])


def emulated(version: tuple[int, int]) -> tuple[tuple[int, int], str | None]:
    """The version to behave as, and a note when it is not ``version`` itself."""
    if version > NEWEST:
        return NEWEST, (f"libvirt {version[0]}.{version[1]} is newer than the newest "
                        f"known ({NEWEST[0]}.{NEWEST[1]}); generating as "
                        f"{NEWEST[0]}.{NEWEST[1]} does")
    if version < OLDEST:
        return OLDEST, (f"libvirt {version[0]}.{version[1]} is older than the oldest "
                        f"supported ({OLDEST[0]}.{OLDEST[1]}); generating as "
                        f"{OLDEST[0]}.{OLDEST[1]} does")
    return version, None


_CACHE: dict[tuple[int, int], Libvirt] = {}


def libvirt(version: tuple[int, int] = BASELINE) -> Libvirt:
    lv = _CACHE.get(version)
    if lv is None:
        lv = _CACHE[version] = Libvirt(version)
    return lv
