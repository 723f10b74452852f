"""Named policies, attachment through domain metadata, export/import, drift."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import cli_argv

UUID = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
PROFILE = f"libvirt-{UUID}"
POLICY = "/srv/nfs/** rwk,\n# read-only reference data\n/srv/ref/ r,\n/srv/ref/** r,\n"
HOST = os.uname().nodename


def virt_aa(root: Path, *args: str, stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*cli_argv(), "--root", str(root), *args], capture_output=True,
                          text=True, input=stdin, check=False,
                          env=dict(os.environ, VIRT_AA_DEBUG="1"))
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def hook(root: Path, op: str, xml: bytes) -> subprocess.CompletedProcess[bytes]:
    entry = Path(cli_argv()[0]).with_name("virt-aa-hook")
    return subprocess.run([str(entry), "--root", str(root), "fleetvm", op, "begin", "-"],
                          input=xml, capture_output=True, check=False)


@pytest.fixture
def dom(tmp_path: Path) -> Path:
    xml = tmp_path / "fleetvm.xml"
    xml.write_text(f"<domain type='kvm'><name>fleetvm</name><uuid>{UUID}</uuid>"
                   f"<memory>65536</memory><os><type arch='x86_64' machine='pc'>hvm</type>"
                   f"</os><devices/></domain>\n")
    return xml


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    p = tmp_path / "nfs-data.aa"
    p.write_text(POLICY)
    return p


def test_policy_add_list_show_remove(sandbox: Path, policy_file: Path) -> None:
    first = virt_aa(sandbox, "policy", "add", "nfs-data", str(policy_file))
    assert first.returncode == 0 and first.stdout.startswith("installed")
    assert virt_aa(sandbox, "policy", "add", "nfs-data", str(policy_file)
                   ).stdout.startswith("unchanged")
    rows = json.loads(virt_aa(sandbox, "policy", "list", "--json").stdout)["policies"]
    assert [(r["name"], r["rules"]) for r in rows] == [("nfs-data", 3)]
    shown = json.loads(virt_aa(sandbox, "policy", "show", "nfs-data", "--json").stdout)
    assert shown["text"] == POLICY
    assert virt_aa(sandbox, "policy", "remove", "nfs-data").returncode == 0
    assert json.loads(virt_aa(sandbox, "policy", "list", "--json").stdout)["policies"] == []


@pytest.mark.parametrize("name,text,why", [
    ("bad name", "/srv/x r,\n", "invalid policy name"),
    ("../etc", "/srv/x r,\n", "invalid policy name"),
    ("p", "/srv/x rwz,\n", "line 1"),
    ("p", "/srv/x r,\n} profile evil { /** rwx,\n", "line 2"),
    ("p", "/etc/** r,\n", "restricted"),
    ("p", "capability bogus,\n", "apparmor_parser"),
])
def test_bad_policies_refused(sandbox: Path, tmp_path: Path, name: str, text: str,
                              why: str) -> None:
    f = tmp_path / "p.aa"
    f.write_text(text)
    proc = virt_aa(sandbox, "policy", "add", name, str(f))
    assert proc.returncode == 1 and why in proc.stderr
    assert not (sandbox / "etc/virt-aa/policies").exists() or \
        not list((sandbox / "etc/virt-aa/policies").iterdir())


def test_attach_travels_by_name_and_hash(sandbox: Path, dom: Path, policy_file: Path) -> None:
    assert virt_aa(sandbox, "policy", "add", "nfs-data", str(policy_file)).returncode == 0
    proc = virt_aa(sandbox, "attach", "--xml", str(dom), "nfs-data")
    assert proc.returncode == 0, proc.stderr
    xml = dom.read_text()
    assert "nfs-data" in xml and "sha256=" in xml and "/srv/nfs" not in xml  # no rule text
    assert "nothing to do" in virt_aa(sandbox, "attach", "--xml", str(dom), "nfs-data").stdout
    # the host where it starts resolves the name
    ok = hook(sandbox, "prepare", dom.read_bytes())
    assert ok.returncode == 0, ok.stderr
    p = (sandbox / "etc/apparmor.d/libvirt" / PROFILE).read_text()
    assert f'#include "{os.path.realpath(sandbox)}/etc/virt-aa/policies/nfs-data"' in p
    # incoming migration: passes the XML through unchanged
    mig = hook(sandbox, "migrate", dom.read_bytes())
    assert mig.returncode == 0 and mig.stdout == dom.read_bytes()
    # changed on this host: refused, naming policy and host
    (sandbox / "etc/virt-aa/policies/nfs-data").write_text(POLICY + "/srv/more r,\n")
    bad = hook(sandbox, "prepare", dom.read_bytes())
    assert bad.returncode == 1
    err = bad.stderr.decode()
    assert "nfs-data" in err and HOST in err and "differs" in err
    assert hook(sandbox, "migrate", dom.read_bytes()).returncode == 1
    # missing: refused too; with on_policy_mismatch = "warn" it starts without it
    (sandbox / "etc/virt-aa/policies/nfs-data").unlink()
    missing = hook(sandbox, "prepare", dom.read_bytes())
    assert missing.returncode == 1 and b"not installed" in missing.stderr
    (sandbox / "etc/virt-aa/config.toml").write_text('on_policy_mismatch = "warn"\n')
    warned = hook(sandbox, "prepare", dom.read_bytes())
    assert warned.returncode == 0 and b"warning" in warned.stderr
    assert "policies/nfs-data" not in (sandbox / "etc/apparmor.d/libvirt" / PROFILE).read_text()
    assert virt_aa(sandbox, "detach", "--xml", str(dom), "nfs-data").returncode == 0
    assert "virt-aa.dev" not in dom.read_text()


def test_export_import_is_idempotent_and_shows_a_diff(sandbox: Path, tmp_path: Path,
                                                      dom: Path, policy_file: Path) -> None:
    assert virt_aa(sandbox, "policy", "add", "nfs-data", str(policy_file)).returncode == 0
    assert virt_aa(sandbox, "allow", "--xml", str(dom), "/srv/vm-only r,").returncode == 0
    assert virt_aa(sandbox, "complain", "--xml", str(dom)).returncode == 0
    doc = tmp_path / "state.json"
    assert virt_aa(sandbox, "export", "-o", str(doc)).returncode == 0
    data = json.loads(doc.read_text())
    assert data["policies"]["nfs-data"] == POLICY
    assert data["domains"][UUID]["mode"] == "complain"
    assert data["domains"][UUID]["history"]
    other = tmp_path / "other"
    assert virt_aa(other, "sandbox", str(other)).returncode == 0
    dry = virt_aa(other, "import", str(doc), "--dry-run")
    assert dry.returncode == 0 and "+/srv/nfs/** rwk," in dry.stdout
    assert not (other / "etc/virt-aa/policies").exists()
    refused = virt_aa(other, "import", str(doc))            # no terminal: needs --yes
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert virt_aa(other, "import", str(doc), "--yes").returncode == 0
    assert (other / "etc/virt-aa/policies/nfs-data").read_text() == POLICY
    assert "/srv/vm-only r," in (other / "etc/apparmor.d/local" / PROFILE).read_text()
    assert "mode = complain" in (other / "etc/virt-aa/domains" / f"{UUID}.conf").read_text()
    again = virt_aa(other, "import", str(doc), "--yes")
    assert again.returncode == 0 and "nothing to import" in again.stdout


def test_status_drift(sandbox: Path, tmp_path: Path, policy_file: Path) -> None:
    from virt_aa.policy.named import digest

    node = tmp_path / "node.xml"
    sha = digest(POLICY)
    node.write_text(f"""<node><domain type='kvm'><name>fleetvm</name><uuid>{UUID}</uuid>
<memory>65536</memory><metadata><virtaa:policies
 xmlns:virtaa='https://virt-aa.dev/xmlns/policies/1'><virtaa:policy name='nfs-data'
 sha256='{sha}'/></virtaa:policies></metadata>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain></node>""")
    uri = f"test://{node}"
    missing = virt_aa(sandbox, "-c", uri, "status", "--drift", "--json")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["drift"][0]["policies"] == [
        {"name": "nfs-data", "status": "missing"}]
    assert virt_aa(sandbox, "policy", "add", "nfs-data", str(policy_file)).returncode == 0
    ok = virt_aa(sandbox, "-c", uri, "status", "--drift")
    assert ok.returncode == 0 and "no drift" in ok.stdout
    (sandbox / "etc/virt-aa/policies/nfs-data").write_text(POLICY + "/srv/x r,\n")
    diff = virt_aa(sandbox, "-c", uri, "status", "--drift")
    assert diff.returncode == 1 and "nfs-data different" in diff.stdout
