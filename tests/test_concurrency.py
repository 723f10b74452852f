"""Real processes against one --root sandbox: races, kill -9, bad input, broken disks.

Domains come from libvirt's test driver with the repo's node file (each
virt-aa process gets its own private driver state; only read here).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import cli_argv, compile_profile, run_helper
from virt_aa.policy.localrules import parse_file

REPO = Path(__file__).resolve().parents[1]
URI = f"test://{REPO}/examples/node.xml"
RUNNING = ("web01", "db01", "crafted")


def _uuid(name: str) -> str:
    proc = subprocess.run(["virsh", "-c", URI, "domuuid", name], capture_output=True,
                          text=True, check=True)
    return proc.stdout.strip()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("VIRT_AA_ROOT", "LIBVIRT_DEFAULT_URI", "VIRT_AA_DEBUG"):
        env.pop(var, None)
    return env


def virt_aa(root: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_argv() + ["--root", str(root), "-c", URI, *args],
                          capture_output=True, text=True, timeout=timeout, env=_env(),
                          check=False)


def make_sandbox(root: Path) -> None:
    proc = subprocess.run(cli_argv() + ["sandbox", str(root)], capture_output=True, text=True,
                          env=_env(), check=False)
    assert proc.returncode == 0, proc.stderr


def create_p(root: Path, name: str) -> Path:
    """What libvirt does at VM start: dumpxml | virt-aa-helper -c (P and F)."""
    xml = subprocess.run(["virsh", "-c", URI, "dumpxml", name], capture_output=True,
                         check=True).stdout
    uuid = _uuid(name)
    proc = run_helper(["-c", "-u", f"libvirt-{uuid}"], xml, root=str(root))
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    p = root / f"etc/apparmor.d/libvirt/libvirt-{uuid}"
    assert p.is_file()
    return p


def local_file(root: Path, name: str) -> Path:
    return root / f"etc/apparmor.d/local/libvirt-{_uuid(name)}"


def temp_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.tmp"))


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: type, mode and (files) content hash."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                out[rel] = f"file {st.st_mode:o} " + hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = f"link {os.readlink(path)}"
            else:
                out[rel] = f"other {st.st_mode:o}"
    return out


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert exit 1 and exactly one ``virt-aa: error:`` line on stderr; return it."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("virt-aa: error: "), proc.stderr
    assert len(lines[0]) > len("virt-aa: error: ") + 10, proc.stderr
    return lines[0]


# -- a. many writers and a reload at once -----------------------------------------------

def test_concurrent_allows_and_reload(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_sandbox(root)
    profiles = {name: create_p(root, name) for name in RUNNING}
    before_p = {name: p.read_bytes() for name, p in profiles.items()}

    wanted = {"web01": [f"/srv/c/w{i} r," for i in range(32)],
              "db01": [f"/srv/c/d{i} rw," for i in range(8)]}
    base = cli_argv() + ["--root", str(root), "-c", URI]
    jobs: list[tuple[str, subprocess.Popen[str]]] = []
    start = time.monotonic()
    for name, rules in (("web01", wanted["web01"]), ("db01", wanted["db01"])):
        for rule in rules:
            jobs.append((f"allow {name} {rule}", subprocess.Popen(
                base + ["allow", name, rule], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=_env())))
    jobs.insert(len(jobs) // 2, ("reload --all", subprocess.Popen(
        base + ["reload", "--all"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env())))
    results = {}
    for label, proc in jobs:
        out, err = proc.communicate(timeout=max(1.0, 55 - (time.monotonic() - start)))
        results[label] = (proc.returncode, out, err)
    elapsed = time.monotonic() - start
    print(f"41 concurrent virt-aa processes finished in {elapsed:.1f} s")

    for label, (rc, out, err) in results.items():
        assert "Traceback" not in err, (label, err)
        assert rc == 0, (label, rc, out, err)
    rc, out, _ = results["reload --all"]
    assert all(f"{name}: " in out for name in RUNNING), out

    for name, rules in wanted.items():
        text = local_file(root, name).read_text()
        stored, problems = parse_file(text)
        assert problems == [], problems
        texts = [r.text for r in stored]
        assert sorted(texts) == sorted(rules)           # nothing else, nothing missing
        for rule in rules:
            assert texts.count(rule) == 1, rule
            assert text.count(f"\n{rule}\n") == 1, rule
    assert not local_file(root, "crafted").exists()

    for name, p in profiles.items():
        res = compile_profile(p, root)
        assert res.returncode == 0, (name, res.stderr)
        # P does not carry the rules (it includes the per-VM file): unchanged by the race
        assert p.read_bytes() == before_p[name], name

    proc = virt_aa(root, "rules", "web01")
    assert proc.returncode == 0, proc.stderr
    assert temp_files(root) == []

    for name, rules in wanted.items():
        proc = virt_aa(root, "history", name, "--json")
        assert proc.returncode == 0, proc.stderr
        records = json.loads(proc.stdout)["history"]
        allows = [r for r in records if r["action"] == "allow"]
        assert len(allows) == len(rules), allows
        assert sorted(r["rule"] for r in allows) == sorted(rules)


# -- b. crashes: see test_crash_points.py (fault injection at every durable step) ----------


def _plant_stale(root: Path, uuid: str) -> list[str]:
    """Temp files as a writer killed mid-write leaves them (pid 999999 is not running)."""
    planted = [f"etc/apparmor.d/local/libvirt-{uuid}.999999.tmp",
               f"etc/apparmor.d/libvirt/libvirt-{uuid}.999999.tmp",
               f"etc/virt-aa/domains/{uuid}.conf.999999.tmp"]
    for rel in planted:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("/srv/half-writ")
    return planted


@pytest.fixture
def stale_sandbox(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "root"
    make_sandbox(root)
    proc = virt_aa(root, "allow", "vm-stopped", "/srv/k/base r,")
    assert proc.returncode == 0, proc.stderr
    uuid = _uuid("vm-stopped")
    assert sorted(_plant_stale(root, uuid)) == temp_files(root)
    return root, uuid


def test_stale_temp_files_cleared_by_next_writer(stale_sandbox: tuple[Path, str]) -> None:
    root, _ = stale_sandbox
    proc = virt_aa(root, "allow", "vm-stopped", "/srv/k/next r,")
    assert proc.returncode == 0, proc.stderr
    assert temp_files(root) == []
    rules, problems = parse_file(local_file(root, "vm-stopped").read_text())
    assert problems == []
    assert [r.text for r in rules] == ["/srv/k/base r,", "/srv/k/next r,"]


# -- c. bad input: one-line error, exit 1, nothing changed -------------------------------

@pytest.fixture(scope="module")
def primed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """web01 running with P and one rule; vm-stopped with one rule."""
    root = tmp_path_factory.mktemp("bad") / "root"
    make_sandbox(root)
    create_p(root, "web01")
    for name in ("web01", "vm-stopped"):
        proc = virt_aa(root, "allow", name, "/srv/primed r,")
        assert proc.returncode == 0, proc.stderr
    return root


BAD_RULES = {
    "unparsable": "/srv/x rwz,",
    "close-profile": "/srv/x r, } profile evil { /** rwx,",
    "hash-include": "#include <abstractions/base>",
    "include": "include <tunables/global>",
    "profile": "profile evil /** ux,",
    "newline-brace": "/srv/x r,\n}",
    "variable": "@{HOME}=/etc",
    "unconfined-exec": "/usr/bin/sh ux,",
}


@pytest.mark.parametrize("domain", ["web01", "vm-stopped"])
@pytest.mark.parametrize("rule", BAD_RULES.values(), ids=BAD_RULES.keys())
def test_bad_rule_refused(primed: Path, domain: str, rule: str) -> None:
    before = tree(primed)
    line = one_error_line(virt_aa(primed, "allow", domain, rule))
    assert "rule" in line
    assert tree(primed) == before


@pytest.mark.parametrize("ref", ["no-such-vm", "00000000-0000-4000-8000-000000000000",
                                 "9999"])
@pytest.mark.parametrize("verb", [["allow", "{d}", "/srv/x r,"], ["revoke", "{d}", "/srv/x r,"],
                                  ["rules", "{d}"], ["show", "{d}"], ["complain", "{d}"],
                                  ["enforce", "{d}"], ["history", "{d}"], ["reload", "{d}"]],
                         ids=lambda v: v[0])
def test_unknown_domain(primed: Path, verb: list[str], ref: str) -> None:
    before = tree(primed)
    line = one_error_line(virt_aa(primed, *[w.format(d=ref) for w in verb]))
    assert f"no domain '{ref}'" in line
    assert tree(primed) == before


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to unmount (in reverse) however the test ends."""
    done: list[Path] = []
    yield done
    for point in reversed(done):
        subprocess.run(["umount", str(point)], capture_output=True, check=False)


