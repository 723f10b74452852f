"""Denials of the whole libvirt stack: every record accounted for once, by program.

Real records (tests/data/denials-stack.log, each block with its public source) of a VM,
libvirtd (both profile names), swtpm, an unrelated profile, a STATUS record and a
journald twin pair, through the `virt-aa denials` CLI, in text and JSON, on the line
path and the big-file path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from virt_aa import cli
from virt_aa.denials import commands as dc
from virt_aa.denials.programs import program_of, serves

DATA = Path(__file__).parent / "data"
STACK = DATA / "denials-stack.log"
VM = "7cf29f14-a170-4e33-bece-1f1e4c7e10b7"
OTHER_VM = "0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5"
# constructed (not from a report): swtpm's lock file in the state directory of VM and of
# another VM, in the shape of the records above
SWTPM_LOCK = ('[  700.000001] audit: type=1400 audit(1651529750.000:{n}): apparmor="DENIED" '
              'operation="open" profile="swtpm" name="/var/lib/libvirt/swtpm/{u}/tpm2/.lock" '
              'pid=75900 comm="swtpm" requested_mask="wc" denied_mask="wc" fsuid=0 ouid=0')


def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log: Path, *extra: str,
        big: bool = False) -> dict[str, Any]:
    """`virt-aa denials --file LOG --json` in this process, its stdout a real file."""
    monkeypatch.setattr(dc, "BIG", 0 if big else 1 << 60)
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    out = tmp_path / "out.json"
    with open(out, "w", encoding="utf-8") as f:
        monkeypatch.setattr(sys, "stdout", f)
        assert cli.main(["--root", str(root), "denials", *extra, "--file", str(log),
                         "--json"]) == 0
    monkeypatch.setattr(sys, "stdout", sys.__stdout__)
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def accounted(doc: dict[str, Any]) -> int:
    return (sum(g["count"] for g in doc["groups"]) + doc["not_denials"] + doc["excluded"]
            + doc["twins"])


def test_program_names() -> None:
    assert program_of(f"libvirt-{VM}") == "vm"
    assert program_of(f"libvirt-{VM}//qemu_bridge_helper") == "vm"
    assert [program_of(p) for p in ("libvirtd", "/usr/sbin/libvirtd", "virtqemud",
                                    "virt-aa-helper", "/usr/lib/libvirt/virt-aa-helper",
                                    "swtpm", "/usr/bin/swtpm", "virtiofsd", "passt",
                                    "dnsmasq", "dnsmasq//libvirt_leaseshelper",
                                    "snap.multipass.multipassd", None)] == [
        "daemon", "daemon", "daemon", "helper", "helper", "swtpm", "swtpm", "virtiofsd",
        "passt", "dnsmasq", "dnsmasq", "other", "other"]
    assert serves(f"/var/lib/libvirt/swtpm/{VM}/tpm2/.lock", VM, None)
    assert serves("/var/log/swtpm/libvirt/qemu/web1-swtpm.log", VM, "web1")
    assert serves("/run/libvirt/qemu/passt/3-web1-net0.pid", VM, "web1")
    assert serves("/run/libvirt/qemu/passt/1-node1-net0.socket", VM, "node1")   # bink#118
    assert not serves("/run/libvirt/qemu/passt/3-web10-net0.pid", VM, "web1")
    assert not serves(f"/var/lib/libvirt/swtpm/{OTHER_VM}/tpm2/.lock", VM, "web1")


def test_every_record_of_every_profile_is_accounted_for_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = run(tmp_path, monkeypatch, STACK)
    assert doc["records"] == 12
    assert accounted(doc) == doc["records"]
    assert doc["twins"] == 1 and doc["not_denials"] == 2 and doc["excluded"] == 0
    by: dict[str, int] = {}
    for g in doc["groups"]:
        by[g["program"]] = by.get(g["program"], 0) + g["count"]
    assert by == {"vm": 1, "daemon": 2, "swtpm": 3, "passt": 2, "other": 1}
    # a syslog time without a year: flagged, in the row and in the totals
    guessed = [g for g in doc["groups"] if g["flags"].get("year_guessed")]
    assert {g["profile"] for g in guessed} == {"libvirtd", "snap.multipass.multipassd"}
    assert doc["times_guessed"] == 2 and any("without a year" in w for w in doc["warnings"])


def test_text_shows_every_program_and_the_accounting(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert cli.main(["--root", str(root), "denials", "--file", str(STACK)]) == 0
    text = capsys.readouterr().out
    for heading in ("== VMs", "== libvirtd / virtqemud: 2", "== swtpm (emulated TPM): 3",
                    "== passt (user-mode networking): 2", "== other profiles: 1"):
        assert heading in text
    assert ("12 AppArmor record(s): 9 in the groups above, 2 that deny nothing (STATUS, "
            "AUDIT ...), 0 of other VMs/profiles or outside the time window, 1 journald "
            "twin(s) counted once") in text
    assert "(year guessed)" in text


def test_twins_pair_once_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two real events that look alike, each with its twin: two records, two twins; a
    kernel record alone is never a twin of another kernel record."""
    lines = STACK.read_text().splitlines()
    pair = [ln for ln in lines if "snap.multipass" in ln]
    assert len(pair) == 2
    log = tmp_path / "twins.log"
    log.write_text("\n".join(pair + pair + [pair[1], pair[1]]) + "\n")
    doc = run(tmp_path, monkeypatch, log)
    assert doc["records"] == 6 and doc["twins"] == 2
    assert [g["count"] for g in doc["groups"]] == [4]


