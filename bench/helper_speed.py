#!/usr/bin/env python3
"""Benchmark: virt-aa-helper -d -r against libvirt's own helper, side by side.

    .venv/bin/python bench/helper_speed.py [--runs 60]

Runs, interleaved in one loop so machine noise hits every candidate alike:
the stock C helper (/usr/lib/libvirt/virt-aa-helper, the baseline), our
helper through the lean launcher (what `virt-aa install --mode helper`
puts in libvirt's place) and through pip's console script.  Two inputs: a
typical corpus domain (a qcow2 3-level chain, cdrom, serial, share, TPM,
vhost-net: vi-desktop-kitchen-sink) and a generated 500-disk domain of
qcow2 images.  Prints medians and ratios against the stock helper.
Not a timed test: the numbers go in the notes.
"""

from __future__ import annotations

import argparse
import os
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


def uuid_of(xml: bytes) -> str:
    text = xml.decode()
    return text.split("<uuid>", 1)[1].split("</uuid>", 1)[0].strip()


def disk_name(i: int) -> str:
    """vda, vdb, ... vdz, vdaa, ... as libvirt numbers disks."""
    letters = ""
    i += 1
    while i:
        i, rem = divmod(i - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return "vd" + letters


def many_disks(tmp: Path, n: int) -> bytes:
    disks = []
    for i in range(n):
        img = tmp / f"d{i}.qcow2"
        if not img.exists():
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "1M"],
                           check=True)
        disks.append(f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                     f"<source file='{img}'/><target dev='{disk_name(i)}' bus='virtio'/></disk>")
    return (f"<domain type='kvm'><name>bench-{n}</name>"
            f"<uuid>5e0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d</uuid><memory>65536</memory>"
            f"<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
            f"{''.join(disks)}</devices></domain>").encode()


def time_runs(cands: dict[str, list[str]], xml: bytes, runs: int) -> dict[str, list[float]]:
    args = ["-d", "-r", "-u", "libvirt-" + uuid_of(xml)]
    times: dict[str, list[float]] = {k: [] for k in cands}
    outputs: dict[str, bytes] = {}
    for _ in range(runs):
        for name, argv in cands.items():
            start = time.perf_counter()
            proc = subprocess.run(argv + args, input=xml, capture_output=True, check=False)
            times[name].append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed: {proc.stderr.decode(errors='replace')}")
            outputs[name] = proc.stderr
    rules = {k: sum(1 for line in v.splitlines() if line.startswith(b"  ")) for k, v in
             outputs.items()}
    if len(set(rules.values())) != 1:
        raise SystemExit(f"candidates printed different numbers of rules: {rules}")
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--disks", type=int, default=500)
    a = ap.parse_args(argv)

    sys.path.insert(0, str(REPO / "src"))
    from virt_aa.host import launcher

    subprocess.run(["sh", str(domains_dir() / "setup-images.sh")], check=True,
                   capture_output=True)
    with tempfile.TemporaryDirectory(prefix="virt-aa-bench-") as tmpdir:
        tmp = Path(tmpdir)
        lean = launcher.write("virt-aa-helper", str(tmp / "virt-aa-helper"),
                              python="/usr/bin/python3")
        cands = {"stock (C)": [STOCK], "virt-aa (launcher)": [lean]}
        script = Path(sys.executable).parent / "virt-aa-helper"
        if script.exists():
            cands["virt-aa (pip script)"] = [str(script)]
        inputs = {
            f"typical ({TYPICAL})": (domains_dir() / TYPICAL).read_bytes(),
            f"{a.disks} qcow2 disks": many_disks(tmp, a.disks),
        }
        print(f"median wall time of `-d -r` over {a.runs} interleaved runs "
              f"(python {sys.version.split()[0]}, {os.cpu_count()} cpus)")
        for label, xml in inputs.items():
            times = time_runs(cands, xml, a.runs)
            base = statistics.median(times["stock (C)"])
            print(f"\n{label}")
            for name, ts in times.items():
                med = statistics.median(ts)
                print(f"  {name:<22} {med * 1000:7.2f} ms   ratio {med / base:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
