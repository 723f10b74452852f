"""Boot Debian's kernel with the host's own / as root and run the real-host scenario.

The kernel, busybox and the 9p/overlay modules come from the kernel proof's
cached build (``scripts/build-kernel-guest.sh``).  The initramfs is that
build's ``base.cpio.gz`` + ``modules.cpio.gz`` + a small payload (``init.sh``
as ``/realhost-init`` and where to find Python and the scenario).  The guest
mounts the host's ``/`` read-only over virtio-9p under a tmpfs overlay and
switch_roots into it, so it runs the host's libvirt, QEMU, Python,
apparmor_parser and this worktree's virt-aa; a second, writable 9p share
(the run directory) takes the results: ``results.json``, ``kern.log`` (the
guest's whole kernel log), ``scenario.log``; ``console.log`` is the serial
console.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel import kguest

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "scenario.py"
CMDLINE = ("console=ttyS0 apparmor=1 security=apparmor panic=-1 printk.devkmsg=on "
           "audit_backlog_limit=65536 log_buf_len=16M loglevel=4 rdinit=/realhost-init")


@dataclass
class RealHostRun:
    results: dict[str, Any]
    kern_log: str
    console: str
    scenario_log: str
    seconds: float
    outdir: Path

    def step(self, sid: str) -> dict[str, Any]:
        step = self.results["steps"].get(sid)
        assert step is not None, f"step {sid} did not run; scenario log:\n{self.scenario_log}"
        return step  # type: ignore[no-any-return]

    def step_log(self, sid: str) -> list[str]:
        """The kernel log lines from step sid's marker to the next marker."""
        out: list[str] = []
        inside = False
        for line in self.kern_log.splitlines():
            if "virt-aa-realhost step " in line or "virt-aa-realhost end" in line:
                inside = line.rstrip().endswith(f"virt-aa-realhost step {sid}")
                continue
            if inside:
                out.append(line)
        return out

    def apparmor_records(self, sid: str | None = None) -> list[str]:
        lines = self.step_log(sid) if sid else self.kern_log.splitlines()
        return [ln for ln in lines if 'apparmor="' in ln]

    def records_of_pid(self, pid: str) -> list[str]:
        return [ln for ln in self.apparmor_records() if f" pid={pid} " in ln + " "]


def payload(python: str) -> kguest.Cpio:
    env = (f"RH_INIT={HERE / 'guest-init.sh'}\n"
           f"RH_PYTHON={python}\n"
           f"RH_SCENARIO={SCENARIO}\n")
    for value in (str(HERE), python):
        if any(c.isspace() or c in "'\"$\\`" for c in value):
            raise RuntimeError(f"the guest cannot take a path with blanks or quotes: {value!r}")
    cpio = kguest.Cpio()
    cpio.add_file("realhost-init", (HERE / "init.sh").read_bytes(), 0o755)
    cpio.add_file("realhost.env", env.encode())
    return cpio


def boot(outdir: Path, python: str | None = None, timeout: float = 900) -> RealHostRun:
    """Boot the guest, wait for it to power off, return what it left in outdir."""
    if "," in str(outdir):
        raise RuntimeError(f"qemu's -virtfs cannot take a path with a comma: {outdir}")
    cache = kguest.build()
    outdir.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "kern.log", "scenario.log", "scenario.rc", "console.log"):
        (outdir / name).unlink(missing_ok=True)
    initrd = outdir / "initrd.img"
    with open(initrd, "wb") as f:
        for part in ("base.cpio.gz", "modules.cpio.gz"):
            data = (cache / part).read_bytes()
            f.write(data + b"\0" * (-len(data) % 512))
        f.write(payload(python or sys.executable).bytes())
    console = outdir / "console.log"
    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    argv = [qemu, "-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2",
            "-kernel", str(cache / "vmlinuz"), "-initrd", str(initrd), "-append", CMDLINE,
            "-display", "none", "-vga", "none", "-nodefaults", "-no-reboot",
            "-serial", f"file:{console}", "-monitor", "none", "-net", "none",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                       "multidevs=remap",
            "-virtfs", f"local,path={outdir},mount_tag=out,security_model=none,"
                       "multidevs=remap"]
    t0 = time.monotonic()
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.monotonic() - t0
    if res.returncode != 0 or not (outdir / "results.json").exists():
        con, log = _text(outdir, "console.log"), _text(outdir, "scenario.log")
        raise RuntimeError(f"real-host guest failed (qemu exit {res.returncode}):\n"
                           f"{res.stderr[-2000:]}\n--- console tail:\n{con[-4000:]}\n"
                           f"--- scenario log tail:\n{log[-4000:]}")
    return load(outdir, seconds)


def _text(outdir: Path, name: str) -> str:
    p = outdir / name
    return p.read_text(errors="replace") if p.exists() else ""


def load(outdir: Path, seconds: float = 0.0) -> RealHostRun:
    """The artefacts a run left in outdir."""
    results = json.loads((outdir / "results.json").read_text())
    return RealHostRun(results=results, kern_log=_text(outdir, "kern.log"),
                       console=_text(outdir, "console.log"),
                       scenario_log=_text(outdir, "scenario.log"), seconds=seconds,
                       outdir=outdir)


def main() -> int:
    """Run the guest by hand: python tests/realhost/rhguest.py OUTDIR."""
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/virt-aa-realhost")
    run = boot(out.resolve())
    print(f"{run.seconds:.0f} s; results in {out}")
    for sid in run.results["order"]:
        st = run.results["steps"][sid]
        print(f"{sid}: {st['t1'] - st['t0']:.1f} s {st.get('error') or 'ok'}")
    return 0


if __name__ == "__main__":   # cd tests && python -m realhost.rhguest [OUTDIR]
    sys.exit(main())
