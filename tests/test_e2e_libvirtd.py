"""End to end: virt-aa's hook inside a real libvirtd.

A private libvirtd (tests/e2e_daemon.py: its own mount namespace, copies of
libvirt's directories under a sandbox root R, ``security_driver = "none"``
since this kernel has no AppArmor) runs the hook that
``virt-aa --root R install`` puts in ``R/etc/libvirt/hooks/qemu.d``, next
to an admin's own ``hooks/qemu``.  A 64 MiB TCG domain with no disk
(SeaBIOS keeps looping, so it stays running) is started, restarted, refused
with a broken per-VM rule, reconnected after a libvirtd restart, and the
hook is uninstalled again.  libvirt itself never writes the profile P here
(no AppArmor security driver), so every P seen is the hook's work at
``prepare begin``.

Timings are printed per phase (``pytest -s``); the daemon starts once per
module (~8 s with a cold QEMU capability cache).
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_daemon import PrivateLibvirtd, missing_requirements, tiny_domain_xml

from conftest import cli_argv, compile_profile

pytestmark = pytest.mark.slow

NAME = "e2e-tiny"
UUID = "3f2b0a5e-1c7d-4e8f-9a6b-0c1d2e3f4a5b"
PROFILE = f"libvirt-{UUID}"
RULE = "/srv/e2e/** rwk,"
BROKEN = "/srv/e2e/** rwz,"
PARSER_BROKEN = "capability bogus,"
BUDGET = 120.0
DOMAIN_XML = tiny_domain_xml(NAME, UUID)
ADMIN_HOOK = """#!/bin/sh
# The admin's own libvirt qemu hook (not virt-aa's): log every call.
echo "$@" >> {log}
cat >/dev/null
exit 0
"""


class Phases:
    """Wall-clock time per phase, printed as it goes and summed up at the end."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.done: list[tuple[str, float]] = []
        self._name = ""
        self._start = 0.0

    def __call__(self, name: str) -> Phases:
        self._name = name
        return self

    def __enter__(self) -> None:
        self._start = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        took = time.monotonic() - self._start
        self.done.append((self._name, took))
        print(f"\n[e2e] {self._name:<48} {took:6.2f} s", end="", flush=True)

    def total(self) -> float:
        return time.monotonic() - self.t0

    def report(self) -> str:
        lines = [f"  {n:<48} {t:6.2f} s" for n, t in self.done]
        lines.append(f"  {'total (fixture + test)':<48} {self.total():6.2f} s")
        return "\n".join(lines)


@dataclass
class Env:
    daemon: PrivateLibvirtd
    root: Path            # the sandbox: root/etc/libvirt is the daemon's /etc/libvirt
    state: Path           # pid files, the admin hook's log, the domain XML
    admin_log: Path
    admin_hook: bytes     # the admin hook as written, to compare after uninstall
    hooks_before: dict[str, str]
    install_out: str
    phases: Phases
    log_seen: int = 0     # admin log lines already checked

    @property
    def hooks(self) -> Path:
        return self.root / "etc/libvirt/hooks"

    @property
    def p(self) -> Path:
        return self.root / "etc/apparmor.d/libvirt" / PROFILE

    @property
    def local(self) -> Path:
        return self.root / "etc/apparmor.d/local" / PROFILE

    def virt_aa(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*cli_argv(), "--root", str(self.root), *args],
                              capture_output=True, text=True, timeout=60, check=False,
                              env=dict(os.environ, VIRT_AA_DEBUG="1"))
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def new_hook_calls(self) -> list[str]:
        """The admin hook's calls since the last look."""
        lines = self.admin_log.read_text().splitlines() if self.admin_log.exists() else []
        new, self.log_seen = lines[self.log_seen:], len(lines)
        return new


