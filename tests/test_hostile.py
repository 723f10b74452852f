"""Hostile inputs (DESIGN §5): each is refused with a clear error and exit 1
and nothing written, or gives a rule for exactly the literal path."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from aadfa import literal_match
from conftest import PROFILE, domain_xml, rules_of, run_helper

DRY = ["-d", "-r", "-u", PROFILE]


def disk(path: str, fmt: str = "raw", readonly: bool = False) -> str:
    ro = "<readonly/>" if readonly else ""
    return (f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
            f"<source file='{path}'/><target dev='vda' bus='virtio'/>{ro}</disk>")


def xml_attr(text: str) -> str:
    return (text.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;")
            .replace("\n", "&#10;").replace("\t", "&#9;").replace("\r", "&#13;"))


def refused(xml: bytes, sandbox: Path, args: list[str] | None = None) -> str:
    """Run dry and -c into the sandbox; both must fail cleanly, writing nothing."""
    dry = run_helper(args or DRY, xml)
    assert dry.returncode == 1, dry.stderr
    before = sorted(os.listdir(sandbox / "etc/apparmor.d/libvirt"))
    real = run_helper(["-c", "-u", PROFILE] + (args or DRY)[4:], xml, root=str(sandbox))
    assert real.returncode == 1, real.stderr
    assert sorted(os.listdir(sandbox / "etc/apparmor.d/libvirt")) == before
    for proc in (dry, real):
        err = proc.stderr.decode("utf-8", "replace")
        assert "Traceback" not in err
        assert "error:" in err
        assert "virt-aa-helper:\n" not in err  # no rules block printed
    return dry.stderr.decode("utf-8", "replace")


def literal_rule(xml: bytes, literal: str, perms: str = "rwk",
                 args: list[str] | None = None) -> None:
    proc = run_helper(args or DRY, xml)
    assert proc.returncode == 0, proc.stderr
    assert b"Traceback" not in proc.stderr
    rules = rules_of(proc.stderr)
    wanted = [r for r in rules if r.endswith(f" {perms},") and not r.startswith("deny")]
    matching = [r for r in wanted
                if literal_match(r[1:r.rindex('"')], literal.encode("utf-8",
                                                                    "surrogateescape"))]
    assert matching, (literal, rules)


@pytest.mark.parametrize("name", ["*", "**", "{a,b}", "a,b", "@{HOME}", "a?b", "[ab]",
                                  "^x", "back\\slash", "sp ace"])
def test_pattern_characters_give_a_literal_rule(tmp_path: Path, name: str) -> None:
    path = f"{tmp_path}/{name}"
    literal_rule(domain_xml(disk(xml_attr(path))), path)


def test_glob_disk_does_not_grant_the_directory(tmp_path: Path) -> None:
    (tmp_path / "other-vm.qcow2").write_bytes(b"")
    proc = run_helper(DRY, domain_xml(disk(f"{tmp_path}/*")))
    rules = rules_of(proc.stderr)
    glob_rule = [r for r in rules if r.startswith(f'"{tmp_path}/')][0]
    path = glob_rule[1:glob_rule.rindex('"')]
    assert not literal_match(path, f"{tmp_path}/other-vm.qcow2".encode())
    assert literal_match(path, f"{tmp_path}/*".encode())


@pytest.mark.parametrize("bad", ['/srv/a"b', "/srv/a\nb", "/srv/a\tb", "/srv/\rx"])
def test_quotes_and_control_characters_refused(sandbox: Path, bad: str) -> None:
    err = refused(domain_xml(disk(xml_attr(bad))), sandbox)
    assert "skipped restricted file" in err or "control character" in err


def test_nul_in_xml_refused(sandbox: Path) -> None:
    refused(domain_xml(disk("/srv/a\x00b")), sandbox)
    refused(domain_xml(disk("/srv/a&#0;b")), sandbox)


def test_dotdot_into_etc_refused(sandbox: Path) -> None:
    err = refused(domain_xml(disk("/var/lib/libvirt/images/../../../../etc/shadow")), sandbox)
    assert "skipped restricted file" in err
    err = refused(domain_xml(disk("/tmp/no-such-dir/../../etc/shadow")), sandbox)
    assert "skipped restricted file" in err


def test_symlinks_into_restricted_places_refused(tmp_path: Path, sandbox: Path) -> None:
    (tmp_path / "shadow-link").symlink_to("/etc/shadow")
    (tmp_path / "root-dir").symlink_to("/root")
    refused(domain_xml(disk(f"{tmp_path}/shadow-link")), sandbox)
    refused(domain_xml(disk(f"{tmp_path}/root-dir/new.img")), sandbox)
    share = (f"<filesystem type='mount'><source dir='{tmp_path}/root-dir'/>"
             f"<target dir='x'/><readonly/></filesystem>")
    refused(domain_xml(share), sandbox)


@pytest.mark.parametrize("path", ["/root/vm.img", "/dev/mem", "/dev/kmsg", "/proc/kcore",
                                  "/sys/kernel/notes", "/etc/libvirt/qemu.conf"])
def test_additional_restricted_paths(sandbox: Path, path: str) -> None:
    refused(domain_xml(disk(path, readonly=True)), sandbox)


def test_readonly_share_of_etc_itself_refused(sandbox: Path) -> None:
    share = "<filesystem type='mount'><source dir='/etc'/><target dir='x'/><readonly/></filesystem>"
    refused(domain_xml(share), sandbox)


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def test_backing_chain_loop_refused(tmp_path: Path, sandbox: Path) -> None:
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    _qemu_img("create", "-f", "qcow2", str(a), "1M")
    _qemu_img("create", "-f", "qcow2", "-u", "-b", str(a), "-F", "qcow2", str(b), "1M")
    _qemu_img("rebase", "-u", "-f", "qcow2", "-b", str(b), "-F", "qcow2", str(a))
    err = refused(domain_xml(disk(str(a), "qcow2")), sandbox)
    assert "loop" in err


def test_very_deep_backing_chain_refused(tmp_path: Path, sandbox: Path) -> None:
    prev = tmp_path / "l0.qcow2"
    _qemu_img("create", "-f", "qcow2", str(prev), "1M")
    for i in range(1, 80):
        cur = tmp_path / f"l{i}.qcow2"
        _qemu_img("create", "-f", "qcow2", "-u", "-b", prev.name, "-F", "qcow2", str(cur), "1M")
        prev = cur
    err = refused(domain_xml(disk(str(prev), "qcow2")), sandbox)
    assert "deep" in err or "depth" in err


def test_guest_written_backing_name_validated(tmp_path: Path, sandbox: Path) -> None:
    top = tmp_path / "top.qcow2"
    _qemu_img("create", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", str(top), "1M")
    err = refused(domain_xml(disk(str(top), "qcow2")), sandbox)
    assert "/etc/shadow" in err
    glob = tmp_path / "glob.qcow2"
    (tmp_path / "base*").write_bytes(b"\0" * 512)
    _qemu_img("create", "-f", "qcow2", "-u", "-b", f"{tmp_path}/base*", "-F", "raw", str(glob),
              "1M")
    literal_rule(domain_xml(disk(str(glob), "qcow2")), f"{tmp_path}/base*", perms="rk")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<domain type='kvm'><name>&lol3;</name><uuid>11111111-2222-3333-4444-555555555555</uuid>
<os><type>hvm</type></os></domain>"""
XXE = b"""<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<domain type='kvm'><name>&x;</name><uuid>11111111-2222-3333-4444-555555555555</uuid>
<os><type>hvm</type></os></domain>"""


