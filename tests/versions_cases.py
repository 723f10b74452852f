"""Domains that tell libvirt versions apart, and their recorded real-helper output.

Each case is run through the real ``virt-aa-helper -d -r -u ...`` of Debian
bookworm (9.0), trixie (11.3) and sid (12.8); the recordings are committed
under ``tests/data/versions/<suite>/`` with the XML's sha256, and
``test_versions.py`` compares ours (``VIRT_AA_LIBVIRT_VERSION=V``) with them,
rule for rule and in order.  Re-record (needs the oracle chroots of
``scripts/record-oracle.sh``; the runner is ``run-helper SUITE ARGS...``)::

    python3 tests/versions_cases.py record [RUNNER]
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "versions"
DIR = "/tmp/virt-aa-versions"
UUID = "11111111-2222-3333-4444-555555555555"
PROFILE = "libvirt-" + UUID
SUITES = {"bookworm": "9.0.0", "trixie": "11.3.0", "sid": "12.8.0"}
FILES = ("a.img", "b.img", "raw.dat", "slic.dat", "msdm.dat", "pmem.img", "nv.img",
         "pstore.raw", "shim.efi", "code.fd", "vars.fd", "kern", "initrd", "df.qcow2",
         "df.raw", "board.dtb")


def dom(devices: str = "", os: str = "", extra: str = "", machine: str = "q35") -> str:
    return (f"<domain type='kvm'><name>ver</name><uuid>{UUID}</uuid>"
            f"<memory unit='KiB'>1048576</memory>"
            f"<os><type arch='x86_64' machine='{machine}'>hvm</type>{os}</os>{extra}"
            f"<devices>{devices}</devices></domain>")


D = DIR
DISK_RO = (f"<disk type='file' device='disk'><source file='{D}/a.img'/><target dev='vda'/>"
           f"<readonly/></disk>")
CDROM = (f"<disk type='file' device='cdrom'><source file='{D}/b.img'/>"
         f"<target dev='sda' bus='sata'/></disk>")
CDROM_BLOCK = ("<disk type='block' device='cdrom'><source dev='/dev/loop7'/>"
               "<target dev='sdb' bus='sata'/></disk>")
DATA_STORE = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
              f"<source file='{D}/df.qcow2'><dataStore type='file'><format type='raw'/>"
              f"<source file='{D}/df.raw'/></dataStore></source><target dev='vdb'/>{{ro}}"
              f"</disk>")
SEV = ("<launchSecurity type='{t}'><cbitpos>47</cbitpos><reducedPhysBits>1</reducedPhysBits>"
       "<policy>0x{p}</policy></launchSecurity>")
PMEM = (f"<memory model='virtio-pmem' access='shared'><source><path>{D}/pmem.img</path>"
        f"</source><target><size unit='KiB'>524288</size></target></memory>"
        f"<memory model='nvdimm'><source><path>{D}/nv.img</path></source><target>"
        f"<size unit='KiB'>524288</size><node>0</node></target></memory>")
NUMA = ("<maxMemory slots='16' unit='KiB'>8388608</maxMemory>"
        "<cpu><numa><cell id='0' cpus='0' memory='1048576'/></numa></cpu>")
SGX = ("<memory model='sgx-epc'><source><nodemask>0</nodemask></source><target>"
       "<size unit='KiB'>16384</size><node>0</node></target></memory>"
       "<memory model='sgx-epc'><target><size unit='KiB'>16384</size></target></memory>")

CASES: dict[str, str] = {
    "watchdog-itco": dom("<watchdog model='itco' action='reset'/>"),
    "watchdog-two": dom("<watchdog model='itco' action='reset'/><watchdog model='i6300esb'/>"),
    "watchdog-unknown-model": dom("<watchdog model='future-dog'/>"),
    "acpi-tables": dom(os=f"<acpi><table type='raw'>{D}/raw.dat</table><table type='slic'>"
                          f"{D}/slic.dat</table><table type='msdm'>{D}/msdm.dat</table></acpi>"),
    "acpi-slic-only": dom(os=f"<acpi><table type='slic'>{D}/slic.dat</table></acpi>"),
    "acpi-slic-twice": dom(os=f"<acpi><table type='slic'>{D}/slic.dat</table>"
                              f"<table type='slic'>{D}/raw.dat</table></acpi>"),
    "shim": dom(os=f"<kernel>{D}/kern</kernel><initrd>{D}/initrd</initrd><shim>{D}/shim.efi"
                   f"</shim><dtb>{D}/board.dtb</dtb>"),
    "pstore": dom(f"<pstore backend='acpi-erst'><path>{D}/pstore.raw</path>"
                  f"<size unit='KiB'>8</size></pstore>",
                  os=f"<kernel>{D}/kern</kernel><loader type='pflash' readonly='yes'>"
                     f"{D}/code.fd</loader>"),
    "loader-no-readonly-attr": dom(os=f"<loader type='pflash'>{D}/code.fd</loader>"
                                      f"<nvram>{D}/vars.fd</nvram>"),
    "loader-writable": dom(os=f"<loader readonly='no' type='pflash'>{D}/code.fd</loader>"),
    "loader-readonly": dom(os=f"<loader readonly='yes' type='pflash'>{D}/code.fd</loader>"),
    "loader-rom": dom(os=f"<loader type='rom'>{D}/code.fd</loader>"),
    "loader-rom-readonly-no": dom(os=f"<loader type='rom' readonly='no'>{D}/code.fd</loader>"),
    "firmware-usr-share-qemu": dom(os="<loader readonly='yes' type='pflash'>"
                                      "/usr/share/qemu/edk2-x86_64-code.fd</loader>"),
    "firmware-edk2-ovmf": dom(os="<loader readonly='yes' type='pflash'>"
                                 "/usr/share/edk2-ovmf/x64/OVMF_CODE.fd</loader>"),
    "firmware-riscv64": dom(os="<loader readonly='yes' type='pflash'>"
                               "/usr/share/qemu-efi-riscv64/RISCV_VIRT_CODE.fd</loader>"),
    "firmware-loongarch64": dom(os="<loader readonly='yes' type='pflash'>"
                                   "/usr/share/qemu-efi-loongarch64/QEMU_EFI.fd</loader>"),
    "firmware-writable-in-ovmf-dir": dom(os="<loader readonly='no' type='pflash'>"
                                            "/usr/share/OVMF/OVMF_CODE.fd</loader>"),
    "memory-pmem-nvdimm": dom(PMEM).replace("<memory unit='KiB'>1048576</memory>",
                                            "<memory unit='KiB'>4194304</memory>" + NUMA),
    "memory-sgx-epc": dom(SGX),
    "sev": dom(extra=SEV.format(t="sev", p="0033")),
    "sev-snp": dom(extra=SEV.format(t="sev-snp", p="00030000")),
    "data-file-in-xml": dom(DATA_STORE.format(ro="")),
    "data-file-readonly-disk": dom(DATA_STORE.format(ro="<readonly/>")),
    "readonly-disk-cdrom-kernel": dom(DISK_RO + CDROM, os=f"<kernel>{D}/kern</kernel>"),
    "cdrom-block-without-readonly": dom(CDROM_BLOCK),
    "vhostvdpa-disk-mtp-fs": dom(
        "<disk type='vhostvdpa' device='disk'><driver name='qemu' type='raw' cache='none' "
        "io='threads'/><source dev='/dev/vhost-vdpa-0'/><target dev='vda' bus='virtio'/>"
        f"</disk><filesystem type='mount'><driver type='mtp'/><source dir='{D}'/>"
        "<target dir='mtp'/></filesystem>"),
    "passt-vhostuser": dom(
        f"<interface type='vhostuser'><backend type='passt'/><source type='unix' "
        f"path='{D}/pu.sock' mode='client'/><model type='virtio'/></interface>"),
    "passt-user": dom(f"<interface type='user'><backend type='passt' logFile='{D}/passt.log'/>"
                      f"<model type='virtio'/></interface>"),
    "varstore": dom(os=f"<loader readonly='yes' type='pflash' format='raw'>{D}/code.fd</loader>"
                       f"<varstore template='{D}/vars.fd' path='{D}/vs.json'/>"),
    "data-file-probed-chain": dom(
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{D}/chain-top.qcow2'/><target dev='vda' bus='virtio'/></disk>"),
    "data-file-of-network-disk": dom(
        f"<disk type='network' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source protocol='nbd' name='vol'><host transport='unix' socket='{D}/nbd.sock'/>"
        f"<dataStore type='file'><format type='raw'/><source file='{D}/df.raw'/></dataStore>"
        f"</source><target dev='vda' bus='virtio'/></disk>"),
    "hostdev-iommufd": dom(
        "<hostdev mode='subsystem' type='pci' managed='yes'><driver name='vfio' iommufd='yes'/>"
        "<source><address domain='0x0000' bus='0x3f' slot='0x1f' function='0x7'/></source>"
        "</hostdev>"),
    "hostdev-vfio-group": dom(
        "<hostdev mode='subsystem' type='pci' managed='yes'><driver name='vfio'/>"
        "<source><address domain='0x0000' bus='0x3f' slot='0x1f' function='0x7'/></source>"
        "</hostdev>"),
    "disk-order-by-bus": dom(
        f"<disk type='file'><source file='{D}/a.img'/><target dev='vdb'/></disk>"
        f"<disk type='file'><source file='{D}/b.img'/><target dev='hda'/></disk>"
        f"<disk type='file'><source file='{D}/raw.dat'/><target dev='sdc' bus='sata'/></disk>"
        f"<disk type='file'><source file='{D}/kern'/><target dev='vda'/></disk>"),
    "two-devices-blocks": dom(f"<disk type='file'><source file='{D}/a.img'/><target dev='vda'/>"
                              f"</disk></devices><devices><serial type='file'><source "
                              f"path='{D}/serial.log'/></serial>"),
}
# Extra-file (-f/-F) cases: name -> (xml, extra args)
EXTRA: dict[str, tuple[str, list[str]]] = {
    "extra-dev-iommu": (dom(), ["-f", "/dev/iommu"]),
    "extra-vfio-device": (dom(), ["-F", "/dev/vfio/devices/vfio0"]),
    "extra-image": (dom(), ["-f", f"{D}/a.img"]),
}


def all_cases() -> dict[str, tuple[str, list[str]]]:
    out = {name: (xml, []) for name, xml in CASES.items()}
    out.update(EXTRA)
    return out


def digest(xml: str, args: list[str]) -> str:
    return hashlib.sha256((xml + "\0" + " ".join(args)).encode()).hexdigest()


def make_files() -> None:
    os.makedirs(DIR, exist_ok=True)
    for name in FILES:
        path = Path(DIR, name)
        if not path.exists():
            path.write_bytes(b"")
    # a two-layer qcow2 chain, each layer with an external data file (qemu-utils)
    if not Path(DIR, "chain-top.qcow2").exists():
        q = ["qemu-img", "create", "-q", "-f", "qcow2"]
        subprocess.run(q + ["-o", f"data_file={DIR}/chain-base.data",
                            f"{DIR}/chain-base.qcow2", "1M"], check=True)
        subprocess.run(q + ["-o", f"data_file={DIR}/chain-top.data", "-b",
                            f"{DIR}/chain-base.qcow2", "-F", "qcow2",
                            f"{DIR}/chain-top.qcow2.tmp"], check=True)
        os.rename(f"{DIR}/chain-top.qcow2.tmp", f"{DIR}/chain-top.qcow2")


def argv(args: list[str]) -> list[str]:
    return ["-d", "-r", "-u", PROFILE, *args]


def record(runner: str) -> None:
    make_files()
    env = dict(os.environ)
    env["VIRT_AA_ORACLE_BIND"] = ":".join(filter(None, (env.get("VIRT_AA_ORACLE_BIND"), DIR)))
    for suite in SUITES:
        out = DATA / suite
        out.mkdir(parents=True, exist_ok=True)
        for name, (xml, args) in all_cases().items():
            proc = subprocess.run([runner, suite, *argv(args)], input=xml.encode(),
                                  capture_output=True, env=env, check=False)
            if proc.returncode == 125:
                raise SystemExit(proc.stderr.decode())
            (out / f"{name}.json").write_text(json.dumps({
                "sha256": digest(xml, args), "args": args, "exit_code": proc.returncode,
                "stderr": proc.stderr.decode("utf-8", "surrogateescape")}, indent=1) + "\n")
        print(f"{suite}: {len(all_cases())} cases recorded in {out}")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "record":
        record(sys.argv[2] if len(sys.argv) > 2 else "/var/cache/virt-aa-oracle/run-helper")
    else:
        raise SystemExit(__doc__)
