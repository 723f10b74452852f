#!/usr/bin/env python3
"""Benchmark: the `prepare` hook against libvirt's own helper, side by side.

    .venv/bin/python bench/hook_speed.py [--runs 60]

At every VM start the hook writes the VM's profile from the XML on stdin.
Baseline, measured in the same interleaved loop: libvirt's C helper on the
same XML (`virt-aa-helper -d -r`, what libvirt runs right after the hook).
Two cases: a VM without per-VM rules, and one with three (then the hook
also has apparmor_parser check them, so that a broken rule refuses the
start with its file and line).  Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from corpus_path import TYPICAL, domains_dir  # noqa: E402

STOCK = "/usr/lib/libvirt/virt-aa-helper"


def field(xml: bytes, tag: str) -> str:
    return xml.decode().split(f"<{tag}>", 1)[1].split(f"</{tag}>", 1)[0].strip()


def median_ms(argv: list[str], xml: bytes, runs: list[float]) -> None:
    start = time.perf_counter()
    proc = subprocess.run(argv, input=xml, capture_output=True, check=False)
    runs.append(time.perf_counter() - start)
    if proc.returncode:
        raise SystemExit(f"{argv[0]} failed: {proc.stderr.decode(errors='replace')}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=60)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    from virt_aa.host import launcher
    from virt_aa.host.sandbox import seed

    subprocess.run(["sh", str(domains_dir() / "setup-images.sh")], check=True,
                   capture_output=True)
    xml = (domains_dir() / TYPICAL).read_bytes()
    name, uuid = field(xml, "name"), field(xml, "uuid")
    with tempfile.TemporaryDirectory(prefix="virt-aa-bench-") as tmp:
        root = Path(tmp) / "root"
        seed(str(root))
        hook = launcher.write("virt-aa-hook", f"{tmp}/virt-aa-hook", python="/usr/bin/python3")
        cands = {
            "stock helper -d -r (C)": [STOCK, "-d", "-r", "-u", f"libvirt-{uuid}"],
            "virt-aa-hook (launcher)": [hook, "--root", str(root), name, "prepare", "begin",
                                        "-"],
        }
        script = Path(sys.executable).parent / "virt-aa-hook"
        if script.exists():
            cands["virt-aa-hook (pip script)"] = [str(script), "--root", str(root), name,
                                                  "prepare", "begin", "-"]
        local = root / "etc/apparmor.d/local" / f"libvirt-{uuid}"
        print(f"median wall time over {a.runs} interleaved runs, {TYPICAL}")
        for label, rules in (("no per-VM rules", ""),
                             ("3 per-VM rules", "/srv/a r,\n/srv/b/** rw,\n/srv/c rwk,\n")):
            local.write_text(rules)
            times: dict[str, list[float]] = {k: [] for k in cands}
            for _ in range(a.runs):
                for k, cmd in cands.items():
                    median_ms(cmd, xml, times[k])
            base = statistics.median(times["stock helper -d -r (C)"])
            print(f"\n{label}")
            for k, ts in times.items():
                med = statistics.median(ts)
                print(f"  {k:<27} {med * 1000:7.2f} ms   ratio {med / base:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
