"""Per-version parity: ours as libvirt V's helper against V's real helper, recorded.

The recordings (``tests/data/versions/<suite>/``) come from Debian's own
packages of 9.0, 11.3 and 12.8 (``versions_cases.py record``); each carries
the sha256 of its XML and arguments, so a case edited without re-recording
fails loudly instead of comparing against a stale oracle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import helper_argv, rules_of
from versions_cases import DATA, SUITES, all_cases, argv, digest, make_files

CASES = all_cases()


def ours(xml: str, args: list[str], version: str,
         env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, VIRT_AA_DEBUG="1", VIRT_AA_LIBVIRT_VERSION=version)
    env.update(env_extra or {})
    return subprocess.run(helper_argv() + argv(args), input=xml.encode(), capture_output=True,
                          env=env, timeout=60, check=False)


def errors(stderr: bytes | str) -> list[str]:
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    return [line for line in text.splitlines() if ": error: " in line]


@pytest.mark.parametrize("suite", list(SUITES))
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_that_versions_real_helper(suite: str, name: str) -> None:
    make_files()
    xml, args = CASES[name]
    exp = json.loads((DATA / suite / f"{name}.json").read_text())
    assert exp["sha256"] == digest(xml, args), \
        f"{name}: the case changed since it was recorded; run tests/versions_cases.py record"
    got = ours(xml, args, SUITES[suite])
    assert b"Traceback" not in got.stderr
    assert got.returncode == exp["exit_code"], (got.stderr.decode(), exp["stderr"])
    if exp["exit_code"]:
        assert errors(got.stderr)[-1:] == errors(exp["stderr"])[-1:]
        return
    assert rules_of(got.stderr) == rules_of(exp["stderr"].encode())  # same rules, same order


def test_every_recording_belongs_to_a_case() -> None:
    for suite in SUITES:
        names = {p.stem for p in (DATA / suite).glob("*.json")}
        assert names == set(CASES), suite


def test_the_versions_differ_where_upstream_changed() -> None:
    """The recordings are not all alike: each version's change shows somewhere."""
    def rules(suite: str, name: str) -> str:
        return json.loads((DATA / suite / f"{name}.json").read_text())["stderr"]
    assert "deny \"/dev/loop7\" w," in rules("trixie", "cdrom-block-without-readonly")
    assert "deny \"/dev/loop7\" w," not in rules("sid", "cdrom-block-without-readonly")
    assert "/dev/sev" in rules("sid", "sev") and "/dev/sev" not in rules("trixie", "sev")


def test_cdrom_without_readonly_is_read_only_in_every_version() -> None:
    """libvirt makes every cdrom read-only; we once granted rwk (wider than stock)."""
    xml, args = CASES["cdrom-block-without-readonly"]
    for version in ("9.0.0", "11.3.0", "12.8.0"):
        got = ours(xml, args, version)
        assert got.returncode == 0, got.stderr
        assert '"/dev/loop7" rk,' in rules_of(got.stderr), version


def test_detection_reads_the_library_name(tmp_path: object) -> None:
    from pathlib import Path

    from virt_aa.host.libvirtversion import detect, from_library, installed

    assert from_library("libvirt.so.0.9000.0") == (9, 0)
    assert from_library("libvirt.so.0.11003.0") == (11, 3)
    assert from_library("libvirt.so.0.12008.1") == (12, 8)
    assert from_library("libvirt-qemu.so.0.9000.0") is None
    lib = Path(str(tmp_path))
    (lib / "libvirt.so.0").symlink_to("libvirt.so.0.10000.0")
    assert installed((str(lib),)) == (10, 0)
    assert detect({}, (str(lib),)) == ((10, 0), [])
    assert detect({"VIRT_AA_LIBVIRT_VERSION": "11.3.0"}, (str(lib),))[0] == (11, 3)
    version, notes = detect({}, (str(lib / "none"),))
    assert version == (9, 0) and "cannot tell" in notes[0]
    assert installed() == (9, 0)  # this host: Debian 12's libvirt0


def test_newer_than_known_behaves_as_newest_and_says_so_once() -> None:
    xml, args = CASES["sev"]
    got = ours(xml, args, "13.4.0")
    assert got.returncode == 0
    err = got.stderr.decode()
    assert err.count("newer than the newest known (12.8)") == 1, err
    assert '"/dev/sev" rw,' in rules_of(got.stderr)


