"""Changes apply live: P rewritten, the loaded profile replaced, or nothing changed.

This machine's kernel has no AppArmor, so the one fake here is the kernel:
a stand-in securityfs ``profiles`` list (VIRT_AA_SECURITYFS) and a parser
stand-in (VIRT_AA_PARSER) that records every load/replace it is asked for
and fails on request; compile checks (-Q) still go to the real parser.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from conftest import PARSER, REPO, cli_argv

URI = f"test://{REPO}/examples/node.xml"
UUID = "6f1c2b8e-0d4a-4c39-9a57-3b1f0e2d4c11"
PROFILE = f"libvirt-{UUID}"

STUB = """#!/bin/sh
for a in "$@"; do case "$a" in -Q|--version) exec {parser} "$@";; esac; done
echo "$*" >> {log}
read rc < {rc}
exit $rc
"""


class Kernel:
    def __init__(self, tmp: Path) -> None:
        self.fs = tmp / "securityfs"
        self.fs.mkdir()
        self.log = tmp / "parser.log"
        self.rc = tmp / "parser.rc"
        self.rc.write_text("0")
        self.parser = tmp / "apparmor_parser"
        self.parser.write_text(STUB.format(parser=PARSER, log=self.log, rc=self.rc))
        self.parser.chmod(0o755)
        self.load([])

    def load(self, names: list[str]) -> None:
        (self.fs / "profiles").write_text("".join(f"{n} (enforce)\n" for n in names))

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def env(self) -> dict[str, str]:
        return dict(os.environ, VIRT_AA_SECURITYFS=str(self.fs), VIRT_AA_PARSER=str(self.parser),
                    VIRT_AA_DEBUG="1")


def run(root: Path, kernel: Kernel, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*cli_argv(), "--root", str(root), "-c", URI, *args],
                          capture_output=True, text=True, env=kernel.env(), check=False)
    assert "Traceback" not in proc.stderr
    return proc


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.name != "lock":
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def running(sandbox: Path, tmp_path: Path) -> tuple[Path, Kernel]:
    kernel = Kernel(tmp_path)
    xml = subprocess.run(["virsh", "-c", URI, "dumpxml", "web01"], capture_output=True,
                         check=True).stdout
    hook = Path(cli_argv()[0]).with_name("virt-aa-hook")
    proc = subprocess.run([str(hook), "--root", str(sandbox), "web01", "prepare", "begin", "-"],
                          input=xml, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    kernel.load([PROFILE])
    return sandbox, kernel


def test_change_replaces_the_loaded_profile(running: tuple[Path, Kernel]) -> None:
    root, kernel = running
    p = root / "etc/apparmor.d/libvirt" / PROFILE
    proc = run(root, kernel, "allow", "web01", "/srv/live/** r,")
    assert proc.returncode == 0, proc.stderr
    assert "replaced the loaded profile" in proc.stdout
    assert kernel.calls() == [f"-r -I {root}/etc/apparmor.d {p}"]
    proc = run(root, kernel, "complain", "web01")
    assert proc.returncode == 0
    assert "complain" in p.read_text().split("{")[0]
    assert len(kernel.calls()) == 2


def test_failed_replace_changes_nothing(running: tuple[Path, Kernel]) -> None:
    root, kernel = running
    assert run(root, kernel, "allow", "web01", "/srv/first r,").returncode == 0
    before = snapshot(root)
    kernel.rc.write_text("1")
    for args in (("allow", "web01", "/srv/second r,"), ("complain", "web01"),
                 ("revoke", "web01", "/srv/first r,")):
        proc = run(root, kernel, *args)
        assert proc.returncode == 1
        assert "previous profile stays on disk and loaded" in proc.stderr
        assert proc.stderr.count("\n") == 1
        assert snapshot(root) == before


def test_vm_not_loaded_gets_it_at_next_start(running: tuple[Path, Kernel]) -> None:
    root, kernel = running
    kernel.load([])
    proc = run(root, kernel, "allow", "web01", "/srv/later r,")
    assert proc.returncode == 0
    assert "not loaded" in proc.stdout
    assert kernel.calls() == []
    assert "/srv/later r," in (root / "etc/apparmor.d/local" / PROFILE).read_text()


def test_show_reports_mode_rules_and_currency(running: tuple[Path, Kernel]) -> None:
    import json

    root, kernel = running
    assert run(root, kernel, "allow", "web01", "/etc/ssl/certs/ca.pem r,", "--force",
               "--comment", "CA bundle").returncode == 0
    out = json.loads(run(root, kernel, "show", "web01", "--json").stdout)
    assert out["mode"] == "enforce"
    assert out["profile_status"]["current"] is True
    assert out["profile_status"]["loaded"] is True
    rule = out["vm_rules"][0]
    assert rule["restricted"] is True and rule["force"] == "yes"
    assert rule["comment"] == "CA bundle"
    assert any(r["origin"] == "disk vda" for r in out["generated_rules"])
    text = run(root, kernel, "show", "web01").stdout
    assert "RESTRICTED" in text
    # a hand edit makes P stale only if it changes P; a template edit does
    tmpl = root / "etc/apparmor.d/libvirt/TEMPLATE.qemu"
    tmpl.write_text(tmpl.read_text().replace("attach_disconnected",
                                             "attach_disconnected,mediate_deleted"))
    out = json.loads(run(root, kernel, "show", "web01", "--json").stdout)
    assert out["profile_status"]["current"] is False
    assert run(root, kernel, "reload", "web01").returncode == 0
    out = json.loads(run(root, kernel, "show", "web01", "--json").stdout)
    assert out["profile_status"]["current"] is True


def test_history_records_who_what_why(running: tuple[Path, Kernel]) -> None:
    import json

    root, kernel = running
    env = kernel.env()
    env["SUDO_USER"] = "alice"
    subprocess.run([*cli_argv(), "--root", str(root), "-c", URI, "allow", "web01",
                    "/srv/h r,", "--comment", "needed for backups"], env=env, check=True,
                   capture_output=True)
    run(root, kernel, "complain", "web01", "--comment", "debugging")
    hist = json.loads(run(root, kernel, "history", "web01", "--json").stdout)["history"]
    assert [h["action"] for h in hist] == ["allow", "complain"]
    assert hist[0]["user"] == "alice" and hist[0]["why"] == "needed for backups"
    assert hist[1]["why"] == "debugging" and hist[1]["from"] == "enforce"


def test_broken_rules_fallback_is_the_stock_profile(sandbox: Path, tmp_path: Path) -> None:
    """on_broken_rules = "stock": the VM starts without its per-VM rules, never wider."""
    kernel = Kernel(tmp_path)
    (sandbox / "etc/virt-aa/config.toml").write_text('on_broken_rules = "stock"\n')
    local = sandbox / "etc/apparmor.d/local" / PROFILE
    local.write_text("/srv/ok r,\n/srv/broken rwz,\n")
    xml = subprocess.run(["virsh", "-c", URI, "dumpxml", "web01"], capture_output=True,
                         check=True).stdout
    hook = Path(cli_argv()[0]).with_name("virt-aa-hook")
    proc = subprocess.run([str(hook), "--root", str(sandbox), "web01", "prepare", "begin", "-"],
                          input=xml, capture_output=True, check=False, env=kernel.env())
    assert proc.returncode == 0, proc.stderr
    assert b"stock profile" in proc.stderr
    text = (sandbox / "etc/apparmor.d/libvirt" / PROFILE).read_text()
    assert f"local/{PROFILE}" not in text
    (sandbox / "etc/virt-aa/config.toml").write_text('on_broken_rules = "refuse"\n')
    proc = subprocess.run([str(hook), "--root", str(sandbox), "web01", "prepare", "begin", "-"],
                          input=xml, capture_output=True, check=False, env=kernel.env())
    assert proc.returncode == 1
    assert f"{local}:2:".encode() in proc.stderr


def test_apparmor_2_gets_plain_includes_and_an_existing_file(sandbox: Path,
                                                             tmp_path: Path) -> None:
    kernel = Kernel(tmp_path)
    env = dict(kernel.env(), VIRT_AA_APPARMOR_MAJOR="2")
    xml = subprocess.run(["virsh", "-c", URI, "dumpxml", "web01"], capture_output=True,
                         check=True).stdout
    hook = Path(cli_argv()[0]).with_name("virt-aa-hook")
    subprocess.run([str(hook), "--root", str(sandbox), "web01", "prepare", "begin", "-"],
                   input=xml, check=True, env=env)
    text = (sandbox / "etc/apparmor.d/libvirt" / PROFILE).read_text()
    assert f"  #include <local/{PROFILE}>" in text and "if exists" not in text
    assert (sandbox / "etc/apparmor.d/local" / PROFILE).exists()