@pytest.mark.parametrize("xml", [BILLION_LAUGHS, XXE], ids=["entities", "external"])
def test_entities_and_dtds_refused(sandbox: Path, xml: bytes) -> None:
    err = refused(xml, sandbox)
    assert "not allowed" in err


def test_huge_xml_refused(sandbox: Path) -> None:
    filler = b"<!--" + b"x" * (10 * 1024 * 1024) + b"-->"
    err = refused(domain_xml(extra=filler.decode()), sandbox)
    assert "10 MiB" in err


def test_deep_nesting_refused(sandbox: Path) -> None:
    nested = "<backingStore type='file'><format type='raw'/><source file='/srv/x'/>" * 300
    nested += "</backingStore>" * 300
    xml = domain_xml(f"<disk type='file'><driver type='qcow2'/><source file='/srv/t'/>"
                     f"{nested}<target dev='vda'/></disk>")
    assert b"Traceback" not in run_helper(DRY, xml).stderr
    refused(xml, sandbox)


def test_two_thousand_disks(tmp_path: Path) -> None:
    disks = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        f"<source file='{tmp_path}/d{i}.img'/><target dev='vd{i}' bus='virtio'/>"
        f"<address type='drive' controller='0' bus='0' target='0' unit='{i}'/></disk>"
        for i in range(2000))
    start = time.perf_counter()
    proc = run_helper(DRY, domain_xml(disks))
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0
    assert len(rules_of(proc.stderr)) == 2005
    assert elapsed < 5, elapsed


@pytest.mark.parametrize("uuid_arg", [
    "libvirt-11111111-2222-3333-4444-55555555555",     # too short
    "libvirt-11111111-2222-3333-4444-5555555555555",   # too long
    "libvirt-11111111-2222-3333-4444-55555555555g",    # bad digit
    "libvirt-1111111-12222-3333-4444-555555555555",    # dashes misplaced
    "lib-virt-1111111-2222-3333-4444-555555555555",
    "libvirt-11111111-2222-3333-4444-555555555555/../../x",
    "",
])
def test_bad_profile_names_refused(uuid_arg: str, sandbox: Path) -> None:
    proc = run_helper(["-d", "-r", "-u", uuid_arg], domain_xml())
    assert proc.returncode == 1
    assert b"invalid UUID" in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_uuid_mismatch_and_malformed_xml_uuid(sandbox: Path) -> None:
    err = refused(domain_xml(uuid="11111111-2222-3333-4444-000000000000"), sandbox)
    assert "does not match" in err
    refused(domain_xml(uuid="not-a-uuid"), sandbox)
    refused(domain_xml(uuid="11111111-2222-3333-4444-5555555555550"), sandbox)


