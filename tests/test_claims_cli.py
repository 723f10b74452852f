"""README claims of the `virt-aa` commands, each end to end with real parts.

A running VM is web01 of libvirt's test:/// driver (examples/node.xml), its
profile written by the real hook; the one fake is the kernel (test_live's
stand-in securityfs and recording parser; compile checks go to the real
apparmor_parser).  Interactive `suggest` runs on a real pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_denials_cli import PROFILE as DPROFILE
from test_denials_cli import avc, domain_xml
from test_live import PROFILE, URI, Kernel, run, snapshot

from conftest import REPO, cli_argv

UUID = PROFILE[8:]
HOOK = Path(cli_argv()[0]).with_name("virt-aa-hook")


def dumpxml(name: str) -> bytes:
    return subprocess.run(["virsh", "-c", URI, "dumpxml", name], capture_output=True,
                          check=True).stdout


def hook(root: Path, name: str, op: str, sub: str, xml: bytes, kernel: Kernel
         ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(HOOK), "--root", str(root), name, op, sub, "-"], input=xml,
                          capture_output=True, check=False, env=kernel.env())


@pytest.fixture
def web01(sandbox: Path, tmp_path: Path) -> tuple[Path, Kernel]:
    """web01 running: P written by the hook at `prepare`, the profile loaded."""
    kernel = Kernel(tmp_path)
    proc = hook(sandbox, "web01", "prepare", "begin", dumpxml("web01"), kernel)
    assert proc.returncode == 0, proc.stderr
    kernel.load([PROFILE])
    return sandbox, kernel


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


def check(root: Path, kernel: Kernel, path: str, perms: str = "r") -> int:
    return run(root, kernel, "check", "web01", path, perms).returncode


# ---------------------------------------------------------------- per-VM rules and mode


def test_allow_path_perms_recursive(web01: tuple[Path, Kernel]) -> None:
    """`allow DOMAIN --path P --perms rw [--recursive]`: one literal path, quoted and
    escaped (glob characters mean themselves), applied to the running VM."""
    root, kernel = web01
    odd = "/srv/data dir/a[1]*"
    out = ok(run(root, kernel, "allow", "web01", "--path", odd, "--perms", "rw")).stdout
    assert '"/srv/data dir/a\\[1\\]\\*" rw,' in out and "replaced the loaded profile" in out
    assert check(root, kernel, odd, "rw") == 0
    assert check(root, kernel, "/srv/data dir/a1x", "r") == 2       # no glob
    assert check(root, kernel, "/srv/data dir/a[1]*/below", "r") == 2
    ok(run(root, kernel, "allow", "web01", "--path", "/srv/tree", "--perms", "r",
           "--recursive"))
    assert check(root, kernel, "/srv/tree/", "r") == 0           # the directory itself
    assert check(root, kernel, "/srv/tree/a/b/c.img", "r") == 0
    assert check(root, kernel, "/srv/tree/a/b/c.img", "w") == 2
    assert check(root, kernel, "/srv/treehouse", "r") == 2
    local = (root / "etc/apparmor.d/local" / PROFILE).read_text()
    assert '"/srv/tree/{,**}" r,' in local
    assert len(kernel.calls()) == 2                      # each applied live
    bad = run(root, kernel, "allow", "web01", "--path", "/etc/shadow", "--perms", "r")
    assert bad.returncode == 1 and "--force" in bad.stderr
    assert run(root, kernel, "allow", "web01", "--path", "relative", "--perms",
               "r").returncode != 0


def test_revoke_by_rule_and_by_id(web01: tuple[Path, Kernel]) -> None:
    root, kernel = web01
    ok(run(root, kernel, "allow", "web01", "/srv/one r,", "/srv/two/** rw,"))
    rules = json.loads(ok(run(root, kernel, "rules", "web01", "--json")).stdout)["rules"]
    ids = {r["rule"]: r["id"] for r in rules}
    assert set(ids) == {"/srv/one r,", "/srv/two/** rw,"}
    out = ok(run(root, kernel, "revoke", "web01", "/srv/one r,")).stdout
    assert f"revoked on web01: [{ids['/srv/one r,']}] /srv/one r," in out
    assert check(root, kernel, "/srv/one") == 2
    assert check(root, kernel, "/srv/two/x", "rw") == 0
    ok(run(root, kernel, "revoke", "web01", ids["/srv/two/** rw,"]))
    assert check(root, kernel, "/srv/two/x") == 2
    assert json.loads(run(root, kernel, "rules", "web01", "--json").stdout)["rules"] == []
    assert len(kernel.calls()) == 3                       # allow + two revokes, live
    hist = json.loads(run(root, kernel, "history", "web01", "--json").stdout)["history"]
    assert [h["action"] for h in hist] == ["allow", "allow", "revoke", "revoke"]
    missing = run(root, kernel, "revoke", "web01", "deadbeef")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1


def test_enforce_after_complain(web01: tuple[Path, Kernel]) -> None:
    root, kernel = web01
    p = root / "etc/apparmor.d/libvirt" / PROFILE
    conf = root / "etc/virt-aa/domains" / f"{UUID}.conf"
    ok(run(root, kernel, "complain", "web01"))
    assert "complain" in p.read_text().split("{", 1)[0]
    assert "mode = complain" in conf.read_text()
    out = ok(run(root, kernel, "enforce", "web01", "--comment", "done debugging")).stdout
    assert "complain -> enforce" in out
    assert "complain" not in p.read_text().split("{", 1)[0]
    assert "mode = complain" not in conf.read_text()
    assert len(kernel.calls()) == 2 and all(c.startswith("-r ") for c in kernel.calls())
    show = json.loads(ok(run(root, kernel, "show", "web01", "--json")).stdout)
    assert show["mode"] == "enforce"
    hist = json.loads(run(root, kernel, "history", "web01", "--json").stdout)["history"]
    assert [(h["action"], h.get("why")) for h in hist][-1] == ("enforce", "done debugging")


# ---------------------------------------------------------------- hook, status, prune


def test_restore_begin_hook_passes_the_xml_through(web01: tuple[Path, Kernel]) -> None:
    """`restore begin` (and `migrate begin`) print the XML back unchanged; other
    operations exit 0 at once; neither writes anything."""
    root, kernel = web01
    before = snapshot(root)
    xml = dumpxml("web01").replace(b"</devices>", b"<!-- admin's note \xc3\xa9 --></devices>")
    for op in ("restore", "migrate"):
        proc = hook(root, "web01", op, "begin", xml, kernel)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == xml, op
    for op, sub in (("started", "begin"), ("stopped", "end"), ("release", "end")):
        proc = hook(root, "web01", op, sub, xml, kernel)
        assert (proc.returncode, proc.stdout) == (0, b""), (op, proc.stderr)
    assert snapshot(root) == before and kernel.calls() == []


def test_status_drift_reports_a_profile_that_is_not_current(web01: tuple[Path, Kernel]
                                                            ) -> None:
    root, kernel = web01
    ok(run(root, kernel, "status", "--drift"))
    p = root / "etc/apparmor.d/libvirt" / PROFILE
    p.write_text(p.read_text().replace("}", "  /srv/hand-edit r,\n}", 1))
    drift = run(root, kernel, "status", "--drift")
    assert drift.returncode == 1
    assert "web01: the profile on disk differs" in drift.stdout
    rows = json.loads(run(root, kernel, "status", "--drift", "--json").stdout)["drift"]
    assert [(r["name"], r["profile_not_current"]) for r in rows] == [("web01", True)]
    ok(run(root, kernel, "reload", "web01"))
    assert "no drift" in ok(run(root, kernel, "status", "--drift")).stdout


def test_prune_unloads_and_removes_stale_profiles(web01: tuple[Path, Kernel],
                                                  tmp_path: Path) -> None:
    """A profile whose domain no longer exists: `prune --yes` unloads it (parser -R)
    and deletes P and F; the per-VM rules stay; live VMs are not touched."""
    root, kernel = web01
    gone = "0badc0de-1111-4222-8333-444455556666"
    xml = dumpxml("web01").replace(UUID.encode(), gone.encode()) \
        .replace(b"<name>web01</name>", b"<name>gone</name>")
    assert hook(root, "gone", "prepare", "begin", xml, kernel).returncode == 0
    dom = tmp_path / "gone.xml"
    dom.write_bytes(xml)
    ok(run(root, kernel, "allow", "--xml", str(dom), "/srv/gone r,"))
    kernel.load([PROFILE, f"libvirt-{gone}"])
    p = root / "etc/apparmor.d/libvirt" / f"libvirt-{gone}"
    assert p.exists()
    status = ok(run(root, kernel, "status")).stdout
    assert "stale profiles" in status and str(p) in status
    refused = run(root, kernel, "prune")                      # no terminal: needs --yes
    assert refused.returncode == 1 and "--yes" in refused.stderr and p.exists()
    calls_before = len(kernel.calls())
    out = ok(run(root, kernel, "prune", "--yes")).stdout
    assert f"removed {p}" in out
    assert not p.exists() and not Path(str(p) + ".files").exists()
    assert kernel.calls()[calls_before:] == [f"-R -I {root}/etc/apparmor.d {p}"]
    assert "/srv/gone r," in (root / "etc/apparmor.d/local" / f"libvirt-{gone}").read_text()
    assert (root / "etc/apparmor.d/libvirt" / PROFILE).exists()
    assert ok(run(root, kernel, "prune", "--yes")).stdout.strip() == "no stale profiles"


# ---------------------------------------------------------------- policies on a running VM

ATTACH = r"""
import json, sys
import libvirt
from virt_aa.host import libvirt as lv
from virt_aa.cli import main
uri, root, name, policy = sys.argv[1:5]
conn = libvirt.open(uri)            # test:/// keeps state per connection: share this one
lv.connect = lambda *a, **k: conn
rc = main(["--root", root, "-c", uri, "attach", name, policy, "--json"])
dom = conn.lookupByName(name)
ns = "https://virt-aa.dev/xmlns/policies/1"
out = {"rc": rc, "active": dom.isActive()}
for key, flag in (("live", libvirt.VIR_DOMAIN_AFFECT_LIVE),
                  ("config", libvirt.VIR_DOMAIN_AFFECT_CONFIG)):
    try:
        out[key] = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, ns, flag)
    except libvirt.libvirtError as exc:
        out[key] = "error: " + str(exc)
