"""A private libvirtd (``qemu:///system``, as root, no systemd) for end-to-end tests.

The Python form of ``shared/research/e2e-daemon.sh``: the daemon lives in its
own mount namespace in which libvirt's directories are bind mounts of
directories under a sandbox root ``R``, laid out like the host::

    R/etc/libvirt        -> /etc/libvirt     (a copy of the host's; hooks live here)
    R/var/lib/libvirt    -> /var/lib/libvirt
    R/var/log/libvirt    -> /var/log/libvirt
    R/var/cache/libvirt  -> /var/cache/libvirt
    R/run/libvirt        -> /run/libvirt     (on a fresh tmpfs /run)

so ``virt-aa --root R`` and the daemon see the same ``etc/libvirt``, and
clients connect from outside through ``R/run/libvirt/libvirt-sock``.  Pid
files and the test's own files live in a separate state directory.  Nothing
of the host's libvirt state is read back or changed; every process is
stopped by its pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

# (directory under the sandbox root, the path it is mounted on in the namespace)
TREES = (("etc/libvirt", "/etc/libvirt"),
         ("var/lib/libvirt", "/var/lib/libvirt"),
         ("var/log/libvirt", "/var/log/libvirt"),
         ("var/cache/libvirt", "/var/cache/libvirt"))
TOOLS = ("libvirtd", "virtlogd", "virsh", "unshare", "nsenter", "mount", "cp")
# the daemon's environment: nothing of the caller's (VIRT_AA_*, LIBVIRT_*, venv)
DAEMON_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "HOME": "/root", "LANG": "C.UTF-8"}
QEMU_CONF = """
# --- private e2e daemon (tests/e2e_daemon.py) ---
# no AppArmor in this kernel: "apparmor" here makes the qemu driver fail
security_driver = "none"
# root can open /dev/kvm; with the default libvirt-qemu user every daemon
# start re-probes QEMU (12-16 s)
user = "root"
group = "root"
"""
LIBVIRTD_CONF = """
# --- private e2e daemon (tests/e2e_daemon.py): warnings and errors, e.g. hook failures
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""
NAMESPACE_SCRIPT = """
set -eu
R=$1 S=$2
mount --bind "$R/etc/libvirt" /etc/libvirt
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/libvirt
mount --bind "$R/run/libvirt" /run/libvirt
mount --bind "$R/var/lib/libvirt" /var/lib/libvirt
mount --bind "$R/var/log/libvirt" /var/log/libvirt
mount --bind "$R/var/cache/libvirt" /var/cache/libvirt
virtlogd -d -p "$S/virtlogd.pid"
libvirtd -d -p "$S/libvirtd.pid"
"""


class DaemonError(RuntimeError):
    pass