def _mount(mounts: list[Path], *argv: str) -> None:
    proc = subprocess.run(["mount", *argv], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount here ({proc.stderr.strip()}); needs root and CAP_SYS_ADMIN")


@pytest.mark.parametrize("args", [["allow", "web01", "/srv/ro r,"],
                                  ["allow", "vm-stopped", "/srv/ro r,"],
                                  ["revoke", "web01", "/srv/primed r,"],
                                  ["complain", "web01"]], ids=lambda a: f"{a[0]}-{a[1]}")
def test_read_only_root(tmp_path: Path, mounts: list[Path], args: list[str]) -> None:
    root = tmp_path / "root"
    make_sandbox(root)
    create_p(root, "web01")
    for name in ("web01", "vm-stopped"):
        assert virt_aa(root, "allow", name, "/srv/primed r,").returncode == 0
    before = tree(root)
    _mount(mounts, "--bind", str(root), str(root))
    mounts.append(root)
    _mount(mounts, "-o", "remount,ro,bind", str(root))
    with pytest.raises(OSError):
        (root / "probe").write_text("x")
    line = one_error_line(virt_aa(root, *args))
    assert "Read-only file system" in line, line
    assert tree(root) == before
    subprocess.run(["umount", str(root)], check=True)
    mounts.remove(root)
    assert tree(root) == before


def _fill(path: Path) -> int:
    """Write ``path`` until the file system is full; return the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        chunk = b"\0" * 4096
        while True:
            try:
                n = f.write(chunk)
            except OSError as exc:
                assert exc.errno == 28, exc  # ENOSPC
                break
            written += n or 0
        while True:  # the last partial page
            try:
                f.write(b"\0")
            except OSError:
                break
    return written


@pytest.mark.parametrize("args", [["allow", "web01", "/srv/full r,"],
                                  ["allow", "vm-stopped", "/srv/full r,"],
                                  ["allow", "crafted", "/srv/full r,"],
                                  ["revoke", "web01", "/srv/primed r,"],
                                  ["complain", "web01"]], ids=lambda a: f"{a[0]}-{a[1]}")
def test_full_disk(tmp_path: Path, mounts: list[Path], args: list[str]) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount(mounts, "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk))
    mounts.append(disk)
    root = disk / "root"
    make_sandbox(root)
    create_p(root, "web01")
    for name in ("web01", "vm-stopped"):
        proc = virt_aa(root, "allow", name, "/srv/primed r,")
        assert proc.returncode == 0, proc.stderr
    _fill(disk / "filler")
    before = tree(root)
    line = one_error_line(virt_aa(root, *args))
    assert "No space left on device" in line, line
    assert tree(root) == before


def test_full_var_fails_allow_without_half_state(tmp_path: Path, mounts: list[Path]) -> None:
    """/var full (logs), /etc fine: either the change is made and recorded, or nothing is."""
    root = tmp_path / "root"
    make_sandbox(root)
    assert virt_aa(root, "allow", "vm-stopped", "/srv/primed r,").returncode == 0
    saved = tmp_path / "var.saved"
    subprocess.run(["cp", "-a", str(root / "var"), str(saved)], check=True)
    _mount(mounts, "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(root / "var"))
    mounts.append(root / "var")
    subprocess.run(["cp", "-a", f"{saved}/.", str(root / "var")], check=True)
    _fill(root / "var" / "filler")
    before = tree(root)
    proc = virt_aa(root, "allow", "db01", "/srv/half r,")
    assert "Traceback" not in proc.stderr
    if proc.returncode == 0:
        history = virt_aa(root, "history", "db01", "--json")
        assert [r["rule"] for r in json.loads(history.stdout)["history"]] == ["/srv/half r,"]
    else:
        one_error_line(proc)
        assert not local_file(root, "db01").exists()
        assert tree(root) == before


def test_failed_first_allow_leaves_no_settings(tmp_path: Path) -> None:
    """A hand-edited broken line makes P fail to compile: the allow is undone entirely."""
    root = tmp_path / "root"
    make_sandbox(root)
    create_p(root, "web01")
    lock = root / "var/lib/virt-aa/lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    local_file(root, "web01").write_text("/srv/hand rwz,\n")
    before = tree(root)
    one_error_line(virt_aa(root, "allow", "web01", "/srv/y r,"))
    assert tree(root) == before
