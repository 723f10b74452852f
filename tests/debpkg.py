"""The Debian package under test: built once per source, installed into a throwaway system.

``build_debs()`` copies what the package is built from (``debian/``, ``src/``,
``setup.py``, ``pyproject.toml``, ``README.md``) into a temporary directory,
runs ``dpkg-buildpackage -us -uc -b`` there with Debian's toolchain and a
clean environment, builds the same source again with a bumped version (a
``dch`` entry in the copy, for the upgrade test), runs ``lintian``, and
deletes the copy.  The results are cached under
``/var/cache/virt-aa-deb/<sha256 of those files>/``.

``OverlaySystem`` is this very machine with its root file system under a
private overlay: a mount namespace in which ``/`` is overlaid with a tmpfs
upper layer and entered with ``chroot``, in a PID namespace of its own whose
init dies with the test process (so nothing started in it can outlive the
test, even a killed one).  apt, dpkg, the maintainer scripts,
``dpkg-divert``, libvirtd and QEMU all run for real in it, yet nothing they
write reaches the host: the other tests (and other test sessions sharing the
machine) never see the package or its hook, and tearing it down is the
guarantee that the host is left as it was.  The source checkout is hidden in
it (a tmpfs over it), so whatever works in it does not depend on the checkout.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from e2e_daemon import LIBVIRTD_CONF, QEMU_CONF

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("VIRT_AA_DEB_CACHE", "/var/cache/virt-aa-deb"))
SOURCES = ("debian", "src", "setup.py", "pyproject.toml", "README.md")
SKIP = ("__pycache__", ".pybuild", ".egg-info", ".so", ".debhelper", "debhelper-build-stamp",
        ".substvars")
BUILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
             "DEBFULLNAME": "virt-aa tests", "DEBEMAIL": "tests@virt-aa.dev"}
UPGRADE_SUFFIX = "+upgradetest1"
PATH_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
            "DEBIAN_FRONTEND": "noninteractive"}


class PackageError(RuntimeError):
    pass


def _source_files() -> list[Path]:
    out = []
    for name in SOURCES:
        top = REPO / name
        if top.is_file():
            out.append(top)
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if not d.endswith(SKIP)
                                 and Path(dirpath, d) != REPO / "debian/virt-aa")
            out += [Path(dirpath, f) for f in sorted(filenames) if not f.endswith(SKIP)
                    and f != "files"]
    return out


def source_hash() -> str:
    h = hashlib.sha256()
    for path in _source_files():
        h.update(str(path.relative_to(REPO)).encode() + b"\0")
        h.update(oct(path.stat().st_mode & 0o777).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def _run(argv: list[str], cwd: Path, log: Path, timeout: float = 900) -> None:
    with open(log, "ab") as f:
        f.write(f"\n$ {' '.join(argv)}\n".encode())
        f.flush()
        proc = subprocess.run(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                              env=BUILD_ENV, timeout=timeout, check=False)
    if proc.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise PackageError(f"{' '.join(argv)} failed ({proc.returncode}) in {cwd}:\n{tail}")


def version() -> str:
    """The version of debian/changelog's top entry."""
    out = subprocess.run(["dpkg-parsechangelog", "-S", "Version"], cwd=REPO, env=BUILD_ENV,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def build_debs() -> dict[str, object]:
    """The cached build of this source: {"deb", "upgrade", "lintian", "timings", "dir"}."""
    CACHE.mkdir(parents=True, exist_ok=True)
    dest = CACHE / source_hash()
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        meta = dest / "build.json"
        if not meta.exists():
            _build(dest)
            _prune(keep=dest)
        data: dict[str, object] = json.loads(meta.read_text())
    data["dir"] = str(dest)
    return data


def _prune(keep: Path, count: int = 3) -> None:
    """Old builds go: the newest ``count`` (``keep`` among them) stay in the cache."""
    builds = sorted((d for d in CACHE.iterdir() if (d / "build.json").is_file()),
                    key=lambda d: d.stat().st_mtime, reverse=True)
    for old in builds[count:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def _build(dest: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="virt-aa-deb-", dir="/var/tmp"))
    work = dest.with_name(dest.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "build.log"
    timings: dict[str, float] = {}
    try:
        src = tmp / "virt-aa"
        for path in _source_files():
            target = src / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        ver, arch_ = version(), arch()
        t0 = time.monotonic()
        _run(["dpkg-buildpackage", "-us", "-uc", "-b"], src, log)
        timings["build"] = time.monotonic() - t0
        deb = f"virt-aa_{ver}_{arch_}.deb"
        shutil.copy2(tmp / deb, work / deb)
        t0 = time.monotonic()
        _run(["dch", "--newversion", ver + UPGRADE_SUFFIX, "--distribution", "unstable",
              "--force-distribution", "test build: the same source, a newer version"], src, log)
        _run(["dpkg-buildpackage", "-us", "-uc", "-b"], src, log)
        timings["build_upgrade"] = time.monotonic() - t0
        upgrade = f"virt-aa_{ver}{UPGRADE_SUFFIX}_{arch_}.deb"
        shutil.copy2(tmp / upgrade, work / upgrade)
        t0 = time.monotonic()
        lint = subprocess.run(["lintian", "--pedantic", "-I", "--tag-display-limit", "0",
                               str(work / deb)], capture_output=True, text=True,
                              env=BUILD_ENV, timeout=600, check=False)
        timings["lintian"] = time.monotonic() - t0
        lines = [ln for ln in (lint.stdout + lint.stderr).splitlines()
                 if ln.strip() and "running with root privileges" not in ln]
        (work / "build.json").write_text(json.dumps(
            {"deb": deb, "upgrade": upgrade, "version": ver, "lintian": lines,
             "lintian_rc": lint.returncode, "timings": timings}, indent=2))
        shutil.rmtree(dest, ignore_errors=True)
        work.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # the checkout copy is gone


def cached_deb(package: str) -> Path:
    """The archive's .deb of an installed package, at the installed version (apt's
    cache, else downloaded into the cache) -- for the reinstall ("upgrade") tests."""
    ver = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True,
                         text=True, check=True).stdout.strip()
    fname_ver = ver.replace(":", "%3a")
    a = subprocess.run(["dpkg-query", "-W", "-f=${Architecture}", package],
                       capture_output=True, text=True, check=True).stdout.strip()
    name = f"{package}_{fname_ver}_{a}.deb"
    for d in (Path("/var/cache/apt/archives"), CACHE / "archive"):
        if (d / name).is_file():
            return d / name
    (CACHE / "archive").mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["apt-get", "download", f"{package}={ver}"], cwd=CACHE / "archive",
                          capture_output=True, text=True, env=PATH_ENV, timeout=600,
                          check=False)
    if proc.returncode or not (CACHE / "archive" / name).is_file():
        raise PackageError(f"cannot get {name} (apt-get download: {proc.stderr.strip()})")
    return CACHE / "archive" / name


