"""Every log source of `virt-aa denials`, end to end with real parts.

* the journal: a private ``systemd-journald`` started here in its own mount
  namespace (tmpfs over /run and /var/log, so the host's journal and logs are
  out of sight), fed through the real kernel ring (``/dev/kmsg``, the kernel
  transport) and ``logger``/``systemd-cat`` (dbus-daemon's own lines), read
  by virt-aa through the real ``journalctl``;
* ``--source auto``: auditd's log, else the journal, else kern.log/syslog,
  else dmesg, in that namespace;
* auditd's rotations, ``.N.gz`` written by the real ``gzip``;
* dmesg: the real kernel ring (records written to ``/dev/kmsg``), and a real
  ``dmesg -T`` dump read with ``--file``;
* ``--file -`` (stdin), ``--follow`` (lines appended while it runs), and
  ``--since``/``--until`` on files and on the journal.

Each run uses a fresh guest UUID, so records left in the kernel ring by
earlier runs never count.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
import uuid as uuidlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import GENDENIALS, cli_argv


def avc(uuid: str, name: str, stamp: str = "1764064800.100:100", mode: str = "DENIED",
        mask: str = "r") -> str:
    """The body of a kernel AppArmor record of a guest (after ``audit(...): ``)."""
    return (f'apparmor="{mode}" operation="open" class="file" profile="libvirt-{uuid}" '
            f'name="{name}" pid=4242 comm="qemu-system-x86" requested_mask="{mask}" '
            f'denied_mask="{mask}" fsuid=64055 ouid=64055')


def audit_line(uuid: str, name: str, serial: int, epoch: int = 1764064800) -> str:
    return f"type=AVC msg=audit({epoch}.{serial % 1000:03d}:{serial}): {avc(uuid, name)}\n"


def denials(*args: str, stdin: str | None = None, root: Path | None = None
            ) -> dict[str, Any]:
    argv = [*cli_argv()] + (["--root", str(root)] if root else []) + ["denials", *args,
                                                                     "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, input=stdin, check=False,
                          env=dict(os.environ, VIRT_AA_DEBUG="1"))
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def resources(doc: dict[str, Any], uuid: str) -> Counter[str]:
    """resource -> count of this guest's groups."""
    c: Counter[str] = Counter()
    for g in doc["groups"]:
        if g["uuid"] == uuid:
            c[g["resource"]] += g["count"]
    return c


def generated(tmp: Path, fmt: str, seed: int, lines: int = 1500
              ) -> tuple[Path, Counter[str], Counter[str]]:
    """A log from the project's generator and the guest records its truth says it
    holds: (log, complete records per profile, all records per profile).  The
    second transport's copy of an event counts only where nothing tells the two
    apart (``journalctl -o short`` prints the audit copy without its stamp)."""
    log, truth = tmp / f"{fmt}-{seed}.log", tmp / f"{fmt}-{seed}.truth"
    subprocess.run([sys.executable, str(GENDENIALS), "--format", fmt, "--lines", str(lines),
                    "--seed", str(seed), "-o", str(log), "--truth", str(truth)], check=True)
    complete: Counter[str] = Counter()
    every: Counter[str] = Counter()
    for line in truth.read_text().splitlines():
        t = json.loads(line)
        prof = t["profile"].split("//")[0]
        if t.get("vm_uuid") and t["apparmor"] in ("DENIED", "ALLOWED") \
                and not t.get("duplicate"):
            every[prof] += 1
            complete[prof] += bool(t["complete"])
    return log, complete, every


def per_profile(doc: dict[str, Any]) -> Counter[str]:
    """The guests' records per profile (the stack's programs are grouped too, not counted
    here: the generator's truth marks guests only)."""
    c: Counter[str] = Counter()
    for g in doc["groups"]:
        if g["program"] == "vm":
            c[g["profile"].split("//")[0]] += g["count"]
    return c


# ---------------------------------------------------------------- a private host namespace

