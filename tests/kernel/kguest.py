"""Boot Debian's kernel with AppArmor in qemu and run a plan of loads and probes in it.

The guest is built (and cached) by ``scripts/build-kernel-guest.sh``: the
distribution kernel and a busybox initramfs with apparmor_parser, aa-exec and
the static probe (``tests/kernel/probe.c``).  Every run appends a second,
uncompressed cpio archive (the *payload*: ``guest-run.sh``, the plan, the
profiles, the host's AppArmor include files) to the cached initramfs; the
kernel unpacks both.  Results come back on the guest's second serial port.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUILD_SCRIPT = REPO / "scripts" / "build-kernel-guest.sh"
RUN_SCRIPT = HERE / "guest-run.sh"
CMDLINE = ("console=ttyS0 apparmor=1 security=apparmor panic=-1 printk.devkmsg=on "
           "audit_backlog_limit=65536 log_buf_len=16M loglevel=4 rdinit=/init")


def build(timeout: float = 900) -> Path:
    """The cache directory with vmlinuz and base.cpio.gz (built when missing)."""
    res = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True,
                         timeout=timeout, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return Path(res.stdout.strip().splitlines()[-1])


class Cpio:
    """A newc archive (what the kernel's initramfs unpacker reads), built in memory."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.ino = 1
        self.dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        self.ino += 1
        nameb = name.encode("utf-8", "surrogateescape") + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nameb), 0]
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.parts.append(hdr + nameb + b"\0" * (-(len(hdr) + len(nameb)) % 4))
        self.parts.append(data + b"\0" * (-len(data) % 4))

    def mkdir(self, name: str) -> None:
        name = name.strip("/")
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self.dirs:
                self.dirs.add(d)
                self._entry(d, stat.S_IFDIR | 0o755)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        if "/" in name:
            self.mkdir(name.rsplit("/", 1)[0])
        self._entry(name, stat.S_IFREG | mode, data)

    def add_tree(self, src: Path, dest: str) -> None:
        """Regular files and directories under src (symlinks followed), as dest/..."""
        self.mkdir(dest)
        for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
            rel = os.path.relpath(dirpath, src)
            base = dest if rel == "." else f"{dest}/{rel}"
            self.mkdir(base)
            for fn in sorted(filenames):
                p = Path(dirpath, fn)
                if p.is_file():
                    self.add_file(f"{base}/{fn}", p.read_bytes())
            dirnames.sort()

    def bytes(self) -> bytes:
        trailer = Cpio()
        trailer.ino = 0
        trailer._entry("TRAILER!!!", 0)
        out = b"".join(self.parts + trailer.parts)
        return out + b"\0" * (-len(out) % 512)


@dataclass
class GuestRun:
    console: str
    output: str
    seconds: float
    accel: str
    loads: list[tuple[str, str, int, float, str]] = field(default_factory=list)
    probes: dict[str, tuple[int, str]] = field(default_factory=dict)
    dmesg: str = ""
    loaded: str = ""
    banner: str = ""

    def parse(self) -> GuestRun:
        section = "head"
        dmesg: list[str] = []
        loaded: list[str] = []
        for line in self.output.replace("\r", "").split("\n"):
            if line.startswith("== "):
                section = line.split()[1]
                if section in ("BEGIN", "PARSER"):
                    self.banner += line + "\n"
                continue
            if section == "DMESG":
                dmesg.append(line)
            elif section == "LOADED":
                loaded.append(line)
            elif line.startswith("L "):
                f = line.split(" ", 6)
                self.loads.append((f[1], f[2], int(f[3]), float(f[5]) - float(f[4]),
                                   f[6] if len(f) > 6 else ""))
            elif line.startswith("P "):
                f = line.split(" ", 3)
                self.probes[f[1]] = (int(f[2]), f[3] if len(f) > 3 else "")
        self.dmesg = "\n".join(dmesg)
        self.loaded = "\n".join(loaded)
        return self

    def records_by_probe(self) -> dict[str, list[str]]:
        """The AppArmor records of the kernel log, keyed by the probe that caused them.

        Audit records reach the log asynchronously (kauditd), after later
        probes' markers, so they are matched by pid: the probe prints its own.
        """
        pids = {}
        for pid, (_rc, msg) in self.probes.items():
            m = re.search(r"\bpid=(\d+)", msg)
            if m:
                pids[m.group(1)] = pid
        out: dict[str, list[str]] = {}
        for line in self.dmesg.split("\n"):
            if "apparmor=\"" not in line:
                continue
            m = re.search(r" pid=(\d+)", line)
            out.setdefault(pids.get(m.group(1), "-") if m else "-", []).append(line)
        return out


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def boot(cache: Path, payload: Cpio, workdir: Path, accel: str | None = None,
         timeout: float = 600, mem: str = "1024", smp: int = 2) -> GuestRun:
    """Boot the guest with payload appended to the cached initramfs; the parsed results."""
    # TCG by default: what CI can count on (nested KVM may hang: seen here with
    # /dev/kvm present); VIRT_AA_KGUEST_ACCEL=kvm to try it
    accel = accel or os.environ.get("VIRT_AA_KGUEST_ACCEL") or "tcg"
    workdir.mkdir(parents=True, exist_ok=True)
    initrd = workdir / "initrd.img"
    with open(initrd, "wb") as f:
        base = (cache / "base.cpio.gz").read_bytes()
        # the kernel takes an uncompressed archive after a compressed one only
        # at a 4-byte aligned offset; zeros between archives are skipped
        f.write(base + b"\0" * (-len(base) % 512))
        f.write(payload.bytes())
    console, output = workdir / "console.log", workdir / "serial1.log"
    for p in (console, output):
        p.unlink(missing_ok=True)
    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    argv = [qemu, "-accel", accel, "-m", mem, "-smp", str(smp), "-cpu",
            "qemu64" if accel == "kvm" else "max",
            "-kernel", str(cache / "vmlinuz"), "-initrd", str(initrd), "-append", CMDLINE,
            "-display", "none", "-vga", "none", "-nodefaults", "-no-reboot",
            "-serial", f"file:{console}", "-serial", f"file:{output}", "-monitor", "none",
            "-net", "none"]
    t0 = time.monotonic()
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.monotonic() - t0
    con = console.read_text(errors="replace") if console.exists() else ""
    out = output.read_text(errors="replace") if output.exists() else ""
    if res.returncode != 0 or "== END" not in out:
        raise RuntimeError(f"guest run failed (qemu exit {res.returncode}, accel {accel}):\n"
                           f"{res.stderr[-2000:]}\n--- console tail:\n{con[-4000:]}\n"
                           f"--- results tail:\n{out[-2000:]}")
    return GuestRun(console=con, output=out, seconds=seconds, accel=accel).parse()