def bumped(deb: Path, suffix: str = "+virtaatest1") -> Path:
    """``deb`` rebuilt with a higher version and its files new (mtime: now), as a
    real upgrade of the package delivers them -- for the AppArmor upgrade test."""
    out = CACHE / "archive" / deb.name.replace("_amd64", f"{suffix}_amd64")
    if out.is_file():
        return out
    tmp = Path(tempfile.mkdtemp(prefix="virt-aa-repack-", dir="/var/tmp"))
    try:
        tree = tmp / "tree"
        subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, env=BUILD_ENV)
        control = tree / "DEBIAN/control"
        lines = control.read_text().splitlines()
        lines = [ln + suffix if ln.startswith("Version: ") else ln for ln in lines]
        control.write_text("\n".join(lines) + "\n")
        now = time.time()
        for dirpath, _, filenames in os.walk(tree):
            if "DEBIAN" not in Path(dirpath).parts:
                for name in filenames:
                    os.utime(Path(dirpath, name), (now, now), follow_symlinks=False)
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-b", str(tree), str(tmp / out.name)], check=True,
                       capture_output=True, env=BUILD_ENV)
        shutil.move(tmp / out.name, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process goes (PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


NAMESPACE_SCRIPT = """
set -eu
B=$1; shift
mount -t tmpfs -o mode=0755 tmpfs "$B/layers"
mkdir "$B/layers/upper" "$B/layers/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$B/layers/upper,workdir=$B/layers/work" \
    "$B/merged"
M=$B/merged
mount -t proc proc "$M/proc"
mount --rbind /dev "$M/dev"
mount --rbind /sys "$M/sys"
mount -t tmpfs -o mode=0755 tmpfs "$M/run"
mount -t tmpfs -o mode=1777 tmpfs "$M/tmp"
for hide in "$@"; do
    # (a checkout under /tmp is hidden already: the overlay's /tmp is empty)
    [ -d "$M$hide" ] || continue
    mount -t tmpfs -o mode=0755,size=1m tmpfs "$M$hide"
done
echo ready
# init of the PID namespace: reaps the orphans (daemons detach), lives until killed
exec /usr/bin/python3 -I -S -c "$REAPER"
"""
REAPER = """
import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""
# no service starts from maintainer scripts in the throwaway system
POLICY_RC = "#!/bin/sh\nexit 101\n"
# in a chroot, QEMU's private /dev (libvirt's per-domain mount namespace) has no
# usable /dev/pts for the serial console
QEMU_CHROOT_CONF = """# in the overlay chroot: no per-domain mount namespace
namespaces = []
"""


def _remove_stale() -> None:
    """Directories of overlay systems whose test process is gone (killed: its
    namespace died with it, only the empty mount points are left)."""
    for base in Path("/var/tmp").glob("virt-aa-overlay-*"):
        try:
            owner = int((base / "owner").read_text())
        except (OSError, ValueError):
            continue
        if not Path(f"/proc/{owner}").exists():
            shutil.rmtree(base, ignore_errors=True)


class OverlaySystem:
    """This machine's root under a private overlay, entered with chroot."""

    def __init__(self, hide: list[str]) -> None:
        _remove_stale()
        self.base = Path(tempfile.mkdtemp(prefix="virt-aa-overlay-", dir="/var/tmp"))
        (self.base / "owner").write_text(str(os.getpid()))
        (self.base / "layers").mkdir()
        (self.base / "merged").mkdir()
        self.hide = hide
        self.holder: subprocess.Popen[str] | None = None
        self.init = 0          # the namespace's init (host pid): the way in
        self.daemon_pids: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        # unshare dies with us (PDEATHSIG), the namespace's init with unshare
        # (--kill-child), and every process of the PID namespace with its init
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation",
             "private", "sh", "-c", NAMESPACE_SCRIPT, "sh", str(self.base), *self.hide],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(PATH_ENV, REAPER=REAPER), preexec_fn=_die_with_parent)
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline().strip()
        if line != "ready":
            err = self.holder.stderr.read() if self.holder.stderr else ""
            raise PackageError(f"overlay system did not start: {line} {err}")
        children = Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children")
        self.init = int(children.read_text().split()[0])
        self.write("/usr/sbin/policy-rc.d", POLICY_RC, 0o755)

    def path(self, p: str) -> Path:
        """A path inside the overlay system, as the host can reach it."""
        return Path(f"/proc/{self.init}/root{self.base}/merged{p}")

    def write(self, p: str, text: str, mode: int = 0o644) -> None:
        dest = self.path(p)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        dest.chmod(mode)

    def run(self, argv: list[str], check: bool = True, timeout: float = 600,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        full = ["nsenter", "-t", str(self.init), "-m", "-p", "chroot",
                str(self.base / "merged"), "/usr/bin/env", "-i",
                *(f"{k}={v}" for k, v in PATH_ENV.items()), *argv]
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                              check=False, input=input, env=PATH_ENV)
        if check and proc.returncode:
            raise PackageError(f"{' '.join(argv)} failed ({proc.returncode}):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-c", script], check=check)

    def apt(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(["apt-get", "-o", "DPkg::Lock::Timeout=120", "-y", "-q",
                         "--no-install-recommends", *args])

    def stop(self) -> None:
        """Stop the daemons cleanly, then end the namespace: its init goes, and with
        it anything still running inside; the mounts go with the namespace."""
        if self.holder is not None:
            try:
                self.stop_libvirtd()
            finally:
                self.holder.terminate()
                try:
                    self.holder.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.holder.kill()
                    self.holder.wait(timeout=30)
                self.holder = None
        shutil.rmtree(self.base, ignore_errors=True)

    def alive(self, pid: int) -> bool:
        """A process of the overlay system (``pid`` as its PID namespace numbers it)."""
        return self.run(["kill", "-0", str(pid)], check=False).returncode == 0

    def stop_pid(self, pid: int, timeout: float = 30) -> None:
        self.run(["kill", str(pid)], check=False)
        deadline = time.monotonic() + timeout
        while self.alive(pid):
            if time.monotonic() > deadline:
                self.run(["kill", "-9", str(pid)], check=False)
                deadline = time.monotonic() + 10
            time.sleep(0.1)

    # -- libvirt inside ----------------------------------------------------------------
    def configure_libvirt(self) -> None:
        for rel, extra in (("/etc/libvirt/qemu.conf", QEMU_CONF + QEMU_CHROOT_CONF),
                           ("/etc/libvirt/libvirtd.conf", LIBVIRTD_CONF)):
            text = self.path(rel).read_text()
            if extra not in text:
                self.path(rel).write_text(text + extra)

    def start_libvirtd(self, timeout: float = 90) -> None:
        self.run(["mkdir", "-p", "/run/virt-aa-test"])
        if "virtlogd" not in self.daemon_pids:
            self.run(["virtlogd", "-d", "-p", "/run/virt-aa-test/virtlogd.pid"])
            self.daemon_pids["virtlogd"] = self._read_pid("virtlogd")
        self.run(["libvirtd", "-d", "-p", "/run/virt-aa-test/libvirtd.pid"])
        self.daemon_pids["libvirtd"] = self._read_pid("libvirtd")
        deadline = time.monotonic() + timeout
        while self.virsh("version", check=False).returncode:
            if time.monotonic() > deadline or not self.alive(self.daemon_pids["libvirtd"]):
                raise PackageError(f"libvirtd did not come up:\n{self.libvirtd_log()}")
            time.sleep(0.2)

    def _read_pid(self, name: str) -> int:
        deadline = time.monotonic() + 30
        pidfile = self.path(f"/run/virt-aa-test/{name}.pid")
        while True:
            try:
                return int(pidfile.read_text().strip())
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    raise PackageError(f"{name} wrote no pid file") from None
                time.sleep(0.05)

    def restart_libvirtd(self) -> None:
        pid = self.daemon_pids.pop("libvirtd", None)
        if pid is not None:
            self.stop_pid(pid)
        self.start_libvirtd()

    def stop_libvirtd(self) -> None:
        if "libvirtd" in self.daemon_pids and self.alive(self.daemon_pids["libvirtd"]):
            for name in self.virsh("list", "--name", check=False).stdout.split():
                self.virsh("destroy", name, check=False)
        for name in ("libvirtd", "virtlogd"):
            pid = self.daemon_pids.pop(name, None)
            if pid is not None:
                self.stop_pid(pid)

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["virsh", "-q", "-c", "qemu:///system", *args], check=check,
                        timeout=120)

    def libvirtd_log(self) -> str:
        try:
            return "\n".join(self.path("/var/log/libvirt/libvirtd.log").read_text(
                errors="replace").splitlines()[-30:])
        except OSError:
            return "(no log)"

    # -- state, byte for byte ----------------------------------------------------------
    def snapshot(self, paths: list[str]) -> dict[str, str]:
        """path -> "type mode sha256" for each path (recursively for directories),
        plus the dpkg diversions of libvirt's helper."""
        out: dict[str, str] = {}
        for p in paths:
            self._snap(p, out)
        out["dpkg-divert"] = self.run(["dpkg-divert", "--list",
                                       "/usr/lib/libvirt/virt-aa-helper"]).stdout
        return out

    def _snap(self, p: str, out: dict[str, str]) -> None:
        real = self.path(p)
        if real.is_symlink():
            out[p] = f"link {os.readlink(real)}"
        elif real.is_dir():
            out[p] = f"dir {oct(real.stat().st_mode)}"
            for child in sorted(os.listdir(real)):
                self._snap(f"{p}/{child}", out)
        elif real.exists():
            out[p] = (f"file {oct(real.stat().st_mode)} "
                      f"{hashlib.sha256(real.read_bytes()).hexdigest()}")
        else:
            out[p] = "absent"
