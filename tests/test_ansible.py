"""The Ansible collection ``virtaa.libvirt`` run by the real ``ansible-playbook``.

Against localhost (``-c local``, the venv's Python as the managed host's
interpreter), with a ``--root`` sandbox (``virt-aa sandbox``), domains given
offline (``xml:``) and through libvirt's ``test:///`` driver (only for
``vm_rule``/``mode``, which virt-aa stores itself: every ``test:///``
connection has its own private state, so metadata set through it would not
outlive the connection).  Each scenario: check mode changes nothing (the
sandbox and the XML files byte-identical), the first run changes, the
second reports ``changed=0``, ``--diff`` shows the rule/policy text.

ansible-core comes from PyPI into the venv (``pip install
'ansible-core>=2.19,<2.20'``); ANSIBLE_* point at temp directories so
nothing touches the real home.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, cli_argv

PLAYBOOK_BIN = Path(sys.executable).parent / "ansible-playbook"
COLLECTIONS = REPO / "ansible" / "collections"
ROLLOUT = REPO / "ansible" / "playbooks" / "rollout-policy.yml"
POLICY_FILE = REPO / "ansible" / "playbooks" / "files" / "web-data.policy"
NODE = REPO / "examples" / "node.xml"
TEST_URI = f"test://{NODE}"            # test:///work/main/examples/node.xml
WEB01_UUID = "6f1c2b8e-0d4a-4c39-9a57-3b1f0e2d4c11"

pytestmark = [pytest.mark.slow]


@pytest.fixture(autouse=True, scope="module")
def _ansible_installed() -> None:
    """CI installs ansible-core (the project's test extra): missing is a failure."""
    if not PLAYBOOK_BIN.exists():
        pytest.fail(f"ansible-core is not installed in the venv ({PLAYBOOK_BIN} missing): "
                    f"{Path(sys.executable).parent}/pip install -e '.[test]'")

VM_XML = """<domain type='kvm'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>
"""
VMS = {"vm1": "aaaaaaaa-1111-2222-3333-444444444444",
       "vm2": "bbbbbbbb-1111-2222-3333-444444444444"}
RULE = '"/srv/data/vm1/**" rwk,'


class Ansible:
    """ansible-playbook with a private HOME, temp dirs and the repo's collection."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        for d in ("home", "local-tmp", "remote-tmp", "cwd"):
            (tmp / d).mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": str(tmp / "home"),
            "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
            "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
            "ANSIBLE_LOCAL_TEMP": str(tmp / "local-tmp"),
            "ANSIBLE_REMOTE_TEMP": str(tmp / "remote-tmp"),
            "ANSIBLE_CONFIG": str(tmp / "cwd" / "no-ansible.cfg"),   # never the user's
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_PIPELINING": "1",                 # no module file copies: faster
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_LOCALHOST_WARNING": "0",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
            "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        }
        self.runs: list[tuple[str, float]] = []

    def play(self, playbook: Path, *args: str, inventory: Path | None = None,
             python: str | None = None) -> subprocess.CompletedProcess[str]:
        inv = ["-i", str(inventory)] if inventory else ["-i", "localhost,", "-c", "local"]
        argv = [str(PLAYBOOK_BIN), *inv, "-e",
                f"ansible_python_interpreter={python or sys.executable}", str(playbook), *args]
        t = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                              env=self.env, cwd=self.tmp / "cwd")
        self.runs.append((" ".join([playbook.name, *args]), time.monotonic() - t))
        return proc


def recap(proc: subprocess.CompletedProcess[str], host: str = "localhost") -> dict[str, int]:
    m = re.search(rf"^{re.escape(host)}\s+:\s+(.*)$", proc.stdout, re.M)
    assert m, f"no recap for {host}:\n{proc.stdout}\n{proc.stderr}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def ok(proc: subprocess.CompletedProcess[str], changed: int) -> None:
    r = recap(proc)
    assert proc.returncode == 0 and r["failed"] == 0, proc.stdout + proc.stderr
    assert r["changed"] == changed, f"changed={r['changed']}, expected {changed}\n{proc.stdout}"


def snapshot(*tops: Path) -> dict[str, str]:
    """Every entry below each top (or the file itself): type, mode, content hash."""
    out = {}
    for top in tops:
        if top.is_file():
            out[str(top)] = hashlib.sha256(top.read_bytes()).hexdigest()
            continue
        for dirpath, dirs, files in os.walk(top):
            for name in sorted(dirs + files):
                p = Path(dirpath) / name
                st = p.lstat()
                mode = f"{stat.S_IMODE(st.st_mode):o}"
                out[str(p)] = (f"dir {mode}" if stat.S_ISDIR(st.st_mode) else
                               f"file {mode} {hashlib.sha256(p.read_bytes()).hexdigest()}")
    return out


def sandbox(tmp: Path) -> Path:
    root = tmp / "root"
    proc = subprocess.run([*cli_argv(), "sandbox", str(root)], capture_output=True, text=True,
                          check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return root


def write_vms(tmp: Path) -> dict[str, Path]:
    out = {}
    for name, uuid in VMS.items():
        p = tmp / f"{name}.xml"
        p.write_text(VM_XML.format(name=name, uuid=uuid))
        out[name] = p
    return out


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hook_prepare(root: Path, name: str, xml: Path) -> subprocess.CompletedProcess[str]:
    hook = Path(sys.executable).parent / "virt-aa-hook"
    return subprocess.run([str(hook), "--root", str(root), name, "prepare", "begin", "-"],
                          input=xml.read_text(), capture_output=True, text=True, check=False,
                          timeout=60)


def profile(root: Path, uuid: str) -> str:
    return (root / f"etc/apparmor.d/libvirt/libvirt-{uuid}").read_text()


@pytest.fixture
def ans(tmp_path: Path) -> Iterator[Ansible]:
    a = Ansible(tmp_path / "ansible")
    yield a
    print("\n[ansible] " + "\n[ansible] ".join(f"{t:5.2f} s  {what}" for what, t in a.runs))


# -- the rollout playbook ------------------------------------------------------------------

def test_rollout_playbook(ans: Ansible, tmp_path: Path) -> None:
    root = sandbox(tmp_path)
    vms = write_vms(tmp_path)
    inventory = tmp_path / "inventory.yml"
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "virtaa_become": False, "virtaa_root": str(root),
            "virtaa_vms": [{"xml": str(vms["vm1"])}, {"xml": str(vms["vm2"])}]}
    inventory.write_text(json.dumps({"all": {"children": {"hypervisors": {
        "hosts": {"localhost": host}}}}}))
    policy_text = POLICY_FILE.read_text()
    policy_rule = next(line for line in policy_text.splitlines() if line.startswith('"'))
    before = snapshot(root, *vms.values())

    # check mode on a fresh host: would change both tasks, changes nothing
    proc = ans.play(ROLLOUT, "--check", "--diff", inventory=inventory)
    ok(proc, 2)
    assert snapshot(root, *vms.values()) == before
    assert f"+{policy_rule}" in proc.stdout, proc.stdout
    assert "check mode assumes an earlier task installs it" in proc.stdout + proc.stderr

    proc = ans.play(ROLLOUT, inventory=inventory)
    ok(proc, 2)
    installed = root / "etc/virt-aa/policies/web-data"
    assert installed.read_text() == policy_text
    for name, xml in vms.items():
        text = xml.read_text()
        assert f'name="web-data" sha256="{sha(policy_text)}"' in text, text
        res = hook_prepare(root, name, xml)
        assert res.returncode == 0, res.stderr
        assert f'#include "{os.path.realpath(installed)}"' in profile(root, VMS[name])

    after = snapshot(root, *vms.values())
    ok(ans.play(ROLLOUT, inventory=inventory), 0)
    ok(ans.play(ROLLOUT, "--check", inventory=inventory), 0)
    assert snapshot(root, *vms.values()) == after

    # a new version of the policy: installed, and the VMs re-pinned to its hash
    new_text = policy_text + '"/srv/web/cache/**" rw,\n'
    extra = tmp_path / "new-policy.json"
    extra.write_text(json.dumps({"virtaa_policy_content": new_text}))
    proc = ans.play(ROLLOUT, "--diff", "-e", f"@{extra}", inventory=inventory)
    ok(proc, 2)
    assert '+"/srv/web/cache/**" rw,' in proc.stdout, proc.stdout
    assert f"-policy web-data sha256 {sha(policy_text)}" in proc.stdout
    assert f"+policy web-data sha256 {sha(new_text)}" in proc.stdout
    assert installed.read_text() == new_text
    for name, xml in vms.items():
        assert f'sha256="{sha(new_text)}"' in xml.read_text()
        assert hook_prepare(root, name, xml).returncode == 0
    ok(ans.play(ROLLOUT, "-e", f"@{extra}", inventory=inventory), 0)


# -- each module, a domain given offline ---------------------------------------------------

def offline_play(tmp: Path, root: Path, xml: Path, state: str) -> Path:
    present = state == "present"
    tasks = [
        {"name": "policy", "virtaa.libvirt.policy": {
            "name": "backup", "root": str(root), "state": state,
            **({"content": '"/srv/backup/**" r,\n'} if present else {})}},
        {"name": "attachment", "virtaa.libvirt.attachment": {
            "xml": str(xml), "policy": "backup", "root": str(root), "state": state}},
        {"name": "vm_rule", "virtaa.libvirt.vm_rule": {
            "xml": str(xml), "rule": RULE, "comment": "NFS data", "root": str(root),
            "state": state}},
        {"name": "mode", "virtaa.libvirt.mode": {
            "xml": str(xml), "mode": "complain" if present else "enforce",
            "root": str(root)}},
    ]
    if not present:    # detach before the policy goes
        tasks = [tasks[1], tasks[0], tasks[2], tasks[3]]
    path = tmp / f"offline-{state}.yml"
    path.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False,
                                 "tasks": tasks}]))
    return path


def test_modules_offline_xml(ans: Ansible, tmp_path: Path) -> None:
    root = sandbox(tmp_path)
    xml = write_vms(tmp_path)["vm1"]
    uuid = VMS["vm1"]
    up, down = (offline_play(tmp_path, root, xml, s) for s in ("present", "absent"))
    before = snapshot(root, xml)

    proc = ans.play(up, "--check", "--diff")
    ok(proc, 4)
    assert snapshot(root, xml) == before
    assert f"+{RULE}" in proc.stdout and "+mode = complain" in proc.stdout, proc.stdout

    proc = ans.play(up, "--diff")
    ok(proc, 4)
    assert f"+{RULE}" in proc.stdout, proc.stdout
    assert '+"/srv/backup/**" r,' in proc.stdout
    local = (root / f"etc/apparmor.d/local/libvirt-{uuid}").read_text()
    assert RULE in local and 'comment="NFS data"' in local, local
    assert "mode = complain" in (root / f"etc/virt-aa/domains/{uuid}.conf").read_text()
    assert 'name="backup"' in xml.read_text()
    res = hook_prepare(root, "vm1", xml)
    assert res.returncode == 0, res.stderr
    p = profile(root, uuid)
    assert "etc/virt-aa/policies/backup" in p and "complain" in p.split("{")[0], p

    middle = snapshot(root, xml)
    ok(ans.play(up, "--diff"), 0)
    ok(ans.play(up, "--check"), 0)
    assert snapshot(root, xml) == middle

    proc = ans.play(down, "--check", "--diff")
    ok(proc, 4)
    assert f"-{RULE}" in proc.stdout, proc.stdout
    assert snapshot(root, xml) == middle
    ok(ans.play(down), 4)
    assert "virt-aa.dev" not in xml.read_text()
    assert not (root / "etc/virt-aa/policies/backup").exists()
    assert RULE not in (root / f"etc/apparmor.d/local/libvirt-{uuid}").read_text()
    ok(ans.play(down), 0)


# -- vm_rule and mode through libvirt (test:/// driver) -----------------------------------

def test_modules_libvirt_test_driver(ans: Ansible, tmp_path: Path) -> None:
    pytest.importorskip("libvirt")
    root = sandbox(tmp_path)

    def play(state: str) -> Path:
        path = tmp_path / f"lv-{state}.yml"
        common = {"uri": TEST_URI, "domain": "web01", "root": str(root)}
        path.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [
            {"name": "rule", "virtaa.libvirt.vm_rule": {**common, "rule": RULE,
                                                        "state": state}},
            {"name": "mode", "virtaa.libvirt.mode": {
                **common, "mode": "complain" if state == "present" else "enforce"}},
        ]}]))
        return path

    up, down = play("present"), play("absent")
    before = snapshot(root)
    proc = ans.play(up, "--check", "--diff")
    ok(proc, 2)
    assert snapshot(root) == before
    proc = ans.play(up, "--diff")
    ok(proc, 2)
    assert f"+{RULE}" in proc.stdout and "-mode = enforce" in proc.stdout, proc.stdout
    local = root / f"etc/apparmor.d/local/libvirt-{WEB01_UUID}"
    assert RULE in local.read_text()
    settings = (root / f"etc/virt-aa/domains/{WEB01_UUID}.conf").read_text()
    assert "name = web01" in settings and "mode = complain" in settings
    history = (root / f"var/lib/virt-aa/history/{WEB01_UUID}.jsonl").read_text()
    assert '"action": "allow"' in history and '"action": "complain"' in history
    ok(ans.play(up), 0)
    middle = snapshot(root)
    ok(ans.play(down, "--check"), 2)
    assert snapshot(root) == middle
    ok(ans.play(down, "--diff"), 2)
    assert RULE not in local.read_text()
    ok(ans.play(down), 0)

    # attachment through libvirt's metadata API: it works, but the test driver forgets
    # the metadata with the connection, so only one run (the offline test covers the rest)
    (root / "etc/virt-aa/policies").mkdir(parents=True, exist_ok=True)
    (root / "etc/virt-aa/policies/web-data").write_text(POLICY_FILE.read_text())
    attach = tmp_path / "lv-attach.yml"
    attach.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"virtaa.libvirt.attachment": {"uri": TEST_URI, "domain": "web01",
                                       "policy": "web-data", "root": str(root)}}]}]))
    proc = ans.play(attach, "--diff")
    ok(proc, 1)
    assert f"+policy web-data sha256 {sha(POLICY_FILE.read_text())}" in proc.stdout
    assert '"action": "attach"' in (
        root / f"var/lib/virt-aa/history/{WEB01_UUID}.jsonl").read_text()


def test_module_docs(ans: Ansible) -> None:
    """ansible-doc parses every module's DOCUMENTATION/EXAMPLES/RETURN."""
    modules = [f"virtaa.libvirt.{m}" for m in ("policy", "attachment", "vm_rule", "mode")]
    proc = subprocess.run([str(PLAYBOOK_BIN.parent / "ansible-doc"), "--json", *modules],
                          capture_output=True, text=True, timeout=60, check=False,
                          env=ans.env, cwd=ans.tmp / "cwd")
    assert proc.returncode == 0, proc.stderr
    docs = json.loads(proc.stdout)
    assert sorted(docs) == sorted(modules)
    for m in modules:
        assert docs[m]["doc"]["attributes"]["check_mode"]["support"] == "full"
        assert docs[m]["examples"] and docs[m]["return"]


# -- refusals --------------------------------------------------------------------------------

def failed_with(proc: subprocess.CompletedProcess[str], text: str) -> None:
    r = recap(proc)
    assert proc.returncode != 0 and r["failed"] == 1, proc.stdout + proc.stderr
    assert text in " ".join((proc.stdout + proc.stderr).split()), proc.stdout + proc.stderr


def test_module_refusals(ans: Ansible, tmp_path: Path) -> None:
    root = sandbox(tmp_path)
    xml = write_vms(tmp_path)["vm1"]

    def one(name: str, module: str, args: dict[str, object]) -> Path:
        path = tmp_path / f"{name}.yml"
        path.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False,
                                     "tasks": [{module: {"root": str(root), **args}}]}]))
        return path

    # (a refused change may leave the lock file: only the state must be untouched)
    before = snapshot(root / "etc", xml)
    restricted = one("restricted", "virtaa.libvirt.vm_rule",
                     {"xml": str(xml), "rule": "/etc/shadow r,"})
    for extra in ((), ("--check",)):
        failed_with(ans.play(restricted, *extra), "grants a restricted path")
    failed_with(ans.play(one("unconfined", "virtaa.libvirt.vm_rule",
                             {"xml": str(xml), "rule": "/usr/bin/foo ux,"})),
                "rule '/usr/bin/foo ux,'")
    failed_with(ans.play(one("nopolicy", "virtaa.libvirt.attachment",
                             {"xml": str(xml), "policy": "nope"})),
                "no policy 'nope' on this host")
    failed_with(ans.play(one("badpolicy", "virtaa.libvirt.policy",
                             {"name": "bad", "content": "include <abstractions/base>\n"})),
                "line 1:")
    failed_with(ans.play(one("both", "virtaa.libvirt.mode",
                             {"xml": str(xml), "domain": "vm1", "mode": "complain"})),
                "mutually exclusive: domain|xml")
    assert snapshot(root / "etc", xml) == before
    # a managed host whose Python lacks virt_aa: one clear message
    proc = ans.play(one("noimport", "virtaa.libvirt.mode", {"xml": str(xml), "mode": "complain"}),
                    python="/usr/bin/python3")
    probe = subprocess.run(["/usr/bin/python3", "-c", "import virt_aa"], capture_output=True,
                           check=False)
    if probe.returncode == 0:
        pytest.skip("/usr/bin/python3 can import virt_aa here")
    failed_with(proc, "the virt_aa Python package is not importable")
    failed_with(proc, "ansible_python_interpreter")