print("RESULT " + json.dumps(out))
"""


def test_attach_policy_to_a_running_vm(web01: tuple[Path, Kernel], tmp_path: Path) -> None:
    """`attach` on a running domain: the reference lands in its metadata, live and
    persistent, through libvirt's API, and the loaded profile is replaced at once."""
    from virt_aa.policy.named import digest

    root, kernel = web01
    policy = "/srv/nfs/** rwk,\n"
    pf = tmp_path / "nfs.aa"
    pf.write_text(policy)
    ok(run(root, kernel, "policy", "add", "nfs-data", str(pf)))
    proc = subprocess.run([sys.executable, "-c", ATTACH, URI, str(root), "web01", "nfs-data"],
                          capture_output=True, text=True, env=kernel.env(), check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    res = json.loads(line[7:])
    assert res["rc"] == 0 and res["active"] == 1
    for key in ("live", "config"):
        assert "name=\"nfs-data\"" in res[key] and digest(policy) in res[key], res
        assert "/srv/nfs" not in res[key]                 # the name and hash, never rules
    attached = json.loads(proc.stdout[:proc.stdout.rindex("RESULT ")])
    assert attached["changed"] is True and "replaced the loaded profile" in attached["status"]
    p = (root / "etc/apparmor.d/libvirt" / PROFILE).read_text()
    assert f'{os.path.realpath(root)}/etc/virt-aa/policies/nfs-data"' in p
    assert kernel.calls() == [f"-r -I {root}/etc/apparmor.d {root}/etc/apparmor.d/libvirt/"
                              f"{PROFILE}"]


# ---------------------------------------------------------------- explain catalogue

# one real denied resource per catalogue entry (most from the real samples)
CATALOGUE_EXAMPLES = {
    "/sys/devices/**/block/*/queue/max_segments":
        "/sys/devices/pci0000:00/0000:00:02.0/virtio0/host2/target2:0:2/2:0:2:0/block/sda/"
        "queue/max_segments",
    "/{dev,run}/shm/lttng-ust-*": "/run/shm/lttng-ust-wait-5",
    "/proc/sys/dev/i915/perf_stream_paranoid": "/proc/sys/dev/i915/perf_stream_paranoid",
    "/usr/local/bin/qemu-system-*": "/usr/local/bin/qemu-system-x86_64",
    "/usr/libexec/qemu-kvm": "/usr/libexec/qemu-kvm",
    "/var/lib/libvirt/swtpm/**": "/var/lib/libvirt/swtpm/5b0c8a2e/tpm2/tpm2-00.permall",
    "/dev/tpm[0-9]*": "/dev/tpm0",
}


def test_explain_catalogue_every_entry(tmp_path: Path) -> None:
    """Every guest entry of denials/catalogue.py is matched by a denial and shown by
    `explain` with its fix and source; a near miss is not.  (The stack's entries:
    tests/test_denials_advice.py.)"""
    from virt_aa.denials.catalogue import KNOWN as EVERY

    KNOWN = [k for k in EVERY if k.program == "vm"]
    assert {k.pattern for k in KNOWN} == set(CATALOGUE_EXAMPLES)
    log = tmp_path / "audit.log"
    lines = [avc(i + 1, path, op="exec" if "bin" in path or "libexec" in path else "open",
                 mask="x" if "bin" in path or "libexec" in path else "r")
             for i, path in enumerate(CATALOGUE_EXAMPLES.values())]
    lines.append(avc(99, "/run/shm/not-lttng"))
    log.write_text("".join(lines))
    xml = domain_xml(tmp_path)
    proc = subprocess.run([*cli_argv(), "explain", "--xml", str(xml), "--file", str(log),
                           "--json"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = {r["resource"]: r["explanation"] for r in json.loads(proc.stdout)["groups"]}
    for known in KNOWN:
        why = rows[CATALOGUE_EXAMPLES[known.pattern]]
        assert why["known"] == {"what": known.what, "fix": known.fix, "source": known.source,
                                "rule": known.rule}, known.pattern
        assert known.source.startswith("https://")
    assert rows["/run/shm/not-lttng"]["known"] is None
    text = subprocess.run([*cli_argv(), "explain", "--xml", str(xml), "--file", str(log)],
                          capture_output=True, text=True, check=True).stdout
    assert text.count("    known: ") == len(KNOWN)


# ---------------------------------------------------------------- interactive suggest


def _pty_session(argv: list[str], answers: list[tuple[str, str]], timeout: float = 60
                 ) -> tuple[int, str]:
    """Run argv on a new pseudo-terminal; on each prompt (substring) type the answer."""
    pid, fd = pty.fork()
    if pid == 0:                                           # the child: the terminal's side
        os.environ["VIRT_AA_DEBUG"] = "1"
        os.execvp(argv[0], argv)
    out = b""
    pending = list(answers)
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            r, _, _ = select.select([fd], [], [], 0.5)
            if not r:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:                                # EIO: the child closed it
                break
            if not chunk:
                break
            out += chunk
            text = out.decode("utf-8", "replace")
            while pending and text.count(pending[0][0]) > sum(
                    1 for p, _ in answers[:len(answers) - len(pending)] if p == pending[0][0]):
                os.write(fd, (pending.pop(0)[1] + "\n").encode())
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert not pending, (pending, out.decode("utf-8", "replace"))
    return os.waitstatus_to_exitcode(status), out.decode("utf-8", "replace")


def test_suggest_interactive_on_a_terminal(tmp_path: Path, sandbox: Path) -> None:
    """On a terminal `suggest` asks per denial: accept 1, choose another, deny
    quietly, skip; then confirms; what was chosen is stored with the event id.  A
    catalogued denial whose fix is not a rule (lttng) is not offered."""
    xml = domain_xml(tmp_path)
    log = tmp_path / "audit.log"
    log.write_text(avc(1, "/srv/exact/a.img") * 4 + avc(2, "/srv/tree/sub/b.img", "rw") * 3
                   + avc(3, "/run/shm/lttng-ust-wait-5") * 2 + avc(4, "/srv/skip/c")
                   + avc(5, "/srv/quiet/d"))
    prompt = "accept [1-9], s(kip), d(eny quietly), q(uit)? "
    code, out = _pty_session(
        [*cli_argv(), "--root", str(sandbox), "suggest", "--xml", str(xml), "--file",
         str(log)],
        [(prompt, "1"), (prompt, "3"), (prompt, "d"), (prompt, "s"),
         ("store 3 rule(s)? [y/N] ", "y")])
    assert code == 0, out
    assert "Traceback" not in out
    assert "[1] exact" in out and "/srv/exact/a.img" in out
    local = (sandbox / "etc/apparmor.d/local" / DPROFILE).read_text()
    stored = [ln for ln in local.splitlines() if ln and not ln.startswith("#")]
    assert stored[0] == '"/srv/exact/a.img" rk,'            # an image: QEMU locks it
    assert stored[1] == '"/srv/tree/sub/**" rwk,'           # the third proposal: subtree
    assert stored[2].startswith("deny ") and "/srv/quiet/d" in stored[2]
    assert len(stored) == 3 and "/srv/skip" not in local and "lttng" not in local
    assert "denial=1764064800.001:1" in local

    def allowed(path: str, perms: str = "r") -> int:
        return subprocess.run([*cli_argv(), "--root", str(sandbox), "check", "--xml",
                               str(xml), path, perms], capture_output=True,
                              check=False).returncode

    assert allowed("/srv/exact/a.img") == 0 and allowed("/srv/exact/other.img") == 2
    assert allowed("/srv/tree/sub/b.img", "rw") == 0
    assert allowed("/srv/tree/sub/deeper/c.img", "rw") == 0
    assert allowed("/srv/skip/c") == 2
    # answering no at the end stores nothing
    code, out = _pty_session(
        [*cli_argv(), "--root", str(tmp_path / "other"), "suggest", "--xml", str(xml),
         "--file", str(log)],
        # (an empty root has no abstraction that refuses lttng: it is offered there)
        [(prompt, "1"), (prompt, "s"), (prompt, "s"), (prompt, "s"), (prompt, "s"),
         ("store 1 rule(s)? [y/N] ", "n")])
    assert code == 0 and not (tmp_path / "other/etc/apparmor.d/local" / DPROFILE).exists()


# ---------------------------------------------------------------- the demo


def test_demo_runs_and_shows_its_key_outputs() -> None:
    """scripts/demo.sh (the README's first command) runs here as in CI, quickly."""
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "scripts/demo.sh")], capture_output=True,
                          text=True, timeout=600, check=False)
    took = time.monotonic() - t0
    print(f"\ndemo.sh: {took:.1f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert out.count("compiles") == 3                   # web01, db01, crafted
    for name in ("web01", "db01", "crafted"):
        assert f"virt-aa show -c {URI} {name}" in out
    assert "disk vda" in out                            # rules with their XML element
    assert "stock:" in out and "virt-aa:" in out and "other-vm.raw" in out
    assert "allowed on web01:" in out and "/srv/web-data/** rwk," in out
    assert "enforce -> complain" in out
    assert "== virt-aa history web01" in out and "debugging" in out
    assert out.rstrip().endswith("demo done: sandbox in /tmp/virt-aa-demo/root")
    assert took < 120

