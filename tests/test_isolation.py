"""Isolation between VMs (DESIGN §5) and checks against the whole profile.

Pure cases on hand-written domains, then the CLI against libvirt's test
driver with the repo's node file, where vm-stopped, web01 and db01 keep their
disks side by side in one pool directory (/tmp/virt-aa-demo/images).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_concurrency import URI, _env, _uuid, make_sandbox, one_error_line

from conftest import cli_argv
from virt_aa.generate.accesses import generate
from virt_aa.generate.domain import parse_domain
from virt_aa.host.hostfacts import SystemHost
from virt_aa.ops.isolation import file_rules
from virt_aa.policy.isolation import breaches, owned_files, reaches

POOL = "/tmp/virt-aa-demo/images"


def dom_xml(name: str, uuid: str, devices: str) -> bytes:
    return (f"<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid>"
            f"<memory>1024</memory><os><type arch='x86_64'>hvm</type></os>"
            f"<devices>{devices}</devices></domain>").encode()


def disk(path: str, extra: str = "", dev: str = "vda") -> str:
    return (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{path}'/><target dev='{dev}' bus='virtio'/>{extra}</disk>")


A = "11111111-1111-1111-1111-111111111111"
B = "22222222-2222-2222-2222-222222222222"


def files_of(*xmls: bytes) -> list:  # type: ignore[type-arg]
    out = []
    for x in xmls:
        d = parse_domain(x)
        out += owned_files(d, generate(d, SystemHost()).rules)
    return out


def found(rule: str, files: list, uuid: str = A) -> list:  # type: ignore[type-arg]
    return reaches(file_rules([rule], "per-VM rule"), uuid, files)


TPM = "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>"
TWO = files_of(dom_xml("a", A, disk(f"{POOL}/a.raw") + TPM),
               dom_xml("b", B, disk(f"{POOL}/b.raw") + TPM +
                       "<serial type='unix'><source mode='bind' path='/run/b.sock'/></serial>"))


@pytest.mark.parametrize("rule,other", [
    (f"{POOL}/** rw,", f"{POOL}/b.raw"),
    (f"{POOL}/* r,", f"{POOL}/b.raw"),
    (f"{POOL}/{{a,b}}.raw rwk,", f"{POOL}/b.raw"),
    ("/var/lib/libvirt/swtpm/** rwk,", f"/var/lib/libvirt/swtpm/{B}"),
    ("/var/log/libvirt/qemu/*.log r,", "/var/log/libvirt/qemu/b.log"),
    ("/var/lib/libvirt/qemu/domain-*/** rw,", "/var/lib/libvirt/qemu/domain-1-b"),
    ("/run/*.sock rw,", "/run/b.sock"),
    ("/tmp/virt-aa-demo/** r,", f"{POOL}/b.raw"),
])
def test_rule_that_reaches_another_vms_file(rule: str, other: str) -> None:
    bad = breaches(found(rule, TWO))
    assert bad, rule
    assert {r.owned.name for r in bad} == {"b"}
    assert other in {r.owned.path for r in bad}


@pytest.mark.parametrize("rule", [
    f"{POOL}/a.raw rwk,",                    # its own disk
    f"{POOL}/a* rw,",                        # only a's names
    f"deny {POOL}/** w,",                    # deny rules grant nothing
    "/srv/data/** rwk,",
    "/var/log/libvirt/qemu/a.log w,",
    f"/var/lib/libvirt/swtpm/{A}/** rwk,",
])
def test_rule_that_stays_inside_its_vm(rule: str) -> None:
    assert breaches(found(rule, TWO)) == [], rule


def test_declared_sharing_is_not_a_breach() -> None:
    shared = f"{POOL}/shared.raw"
    files = files_of(dom_xml("a", A, disk(shared, "<shareable/>")),
                     dom_xml("b", B, disk(shared, "<shareable/>")))
    hits = found(f"{POOL}/* rwk,", files)
    assert hits and all(r.declared for r in hits)
    # one side shareable only: the other VM did not declare sharing a writable disk
    files = files_of(dom_xml("a", A, disk(shared)), dom_xml("b", B, disk(shared, "<shareable/>")))
    assert all(r.declared for r in found(f"{shared} rwk,", files))   # a's XML names it rwk
    ro = ("<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
          f"<source file='{POOL}/base.img'/><target dev='vdb' bus='virtio'/><readonly/></disk>")
    files = files_of(dom_xml("a", A, ro), dom_xml("b", B, ro))
    assert all(r.declared for r in found(f"{POOL}/base.img r,", files))
    # writing the common read-only image is not what either XML declares
    assert breaches(found(f"{POOL}/base.img rw,", files))


# -- the CLI against the test driver -------------------------------------------------------

def virt_aa(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_argv() + ["--root", str(root), "-c", URI, *args],
                          capture_output=True, text=True, timeout=120, env=_env(), check=False)


def local_of(root: Path, name: str) -> Path:
    return root / f"etc/apparmor.d/local/libvirt-{_uuid(name)}"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    make_sandbox(r)
    return r


def test_pool_glob_refused_then_forced_and_flagged(root: Path) -> None:
    proc = virt_aa(root, "allow", "vm-stopped", f"{POOL}/** rw,")
    line = one_error_line(proc)
    assert "web01" in line and f"{POOL}/web01.qcow2" in line and "--force" in line
    assert not local_of(root, "vm-stopped").exists()          # nothing stored
    assert not (root / "var/lib/virt-aa/history").exists()

    ok = virt_aa(root, "allow", "vm-stopped", f"{POOL}/stopped.raw rwk,")
    assert ok.returncode == 0, ok.stderr                        # its own disk: fine

    forced = virt_aa(root, "allow", "--force", "vm-stopped", f"{POOL}/** rw,", "--json")
    assert forced.returncode == 0, forced.stderr
    added = json.loads(forced.stdout)["added"][0]
    assert added["force"] == "yes" and "web01:" in added["reaches"]

    rules = virt_aa(root, "rules", "vm-stopped")
    assert "REACHES OTHER VMs" in rules.stdout and "web01" in rules.stdout
    show = virt_aa(root, "show", "vm-stopped")
    assert "REACHES OTHER VMs (added with --force)" in show.stdout
    status = virt_aa(root, "status", "--json")
    row = {r["name"]: r for r in json.loads(status.stdout)["domains"]}["vm-stopped"]
    assert row["forced_reach"] == 1
    assert "REACH OTHER VMs" in virt_aa(root, "status").stdout
    hist = json.loads(virt_aa(root, "history", "vm-stopped", "--json").stdout)["history"]
    assert hist[-1]["force"] is True and "web01:" in hist[-1]["reaches"]

    rep = virt_aa(root, "status", "--isolation", "--json")
    assert rep.returncode == 1
    rows = [r for r in json.loads(rep.stdout)["reaches"]
            if r["domain"] == "vm-stopped" and r["via"] == "per-VM rule"]
    assert {r["other"] for r in rows} >= {"web01", "db01"}
    assert all(not r["declared"] for r in rows)
    text = virt_aa(root, "status", "--isolation").stdout
    assert "vm-stopped REACHES web01's disk vda" in text


def test_suggest_for_a_new_disk_never_reaches_the_neighbour(root: Path, tmp_path: Path) -> None:
    profile = f"libvirt-{_uuid('vm-stopped')}"
    new = f"{POOL}/stopped-new.qcow2"
    log = tmp_path / "audit.log"
    log.write_text(f'type=AVC msg=audit(1764064800.001:1): apparmor="DENIED" '
                   f'operation="open" profile="{profile}" name="{new}" pid=1 '
                   f'comm="qemu-system-x86" requested_mask="wr" denied_mask="wr" '
                   f'fsuid=64055 ouid=64055\n')
    proc = virt_aa(root, "suggest", "vm-stopped", "--file", str(log), "--json")
    assert proc.returncode == 0, proc.stderr
    item = json.loads(proc.stdout)["suggestions"][0]
    rules = [p["rule"] for p in item["proposals"]]
    assert rules and all("rwk" in r for r in rules), rules
    web01 = file_rules(rules, "t")
    assert not any(r.matches(f"{POOL}/web01.qcow2") or r.matches(f"{POOL}/db01-data.raw")
                   for r in web01), rules
    assert "web01" in item["isolation"] and "exact path" in item["isolation"]
    text = virt_aa(root, "suggest", "vm-stopped", "--file", str(log)).stdout
    assert "not proposed" in text


def test_policy_and_attach_refuse_reaching_rules(root: Path, tmp_path: Path) -> None:
    pol = tmp_path / "pool.txt"
    pol.write_text(f"{POOL}/* rw,\n")
    line = one_error_line(virt_aa(root, "policy", "add", "pool", str(pol)))
    assert "reaches VM" in line and "--force" in line
    assert not (root / "etc/virt-aa/policies/pool").exists()
    forced = virt_aa(root, "policy", "add", "pool", str(pol), "--force")
    assert forced.returncode == 0 and "FORCED" in forced.stdout, forced.stderr

    xml = tmp_path / "web01.xml"
    xml.write_bytes(subprocess.run(["virsh", "-c", URI, "dumpxml", "web01"],
                                   capture_output=True, check=True).stdout)
    before = xml.read_bytes()
    line = one_error_line(virt_aa(root, "attach", "--xml", str(xml), "pool"))
    assert "db01" in line or "vm-stopped" in line
    assert xml.read_bytes() == before
    done = virt_aa(root, "attach", "--force", "--xml", str(xml), "pool")
    assert done.returncode == 0, done.stderr
    hist = json.loads(virt_aa(root, "history", "--xml", str(xml), "--json").stdout)["history"]
    assert hist[-1]["action"] == "attach" and hist[-1]["force"] is True


def test_stopped_vm_whole_profile_checked_before_storing(root: Path) -> None:
    ok = virt_aa(root, "allow", "vm-stopped", "/srv/tool Px,")
    assert ok.returncode == 0, ok.stderr
    stored = local_of(root, "vm-stopped").read_bytes()
    line = one_error_line(virt_aa(root, "allow", "vm-stopped", "/srv/tool ix,"))
    assert "conflicting x modifiers" in line and "nothing was stored" in line
    line = one_error_line(virt_aa(root, "allow", "--force", "vm-stopped",
                                  "/usr/bin/qemu-system-x86_64 Px,"))
    assert "conflicting x modifiers" in line
    assert local_of(root, "vm-stopped").read_bytes() == stored
    assert not (root / f"etc/apparmor.d/libvirt/libvirt-{_uuid('vm-stopped')}").exists()


def test_host_report_shows_declared_sharing_as_such(tmp_path: Path) -> None:
    """Two domains with a <shareable/> disk and a common read-only image: shared, not
    a breach (exit 0); a third whose XML shares the whole pool reaches both (exit 1)."""
    shared = disk("/srv/pool/shared.raw", "<shareable/>", "vdb")
    ro = ("<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
          "<source file='/srv/pool/common.iso'/><target dev='vdc' bus='virtio'/>"
          "<readonly/></disk>")
    doms = [dom_xml("a", A, disk("/srv/pool/a.raw") + shared + ro),
            dom_xml("b", B, disk("/srv/pool/b.raw") + shared + ro)]
    node = tmp_path / "node.xml"

    def write(extra: list[bytes]) -> str:
        node.write_bytes(b"<node>" + b"".join(doms + extra) + b"</node>")
        return f"test://{node}"

    root = tmp_path / "root"
    make_sandbox(root)

    def report(uri: str) -> tuple[int, dict]:  # type: ignore[type-arg]
        proc = subprocess.run(cli_argv() + ["--root", str(root), "-c", uri, "status",
                                            "--isolation", "--json"],
                              capture_output=True, text=True, env=_env(), check=False)
        assert proc.returncode in (0, 1), proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    rc, rep = report(write([]))
    rows = rep["reaches"]
    assert rc == 0 and rep["breaches"] == 0, rows
    assert {(r["domain"], r["other"], r["file"]) for r in rows} == {
        ("a", "b", "/srv/pool/shared.raw"), ("b", "a", "/srv/pool/shared.raw"),
        ("a", "b", "/srv/pool/common.iso"), ("b", "a", "/srv/pool/common.iso")}
    assert all(r["declared"] and r["via"] == "generated rule" for r in rows)

    share = ("<filesystem type='mount' accessmode='mapped'><source dir='/srv/pool'/>"
             "<target dir='pool'/></filesystem>")
    rc, rep = report(write([dom_xml("c", "33333333-3333-3333-3333-333333333333", share)]))
    bad = [r for r in rep["reaches"] if not r["declared"]]
    assert rc == 1
    assert {(r["domain"], r["other"]) for r in bad} == {("c", "a"), ("c", "b")}
    assert all(r["via"] == "generated rule" for r in bad)