def tree_listing(top: Path) -> dict[str, str]:
    """Every entry below ``top``: type, mode and content hash (or link target)."""
    out = {}
    for dirpath, dirs, files in os.walk(top):
        for name in sorted(dirs + files):
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(top))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = f"link -> {os.readlink(p)}"
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = f"dir {stat.S_IMODE(st.st_mode):o}"
            else:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = f"file {stat.S_IMODE(st.st_mode):o} {digest}"
    return out


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    why = missing_requirements()
    if why:
        pytest.fail(f"no private libvirtd here: {why} (scripts/setup.sh installs it)")
    phases = Phases()
    base = tmp_path_factory.mktemp("e2e")
    root, state = base / "root", base / "state"
    daemon = PrivateLibvirtd(root, state)
    try:
        with phases("copy libvirt state, write the admin hook"):
            daemon.prepare()
            admin_log = daemon.state / "admin-hook.log"
            hooks = daemon.root / "etc/libvirt/hooks"
            hooks.mkdir(exist_ok=True)
            admin = ADMIN_HOOK.format(log=admin_log).encode()
            (hooks / "qemu").write_bytes(admin)
            (hooks / "qemu").chmod(0o755)
            hooks_before = tree_listing(hooks)
        env = Env(daemon, daemon.root, daemon.state, admin_log, admin, hooks_before, "",
                  phases)
        with phases("virt-aa sandbox + install"):
            proc = env.virt_aa("sandbox", str(env.root))
            assert proc.returncode == 0, proc.stderr
            proc = env.virt_aa("install")
            assert proc.returncode == 0, proc.stderr
            env.install_out = proc.stdout
        with phases("libvirtd start (hooks installed before)"):
            daemon.start()
        yield env
    finally:
        t = time.monotonic()
        notes = daemon.stop()
        print(f"\n[e2e] {'stop daemons (teardown)':<48} {time.monotonic() - t:6.2f} s")
        for note in notes:
            print(f"[e2e] teardown: {note}")


def check_p(env: Env) -> None:
    """P as the hook writes it at prepare: includes, complain mode, and it compiles."""
    assert env.p.is_file(), f"{env.p} was not written at prepare"
    text = env.p.read_text()
    assert f"include if exists <local/{PROFILE}>" in text
    head = [line for line in text.splitlines() if line.startswith(f"profile {PROFILE}")]
    assert len(head) == 1, text
    assert "flags=(attach_disconnected, complain)" in head[0], head[0]
    res = compile_profile(env.p, env.root)
    assert res.returncode == 0, res.stderr


def start_ok(env: Env) -> None:
    env.daemon.virsh("start", NAME)
    assert env.daemon.virsh("domstate", NAME).stdout.strip() == "running"
    assert env.new_hook_calls() == [f"{NAME} prepare begin -", f"{NAME} start begin -",
                                    f"{NAME} started begin -"]


def destroy(env: Env) -> None:
    env.daemon.virsh("destroy", NAME)
    assert env.new_hook_calls() == [f"{NAME} stopped end -", f"{NAME} release end -"]


