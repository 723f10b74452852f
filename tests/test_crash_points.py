"""Crash safety by fault injection, as SQLite's crash tests: die at every durable step.

``VIRT_AA_CRASH_AT=N`` makes a virt-aa process ``os._exit(86)`` at its N-th
durable step (each write -- torn in half --, fsync, rename, unlink, parser
call; see ``virt_aa.host.fsutil``).  For every state-changing command and
N = 1, 2, ... until the command no longer dies (it has N - 1 durable
steps), on a fresh copy of the same primed sandbox:

* kills the command at step N;
* checks nothing is half-written: every per-VM file parses with no problem,
  every settings file and policy is whole, P compiles;
* runs the command again without the crash: it succeeds (a ``revoke`` whose
  change had completed may say the rule is gone), leaves no temp file and no
  journal, and the state -- rules with their provenance, modes, policies,
  the offline XML, every history -- equals the state after an uncrashed run:
  nothing lost, nothing doubled.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_concurrency import URI, _env, _uuid, create_p, make_sandbox, temp_files

from conftest import cli_argv, compile_profile
from virt_aa.host.fsutil import CRASH_EXIT
from virt_aa.policy.localrules import parse_file

POLICY = "/srv/pol/** r,\n"


def run(root: Path, args: list[str], crash: int | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = _env()
    env.pop("VIRT_AA_CRASH_AT", None)
    if crash is not None:
        env["VIRT_AA_CRASH_AT"] = str(crash)
    argv = [a.replace("{ROOT}", str(root)) for a in args]
    return subprocess.run(cli_argv() + ["--root", str(root), "-c", URI, *argv],
                          capture_output=True, text=True, env=env, timeout=120,
                          input=stdin, check=False)


def ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, (proc.args, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def primed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """web01 running with P and two rules; vm-stopped in complain with one rule; a
    policy; an offline copy of db01's XML; an export document to import."""
    base = tmp_path_factory.mktemp("crash")
    root = base / "root"
    make_sandbox(root)
    create_p(root, "web01")
    ok(run(root, ["allow", "web01", "/srv/crash/a r,", "/srv/crash/b rw,"]))
    ok(run(root, ["allow", "vm-stopped", "/srv/crash/s r,"]))
    ok(run(root, ["complain", "vm-stopped"]))
    (root / "pol.txt").write_text(POLICY)
    ok(run(root, ["policy", "add", "base", "{ROOT}/pol.txt"]))
    xml = subprocess.run(["virsh", "-c", URI, "dumpxml", "db01"], capture_output=True,
                         check=True).stdout
    (root / "db01.xml").write_bytes(xml)
    (root / "new-pol.txt").write_text("/srv/newpol/ r,\n/srv/newpol/** rw,\n")
    other = base / "other"
    shutil.copytree(root, other, symlinks=True)
    ok(run(other, ["allow", "vm-stopped", "/srv/imported r,"]))
    ok(run(other, ["enforce", "vm-stopped"]))
    (other / "p2.txt").write_text("/srv/p2/ r,\n")
    ok(run(other, ["policy", "add", "p2", "{ROOT}/p2.txt"]))
    doc = run(other, ["export"])
    ok(doc)
    (root / "doc.json").write_text(doc.stdout)
    return root


COMMANDS: dict[str, list[str]] = {
    "allow (running VM, P on disk)": ["allow", "web01", "/srv/crash/new r,"],
    "allow (stopped VM, exec rule)": ["allow", "vm-stopped", "/srv/tool Px,"],
    "revoke": ["revoke", "web01", "/srv/crash/a r,"],
    "complain": ["complain", "web01"],
    "enforce": ["enforce", "vm-stopped"],
    "policy add": ["policy", "add", "newpol", "{ROOT}/new-pol.txt"],
    "attach (offline XML)": ["attach", "--xml", "{ROOT}/db01.xml", "base"],
    "import": ["import", "--yes", "{ROOT}/doc.json"],
}


def _history(root: Path) -> dict[str, list[dict[str, object]]]:
    out = {}
    hist = root / "var/lib/virt-aa/history"
    for f in sorted(hist.glob("*.jsonl")) if hist.is_dir() else []:
        records = []
        for line in f.read_text().splitlines():
            rec = json.loads(line)                      # every line whole
            records.append({k: v for k, v in rec.items() if k not in ("time", "user")})
        out[f.name] = records
    return out