NS_PRELUDE = r"""
set -eu
mount --make-rprivate /
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/log
mkdir -p /run/log /run/systemd
start_journald() {
    /lib/systemd/systemd-journald > /dev/null 2>&1 &
    JPID=$!
    trap 'kill $JPID' EXIT
    for _ in $(seq 100); do
        [ -S /run/systemd/journal/socket ] && [ -S /run/systemd/journal/stdout ] && return 0
        sleep 0.1
    done
    echo "journald did not start" >&2
    exit 1
}
wait_journal() {   # until the journal holds $1 entries with the text $2
    n=0
    for _ in $(seq 100); do
        n=$(journalctl -q -o cat --no-pager | grep -c -F -e "$2" || true)
        [ "$n" -ge "$1" ] && return 0
        sleep 0.1
    done
    echo "journal has $n of $1 entries with $2" >&2
    exit 1
}
kmsg() { printf '<4>%s\n' "$1" > /dev/kmsg; }
"""


def in_namespace(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `script` (bash) in a private mount namespace with empty /run and /var/log."""
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                           NS_PRELUDE + script], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, VIRT_AA_DEBUG="1", **env), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def virt_aa_cmd() -> str:
    return " ".join(cli_argv())


def test_journal_source_reads_a_real_journald(tmp_path: Path) -> None:
    """kernel transport (from the ring) and dbus-daemon lines, via journalctl -o json;
    --source auto picks the journal when there is no audit.log; --since/--until
    reach journalctl."""
    u = str(uuidlib.uuid4())
    dbus = (f'apparmor="DENIED" operation="dbus_method_call"  bus="system" '
            f'path="/org/freedesktop/login1" interface="org.freedesktop.login1.Manager" '
            f'member="Inhibit" mask="send" name="org.freedesktop.login1" pid=4242 '
            f'label="libvirt-{u}" peer_pid=1 peer_label="unconfined"')
    out = tmp_path / "out"
    out.mkdir()
    now = int(time.time())
    script = f"""
start_journald
kmsg 'audit: type=1400 audit({now}.100:101): {avc(u, "/srv/journal/kernel-1")}'
kmsg 'audit: type=1400 audit({now}.200:102): {avc(u, "/srv/journal/kernel-2")}'
logger -u /run/systemd/journal/dev-log -t dbus-daemon '{dbus}'
echo 'unrelated: apparmor is not mentioned here' | systemd-cat -t libvirtd
wait_journal 3 'libvirt-{u}'
wait_journal 1 'not mentioned here'
V="{virt_aa_cmd()} --root {tmp_path}/root"
$V denials --source journal --json > {out}/journal.json
$V denials --source auto --json > {out}/auto.json
$V denials --source journal --since -1h --json > {out}/since.json
$V denials --source journal --until -1h --json > {out}/until.json
$V denials --source journal > {out}/journal.txt
"""
    in_namespace(script, {})
    doc = json.loads((out / "journal.json").read_text())
    assert doc["source"] == "journal"
    assert resources(doc, u) == {"/srv/journal/kernel-1": 1, "/srv/journal/kernel-2": 1,
                                 "bus=system path=/org/freedesktop/login1 interface=org."
                                 "freedesktop.login1.Manager member=Inhibit name=org."
                                 "freedesktop.login1": 1}
    assert any("no auditd here" in w for w in doc["warnings"])
    auto = json.loads((out / "auto.json").read_text())
    assert auto["source"] == "journal" and resources(auto, u) == resources(doc, u)
    assert resources(json.loads((out / "since.json").read_text()), u) == resources(doc, u)
    assert resources(json.loads((out / "until.json").read_text()), u) == {}
    assert "/srv/journal/kernel-2" in (out / "journal.txt").read_text()


def test_auto_picks_auditd_then_kern_then_dmesg_and_reads_rotations(tmp_path: Path) -> None:
    """auditd's log with .1 and .2.gz (real gzip) wins; without it (and without a
    journal) kern.log; without that dmesg."""
    u = str(uuidlib.uuid4())
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "audit.log").write_text(audit_line(u, "/srv/rot/current", 3))
    (logs / "audit.log.1").write_text(audit_line(u, "/srv/rot/one", 2))
    (logs / "audit.log.2").write_text(audit_line(u, "/srv/rot/two", 1) * 2)
    subprocess.run(["gzip", "-9", str(logs / "audit.log.2")], check=True)
    (logs / "kern.log").write_text(
        f"2026-11-25T10:00:00.000000+00:00 kvmhost01 kernel: [ 1.000000] audit: type=1400 "
        f"audit(1764064800.100:7): {avc(u, '/srv/kern/current')}\n")
    (logs / "kern.log.1").write_text(
        f"Nov 25 09:00:00 kvmhost01 kernel: [    0.500000] audit: type=1400 "
        f"audit(1764061200.100:6): {avc(u, '/srv/kern/older')}\n")
    out = tmp_path / "out"
    out.mkdir()
    script = f"""
