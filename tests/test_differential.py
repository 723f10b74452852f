"""Random domains, our helper against libvirt's real one, rule for rule.

The corpus pins 140 hand-picked cases; this draws a few hundred more from
the same building blocks in random combinations (fixed seed), so that the
interplay of devices (order, console aliasing, vhost-net, vfio, GL) is
compared with the oracle too.  Only inputs where no deliberate difference
applies are drawn (no glob characters, no TPM without a version).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from conftest import rules_of, run_helper

C = "/tmp/virt-aa-corpus"
DISKS = [
    f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
    f"<source file='{C}/chain/top.qcow2'/><target dev='vd{{n}}' bus='virtio'/></disk>",
    f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
    f"<source file='{C}/deep/l9.qcow2'/><target dev='vd{{n}}' bus='virtio'/></disk>",
    f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
    f"<source file='{C}/links/overlay.qcow2'/><target dev='vd{{n}}' bus='virtio'/><readonly/>"
    f"</disk>",
    f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
    f"<source file='{C}/images/disk-b.raw'/><target dev='vd{{n}}' bus='virtio'/></disk>",
    f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
    f"<source file='{C}/images/install.iso'/><target dev='sd{{n}}' bus='sata'/><readonly/>"
    f"</disk>",
    "<disk type='file' device='cdrom'><target dev='sd{n}' bus='sata'/><readonly/></disk>",
    "<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
    "<source dev='/dev/vda'/><target dev='vd{n}' bus='virtio'/></disk>",
    "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
    "<source protocol='nbd' name='x'><host name='127.0.0.1' port='10809'/></source>"
    "<target dev='vd{n}' bus='virtio'/></disk>",
    f"<disk type='dir' device='disk'><driver name='qemu' type='fat'/>"
    f"<source dir='{C}/share/ro'/><target dev='hd{{n}}' bus='ide'/><readonly/></disk>",
    f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
    f"<source file='{C}/broken/top.qcow2'/><target dev='vd{{n}}' bus='virtio'/></disk>",
    "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
    "<source file='/var/lib/libvirt/images/rnd-{n}.qcow2'/><target dev='vd{n}' bus='virtio'/>"
    "</disk>",
]
CHARDEV_SOURCES = {
    "file": f"<source path='{C}/chardev/serial0.log'/>",
    "pipe": f"<source path='{C}/chardev/serial.pipe'/>",
    "unix": f"<source mode='bind' path='{C}/sockets/s{{n}}.sock'/>",
    "pty": "",
    "dev": "<source path='/dev/ttyS0'/>",
    "tcp": "<source mode='bind' host='127.0.0.1' service='4555'/><protocol type='raw'/>",
    "null": "",
}
OTHERS = [
    f"<filesystem type='mount' accessmode='passthrough'><source dir='{C}/share/rw'/>"
    f"<target dir='rw{{n}}'/></filesystem>",
    f"<filesystem type='mount' accessmode='mapped'><source dir='{C}/share/ro'/>"
    f"<target dir='ro{{n}}'/><readonly/></filesystem>",
    "<filesystem type='mount'><driver type='virtiofs'/><source dir='/srv/x'/>"
    "<target dir='vf{n}'/></filesystem>",
    "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' "
    "bus='0x00' slot='0x01' function='0x0'/></source></hostdev>",
    "<hostdev mode='subsystem' type='pci' managed='yes'><driver name='kvm'/><source><address "
    "domain='0x0000' bus='0x00' slot='0x02' function='0x0'/></source></hostdev>",
    "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' "
    "bus='0x3f' slot='0x1f' function='0x7'/></source></hostdev>",
    "<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address "
    "uuid='c2177883-f1bb-47f0-914d-32a22e3a8804'/></source></hostdev>",
    "<input type='evdev'><source dev='/dev/input/event{n}'/></input>",
    "<interface type='network'><source network='default'/><model type='virtio'/></interface>",
    "<interface type='network'><source network='default'/><model type='e1000'/></interface>",
    "<interface type='network'><source network='default'/></interface>",
    "<interface type='user'><model type='virtio'/><driver name='qemu'/></interface>",
    "<interface type='vhostuser'><source type='unix' path='/run/vhu{n}.sock' mode='client'/>"
    "<model type='virtio'/></interface>",
    "<graphics type='vnc' socket='/var/lib/libvirt/qemu/vnc{n}.sock'/>",
    "<graphics type='spice'><listen type='socket' socket='/run/spice{n}.sock'/>"
    "<gl enable='yes'/></graphics>",
    "<graphics type='egl-headless'><gl rendernode='/dev/dri/renderD12{n}'/></graphics>",
    f"<memory model='nvdimm'><source><path>{C}/mem/nvdimm0.img</path></source>"
    f"<target><size unit='KiB'>524288</size><node>0</node></target></memory>",
    "<shmem name='shm{n}'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>",
    "<shmem name='bell{n}'><model type='ivshmem-doorbell'/><server path='/run/iv{n}.sock'/>"
    "</shmem>",
    "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>",
    "<tpm model='tpm-tis'><backend type='emulator' version='1.2'/></tpm>",
    "<smartcard mode='host'/>",
    "<smartcard mode='passthrough' type='spicevmc'/>",
    "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>",
    "<watchdog model='i6300esb' action='reset'/>",
]
OS_EXTRAS = [
    f"<kernel>{C}/boot/vmlinuz-test</kernel><initrd>{C}/boot/initrd-test.img</initrd>",
    f"<loader readonly='yes' type='pflash'>{C}/firmware/OVMF_CODE.fd</loader>"
    f"<nvram>{C}/nvram/existing_VARS.fd</nvram>",
    f"<dtb>{C}/boot/board.dtb</dtb>",
    "",
]


def random_domain(rng: random.Random, i: int) -> tuple[bytes, str]:
    uuid = f"{rng.getrandbits(32):08x}-0000-4000-8000-{i:012x}"
    parts = []
    for n in range(rng.randint(0, 4)):
        parts.append(rng.choice(DISKS).format(n=chr(ord("a") + n)))
    for kind in ("serial", "console", "parallel", "channel"):
        for n in range(rng.choice((0, 0, 1, 2))):
            ctype = rng.choice(list(CHARDEV_SOURCES))
            target = ""
            if kind == "console":
                target = rng.choice(["", "<target type='serial'/>", "<target type='virtio'/>"])
                if n > 0 and target != "<target type='virtio'/>":
                    target = "<target type='virtio'/>"
            elif kind == "channel":
                target = f"<target type='virtio' name='org.example.{n}'/>"
            parts.append(f"<{kind} type='{ctype}'>{CHARDEV_SOURCES[ctype].format(n=n)}"
                         f"{target}</{kind}>")
    for n in range(rng.randint(0, 5)):
        parts.append(rng.choice(OTHERS).format(n=n))
    virt = rng.choice(["kvm", "kvm", "qemu"])
    machine = "q35" if "pflash" in (extra := rng.choice(OS_EXTRAS)) else "pc"
    dom_id = rng.choice(["", " id='5'"])
    xml = (f"<domain type='{virt}'{dom_id}><name>rnd-{i}-{rng.randint(0, 10**9)}</name>"
           f"<uuid>{uuid}</uuid><memory>1048576</memory>"
           f"<os><type arch='x86_64' machine='{machine}'>hvm</type>{extra}</os>"
           f"<devices>{''.join(parts)}</devices></domain>")
    return xml.encode(), "libvirt-" + uuid


N = 250


@pytest.mark.slow
def test_random_domains_match_the_real_helper(corpus_images: Path) -> None:
    rng = random.Random(20261125)
    compared = refused = 0
    for i in range(N):
        xml, profile = random_domain(rng, i)
        args = ["-d", "-r", "-u", profile]
        stock = run_helper(args, xml, stock=True)
        ours = run_helper(args, xml)
        assert b"Traceback" not in ours.stderr
        assert ours.returncode == stock.returncode, (xml, stock.stderr, ours.stderr)
        if stock.returncode:
            refused += 1
            continue
        assert rules_of(ours.stderr) == rules_of(stock.stderr), xml  # same order too
        compared += 1
    print(f"{compared} random domains with identical rules in identical order, "
          f"{refused} refused by both")
    assert compared > N * 0.6
