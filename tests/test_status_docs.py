"""status/prune against libvirt's test driver; completion and man page from the parser."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from conftest import REPO, cli_argv
from virt_aa.cli import build_parser
from virt_aa.cli.docgen import _subparsers

URI = f"test://{REPO}/examples/node.xml"
STALE = "libvirt-00000000-1111-2222-3333-444444444444"


def virt_aa(root: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*cli_argv(), "--root", str(root), "-c", URI, *args],
                          capture_output=True, text=True, check=False,
                          input=stdin.decode(), env=dict(os.environ, VIRT_AA_DEBUG="1"))
    assert "Traceback" not in proc.stderr
    return proc


def test_status_lists_every_domain_and_stale_profiles(sandbox: Path) -> None:
    assert virt_aa(sandbox, "allow", "web01", "/srv/s r,").returncode == 0
    assert virt_aa(sandbox, "complain", "vm-stopped").returncode == 0
    libvirt_dir = sandbox / "etc/apparmor.d/libvirt"
    (libvirt_dir / STALE).write_text("profile x {}\n")
    (libvirt_dir / (STALE + ".files")).write_text("")
    out = json.loads(virt_aa(sandbox, "status", "--json").stdout)
    rows = {r["name"]: r for r in out["domains"]}
    assert set(rows) == {"web01", "db01", "crafted", "vm-stopped"}
    assert rows["web01"]["vm_rules"] == 1 and rows["web01"]["state"] == "running"
    assert rows["vm-stopped"]["mode"] == "complain"
    assert rows["vm-stopped"]["state"] == "shut off"
    assert all(r["loaded"] is None for r in rows.values())
    assert out["kernel"] == "no AppArmor in this kernel"
    assert [s["profile"] for s in out["stale_profiles"]] == [STALE]
    text = virt_aa(sandbox, "status").stdout
    assert "no AppArmor in this kernel" in text and STALE in text


def test_prune_asks_then_removes_only_stale_profiles(sandbox: Path) -> None:
    libvirt_dir = sandbox / "etc/apparmor.d/libvirt"
    (libvirt_dir / STALE).write_text("profile x {}\n")
    local = sandbox / "etc/apparmor.d/local" / STALE
    local.write_text("/srv/kept r,\n")
    proc = virt_aa(sandbox, "prune")            # no terminal: refuses without --yes
    assert proc.returncode == 1 and "--yes" in proc.stderr
    assert (libvirt_dir / STALE).exists()
    proc = virt_aa(sandbox, "prune", "--yes")
    assert proc.returncode == 0 and STALE in proc.stdout
    assert not (libvirt_dir / STALE).exists()
    assert local.exists()                       # per-VM rules survive (same UUID again)
    assert (libvirt_dir / "TEMPLATE.qemu").exists()


def test_completion_and_man_cover_every_verb_and_option() -> None:
    parser = build_parser()
    subs = _subparsers(parser)
    comp = subprocess.run([*cli_argv(), "completion"], capture_output=True, text=True,
                          check=True).stdout
    man = subprocess.run([*cli_argv(), "man"], capture_output=True, text=True,
                         check=True).stdout
    assert subprocess.run(["bash", "-n"], input=comp, text=True, check=False).returncode == 0
    for name, sp in subs.items():
        assert f" {name}) opts=" in comp
        assert f".SS {name}" in man
        for action in sp._actions:
            for opt in action.option_strings:
                assert opt in comp
                if opt not in ("-h", "--help"):
                    assert opt.replace("-", "\\-") in man
    rendered = subprocess.run(["groff", "-man", "-Tutf8"], input=man, capture_output=True,
                              text=True, check=False) if os.path.exists("/usr/bin/groff") \
        else None
    if rendered is not None:
        assert rendered.returncode == 0


def test_completion_offers_verbs_and_domains() -> None:
    comp = subprocess.run([*cli_argv(), "completion"], capture_output=True, text=True,
                          check=True).stdout
    script = comp + (
        '\nCOMP_WORDS=(virt-aa al); COMP_CWORD=1; _virt_aa; echo "${COMPREPLY[@]}"'
        f'\nexport LIBVIRT_DEFAULT_URI={URI}'
        '\nCOMP_WORDS=(virt-aa show we); COMP_CWORD=2; _virt_aa; echo "${COMPREPLY[@]}"'
        '\nCOMP_WORDS=(virt-aa allow --co); COMP_CWORD=2; _virt_aa; echo "${COMPREPLY[@]}"')
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["allow", "web01", "--comment"]
