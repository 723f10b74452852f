"""Per-VM rules and mode survive libvirt's lifecycle (spec §2.3), replayed call
by call: start (-c, or the prepare hook + -r), hotplug (-r -F), stop (-D), P
deleted as libvirt <= 5.x did, start again.  Once with our helper, once with
libvirt's real one in a private mount namespace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (
    FEATURES,
    PARSER,
    REPO,
    STOCK_HELPER,
    cli_argv,
    compile_profile,
    helper_argv,
)

URI = f"test://{REPO}/examples/node.xml"
NAME = "vm-stopped"
UUID = "2d7f4e10-8a3b-4c5d-9e6f-70a1b2c3d4e5"
PROFILE = f"libvirt-{UUID}"
RULE = "/srv/persist/** rwk,"


def virt_aa(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*cli_argv(), "--root", str(root), "-c", URI, *args],
                          capture_output=True, text=True, check=False,
                          env=dict(os.environ, VIRT_AA_DEBUG="1"))
    assert "Traceback" not in proc.stderr
    return proc


def xml() -> bytes:
    return subprocess.run(["virsh", "-c", URI, "dumpxml", "--inactive", NAME],
                          capture_output=True, check=True).stdout


def preprocessed(profile: Path, root: Path) -> str:
    """The profile as the parser reads it, includes expanded."""
    argv = [PARSER, "-p", "-I", str(root / "etc/apparmor.d"), "-I", "/etc/apparmor.d"]
    return subprocess.run(argv + [str(profile)], capture_output=True, text=True,
                          check=True).stdout


def assert_rule_and_mode_compiled(root: Path) -> None:
    p = root / "etc/apparmor.d/libvirt" / PROFILE
    check = compile_profile(p, root)
    assert check.returncode == 0, check.stderr
    text = preprocessed(p, root)
    assert f"profile {PROFILE} flags=(attach_disconnected, complain) {{" in text
    assert RULE in text


@pytest.fixture
def configured(sandbox: Path) -> Path:
    assert virt_aa(sandbox, "allow", NAME, RULE, "--comment", "lifecycle").returncode == 0
    assert virt_aa(sandbox, "complain", NAME).returncode == 0
    assert not (sandbox / "etc/apparmor.d/libvirt" / PROFILE).exists()
    return sandbox


def helper(root: Path, *args: str) -> None:
    env = dict(os.environ, VIRT_AA_ROOT=str(root), VIRT_AA_DEBUG="1")
    proc = subprocess.run([*helper_argv(), *args, "-u", PROFILE], input=xml(),
                          capture_output=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr


def test_lifecycle_with_our_helper(configured: Path, tmp_path: Path) -> None:
    root = configured
    p = root / "etc/apparmor.d/libvirt" / PROFILE
    f = root / "etc/apparmor.d/libvirt" / (PROFILE + ".files")
    helper(root, "-c")                                     # start
    assert_rule_and_mode_compiled(root)
    helper(root, "-r", "-F", str(tmp_path / "hot.img"))    # hotplug
    assert str(tmp_path / "hot.img") in f.read_text()
    assert_rule_and_mode_compiled(root)
    helper(root, "-D")                                     # stop
    assert not f.exists()
    assert_rule_and_mode_compiled(root)                    # P alone still loads
    p.unlink()                                             # libvirt <= 5.x
    helper(root, "-c")                                     # start again
    assert_rule_and_mode_compiled(root)
    assert "lifecycle" in (root / "etc/apparmor.d/local" / PROFILE).read_text()


STUB = """#!/bin/sh
echo "$*" >> {log}
exit 0
"""


def stock(root: Path, log: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """libvirt's own helper with /etc/apparmor.d/libvirt and the parser redirected."""
    stub = log.parent / "apparmor_parser-stub"
    stub.write_text(STUB.format(log=log))
    stub.chmod(0o755)
    script = ('set -e; mount --bind "$1" /etc/apparmor.d/libvirt; '
              'mount --bind "$2" "$(readlink -f /sbin/apparmor_parser)"; shift 2; '
              f'exec {STOCK_HELPER} "$@"')
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(root / "etc/apparmor.d/libvirt"), str(stub), *args, "-u", PROFILE],
        input=xml() if args[0] in ("-c", "-r") else b"", capture_output=True, check=False)


def hook(root: Path) -> None:
    env = dict(os.environ, VIRT_AA_ROOT=str(root), VIRT_AA_DEBUG="1")
    script = Path(helper_argv()[0]).with_name("virt-aa-hook")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "virt_aa.hook"]
    proc = subprocess.run([*argv, NAME, "prepare", "begin", "-"], input=xml(),
                          capture_output=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr


def test_lifecycle_with_libvirts_real_helper(configured: Path, tmp_path: Path) -> None:
    root = configured
    log = tmp_path / "parser.log"
    libvirt_dir = root / "etc/apparmor.d/libvirt"
    p, f = libvirt_dir / PROFILE, libvirt_dir / (PROFILE + ".files")
    real_p = f"/etc/apparmor.d/libvirt/{PROFILE}"

    hook(root)                                             # prepare begin: virt-aa writes P
    before = p.read_text()
    proc = stock(root, log, "-r")                          # libvirt sees P: -r, keeps it
    assert proc.returncode == 0, proc.stderr
    assert p.read_text() == before and f.exists()
    assert_rule_and_mode_compiled(root)

    proc = stock(root, log, "-r", "-F", str(tmp_path / "hot.img"))   # hotplug
    assert proc.returncode == 0, proc.stderr
    assert str(tmp_path / "hot.img") in f.read_text()
    assert_rule_and_mode_compiled(root)

    proc = stock(root, log, "-D")                          # stop
    assert proc.returncode == 0, proc.stderr
    assert not f.exists() and p.exists()
    assert_rule_and_mode_compiled(root)

    p.unlink()                                             # as libvirt <= 5.x did
    hook(root)                                             # next start
    proc = stock(root, log, "-r")
    assert proc.returncode == 0, proc.stderr
    assert_rule_and_mode_compiled(root)

    calls = log.read_text().splitlines()
    assert calls == [f"-r {real_p}", f"-r {real_p}", f"-R {real_p}", f"-r {real_p}"]
    assert os.path.exists(FEATURES)