V="{virt_aa_cmd()} --root {tmp_path}/root"
mkdir -p /var/log/audit
cp {logs}/audit.log {logs}/audit.log.1 {logs}/audit.log.2.gz /var/log/audit/
cp {logs}/kern.log {logs}/kern.log.1 /var/log/
$V denials --source auto --json > {out}/audit.json
$V denials --source kern --json > {out}/kern.json
rm -r /var/log/audit
$V denials --source auto --json > {out}/auto-kern.json
rm /var/log/kern.log /var/log/kern.log.1
kmsg 'audit: type=1400 audit(1764064800.300:103): {avc(u, "/srv/ring/auto")}'
$V denials --source auto --json > {out}/auto-dmesg.json
$V denials --source audit --json > {out}/no-audit.json 2> {out}/no-audit.err \
    || echo $? > {out}/no-audit.rc
"""
    in_namespace(script, {})
    doc = json.loads((out / "audit.json").read_text())
    assert doc["source"] == "audit"
    assert resources(doc, u) == {"/srv/rot/current": 1, "/srv/rot/one": 1, "/srv/rot/two": 2}
    kern = json.loads((out / "kern.json").read_text())
    assert kern["source"] == "kern"
    assert resources(kern, u) == {"/srv/kern/current": 1, "/srv/kern/older": 1}
    assert json.loads((out / "auto-kern.json").read_text())["source"] == "kern"
    ring = json.loads((out / "auto-dmesg.json").read_text())
    assert ring["source"] == "dmesg" and resources(ring, u) == {"/srv/ring/auto": 1}
    assert (out / "no-audit.rc").read_text().strip() == "1"
    assert "auditd" in (out / "no-audit.err").read_text()


def test_dmesg_source_reads_the_real_kernel_ring(tmp_path: Path) -> None:
    """Records written to /dev/kmsg come back through `dmesg` (--source dmesg), and
    a real `dmesg -T` dump is read with --file."""
    u = str(uuidlib.uuid4())
    for i, name in enumerate(("/srv/ring/a", "/srv/ring/b", "/srv/ring/a")):
        with open("/dev/kmsg", "w", encoding="utf-8") as k:
            k.write(f"<4>audit: type=1400 audit(1764064800.{i:03d}:{500 + i}): "
                    f"{avc(u, name)}\n")
    ring = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    mine = [ln for ln in ring.splitlines() if u in ln]
    assert len(mine) == 3 and all(ln.startswith("[") and "] audit: type=1400" in ln
                                  for ln in mine)
    doc = denials("--source", "dmesg", root=tmp_path / "root")
    assert doc["source"] == "dmesg"
    assert resources(doc, u) == {"/srv/ring/a": 2, "/srv/ring/b": 1}
    dump = tmp_path / "dmesg-T.txt"
    dump.write_text(subprocess.run(["dmesg", "-T"], capture_output=True, text=True,
                                   check=True).stdout)
    assert any(u in ln and ln[1:4].isalpha() for ln in dump.read_text().splitlines())
    assert resources(denials("--file", str(dump)), u) == {"/srv/ring/a": 2, "/srv/ring/b": 1}


def test_gz_file_and_stdin_read_every_format(tmp_path: Path) -> None:
    """--file of a real gzip file and --file - (stdin) give what the plain file gives,
    in every format the generator writes, and that is its truth."""
    for i, fmt in enumerate(("audit", "kern", "syslog", "dmesg", "dmesg-T", "journal-short",
                             "journal-json")):
        log, complete, every = generated(tmp_path, fmt, seed=20 + i)
        plain = denials("--file", str(log))
        got = per_profile(plain)
        # every complete record counted; a record cut before its profile cannot be.
        # journald's audit copy carries no stamp in text formats: a twin is paired on
        # content, so a truncated kernel copy may stay single and two identical events
        # of one process may pair (one either way, per VM)
        slack = 1 if fmt in ("syslog", "journal-short") else 0
        assert all(complete[p] - slack <= got[p] <= every[p] + slack
                   for p in every | got), fmt
        assert sum(got.values()) > 100
        subprocess.run(["gzip", "-k", str(log)], check=True)
        assert denials("--file", f"{log}.gz")["groups"] == plain["groups"], fmt
        piped = denials("--file", "-", stdin=log.read_text(errors="surrogateescape"))
        assert piped["groups"] == plain["groups"], fmt


def test_since_until_on_a_file(tmp_path: Path) -> None:
    u = str(uuidlib.uuid4())
    log = tmp_path / "audit.log"
    # 2025-11-25 09:00, 10:00, 11:00 UTC
    log.write_text("".join(audit_line(u, f"/srv/t/{h}", h, epoch=1764061200 + (h - 9) * 3600)
                           for h in (9, 10, 11)))
    everything = resources(denials("--file", str(log)), u)
    assert everything == {"/srv/t/9": 1, "/srv/t/10": 1, "/srv/t/11": 1}
    window = denials("--file", str(log), "--since", "2025-11-25T09:30:00+00:00",
                     "--until", "2025-11-25T10:30:00+00:00")
    assert resources(window, u) == {"/srv/t/10": 1}
    assert resources(denials("--file", str(log), "--since", str(1764064800 + 1)), u) == {
        "/srv/t/11": 1}
    assert resources(denials("--file", str(log), "--since", "-1h"), u) == {}


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r, _, _ = select.select([proc.stdout], [], [], 0.2)
        if r:
            return proc.stdout.readline()
    raise AssertionError("no output from --follow")


@pytest.mark.parametrize("fmt", ["audit", "kern"])
def test_follow_prints_records_as_they_are_written(tmp_path: Path, fmt: str) -> None:
    u = str(uuidlib.uuid4())
    log = tmp_path / "follow.log"
    log.write_text(audit_line(u, "/srv/old/before-start", 1))     # not reported: already there
    proc = subprocess.Popen([*cli_argv(), "--root", str(tmp_path / "root"), "denials",
                             "--file", str(log), "--follow", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        got = []
        for i in range(3):
            with open(log, "a", encoding="utf-8") as f:
                if fmt == "audit":
                    f.write(audit_line(u, f"/srv/new/{i}", 10 + i))
                else:   # kernel-ring text: reported without waiting for the next line
                    f.write(f"2026-11-25T10:00:0{i}.000000+00:00 kvmhost01 kernel: "
                            f"[ 1.00000{i}] audit: type=1400 audit(1764064800.00{i}:{10 + i}):"
                            f" {avc(u, f'/srv/new/{i}')}\n")
            got.append(json.loads(_read_line(proc, 15)))
        assert [(g["uuid"], g["resource"], g["count"]) for g in got] == [
            (u, f"/srv/new/{i}", 1) for i in range(3)]
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()


def test_the_namespace_tools_are_there() -> None:
    """What these tests need is installed by scripts/setup.sh (no skips)."""
    for tool in ("unshare", "journalctl", "logger", "systemd-cat", "dmesg", "gzip"):
        assert shutil.which(tool), tool
    assert os.access("/lib/systemd/systemd-journald", os.X_OK)