@pytest.mark.parametrize("name", ["a/b", "a*", "a{b}", "a[0]", "a?", "a^b", "a,b", 'a"b',
                                  "a&#10;b", "a&#9;b", "a&#27;b"])
def test_bad_domain_names_refused(name: str, sandbox: Path) -> None:
    err = refused(domain_xml(name=name), sandbox)
    assert "bad name" in err or "could not get VM definition" in err


def test_name_with_at_and_backslash_is_escaped_in_fixed_rules() -> None:
    proc = run_helper(DRY, domain_xml(name="vm@x\\y"))
    assert proc.returncode == 0
    rules = rules_of(proc.stderr)
    log = [r for r in rules if r.startswith('"/var/log/libvirt/')][0]
    assert "\\@" in log and "\\\\" in log


def test_shmem_name_traversal_refused_and_globs_escaped(sandbox: Path) -> None:
    shm = "<shmem name='../../etc/x'><model type='ivshmem-plain'/></shmem>"
    refused(domain_xml(shm), sandbox)
    literal_rule(domain_xml("<shmem name='a*b'><model type='ivshmem-plain'/></shmem>"),
                 "/dev/shm/a*b", perms="rw")


def test_smartcard_database_checked_and_escaped(tmp_path: Path, sandbox: Path) -> None:
    sc = "<smartcard mode='host-certificates'><certificate>a</certificate>" \
         "<certificate>b</certificate><certificate>c</certificate>" \
         "<database>{db}</database></smartcard>"
    refused(domain_xml(sc.format(db="/etc/ssl/private")), sandbox)
    refused(domain_xml(sc.format(db="/root/nssdb")), sandbox)
    db = f"{tmp_path}/db,*"
    proc = run_helper(DRY, domain_xml(sc.format(db=db)))
    assert proc.returncode == 0
    rule = [r for r in rules_of(proc.stderr) if "db" in r][0]
    assert rule == f'"{tmp_path}/db\\,\\*/{{,*}}" rk,'


@pytest.mark.parametrize("db", ["/", "//", "/.", "/usr", "/var/.."])
def test_smartcard_database_reaching_restricted_files_refused(sandbox: Path, db: str) -> None:
    """Stock writes `"/{,*}" rk,` for a database of `/`: every file directly in /."""
    sc = f"<smartcard mode='host-certificates'><database>{db}</database></smartcard>"
    err = refused(domain_xml(sc), sandbox)
    assert "skipped restricted file" in err


def test_devices_of_every_devices_block_are_read(tmp_path: Path, sandbox: Path) -> None:
    """libvirt reads ./devices/disk from every <devices> block; so must we (and check them)."""
    img = tmp_path / "second.img"
    img.write_bytes(b"")
    xml = domain_xml(disk(str(img))).replace(
        b"</devices>", b"</devices><devices>"
        + disk("/etc/shadow").replace("vda", "vdb").encode() + b"</devices>")
    err = refused(xml, sandbox)
    assert "/etc/shadow" in err
    two = domain_xml(disk(str(img))).replace(
        b"</devices>", b"</devices><devices><serial type='file'><source path='"
        + str(tmp_path / "s.log").encode() + b"'/></serial></devices>")
    proc = run_helper(DRY, two)
    assert proc.returncode == 0, proc.stderr
    assert f'"{tmp_path}/s.log" rw,' in rules_of(proc.stderr)
    stock = run_helper(DRY, two, stock=True)
    assert rules_of(proc.stderr) == rules_of(stock.stderr)


def test_extra_file_subtree_suffix_kept_and_rest_escaped(tmp_path: Path) -> None:
    proc = run_helper(DRY + ["-F", f"{tmp_path}/huge*pages/{{,**}}"], domain_xml())
    assert proc.returncode == 0
    assert rules_of(proc.stderr) == [f'"{tmp_path}/huge\\*pages/{{,**}}" rwk,']
    proc = run_helper(DRY + ["-F", "/run/hugepages/kvm/**"], domain_xml())
    assert rules_of(proc.stderr) == ['"/run/hugepages/kvm/**" rwk,']
    proc = run_helper(DRY + ["-f", "/etc/**"], domain_xml())
    assert proc.returncode == 1


def test_non_utf8_xml_refused(sandbox: Path) -> None:
    refused(domain_xml().replace(b"<name>t</name>", b"<name>t\xff\xfe</name>"), sandbox)