def test_domain_view_has_the_vm_and_the_helpers_serving_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "stack.log"
    log.write_text(STACK.read_text() + SWTPM_LOCK.format(n=1, u=VM) + "\n"
                   + SWTPM_LOCK.format(n=2, u=OTHER_VM) + "\n")
    for big in (False, True):
        doc = run(tmp_path, monkeypatch, log, VM, big=big)
        got = sorted((g["program"], g["resource"]) for g in doc["groups"])
        assert got == [("swtpm", f"/var/lib/libvirt/swtpm/{VM}/tpm2/.lock"),
                       ("vm", f"/var/lib/libvirt/swtpm/{VM}/tpm2/")], big
        assert doc["records"] == 14 and accounted(doc) == 14
        assert doc["excluded"] == 9


@pytest.mark.parametrize("kind", ["syslog", "auditd"])
def test_big_file_and_line_paths_agree_on_the_stack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    if kind == "syslog":
        log = STACK
    else:                               # the same records as auditd writes them
        log = tmp_path / "audit.log"
        out = []
        for i, ln in enumerate(STACK.read_text().splitlines()):
            at = ln.find('apparmor="')
            if at >= 0 and not ln.startswith("#"):
                out.append(f"type=AVC msg=audit(1651529746.{i:03d}:{i}): {ln[at:]}")
        log.write_text("\n".join(out) + "\n")
    small = run(tmp_path, monkeypatch, log)
    big = run(tmp_path, monkeypatch, log, big=True)
    for g in small["groups"]:           # the big paths keep no event ids or per-group flags
        g["event"] = None
        g["flags"] = {}
    assert big == small
    assert accounted(big) == big["records"] > 0


@pytest.mark.parametrize("seed", range(8))
def test_big_file_and_line_paths_agree_on_fuzzed_and_hostile_logs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Through the CLI: the same document whatever the file's size, on fuzzed auditd text
    (cut records, junk bytes, forged second records, NULs, a huge line) and on the same
    text as a syslog'd kernel log (glued records, journald twins)."""
    import random

    from test_denials_fast import fuzz_text

    rng = random.Random(seed)
    text = b"type=AVC msg=audit(1.0:1): x\n" + fuzz_text(rng, 2000)
    logs = {"auditd": text, "syslog": text.replace(
        b"type=AVC msg=audit(", b"Nov 25 10:00:00 h kernel: audit: type=1400 audit(")}
    for kind, data in logs.items():
        log = tmp_path / f"{kind}.log"
        log.write_bytes(data)
        small = run(tmp_path, monkeypatch, log)
        big = run(tmp_path, monkeypatch, log, big=True)
        for g in small["groups"]:
            g["event"] = None
            g["flags"] = {}
        assert len(big["groups"]) == len(small["groups"]) > 100, kind
        assert big == small, kind
        assert accounted(big) == big["records"], kind


def test_explain_names_a_failure_that_is_not_apparmor(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert cli.main(["--root", str(root), "explain", "--file", str(STACK), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    [other] = doc["not_apparmor"]
    assert other["count"] == 1 and "hugepages" in other["fix"]
    assert other["source"].startswith("https://")


@pytest.mark.parametrize("fmt", ["audit", "syslog", "journal-json"])
def test_generated_stack_log_adds_up_per_program(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """A generated log of VMs, libvirtd, virt-aa-helper, swtpm, dnsmasq and unrelated
    profiles (tests/tools/gendenials.py): every record accounted for once, and each
    program's DENIED/ALLOWED count lies between its complete records and all its
    records in the generator's truth (a record cut at the printk limit still counts
    when its profile survived; journald's second copy counts once)."""
    import subprocess

    from conftest import GENDENIALS

    log, truth = tmp_path / f"{fmt}.log", tmp_path / f"{fmt}.truth"
    subprocess.run([sys.executable, str(GENDENIALS), "--format", fmt, "--lines", "3000",
                    "--seed", "7", "--split-share", "0", "-o", str(log), "--truth", str(truth)],
                   check=True)
    complete: dict[str, int] = {}
    every: dict[str, int] = {}
    for line in truth.read_text().splitlines():
        t = json.loads(line)
        if t["apparmor"] in ("DENIED", "ALLOWED") and not t.get("duplicate"):
            prog = program_of(t["profile"])
            every[prog] = every.get(prog, 0) + 1
            complete[prog] = complete.get(prog, 0) + bool(t.get("complete"))
    assert {"vm", "daemon", "helper", "swtpm", "dnsmasq", "other"} <= set(every), every
    doc = run(tmp_path, monkeypatch, log)
    assert doc["records"] == accounted(doc)
    got: dict[str, int] = {}
    for g in doc["groups"]:
        got[g["program"]] = got.get(g["program"], 0) + g["count"]
    assert set(got) == set(every)
    for prog, n in got.items():
        assert complete[prog] <= n <= every[prog], (prog, complete[prog], n, every[prog])