def state(root: Path) -> dict[str, object]:
    """Everything a command may change, without timestamps."""
    out: dict[str, object] = {"history": _history(root)}
    for f in sorted((root / "etc/apparmor.d/local").glob("libvirt-*")):
        rules, problems = parse_file(f.read_text())
        assert problems == [], (f, problems)
        out[f"local {f.name}"] = [(r.text, {k: v for k, v in r.fields.items()
                                            if k != "added"}) for r in rules]
    for f in sorted((root / "etc/virt-aa/domains").glob("*.conf")):
        out[f"settings {f.name}"] = f.read_text()
    for f in sorted((root / "etc/virt-aa/policies").glob("*")):
        out[f"policy {f.name}"] = f.read_text()
    for f in sorted((root / "etc/apparmor.d/libvirt").glob("libvirt-*")):
        out[f"profile {f.name}"] = f.read_text()
    out["xml"] = (root / "db01.xml").read_text()
    return out


def whole_files(root: Path, p_web01: Path) -> None:
    """Right after a death: every stored file is whole; P compiles."""
    for f in (root / "etc/apparmor.d/local").glob("libvirt-*"):
        if not f.name.endswith(".tmp"):
            assert parse_file(f.read_text())[1] == [], f
    for f in (root / "etc/virt-aa/domains").glob("*.conf"):
        assert f.read_text().endswith("\n") and "mode = " in f.read_text(), f
    for f in (root / "etc/virt-aa/policies").glob("*"):
        if not f.name.endswith(".tmp"):
            assert f.read_text() in (POLICY, (root / "new-pol.txt").read_text(),
                                     "/srv/p2/ r,\n"), f
    res = compile_profile(p_web01, root)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("label", list(COMMANDS))
def test_crash_at_every_durable_step(primed: Path, tmp_path: Path, label: str) -> None:
    args = COMMANDS[label]
    copies = iter(range(10_000))

    def copy() -> Path:
        dst = tmp_path / f"r{next(copies)}"
        shutil.copytree(primed, dst, symlinks=True)
        return dst

    reference = copy()
    ok(run(reference, args))
    expected = state(reference)
    assert expected != state(primed), "the command changes nothing: a useless test"
    p_web01 = Path(f"etc/apparmor.d/libvirt/libvirt-{_uuid('web01')}")
    lost = broken = 0
    n = 0
    while True:
        n += 1
        assert n < 200, "runaway step count"
        target = copy()
        proc = run(target, args, crash=n)
        if proc.returncode != CRASH_EXIT:     # past the last durable step: it just ran
            ok(proc)
            assert state(target) == expected
            break
        try:
            whole_files(target, target / p_web01)
        except AssertionError:
            broken += 1
            raise
        again = run(target, args)
        if label == "revoke" and again.returncode == 1 and "has no per-VM rule" in again.stderr:
            pass                                  # the revoke had completed before the death
        else:
            ok(again)
        assert temp_files(target) == [], (n, temp_files(target))
        assert not (target / "var/lib/virt-aa/journal").exists(), n
        got = state(target)
        if got != expected:
            lost += 1
        assert got == expected, (label, n, {k: (got.get(k), v) for k, v in expected.items()
                                            if got.get(k) != v})
        assert compile_profile(target / p_web01, target).returncode == 0
        shutil.rmtree(target)
    steps = n - 1
    assert steps >= 6, f"{label}: only {steps} durable steps seen"
    print(f"{label}: {steps} crash points, {lost} lost, {broken} broken")
    assert os.path.isdir(primed)


def test_journal_rolls_back_files_and_histories(tmp_path: Path) -> None:
    """In-process: what recovery puts back (absent files removed, histories cut)."""
    from virt_aa.host.journal import begin, recover
    from virt_aa.host.store import Store

    store = Store(str(tmp_path))
    kept, new, hist = tmp_path / "kept", tmp_path / "new", tmp_path / "h.jsonl"
    kept.write_text("old\n")
    hist.write_text('{"a": 1}\n')
    begin(store, [str(kept), str(new)], [str(hist)])
    kept.write_text("changed\n")
    new.write_text("created\n")
    hist.write_text('{"a": 1}\n{"b": 2')                     # a torn record
    (tmp_path / "kept.4242.tmp").write_text("half")
    restored = recover(store)
    assert sorted(restored) == sorted([str(kept), str(new), str(hist)])
    assert kept.read_text() == "old\n" and not new.exists()
    assert hist.read_text() == '{"a": 1}\n'
    assert not (tmp_path / "kept.4242.tmp").exists()
    assert not (tmp_path / "var/lib/virt-aa/journal").exists()
    assert recover(store) == []                               # nothing left to do
