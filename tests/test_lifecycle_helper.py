"""The non-dry-run modes, in a --root sandbox, in the order libvirt calls them
(spec §2.3): start (-c or -r), hotplug (-r -F), unplug (full -r), stop (-D)."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import PROFILE, compile_profile, domain_xml, run_helper

DISK = ("<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        "<source file='{path}'/><target dev='vda' bus='virtio'/></disk>")


def paths(root: Path) -> tuple[Path, Path]:
    base = root / "etc/apparmor.d/libvirt"
    return base / PROFILE, base / (PROFILE + ".files")


def test_start_hotplug_stop_start(sandbox: Path, tmp_path: Path) -> None:
    img = tmp_path / "vm.img"
    img.write_bytes(b"")
    xml = domain_xml(DISK.format(path=img))
    p, f = paths(sandbox)

    start = run_helper(["-c", "-u", PROFILE], xml, root=str(sandbox))
    assert start.returncode == 0, start.stderr
    assert b"compile check only" in start.stderr      # announced, never "loaded"
    text = p.read_text()
    assert f"profile {PROFILE} flags=(attach_disconnected) {{" in text
    assert f"include if exists <libvirt/{PROFILE}.files>" in text
    assert "LIBVIRT_TEMPLATE" not in text
    assert f'"{img}" rwk,' in f.read_text()
    assert compile_profile(p, sandbox).returncode == 0

    again = run_helper(["-c", "-u", PROFILE], xml, root=str(sandbox))
    assert again.returncode == 1 and b"profile exists" in again.stderr

    hot = tmp_path / "hot.img"
    plug = run_helper(["-r", "-u", PROFILE, "-F", str(hot)], xml, root=str(sandbox))
    assert plug.returncode == 0, plug.stderr
    content = f.read_text()
    assert content.endswith(f'  "{hot}" rwk,\n') and f'"{img}" rwk,' in content
    assert p.read_text() == text                       # -r never rewrites P

    unplug = run_helper(["-r", "-u", PROFILE], xml, root=str(sandbox))
    assert unplug.returncode == 0
    assert str(hot) not in f.read_text()

    stop = run_helper(["-D", "-u", PROFILE], None, root=str(sandbox))
    assert stop.returncode == 0, stop.stderr
    assert not f.exists() and p.exists()               # P kept, as libvirt >= 6 does
    # include if exists: P still compiles without F
    assert compile_profile(p, sandbox).returncode == 0

    restart = run_helper(["-r", "-u", PROFILE], xml, root=str(sandbox))
    assert restart.returncode == 0 and f.exists()
    assert not [n for n in os.listdir(p.parent) if n.endswith(".tmp")]


def test_replace_without_profile_fails_and_cleans_up(sandbox: Path) -> None:
    p, f = paths(sandbox)
    proc = run_helper(["-r", "-u", PROFILE], domain_xml(), root=str(sandbox))
    assert proc.returncode == 1 and b"profile does not exist" in proc.stderr
    assert not f.exists() and not p.exists()


def test_zero_size_profile_is_recreated(sandbox: Path) -> None:
    p, _ = paths(sandbox)
    p.write_bytes(b"")
    proc = run_helper(["-r", "-u", PROFILE], domain_xml(), root=str(sandbox))
    assert proc.returncode == 0, proc.stderr
    assert b"Profile of 0 size detected" in proc.stderr
    assert f"profile {PROFILE} " in p.read_text()


def test_missing_or_broken_template(sandbox: Path) -> None:
    p, f = paths(sandbox)
    tmpl = p.parent / "TEMPLATE.qemu"
    tmpl.unlink()
    proc = run_helper(["-c", "-u", PROFILE], domain_xml(), root=str(sandbox))
    assert proc.returncode == 1 and b"template does not exist" in proc.stderr
    assert not f.exists() and not p.exists()
    tmpl.write_text("profile LIBVIRT_TEMPLATE {\n}\n")   # marker on the first line
    proc = run_helper(["-c", "-u", PROFILE], domain_xml(), root=str(sandbox))
    assert proc.returncode == 1 and b"no replacement string" in proc.stderr
    assert not f.exists() and not p.exists()


def test_template_with_child_profile_is_not_truncated(sandbox: Path) -> None:
    """Stock inserts the include at every column-0 brace and truncates the file."""
    p, _ = paths(sandbox)
    (p.parent / "TEMPLATE.qemu").write_text(
        "#include <tunables/global>\n\nprofile LIBVIRT_TEMPLATE flags=(attach_disconnected) {\n"
        "  #include <abstractions/libvirt-qemu>\n  profile child {\n  /x r,\n}\n}\n")
    proc = run_helper(["-c", "-u", PROFILE], domain_xml(), root=str(sandbox))
    assert proc.returncode == 0, proc.stderr
    text = p.read_text()
    assert text.count(".files>") == 1 and text.rstrip().endswith("}")
    assert compile_profile(p, sandbox).returncode == 0


def test_parser_failure_removes_new_files(sandbox: Path) -> None:
    p, f = paths(sandbox)
    (p.parent / "TEMPLATE.qemu").write_text(
        "#\nprofile LIBVIRT_TEMPLATE {\n  this is not a rule\n}\n")
    proc = run_helper(["-c", "-u", PROFILE], domain_xml(), root=str(sandbox))
    assert proc.returncode == 1
    assert b"apparmor_parser exited with error" in proc.stderr
    assert not p.exists() and not f.exists()


def test_lxc_writes_no_files_include(sandbox: Path, tmp_path: Path) -> None:
    xml = domain_xml(virt="lxc").replace(b"hvm", b"exe")
    p, f = paths(sandbox)
    proc = run_helper(["-c", "-u", PROFILE], xml, root=str(sandbox))
    assert proc.returncode == 0, proc.stderr
    assert p.exists() and not f.exists()
    assert ".files" not in p.read_text()
