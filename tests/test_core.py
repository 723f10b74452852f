"""The pure core: no I/O, host facts injected; device cases the corpus host lacks."""

from __future__ import annotations

import ast
import builtins
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import domain_xml
from virt_aa.generate.accesses import GenerationError, fixed_rules, generate
from virt_aa.generate.domain import Hostdev, parse_domain
from virt_aa.generate.profile import create_profile, render_rules

SRC = Path(__file__).resolve().parents[1] / "src" / "virt_aa" / "generate"
CORE = ["xmlsafe.py", "model.py", "domain.py", "identity.py", "versions.py", "paths.py",
        "accesses.py", "profile.py"]
FORBIDDEN = {"os", "subprocess", "socket", "shutil", "pathlib", "tempfile", "io", "libvirt"}


@pytest.mark.parametrize("module", CORE)
def test_core_modules_import_no_io(module: str) -> None:
    tree = ast.parse((SRC / module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names = {(node.module or "").split(".")[0]} if node.level == 0 else set()
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "open", f"{module} calls open()"
            continue
        else:
            continue
        assert not names & FORBIDDEN, f"{module} imports {names & FORBIDDEN}"


class FakeHost:
    """A host described by data: files, symlinks, sysfs, devices."""

    def __init__(self, files: dict[str, bytes] | None = None,
                 links: dict[str, str] | None = None,
                 pci: dict[str, list[str]] | None = None,
                 usb: list[tuple[int, int, int, int]] | None = None,
                 render: str | None = None) -> None:
        self.files = files or {}
        self.links = links or {}
        self.pci = pci or {}
        self.usb = usb or []
        self.render = render

    def exists(self, path: str) -> bool:
        path = self.realpath(path)
        return path == "/" or any(f == path or f.startswith(path + "/") for f in self.files)

    def realpath(self, path: str) -> str:
        for src, dst in self.links.items():
            if path == src or path.startswith(src + "/"):
                return dst + path[len(src):]
        return path

    def read_header(self, path: str) -> bytes | None:
        return self.files.get(self.realpath(path))

    def pci_files(self, address: str) -> list[str] | None:
        names = self.pci.get(address)
        return None if names is None else [f"/sys/bus/pci/devices/{address}/{n}" for n in names]

    def usb_files(self, hostdev: Hostdev) -> list[str] | None:
        for vendor, product, bus, dev in self.usb:
            if (hostdev.usb_vendor, hostdev.usb_product) == (vendor, product) or \
                    (hostdev.usb_bus, hostdev.usb_device) == (bus, dev):
                return [f"/dev/bus/usb/{bus:03d}/{dev:03d}"]
        return None

    def render_node(self) -> str | None:
        return self.render


@contextlib.contextmanager
def no_io() -> Iterator[list[str]]:
    """Record (and refuse) any filesystem access made inside the block."""
    touched: list[str] = []
    saved = []

    def boom(*a: object, **_k: object) -> None:
        touched.append(repr(a[:1]))
        raise PermissionError("the core touched the filesystem")

    targets = [(os, n) for n in ("stat", "lstat", "open", "listdir", "scandir", "readlink",
                                 "access")]
    targets += [(builtins, "open"), (os.path, "exists"), (os.path, "realpath")]
    for mod, name in targets:
        saved.append((mod, name, getattr(mod, name)))
        setattr(mod, name, boom)
    try:
        yield touched
    finally:
        for mod, name, orig in saved:
            setattr(mod, name, orig)


def rules_for(devices: str, host: FakeHost, **kw: str) -> list[tuple[str, str, str]]:
    dom = parse_domain(domain_xml(devices, **kw))
    with no_io() as touched:
        rules = generate(dom, host).rules
    assert not touched, touched
    return [(r.path, r.perms, r.origin) for r in rules]


def test_generation_does_no_io() -> None:
    host = FakeHost(files={"/srv/vm/a.img": b"\0" * 512, "/srv/vm/serial.log": b""},
                    links={"/srv/link": "/srv/vm"})
    rules = rules_for(
        "<disk type='file'><driver type='raw'/><source file='/srv/link/a.img'/>"
        "<target dev='vda'/></disk>"
        "<serial type='file'><source path='/srv/vm/serial.log'/></serial>", host)
    assert rules == [("/srv/vm/a.img", "rwk", "disk vda"),
                     ("/srv/vm/serial.log", "rw", "serial 0")]


def test_usb_pci_mdev_and_render_node_from_host_facts() -> None:
    sysdev = "/sys/devices/pci0000:00/0000:00:19.0"
    host = FakeHost(files={f"{sysdev}/vendor": b"", f"{sysdev}/config": b""},
                    pci={"0000:00:19.0": ["vendor", "config"]},
                    usb=[(0x046D, 0xC077, 2, 4)], render="/dev/dri/renderD128",
                    links={"/sys/bus/pci/devices/0000:00:19.0":
                           "/sys/devices/pci0000:00/0000:00:19.0"})
    rules = rules_for(
        "<hostdev mode='subsystem' type='usb'><source><vendor id='0x046d'/>"
        "<product id='0xc077'/></source></hostdev>"
        "<hostdev mode='subsystem' type='usb'><source><address bus='9' device='9'/>"
        "</source></hostdev>"
        "<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='0' "
        "slot='0x19' function='0'/></source></hostdev>"
        "<graphics type='egl-headless'/>", host)
    paths = [(p, perms) for p, perms, _ in rules]
    assert paths[:4] == [("/dev/dri/renderD128", "rw"), ("/dev/bus/usb/002/004", "rw"),
                         ("/sys/devices/pci0000:00/0000:00:19.0/vendor", "rw"),
                         ("/sys/devices/pci0000:00/0000:00:19.0/config", "rw")]
    assert ("/dev/vfio/vfio", "rw") in paths and ("/dev/vfio/[0-9]*", "rw") in paths
    assert ("/usr/lib/@{multiarch}/dri/*.so*", "mr") in paths


def test_restricted_render_node_is_reported_not_fatal() -> None:
    dom = parse_domain(domain_xml(
        "<graphics type='spice'><gl enable='yes' rendernode='/etc/shadow'/></graphics>"))
    gen = generate(dom, FakeHost())
    assert not any(r.path == "/etc/shadow" for r in gen.rules)
    assert any("skipped restricted file" in w for w in gen.warnings)


def test_sdl_without_xauth_fails() -> None:
    dom = parse_domain(domain_xml("<graphics type='sdl' display=':0'/>"))
    with pytest.raises(GenerationError):
        generate(dom, FakeHost())


def test_explicit_backing_store_is_used_without_reading_images() -> None:
    rules = rules_for(
        "<disk type='file'><driver type='qcow2'/><source file='/srv/top.qcow2'/>"
        "<backingStore type='file'><format type='qcow2'/><source file='/srv/mid.qcow2'/>"
        "<backingStore type='block'><format type='raw'/><source dev='/dev/sdz'/>"
        "<backingStore/></backingStore></backingStore><target dev='vda'/></disk>",
        FakeHost())
    assert [(p, perms) for p, perms, _ in rules] == [
        ("/srv/top.qcow2", "rwk"), ("/srv/mid.qcow2", "rk"), ("/dev/sdz", "rk")]


def test_fixed_rules_use_id_and_20_byte_name() -> None:
    dom = parse_domain(domain_xml(name="a-very-long-domain-name-indeed")
                       .replace(b"<domain type='kvm'>", b"<domain type='kvm' id='7'>"))
    rules = fixed_rules(dom)
    assert rules[2].path == "/var/lib/libvirt/qemu/domain-7-a-very-long-domain-n/*"


def test_vhost_net_only_for_kvm_virtio_or_no_model() -> None:
    def vhost(virt: str, iface: str) -> bool:
        dom = parse_domain(domain_xml(iface, virt=virt))
        return any(r.path == "/dev/vhost-net" for r in generate(dom, FakeHost()).rules)

    assert vhost("kvm", "<interface type='network'><source network='default'/></interface>")
    assert vhost("kvm", "<interface type='user'><model type='virtio'/></interface>")
    assert not vhost("kvm", "<interface type='user'><model type='e1000'/></interface>")
    assert not vhost("kvm", "<interface type='user'><model type='virtio'/>"
                            "<driver name='qemu'/></interface>")
    assert not vhost("qemu", "<interface type='user'><model type='virtio'/></interface>")


def test_render_rules_format() -> None:
    dom = parse_domain(domain_xml(
        "<disk type='file' device='cdrom'><driver type='raw'/><source file='/srv/x.iso'/>"
        "<readonly/><target dev='sda'/></disk>"
        "<filesystem type='mount'><source dir='/srv/share/'/><target dir='s'/></filesystem>"))
    text = render_rules(generate(dom, FakeHost()).rules)
    assert text == ('  "/srv/x.iso" rk,\n'
                    "  # don't audit writes to readonly files\n"
                    '  deny "/srv/x.iso" w,\n'
                    '  "/srv/share/**" rwl,\n'
                    '  "/srv/share/" r,\n')


def test_create_profile_inserts_includes_once() -> None:
    tmpl = "#\nprofile LIBVIRT_TEMPLATE flags=(attach_disconnected) {\n  #include <x>\n}\n"
    out = create_profile(tmpl, "libvirt-u", "  include if exists <libvirt/libvirt-u.files>\n")
    assert out == ("#\nprofile libvirt-u flags=(attach_disconnected) {\n  #include <x>\n"
                   "  include if exists <libvirt/libvirt-u.files>\n\n}\n")