def tiny_domain_xml(name: str, uuid: str) -> str:
    """The smallest QEMU domain that starts under TCG: no disk, a serial console."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def missing_requirements() -> str | None:
    """Why a private libvirtd cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (mount namespace, qemu:///system)"
    missing = [t for t in TOOLS if shutil.which(t, path=DAEMON_ENV["PATH"]) is None]
    if missing:
        return "missing: " + ", ".join(missing)
    if not os.path.isdir("/etc/libvirt"):
        return "libvirt-daemon-system is not installed (/etc/libvirt missing)"
    return None


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stop_pid(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM, wait, SIGKILL after ``timeout``; returns once it is gone."""
    if not alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + 10
        time.sleep(0.05)


class PrivateLibvirtd:
    """One libvirtd + virtlogd pair in a private mount namespace."""

    def __init__(self, root: Path, state: Path) -> None:
        self.root = root.resolve()
        self.state = state.resolve()
        self.sock = self.root / "run/libvirt/libvirt-sock"
        self.uri = f"qemu:///system?socket={self.sock}"
        self.log = self.root / "var/log/libvirt/libvirtd.log"
        if len(str(self.sock)) > 100:  # sun_path is 108 bytes
            raise DaemonError(f"socket path too long for a unix socket: {self.sock}")
        for _, target in TREES + (("run", "/run"),):
            if self.root == Path(target) or Path(target) in self.root.parents:
                raise DaemonError(f"{self.root} would be hidden by the mount on {target}")

    # -- the state tree ------------------------------------------------------------
    def prepare(self) -> None:
        """Copy the host's libvirt directories into the sandbox and configure them."""
        (self.root / "run/libvirt").mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        for rel, host in TREES:
            dest = self.root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if os.path.isdir(host):
                subprocess.run(["cp", "-a", "--", host, str(dest)], check=True,
                               capture_output=True, timeout=60)
            else:
                dest.mkdir()
        with open(self.root / "etc/libvirt/qemu.conf", "a", encoding="utf-8") as f:
            f.write(QEMU_CONF)
        with open(self.root / "etc/libvirt/libvirtd.conf", "a", encoding="utf-8") as f:
            f.write(LIBVIRTD_CONF)

    # -- pids ----------------------------------------------------------------------
    def _pid(self, name: str) -> int | None:
        try:
            return int((self.state / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    @property
    def libvirtd_pid(self) -> int | None:
        return self._pid("libvirtd")

    @property
    def virtlogd_pid(self) -> int | None:
        return self._pid("virtlogd")

    def qemu_pids(self) -> dict[str, int]:
        """Domain name -> QEMU pid, from libvirt's pid files (only live QEMUs)."""
        out = {}
        for f in sorted((self.root / "run/libvirt/qemu").glob("*.pid")):
            try:
                pid = int(f.read_text().strip())
            except (OSError, ValueError):
                continue
            if alive(pid) and "qemu-system" in cmdline(pid):
                out[f.stem] = pid
        return out

    # -- client ---------------------------------------------------------------------
    def virsh(self, *args: str, check: bool = True,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["virsh", "-q", "-c", self.uri, *args], capture_output=True,
                              text=True, timeout=timeout, check=False, env=DAEMON_ENV)
        if check and proc.returncode:
            raise DaemonError(f"virsh {' '.join(args)} failed ({proc.returncode}): "
                              f"{proc.stderr.strip()}")
        return proc

    def answers(self) -> bool:
        if not self.sock.exists():
            return False
        return self.virsh("version", check=False, timeout=10).returncode == 0

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.answers():
            pid = self.libvirtd_pid
            if pid is not None and not alive(pid):
                raise DaemonError(f"libvirtd exited during start-up; log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise DaemonError(f"libvirtd did not answer within {timeout:.0f} s; "
                                  f"log:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # -- lifecycle --------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        """A new namespace with virtlogd and libvirtd; returns once libvirtd answers."""
        for name in ("libvirtd", "virtlogd"):
            (self.state / f"{name}.pid").unlink(missing_ok=True)
        self.sock.unlink(missing_ok=True)
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private",
                               "sh", "-c", NAMESPACE_SCRIPT, "sh", str(self.root),
                               str(self.state)],
                              capture_output=True, text=True, timeout=60, check=False,
                              env=DAEMON_ENV)
        if proc.returncode:
            raise DaemonError(f"starting the private daemons failed ({proc.returncode}): "
                              f"{proc.stderr.strip()}")
        self.wait_ready(timeout)

    def restart_libvirtd(self, timeout: float = 60) -> None:
        """SIGTERM libvirtd only (QEMUs and virtlogd keep running), then start it again
        in the same mount namespace (entered through virtlogd)."""
        logd = self.virtlogd_pid
        if logd is None or not alive(logd):
            raise DaemonError("virtlogd is not running: no namespace to restart into")
        old = self.libvirtd_pid
        if old is not None:
            stop_pid(old)
        (self.state / "libvirtd.pid").unlink(missing_ok=True)
        self.sock.unlink(missing_ok=True)
        proc = subprocess.run(["nsenter", "-t", str(logd), "-m", "libvirtd", "-d", "-p",
                               str(self.state / "libvirtd.pid")],
                              capture_output=True, text=True, timeout=60, check=False,
                              env=DAEMON_ENV)
        if proc.returncode:
            raise DaemonError(f"restarting libvirtd failed ({proc.returncode}): "
                              f"{proc.stderr.strip()}")
        self.wait_ready(timeout)

    def stop(self) -> list[str]:
        """Destroy running domains, stop libvirtd and virtlogd; never raises.

        Returns what had to be cleaned up the hard way (for the test's report)."""
        notes = []
        try:
            if self.libvirtd_pid is not None and alive(self.libvirtd_pid) and self.answers():
                names = self.virsh("list", "--name", check=False).stdout.split()
                for name in names:
                    self.virsh("destroy", name, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            notes.append(f"destroying domains: {exc}")
        for name, pid in self.qemu_pids().items():   # libvirtd gone or destroy failed
            notes.append(f"killed QEMU of {name} (pid {pid})")
            stop_pid(pid, timeout=10)
        for daemon in ("libvirtd", "virtlogd"):
            pid = self._pid(daemon)
            if pid is not None and alive(pid):
                stop_pid(pid)
            (self.state / f"{daemon}.pid").unlink(missing_ok=True)
        return notes