def test_hook_in_a_real_libvirtd(e2e: Env) -> None:
    env, d, ph = e2e, e2e.daemon, e2e.phases
    hook = env.hooks / "qemu.d/virt-aa"
    entry = env.root / "usr/sbin/virt-aa-hook"

    with ph("check install, define, allow, complain"):
        assert hook.is_file() and os.access(hook, os.X_OK), env.install_out
        assert f'exec {entry} --root {env.root} "$@"' in hook.read_text()
        assert os.access(entry, os.X_OK)
        assert (env.hooks / "qemu").read_bytes() == env.admin_hook
        xml = env.state / "tiny.xml"
        xml.write_text(DOMAIN_XML)
        d.virsh("define", str(xml))
        proc = env.virt_aa("-c", d.uri, "allow", NAME, RULE)
        assert proc.returncode == 0, proc.stderr
        proc = env.virt_aa("-c", d.uri, "complain", NAME)
        assert proc.returncode == 0, proc.stderr
        assert not env.p.exists()     # written only when the VM starts
        assert env.new_hook_calls() == []   # define runs no hook

    with ph("start: hook writes P (complain, compiles)"):
        start_ok(env)
        check_p(env)

    with ph("destroy, delete P, start: P re-created"):
        destroy(env)
        env.p.unlink()
        start_ok(env)
        check_p(env)

    with ph("broken stored rule refuses the start"):
        destroy(env)
        good = env.local.read_text()
        lines = good.split("\n")
        at = [i for i, line in enumerate(lines) if "/srv/e2e/**" in line]
        assert len(at) == 1, good
        lines[at[0]] = BROKEN
        env.local.write_text("\n".join(lines))
        proc = d.virsh("start", NAME, check=False)
        assert proc.returncode != 0
        err = " ".join(proc.stderr.split())
        where = f"{os.path.realpath(env.local)}:{at[0] + 1}:"
        assert "Hook script execution failed" in err, err
        assert f"virt-aa-hook: error: {where}" in err, err
        assert f"refusing to start {NAME}" in err, err
        assert d.virsh("domstate", NAME).stdout.strip() == "shut off"
        # libvirt ran the admin hook, then ours failed: no start, but stopped/release
        assert env.new_hook_calls() == [f"{NAME} prepare begin -", f"{NAME} stopped end -",
                                        f"{NAME} release end -"]
        print(f"\n[e2e]   virsh start said: {proc.stderr.strip()}", end="")

    with ph("rule only apparmor_parser rejects: refused"):
        lines[at[0]] = PARSER_BROKEN       # passes virt-aa's grammar, not the parser
        env.local.write_text("\n".join(lines))
        proc = d.virsh("start", NAME, check=False)
        assert proc.returncode != 0
        err = " ".join(proc.stderr.split())
        assert f"{os.path.realpath(env.local)}:{at[0] + 1}: Invalid capability" in err, err
        assert f"refusing to start {NAME}" in err, err
        assert env.new_hook_calls() == [f"{NAME} prepare begin -", f"{NAME} stopped end -",
                                        f"{NAME} release end -"]

    with ph("rule fixed: start again"):
        env.local.write_text(good)
        start_ok(env)
        check_p(env)

    with ph("libvirtd restart while the VM runs: reconnect"):
        qemu = d.qemu_pids()
        assert NAME in qemu, qemu
        log_size = d.log.stat().st_size if d.log.exists() else 0
        old_pid = d.libvirtd_pid
        d.restart_libvirtd()
        assert d.libvirtd_pid != old_pid
        assert d.virsh("domstate", NAME).stdout.strip() == "running"
        assert d.qemu_pids().get(NAME) == qemu[NAME]   # the same QEMU, reconnected
        # libvirt stops the domain if a hook fails at reconnect; its log says so too
        assert env.new_hook_calls() == [f"{NAME} reconnect begin -"]
        with open(d.log, "rb") as f:
            f.seek(log_size)
            since = f.read().decode(errors="replace")
        assert "Hook script execution failed" not in since, since
        # and our hook, run as libvirt runs it for reconnect, exits 0 and prints nothing
        live = d.virsh("dumpxml", NAME).stdout
        proc = subprocess.run([str(hook), NAME, "reconnect", "begin", "-"], input=live,
                              capture_output=True, text=True, timeout=30, check=False)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
        check_p(env)

    with ph("uninstall: hooks dir exactly as before"):
        destroy(env)
        proc = env.virt_aa("uninstall")
        assert proc.returncode == 0, proc.stderr
        assert tree_listing(env.hooks) == env.hooks_before
        assert (env.hooks / "qemu").read_bytes() == env.admin_hook
        assert not entry.exists()

    with ph("after uninstall: start runs only the admin hook"):
        env.p.unlink()
        start_ok(env)
        assert not env.p.exists()     # our hook is out of the daemon's path
        destroy(env)

    total = ph.total()
    print(f"\n[e2e] phases:\n{ph.report()}")
    assert total < BUDGET, f"took {total:.1f} s (budget {BUDGET:.0f} s)\n{ph.report()}"

