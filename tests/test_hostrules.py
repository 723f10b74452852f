"""Rules beyond one VM, end to end in a `--root` sandbox with the real parser:
`allow --all-vms` (the installed abstraction's extension point, both kinds) and
`allow --profile NAME` (the local/ file the installed profile includes): checked,
stored with provenance, listed, recorded, revoked, compiled into every affected profile,
and seen by `check`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from conftest import cli_argv, helper_argv

UUID = "6d1f7a52-8c3e-4b9d-a0e4-3f2b1c0d9e8a"
NAME = "hostwide"
ABSTRACTION = Path("/etc/apparmor.d/abstractions/libvirt-qemu")


def virt_aa(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*cli_argv(), "--root", str(root), *args], capture_output=True,
                          text=True, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def js(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def dom(tmp: Path) -> Path:
    xml = tmp / "dom.xml"
    xml.write_text(f"""<domain type='kvm'><name>{NAME}</name><uuid>{UUID}</uuid>
<memory>65536</memory><os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices></devices></domain>""")
    return xml


def start(root: Path, xml: Path) -> Path:
    """The VM's profile on disk, as at its start (our helper, -c)."""
    env = dict(os.environ, VIRT_AA_ROOT=str(root))
    proc = subprocess.run([*helper_argv(), "-c", "-u", f"libvirt-{UUID}"],
                          input=xml.read_bytes(), capture_output=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    p = root / "etc/apparmor.d/libvirt" / f"libvirt-{UUID}"
    assert p.exists()
    return p


def test_all_vms_rule_lives_in_the_local_abstraction(tmp_path: Path, sandbox: Path) -> None:
    xml = dom(tmp_path)
    rule = "/srv/shared-isos/** r,"
    assert virt_aa(sandbox, "check", "--xml", str(xml), "/srv/shared-isos/a.iso").returncode \
        == 2
    start(sandbox, xml)
    added = js(virt_aa(sandbox, "allow", "--all-vms", rule, "--comment", "isos", "--json"))
    target = sandbox / "etc/apparmor.d/local/abstractions/libvirt-qemu"
    assert added["file"] == str(target) and [r["rule"] for r in added["added"]] == [rule]
    assert "compiled 1 profile(s)" in added["status"]          # the running VM's P
    assert f"# virt-aa: id={added['added'][0]['id']}" in target.read_text()
    # every VM's effective policy has it now
    assert virt_aa(sandbox, "check", "--xml", str(xml), "/srv/shared-isos/a.iso").returncode \
        == 0
    listed = js(virt_aa(sandbox, "rules", "--all-vms", "--json"))
    assert [(r["rule"], r["comment"]) for r in listed["rules"]] == [(rule, "isos")]
    again = js(virt_aa(sandbox, "allow", "--all-vms", rule, "--json"))
    assert again["added"] == []
    # the same checks as per-VM rules
    bad = virt_aa(sandbox, "allow", "--all-vms", "/etc/shadow r,")
    assert bad.returncode != 0 and "restricted" in bad.stderr
    broken = virt_aa(sandbox, "allow", "--all-vms", "/srv/x rwz,")
    assert broken.returncode != 0
    assert [r["rule"] for r in js(virt_aa(sandbox, "rules", "--all-vms", "--json"))["rules"]] \
        == [rule]
    gone = js(virt_aa(sandbox, "revoke", "--all-vms", added["added"][0]["id"], "--json"))
    assert gone["revoked"]["rule"] == rule
    assert virt_aa(sandbox, "check", "--xml", str(xml), "/srv/shared-isos/a.iso").returncode \
        == 2
    hist = js(virt_aa(sandbox, "history", "--all-vms", "--json"))["history"]
    assert [(h["action"], h["rule"]) for h in hist] == [("allow", rule), ("revoke", rule)]
    assert hist[0]["why"] == "isos" and hist[0]["target"] == "every VM"


def test_all_vms_rule_uses_the_dot_d_directory_when_libvirt_has_it(
        tmp_path: Path, sandbox: Path) -> None:
    """libvirt >= 9.6's abstraction: `include if exists <abstractions/libvirt-qemu.d>`."""
    text = ABSTRACTION.read_text()
    newer = "\n".join("  include if exists <abstractions/libvirt-qemu.d>"
                      if "local/abstractions/libvirt-qemu" in line else line
                      for line in text.splitlines()) + "\n"
    assert newer != text
    (sandbox / "etc/apparmor.d/abstractions").mkdir(parents=True)
    (sandbox / "etc/apparmor.d/abstractions/libvirt-qemu").write_text(newer)
    xml = dom(tmp_path)
    added = js(virt_aa(sandbox, "allow", "--all-vms", "/srv/isos/** r,", "--json"))
    assert added["file"] == str(sandbox / "etc/apparmor.d/abstractions/libvirt-qemu.d/virt-aa")
    assert "probe" in added["status"]                         # no VM profile on disk
    assert not (sandbox / "etc/apparmor.d/local/abstractions/libvirt-qemu").exists()
    assert virt_aa(sandbox, "check", "--xml", str(xml), "/srv/isos/x.iso").returncode == 0
    (sandbox / "etc/apparmor.d/abstractions/libvirt-qemu").write_text(
        text.replace("local/abstractions/libvirt-qemu", "local/something-else"))
    none = virt_aa(sandbox, "allow", "--all-vms", "/srv/b r,")
    assert none.returncode != 0 and "includes neither" in none.stderr


def test_profile_rule_for_libvirtd(sandbox: Path) -> None:
    local = sandbox / "etc/apparmor.d/local/usr.sbin.libvirtd"
    added = js(virt_aa(sandbox, "allow", "--profile", "libvirtd", "/srv/isos/** r,",
                       "--json"))
    assert added["file"] == str(local) and "compiled 1 profile(s)" in added["status"]
    assert "/srv/isos/** r," in local.read_text()
    # a rule the parser refuses inside the whole profile leaves nothing behind
    before = local.read_text()
    bad = virt_aa(sandbox, "allow", "--profile", "libvirtd", "--force", "/usr/bin/* ix,")
    assert bad.returncode != 0 and "does not compile" in bad.stderr    # vs /usr/bin/* PUx
    assert local.read_text() == before
    rid = added["added"][0]["id"]
    assert js(virt_aa(sandbox, "revoke", "--profile", "libvirtd", rid, "--json"))["revoked"]
    assert "/srv/isos" not in local.read_text()
    hist = js(virt_aa(sandbox, "history", "--profile", "libvirtd", "--json"))["history"]
    assert [h["action"] for h in hist] == ["allow", "revoke"]


def test_profile_without_a_local_file_is_refused(sandbox: Path) -> None:
    prof = sandbox / "etc/apparmor.d/usr.bin.passt"
    prof.parent.mkdir(parents=True, exist_ok=True)
    prof.write_text("abi <abi/3.0>,\ninclude <tunables/global>\n"
                    "profile passt /usr/bin/passt{,.avx2} {\n  include <abstractions/base>\n}\n")
    res = virt_aa(sandbox, "allow", "--profile", "passt", "/srv/x r,")
    assert res.returncode != 0 and "includes no <local/...>" in res.stderr
    prof.write_text(prof.read_text().replace(
        "}\n", "  include if exists <local/usr.bin.passt>\n}\n"))
    ok = js(virt_aa(sandbox, "allow", "--profile", "passt", "/srv/x r,", "--json"))
    assert ok["file"] == str(sandbox / "etc/apparmor.d/local/usr.bin.passt")
    unknown = virt_aa(sandbox, "allow", "--profile", "swtpm", "/srv/x r,")
    assert unknown.returncode != 0 and "no AppArmor profile for swtpm" in unknown.stderr
