"""`explain`/`suggest` give one answer, consistent with `check`, on the real samples.

For each VM of the real records (tests/data, each with its public source) a domain XML
with its UUID, in a seeded `--root` sandbox: every command `explain` prints is run
exactly as printed and must succeed; afterwards `explain` says "already allowed" for
exactly the accesses `check` allows; restricted paths get no allow command; other
programs' denials get no per-VM rule; TPM passthrough is named by the domain.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

from conftest import cli_argv

DATA = Path(__file__).parent / "data"
LOGS = [DATA / "denials-real-samples.txt", DATA / "denials-stack.log"]
UUIDS = ["040adaf0-83ad-4568-977a-d78a11204cad", "15de3735-d0a2-482b-95ce-42ab775ceaa7",
         "18e61047-83d5-4d0e-b98e-d9b3e8cb9cf4", "1c01664c-8f99-4942-85c9-2c0c90b2e92b",
         "7cf29f14-a170-4e33-bece-1f1e4c7e10b7"]
# constructed, in the shape of the real records: a restricted path, and a passthrough TPM
SHADOW = ('type=AVC msg=audit(1764064800.001:1): apparmor="DENIED" operation="open" '
          'profile="libvirt-{u}" name="/etc/shadow" pid=4242 comm="qemu-system-x86" '
          'requested_mask="r" denied_mask="r" fsuid=64055 ouid=0\n')
DATAFILE = ('type=AVC msg=audit(1764064800.003:3): apparmor="DENIED" operation="open" '
            'profile="libvirt-{u}" name="/srv/vmdata/{u}.img" pid=4242 comm="qemu-system-x86" '
            'requested_mask="rw" denied_mask="rw" fsuid=64055 ouid=0\n')
TPM0 = ('type=AVC msg=audit(1764064800.002:2): apparmor="DENIED" operation="open" '
        'profile="libvirt-{u}" name="/dev/tpm0" pid=4242 comm="qemu-system-x86" '
        'requested_mask="rw" denied_mask="rw" fsuid=64055 ouid=0\n')


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def virt_aa(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run([*cli_argv(), "--root", str(root), *args])


def domain(tmp: Path, uuid: str, tpm: bool = False) -> Path:
    xml = tmp / f"{uuid}.xml"
    dev = ("<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/>"
           "</backend></tpm>" if tpm else "")
    xml.write_text(f"""<domain type='kvm'><name>vm-{uuid[:8]}</name><uuid>{uuid}</uuid>
<memory>65536</memory><os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices>{dev}</devices></domain>""")
    return xml


def explain(root: Path, xml: Path, log: Path) -> list[dict[str, Any]]:
    proc = virt_aa(root, "explain", "--xml", str(xml), "--file", str(log), "--json")
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, Any]] = json.loads(proc.stdout)["groups"]
    return rows


def printed(cmd: str) -> list[str]:
    """A printed command line as argv, `virt-aa` being this checkout's."""
    words = shlex.split(cmd)
    assert words[0] == "virt-aa"
    return [*cli_argv(), *words[1:]]


def check_rc(root: Path, xml: Path, row: dict[str, Any]) -> int:
    perms = "".join(c for c in row["perms"] if c in "rwaklmx").replace("c", "w") or "w"
    return virt_aa(root, "check", "--xml", str(xml), row["resource"], perms).returncode


def test_every_printed_command_works_and_advice_agrees_with_check(tmp_path: Path,
                                                                   sandbox: Path) -> None:
    log = tmp_path / "all.log"
    log.write_text("".join(p.read_text() for p in LOGS) + SHADOW.format(u=UUIDS[0])
                   + "".join(DATAFILE.format(u=u) for u in UUIDS))
    ran = 0
    first = {"/etc/shadow": "restricted", ".img": "allow", "/max_segments": "allowed_now",
             "/perf_stream_paranoid": "restricted", "/qemu-system-x86_64": "restricted",
             "/lttng-ust-wait-5": "denied_by_rule", "/tpm2/": "fix_elsewhere"}
    seen = set()
    for uuid in UUIDS:
        xml = domain(tmp_path, uuid)
        rows = explain(sandbox, xml, log)
        mine = [r for r in rows if r["uuid"] == uuid]
        assert mine, uuid
        for r in rows:
            adv = r["advice"]
            if r["uuid"] != uuid and r["program"] == "vm":     # another VM's: no command
                assert adv["commands"] == [] and adv["status"] != "allow"
            if r["program"] != "vm":    # a program's own profile: never a per-VM rule
                assert adv["status"] in ("other_profile", "profile_rule"), adv
                assert all(" --profile " in c for c in adv["commands"])
            if r["uuid"] == uuid:
                end = [e for e in first if r["resource"].endswith(e)]
                assert [first[e] for e in end] == [adv["status"]], (r["resource"], adv)
                seen.update(end)
            for cmd in adv["commands"]:
                proc = run(printed(cmd))
                assert proc.returncode == 0, (cmd, proc.stderr)
                ran += 1
        for r in explain(sandbox, xml, log):
            if r["uuid"] != uuid:
                continue
            adv = r["advice"]
            if r["resource"].startswith("/") and r["operation"] in ("open", "exec"):
                allowed = check_rc(sandbox, xml, r) == 0
                assert (adv["status"] == "allowed_now") == allowed, (r["resource"], adv)
            if adv["status"] == "restricted":
                assert adv["commands"] == [] and "allow" not in " ".join(adv["commands"])
            for cmd in adv["commands"]:     # now: reload, which works as printed too
                assert " reload " in cmd
                assert run(printed(cmd)).returncode == 0, cmd
                ran += 1
    assert seen == set(first)
    assert ran == 2 * len(UUIDS) + 2    # each data file: allow, then reload; max_segments
    shadow = [r for r in explain(sandbox, domain(tmp_path, UUIDS[0]), log)
              if r["resource"] == "/etc/shadow"]
    assert shadow[0]["advice"]["status"] == "restricted"
    assert shadow[0]["advice"]["commands"] == []
    assert check_rc(sandbox, domain(tmp_path, UUIDS[0]), shadow[0]) == 2


