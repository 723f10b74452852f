"""Escaping, canonicalisation and the restricted check (DESIGN §5)."""

from __future__ import annotations

import pytest

from aadfa import dfa, literal_match
from virt_aa.generate.paths import canonical, escape, has_control, normalize, restricted

HOSTILE = [
    "/var/lib/libvirt/images/*",
    "/var/lib/libvirt/images/**",
    "/srv/vm/disk?.img",
    "/srv/vm/[ab].img",
    "/srv/{vm,etc}/x.img",
    "/srv/vm/a,b.img",
    "/srv/@{HOME}/x.img",
    "/srv/vm/^x",
    '/srv/vm/quote"d',
    "/srv/vm/back\\slash",
    "/srv/vm/trailing\\",
    "/srv/vm/with space/and'apostrophe#hash$dollar!",
    "/srv/vm/Büro (test)",
]


@pytest.mark.parametrize("path", HOSTILE)
def test_escaped_rule_matches_exactly_the_literal_path(path: str) -> None:
    """The real parser's DFA for the escaped rule accepts this path and nothing else."""
    assert literal_match(escape(path), path.encode())


def test_unescaped_glob_would_widen_the_rule() -> None:
    """Why escaping matters: stock's verbatim path is a glob to AppArmor."""
    assert not literal_match("/var/lib/libvirt/images/*", b"/var/lib/libvirt/images/*")
    trans, _ = dfa("/var/lib/libvirt/images/*")
    assert any("0x" not in label for out in trans.values() for label, _ in out)


def test_escape_leaves_plain_paths_alone() -> None:
    assert escape("/var/lib/libvirt/images/vm-1.qcow2") == "/var/lib/libvirt/images/vm-1.qcow2"


@pytest.mark.parametrize("path", ["/a\nb", "/a\tb", "/a\x00b", "/a\x7fb", "/a\rb"])
def test_control_characters_detected(path: str) -> None:
    assert has_control(path)


def test_normalize() -> None:
    assert normalize("/a/./b//c/../d/") == "/a/b/d"
    assert normalize("/../../etc/shadow") == "/etc/shadow"
    assert normalize("/") == "/"


def _fs(existing: set[str], links: dict[str, str]):  # type: ignore[no-untyped-def]
    def exists(p: str) -> bool:
        return p in existing or p == "/"

    def realpath(p: str) -> str:
        for src, dst in links.items():
            if p == src or p.startswith(src + "/"):
                return dst + p[len(src):]
        return p

    return exists, realpath


def test_canonical_resolves_existing_prefix_and_folds_the_rest() -> None:
    exists, realpath = _fs({"/tmp", "/tmp/link"}, {"/tmp/link": "/etc"})
    assert canonical("/tmp/link/shadow", exists, realpath) == ("/etc/shadow", False)
    # stock keeps "/tmp/nonexist/../../etc/shadow" verbatim; we fold it
    assert canonical("/tmp/nonexist/../../etc/shadow", exists, realpath)[0] == "/etc/shadow"
    assert canonical("/nothing/here/../x", exists, realpath)[0] == "/nothing/x"


@pytest.mark.parametrize("path,readonly,recursive,refused", [
    ("/etc/passwd", True, False, True),
    ("/etc", True, True, True),             # stock misses /etc itself
    ("/etc", True, False, True),
    ("/root/.ssh/id_rsa", True, False, True),   # addition
    ("/root", False, True, True),
    ("/rootfs/disk.img", False, False, False),  # component-wise, not a prefix
    ("/dev/mem", False, False, True),
    ("/dev/kmem", True, False, True),
    ("/dev/port", False, False, True),
    ("/dev/kmsg", True, False, True),
    ("/proc/self/mem", True, False, True),
    ("/sys/kernel/security", True, False, True),
    ("/sys/devices/pci0000:00/0000:00:01.0/config", False, False, False),  # override
    ("/boot/vmlinuz", True, False, False),
    ("/boot/vmlinuz", False, False, True),
    ("/usr/share/OVMF/OVMF_CODE.fd", True, False, False),
    ("/usr/share/qemu/bios.bin", True, False, True),
    ("/usr/libexec/x", True, False, True),      # stock's prefix quirk kept
    ("/", True, True, True),                    # a share of / exposes /etc
    ("/usr", True, True, True),
    ("/dev", False, True, True),
    ("/var/lib/libvirt/images/vm.qcow2", False, False, False),
    ("/srv/share", False, True, False),
    ("/boot", True, True, False),
    ("/tmp", False, True, False),
])
def test_restricted(path: str, readonly: bool, recursive: bool, refused: bool) -> None:
    assert restricted(path, readonly, recursive) is refused