@pytest.mark.parametrize("bad", ["11", "eleven.3", "11.3.0.1", "11.-3.0", ""])
def test_malformed_override_is_refused(bad: str) -> None:
    xml, args = CASES["sev"]
    got = ours(xml, args, bad) if bad else ours(xml, args, "x", {"VIRT_AA_LIBVIRT_VERSION": ""})
    if not bad:  # empty means "not set": detection decides
        assert got.returncode == 0
        return
    assert got.returncode == 1
    assert "invalid libvirt version" in got.stderr.decode()


def test_unknown_device_element_is_named_not_dropped() -> None:
    from versions_cases import dom

    got = ours(dom("<frobnicator path='/srv/x'/>"), [], "12.8.0")
    assert got.returncode == 0
    assert "<devices><frobnicator> is not known to virt-aa" in got.stderr.decode()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_disk_insert_fast_path_equals_libvirts_algorithm() -> None:
    """insert_disk's O(1) append for in-order disks gives virDomainDiskInsert's order."""
    import random

    from virt_aa.generate.domain import Disk, Storage, insert_disk

    def reference(disks: list[Disk], disk: Disk) -> None:
        at = -1
        for i in range(len(disks) - 1, -1, -1):
            if disks[i].bus == disk.bus:
                if disks[i].index > disk.index:
                    at = i
                elif at == -1:
                    at = i + 1
        disks.insert(len(disks) if at == -1 else at, disk)

    rng = random.Random(5)
    for _ in range(300):
        fast: list[Disk] = []
        slow: list[Disk] = []
        tops: dict[str | None, int] = {}
        for _ in range(rng.randint(1, 12)):
            name = rng.choice(["vd", "sd", "hd", "fd"]) + rng.choice("abcdz") + \
                rng.choice(["", "a", "b"])
            d = Disk(name, "disk", Storage("file", "/x", None), rng.choice([None, "sata"]))
            insert_disk(fast, d, tops)
            reference(slow, d)
        assert [d.target for d in fast] == [d.target for d in slow]


@pytest.mark.parametrize("devices", [
    "<disk type='block' device='disk'><source dev='/dev/loop6'/></disk>",          # no target
    "<controller type='pci' index='1' model='pci-bridge'><address type='pci' domain='0x0000' "
    "bus='0x100' slot='0x05' function='0x0'/></controller>",                      # bus > 0xff
    "<interface type='user'><address type='pci' domain='0x0000' bus='0x00' slot='0x20' "
    "function='0x0'/></interface>",                                               # slot > 0x1f
    "<memballoon model='virtio'><address type='pci' domain='0x0000' bus='0x00' slot='0x1f' "
    "function='0x8'/></memballoon>",                                              # function > 7
    "<disk type='block' device='cdrom'><source dev='/dev/loop6'/><target dev='hdc'/></disk>"
    "<disk type='block' device='floppy'><source dev='/dev/loop5'/><target dev='fda'/></disk>",
    "<disk type='file'><source file='/tmp/e.img'><encryption format='luks'><secret "
    "type='passphrase' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/></encryption></source>"
    "<target dev='vda'/><encryption format='luks'><secret type='passphrase' "
    "uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/></encryption></disk>",     # given twice
    "<disk type='file'><source file='/tmp/l.img'/><target dev='vda'/>"
    "<boot order='1' loadparm='sys1?'/></disk>",                               # bad loadparm
    "<disk type='file'><source file='/tmp/l.img'/><target dev='vda'/>"
    "<boot order='1' loadparm='SYS1. 2'/></disk>",
    "<controller type='usb' model='none'/><input type='tablet'/>",             # usb disabled
    "<controller type='usb' model='none'/><input type='mouse' bus='ps2'/>",
    "<controller type='usb' model='none'/><hub type='usb'/>",
    "SMBIOS:a94b4335-6a14-8bc4-d6da-f7ea590b6816",                            # uuid mismatch
    "SMBIOS:11111111-2222-3333-4444-555555555555",                            # uuid matches
])
def test_parses_as_the_installed_libvirt_parses(devices: str) -> None:
    """Accept what 9.0's parser accepts and reject what it rejects, same rules."""
    from conftest import run_helper
    from versions_cases import dom

    extra = ""
    if devices.startswith("SMBIOS:"):
        extra = (f"<sysinfo type='smbios'><system><entry name='uuid'>{devices[7:]}</entry>"
                 f"</system></sysinfo>")
        devices = ""
    xml = dom(devices, extra=extra).encode()
    stock = run_helper(argv([]), xml, stock=True)
    got = ours(xml.decode(), [], "9.0.0")
    assert got.returncode == stock.returncode, (got.stderr, stock.stderr)
    assert rules_of(got.stderr) == rules_of(stock.stderr)
