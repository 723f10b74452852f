#!/usr/bin/env python3
"""Write tests/corpus/newer/hw-*.xml and cases.json: one domain per construct
that libvirt after 9.0 added or changed for its AppArmor helper (issue #11's
list), hand-written from libvirt's documentation and NEWS.  Paths under
/tmp/virt-aa-newer are built by setup-images.sh; firmware paths under
/usr/share are where distributions install them (they need not exist).
Run: python3 tests/corpus/newer/make-handwritten.py
"""

import json
import os
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
N = "/tmp/virt-aa-newer"
DISK = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{N}/images/vi.qcow2'/><target dev='vda' bus='virtio'/></disk>")
Q35 = "<type arch='x86_64' machine='q35'>hvm</type>"


def efi(loader: str, arch: str = "x86_64", machine: str = "q35", extra: str = "",
        readonly: str = "yes") -> str:
    return (f"<type arch='{arch}' machine='{machine}'>hvm</type>"
            f"<loader readonly='{readonly}' type='pflash'>{loader}</loader>{extra}")


CASES = {
    # watchdogs: iTCO is on every q35 domain since 9.1; several watchdogs since 9.1
    "hw-watchdog-itco": dict(devices="<watchdog model='itco' action='reset'/>"),
    "hw-watchdog-several": dict(devices="<watchdog model='itco' action='reset'/>"
                                        "<watchdog model='i6300esb' action='poweroff'/>"),
    # ACPI tables: raw/rawset/msdm and several tables (9.x)
    "hw-acpi-raw-tables": dict(os_extra=f"<acpi><table type='raw'>{N}/acpi/raw1.dat</table>"
                                        f"<table type='raw'>{N}/acpi/raw2.dat</table></acpi>"),
    "hw-acpi-rawset": dict(os_extra=f"<acpi><table type='rawset'>{N}/acpi/rawset.dat</table>"
                                    "</acpi>"),
    "hw-acpi-msdm": dict(os_extra=f"<acpi><table type='msdm'>{N}/acpi/msdm.dat</table></acpi>"),
    "hw-acpi-slic-and-msdm": dict(os_extra=f"<acpi><table type='slic'>{N}/acpi/slic.dat</table>"
                                           f"<table type='msdm'>{N}/acpi/msdm.dat</table></acpi>"),
    # new device and backend types
    "hw-disk-vhostvdpa": dict(devices="<disk type='vhostvdpa' device='disk'>"
                                      "<driver name='qemu' type='raw' cache='none'/>"
                                      "<source dev='/dev/vhost-vdpa-0'/>"
                                      "<target dev='vdb' bus='virtio'/></disk>"),
    "hw-filesystem-mtp": dict(devices=f"<filesystem type='mount'><driver type='mtp'/>"
                                      f"<source dir='{N}/share'/><target dir='mtp0'/>"
                                      f"</filesystem>"),
    "hw-net-passt-user": dict(devices="<interface type='user'><mac address='52:54:00:aa:00:01'/>"
                                      "<model type='virtio'/><backend type='passt' "
                                      f"logFile='{N}/passt.log'/></interface>"),
    "hw-net-passt-vhostuser": dict(
        devices="<interface type='vhostuser'><mac address='52:54:00:aa:00:02'/>"
                "<model type='virtio'/><backend type='passt'/></interface>",
        extra="<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"),
    "hw-net-macvtap": dict(devices="<interface type='direct'><mac address='52:54:00:aa:00:03'/>"
                                   "<source dev='eth0' mode='bridge'/><model type='virtio'/>"
                                   "</interface>"),
    # architectures
    "hw-arch-loongarch64": dict(os=efi("/usr/share/qemu-efi-loongarch64/QEMU_EFI.fd",
                                       "loongarch64", "virt"),
                                emulator="/usr/bin/qemu-system-loongarch64"),
    "hw-arch-riscv64": dict(os=efi("/usr/share/qemu-efi-riscv64/RISCV_VIRT_CODE.fd",
                                   "riscv64", "virt"),
                            emulator="/usr/bin/qemu-system-riscv64"),
    # firmware directories allowed read-only since 10.x/11.0
    "hw-loader-usr-share-qemu": dict(os=efi("/usr/share/qemu/edk2-x86_64-code.fd")),
    "hw-loader-usr-share-edk2-ovmf": dict(os=efi("/usr/share/edk2-ovmf/x64/OVMF_CODE.fd")),
    "hw-loader-usr-share-qemu-efi-riscv64": dict(
        os=efi("/usr/share/qemu-efi-riscv64/RISCV_VIRT_CODE.fd", "riscv64", "virt"),
        emulator="/usr/bin/qemu-system-riscv64"),
    "hw-loader-rom-usr-share-qemu": dict(
        os=f"{Q35}<loader type='rom'>/usr/share/qemu/bios-256k.bin</loader>"),
    "hw-loader-pflash-writable": dict(os=efi(f"{N}/fw/code.fd", readonly="no")),
    "hw-loader-shim": dict(os=efi(f"{N}/fw/code.fd",
                                  extra=f"<shim>{N}/fw/shim.efi</shim>")),
    "hw-nvram-varstore": dict(os=f"{Q35}<loader readonly='yes' type='pflash'>{N}/fw/code.fd"
                                 f"</loader><varstore template='{N}/fw/vars.fd' "
                                 f"path='{N}/nvram/varstore.json'/>"),
    # memory devices
    "hw-memory-virtio-pmem": dict(
        devices=f"<memory model='virtio-pmem' access='shared'><source><path>{N}/mem/pmem.img"
                "</path></source><target><size unit='KiB'>524288</size></target></memory>",
        extra="<maxMemory slots='16' unit='KiB'>1099511627776</maxMemory>"),
    "hw-pstore-acpi-erst": dict(
        devices=f"<pstore backend='acpi-erst'><path>{N}/mem/pstore.img</path>"
                "<size unit='KiB'>8</size></pstore>"),
    "hw-sgx-epc": dict(
        devices="<memory model='sgx-epc'><target><size unit='KiB'>65536</size></target></memory>",
        extra="<maxMemory slots='16' unit='KiB'>1130496</maxMemory>"),
    # confidential computing
    "hw-launch-sev": dict(
        os=efi(f"{N}/fw/code.fd"),
        extra="<launchSecurity type='sev'><cbitpos>47</cbitpos>"
              "<reducedPhysBits>1</reducedPhysBits><policy>0x0003</policy></launchSecurity>"),
    "hw-launch-sev-snp": dict(
        os=f"{Q35}<loader type='rom' stateless='yes'>{N}/fw/code.fd</loader>",
        extra="<launchSecurity type='sev-snp'><cbitpos>47</cbitpos>"
              "<reducedPhysBits>1</reducedPhysBits><policy>0x00030000</policy>"
              "</launchSecurity>"),
    "hw-launch-tdx": dict(
        os=f"{Q35}<loader type='rom' stateless='yes'>{N}/fw/code.fd</loader>",
        extra="<launchSecurity type='tdx'><policy>0x10000001</policy>"
              "<quoteGenerationService><SocketAddress type='unix' "
              "path='/var/run/tdx-qgs/qgs.socket'/></quoteGenerationService></launchSecurity>"),
    # images: qcow2 external data files along a chain; read-only media and backing
    "hw-disk-qcow2-datafile-chain": dict(
        disk=f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
             f"<source file='{N}/chain/top.qcow2'/><target dev='vda' bus='virtio'/></disk>"),
    "hw-disk-readonly": dict(devices=f"<disk type='file' device='disk'><driver name='qemu' "
                                     f"type='raw'/><source file='{N}/images/readonly.raw'/>"
                                     f"<target dev='vdb' bus='virtio'/><readonly/></disk>"),
    "hw-cdrom-readonly": dict(devices=f"<disk type='file' device='cdrom'><driver name='qemu' "
                                      f"type='raw'/><source file='{N}/images/cdrom.iso'/>"
                                      f"<target dev='sda' bus='sata'/><readonly/></disk>"),
    "hw-cdrom-block-without-readonly": dict(
        devices="<disk type='block' device='cdrom'><driver name='qemu' type='raw'/>"
                "<source dev='/dev/HostVG/cdrom'/><target dev='sdb' bus='sata'/></disk>"),
    "hw-disk-readonly-backing-chain": dict(
        devices=f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                f"<source file='{N}/chain/ro-overlay.qcow2'/><target dev='vdb' bus='virtio'/>"
                f"</disk>"),
    # IOMMUFD (12.1)
    "hw-hostdev-iommufd": dict(
        devices="<hostdev mode='subsystem' type='pci' managed='yes'>"
                "<driver name='vfio' iommufd='yes'/><source><address domain='0x0000' "
                "bus='0x00' slot='0x01' function='0x0'/></source></hostdev>",
    ),
    "hw-iommu-intel": dict(devices="<iommu model='intel'><driver intremap='on' caching_mode='on'/>"
                                   "</iommu>",
                           extra="<features><ioapic driver='qemu'/></features>"),
    "hw-crypto-builtin": dict(devices="<crypto model='virtio' type='qemu'>"
                                      "<backend model='builtin' queues='1'/></crypto>"),
    "hw-iothread-pool": dict(extra="<iothreads>2</iothreads><defaultiothread thread_pool_min='1'"
                                   " thread_pool_max='4'/>"),
    # helper modes with the new device paths
    "hw-mode-add-dev-iommu": dict(args=["-d", "-r", "-u", "{profile}", "-f", "/dev/iommu"]),
    "hw-mode-append-vfio-device": dict(args=["-d", "-r", "-u", "{profile}", "-F",
                                             "/dev/vfio/devices/vfio0"]),
    "hw-mode-append-iommu": dict(args=["-d", "-r", "-u", "{profile}", "-F", "/dev/iommu"]),
    "hw-mode-append-twice": dict(args=["-d", "-r", "-u", "{profile}", "-F",
                                       f"{N}/images/readonly.raw"]),
}


def domain(name: str, spec: dict) -> str:
    u = uuid.uuid5(uuid.NAMESPACE_URL, "virt-aa-newer/" + name)
    os_xml = spec.get("os", Q35) + spec.get("os_extra", "")
    emulator = spec.get("emulator", "/usr/bin/qemu-system-x86_64")
    devices = spec.get("disk", DISK) + spec.get("devices", "")
    return (f"<domain type='kvm'>\n  <name>{name}</name>\n  <uuid>{u}</uuid>\n"
            f"  <memory unit='KiB'>1048576</memory>\n  {spec.get('extra', '')}\n"
            f"  <os>{os_xml}</os>\n  <devices>\n    <emulator>{emulator}</emulator>\n"
            f"    {devices}\n  </devices>\n</domain>\n")


def main() -> None:
    cases = {}
    for name, spec in CASES.items():
        with open(os.path.join(HERE, name + ".xml"), "w") as f:
            f.write(domain(name, spec))
        if "args" in spec:
            cases[name + ".xml"] = {"args": spec["args"]}
    with open(os.path.join(HERE, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(CASES)} domains")


if __name__ == "__main__":
    main()