def test_tpm_passthrough_is_named_by_the_domain(tmp_path: Path, sandbox: Path) -> None:
    uuid = UUIDS[0]
    log = tmp_path / "tpm.log"
    log.write_text(TPM0.format(u=uuid))
    plain = explain(sandbox, domain(tmp_path, uuid), log)[0]
    assert plain["explanation"]["relation"] == "not named by the domain"
    xml = domain(tmp_path, uuid, tpm=True)
    row = explain(sandbox, xml, log)[0]
    assert row["explanation"]["element"] == "tpm passthrough"
    assert "named by the domain" in row["explanation"]["relation"]
    assert row["explanation"]["risk"] is None
    [cmd] = row["advice"]["commands"]
    assert run(printed(cmd)).returncode == 0
    assert virt_aa(sandbox, "check", "--xml", str(xml), "/dev/tpm0", "rw").returncode == 0
    again = explain(sandbox, xml, log)[0]["advice"]
    assert again["status"] == "allowed_now" and " reload " in again["commands"][0]


def test_suggest_follows_the_same_advice(tmp_path: Path, sandbox: Path) -> None:
    uuid = UUIDS[4]                     # swtpm's state dir in the VM's profile, a data file
    log = tmp_path / "all.log"
    log.write_text("".join(p.read_text() for p in LOGS) + DATAFILE.format(u=uuid))
    xml = domain(tmp_path, uuid)

    def suggest(*more: str) -> dict[str, Any]:
        proc = virt_aa(sandbox, "suggest", "--xml", str(xml), "--file", str(log), "--json",
                       *more)
        assert proc.returncode == 0, proc.stderr
        doc: dict[str, Any] = json.loads(proc.stdout)
        return doc

    items = {i["denial"]["resource"]: i for i in suggest()["suggestions"]}
    data = items.pop(f"/srv/vmdata/{uuid}.img")
    assert data["proposals"][0]["rule"] == f'"/srv/vmdata/{uuid}.img" rwk,'  # QEMU locks images
    state = items.pop(f"/var/lib/libvirt/swtpm/{uuid}/tpm2/")
    assert not state["proposals"] and "install swtpm" in state["skipped"]
    assert not items                    # the domain's groups only
    assert [r["rule"] for r in suggest("--apply")["applied"]] == [data["proposals"][0]["rule"]]
    again = {i["denial"]["resource"]: i for i in suggest()["suggestions"]}
    data = again[f"/srv/vmdata/{uuid}.img"]
    assert not data["proposals"] and "already allowed" in data["skipped"]
    assert " reload " in data["commands"][0]


def test_program_denials_get_profile_rules_that_work(tmp_path: Path, sandbox: Path) -> None:
    """Without a domain: libvirtd's own denials (its old and new profile names) get an
    `allow --profile libvirtd` command that works as printed; VMs' get none (no domain)."""
    proc = virt_aa(sandbox, "explain", "--file", str(LOGS[0]), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["groups"]
    cmds = []
    for r in rows:
        adv = r["advice"]
        if r["program"] == "vm":
            assert adv["commands"] == [] and adv["status"] in (
                "name_the_domain", "restricted", "fix_elsewhere", "no_rule"), adv
        elif adv["status"] == "profile_rule":
            cmds += adv["commands"]
    assert any(" allow --profile libvirtd 'capability ipc_lock,'" in c for c in cmds), cmds
    for c in cmds:
        done = run(printed(c))
        assert done.returncode == 0, (c, done.stderr)
    listed = json.loads(virt_aa(sandbox, "rules", "--profile", "libvirtd", "--json").stdout)
    assert "capability ipc_lock," in [x["rule"] for x in listed["rules"]]
    assert listed["file"] == str(sandbox / "etc/apparmor.d/local/usr.sbin.libvirtd")
