"""install/uninstall: idempotent, dry-run honest, nothing of the admin's lost."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import FEATURES, PARSER, REPO, cli_argv

STOCK = "/usr/lib/libvirt/virt-aa-helper"


def virt_aa(root: Path, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*cli_argv(), "--root", str(root), *args], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, check=False,
                          env=env or dict(os.environ, VIRT_AA_DEBUG="1"))
    assert "Traceback" not in proc.stderr
    return proc


def tree(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[str((Path(dirpath) / d).relative_to(root)) + "/"] = "dir"
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def host(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    (root / "etc/libvirt").mkdir(parents=True)
    (root / "etc/apparmor.d/local").mkdir(parents=True)
    (root / "usr/lib/libvirt").mkdir(parents=True)
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/diversions").write_text("")
    shutil.copy2(STOCK, root / "usr/lib/libvirt/virt-aa-helper")
    return root


def test_hook_install_is_idempotent_and_uninstall_restores(host: Path) -> None:
    before = tree(host)
    first = virt_aa(host, "install")
    assert first.returncode == 0, first.stderr
    assert "SIGHUP" in first.stdout
    hook = host / "etc/libvirt/hooks/qemu.d/virt-aa"
    entry = host / "usr/sbin/virt-aa-hook"
    assert os.access(hook, os.X_OK) and os.access(entry, os.X_OK)
    assert f"exec {entry} --root {host}" in hook.read_text()
    after = tree(host)
    second = virt_aa(host, "install")
    assert second.returncode == 0 and "create" not in second.stdout
    assert tree(host) == after
    assert virt_aa(host, "uninstall").returncode == 0
    left = {k: v for k, v in tree(host).items()
            if not k.startswith(("usr/sbin", "var/lib/virt-aa"))}   # empty dirs may stay
    assert left == before
    again = virt_aa(host, "uninstall")
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_entry_point_profile_compiles(host: Path) -> None:
    assert virt_aa(host, "install").returncode == 0
    prof = host / "etc/apparmor.d/usr.sbin.virt-aa-hook"
    argv = [PARSER, "-Q", "-T", "-K", "-I", "/etc/apparmor.d", "--features-file", FEATURES]
    proc = subprocess.run(argv + [str(prof)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"profile virt-aa-hook {host}/usr/sbin/virt-aa-hook" in prof.read_text()


def test_dry_run_changes_nothing(host: Path) -> None:
    before = tree(host)
    proc = virt_aa(host, "install", "--dry-run")
    assert proc.returncode == 0 and "would: create" in proc.stdout
    assert tree(host) == before
    assert virt_aa(host, "install").returncode == 0
    installed = tree(host)
    proc = virt_aa(host, "uninstall", "--dry-run")
    assert "would: remove" in proc.stdout
    assert tree(host) == installed


def test_existing_qemu_hook_and_qemu_d_scripts_are_kept(host: Path) -> None:
    hooks = host / "etc/libvirt/hooks"
    (hooks / "qemu.d").mkdir(parents=True)
    (hooks / "qemu").write_text("#!/bin/sh\necho admin hook\n")
    (hooks / "qemu").chmod(0o755)
    (hooks / "qemu.d/00-admin").write_text("#!/bin/sh\nexit 0\n")
    before = tree(hooks)
    assert virt_aa(host, "install").returncode == 0
    assert (hooks / "qemu").read_text() == "#!/bin/sh\necho admin hook\n"
    assert (hooks / "qemu.d/00-admin").exists() and (hooks / "qemu.d/virt-aa").exists()
    assert virt_aa(host, "uninstall").returncode == 0
    assert tree(hooks) == before        # qemu.d was the admin's: kept, with their script


def test_a_foreign_file_in_our_place_is_never_overwritten(host: Path) -> None:
    qd = host / "etc/libvirt/hooks/qemu.d"
    qd.mkdir(parents=True)
    (qd / "virt-aa").write_text("#!/bin/sh\n# the admin's own script of that name\n")
    before = tree(host)
    proc = virt_aa(host, "install")
    assert proc.returncode == 1 and "is not virt-aa's" in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert tree(host) == before


def test_previous_version_is_upgraded_in_place(host: Path) -> None:
    assert virt_aa(host, "install").returncode == 0
    hook = host / "etc/libvirt/hooks/qemu.d/virt-aa"
    hook.write_text(hook.read_text().replace("exec", "# older version\nexec"))
    proc = virt_aa(host, "install")
    assert proc.returncode == 0 and f"update {hook}" in proc.stdout
    assert "older version" not in hook.read_text()
    assert virt_aa(host, "uninstall").returncode == 0
    assert not hook.exists()


def test_half_finished_install_is_completed_and_removed(host: Path) -> None:
    assert virt_aa(host, "install").returncode == 0
    (host / "var/lib/virt-aa/install.json").unlink()    # crashed before the manifest
    (host / "etc/apparmor.d/usr.sbin.virt-aa-hook").unlink()
    assert virt_aa(host, "install").returncode == 0
    assert (host / "etc/apparmor.d/usr.sbin.virt-aa-hook").exists()
    (host / "var/lib/virt-aa/install.json").unlink()
    assert virt_aa(host, "uninstall").returncode == 0
    assert not (host / "etc/libvirt/hooks/qemu.d/virt-aa").exists()
    assert not (host / "usr/sbin/virt-aa-hook").exists()


def test_helper_mode_diverts_and_restores(host: Path) -> None:
    override = host / "etc/apparmor.d/local/usr.lib.libvirt.virt-aa-helper"
    override.write_text("# the admin's own line\n")
    helper = host / "usr/lib/libvirt/virt-aa-helper"
    stock_hash = hashlib.sha256(helper.read_bytes()).hexdigest()
    proc = virt_aa(host, "install", "--mode", "helper")
    assert proc.returncode == 0, proc.stderr
    assert (host / "usr/lib/libvirt/virt-aa-helper.stock").exists()
    assert helper.read_text().startswith("#!/usr/bin/python3 -IS\n")
    out = subprocess.run([str(helper), "-h"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "Modes:" in out.stdout
    text = override.read_text()
    assert text.startswith("# the admin's own line\n") and "# BEGIN virt-aa" in text
    argv = [PARSER, "-Q", "-T", "-K", "-I", str(host / "etc/apparmor.d"), "-I",
            "/etc/apparmor.d", "--features-file", FEATURES,
            "/etc/apparmor.d/usr.lib.libvirt.virt-aa-helper"]
    assert subprocess.run(argv, capture_output=True, check=False).returncode == 0
    assert virt_aa(host, "install", "--mode", "helper").returncode == 0   # idempotent
    assert virt_aa(host, "install").returncode == 1                       # other mode
    assert virt_aa(host, "uninstall").returncode == 0
    assert hashlib.sha256(helper.read_bytes()).hexdigest() == stock_hash
    assert override.read_text() == "# the admin's own line\n"
    assert not (host / "usr/lib/libvirt/virt-aa-helper.stock").exists()


def test_refuses_without_libvirt_or_dpkg_divert(tmp_path: Path, host: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = virt_aa(empty, "install")
    assert proc.returncode == 1 and "libvirt is not installed" in proc.stderr
    assert list(empty.iterdir()) == []
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("apparmor_parser",):
        (bindir / tool).symlink_to(shutil.which(tool) or PARSER)
    env = dict(os.environ, PATH=str(bindir))
    before = tree(host)
    proc = virt_aa(host, "install", "--mode", "helper", env=env)
    assert proc.returncode == 1 and "dpkg-divert not found" in proc.stderr
    assert tree(host) == before


# -- where the launchers point: a warning for a checkout/venv, --refresh for upgrades

SRC = str(REPO / "src")


def test_install_from_the_venv_warns_that_launchers_depend_on_it(host: Path) -> None:
    proc = virt_aa(host, "install")
    assert proc.returncode == 0, proc.stderr
    warn = [ln for ln in proc.stdout.splitlines() if ln.startswith("warn")]
    assert len(warn) == 1 and SRC in warn[0] and "Debian package" in warn[0], proc.stdout
    assert repr(SRC) in (host / "usr/sbin/virt-aa-hook").read_text()
    as_json = virt_aa(host, "install", "--json")
    assert "warning:" in as_json.stderr and SRC in as_json.stderr
    assert any(s.startswith("warn") for s in json.loads(as_json.stdout)["steps"])


def test_a_system_wide_copy_gets_no_warning(host: Path, tmp_path: Path) -> None:
    """The same code run by /usr/bin/python3 from under /usr (as the package does)."""
    if not os.access("/usr/local/lib", os.W_OK):
        pytest.fail("needs root to place a copy under /usr/local/lib (run as CI does)")
    site = Path(f"/usr/local/lib/virt-aa-test-{os.getpid()}")
    try:
        shutil.copytree(SRC, site, ignore=shutil.ignore_patterns("__pycache__", "*.so",
                                                                 "*.egg-info"))
        code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
                "from virt_aa.cli import main; sys.exit(main())")
        proc = subprocess.run(["/usr/bin/python3", "-I", "-c", code, str(site),
                               "--root", str(host), "install"],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert "warn" not in proc.stdout, proc.stdout
        assert repr(str(site)) in (host / "usr/sbin/virt-aa-hook").read_text()
    finally:
        shutil.rmtree(site, ignore_errors=True)


def test_refresh_keeps_the_mode_and_repoints_launchers(host: Path) -> None:
    assert "nothing to refresh" in virt_aa(host, "install", "--refresh").stdout
    assert not (host / "var/lib/virt-aa/install.json").exists()
    assert virt_aa(host, "install", "--mode", "helper").returncode == 0
    helper = host / "usr/lib/libvirt/virt-aa-helper"
    helper.write_text(helper.read_text().replace(SRC, "/old/checkout/src"))
    proc = virt_aa(host, "install", "--refresh")
    assert proc.returncode == 0, proc.stderr
    assert repr(SRC) in helper.read_text() and "/old/checkout" not in helper.read_text()
    manifest = json.loads((host / "var/lib/virt-aa/install.json").read_text())
    assert manifest["mode"] == "helper"
    assert not (host / "usr/sbin/virt-aa-hook").exists()
