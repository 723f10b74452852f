#!/usr/bin/env python3
"""Benchmark: `virt-aa status` on 200 defined domains (libvirt's test driver).

    .venv/bin/python bench/status_speed.py [--domains 200] [--runs 10]

The node file defines N domains (half running, half shut off); the sandbox
has a profile on disk and a few per-VM rules for every other domain, and
some stale profiles.  Baseline in the same loop: `virsh list --all` on the
same URI.  Target: status under 1 s.
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


def node_xml(n: int) -> str:
    doms = []
    for i in range(n):
        state = "" if i % 2 == 0 else "<test:runstate>5</test:runstate>"
        doms.append(
            f"<domain type='kvm'><name>vm{i:03d}</name>"
            f"<uuid>00000000-0000-4000-8000-{i:012x}</uuid><memory unit='MiB'>256</memory>"
            f"<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
            f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='/var/lib/libvirt/images/vm{i:03d}.raw'/>"
            f"<target dev='vda' bus='virtio'/></disk></devices>{state}</domain>")
    return ("<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
            + "".join(doms) + "</node>")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domains", type=int, default=200)
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args(argv)
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="virt-aa-bench-") as tmp:
        node = Path(tmp) / "node.xml"
        node.write_text(node_xml(a.domains))
        uri = f"test://{node}"
        root = Path(tmp) / "root"
        subprocess.run([bindir / "virt-aa", "sandbox", str(root)], check=True,
                       capture_output=True)
        for i in range(0, a.domains, 2):       # running ones get P and rules
            uuid = f"00000000-0000-4000-8000-{i:012x}"
            xml = subprocess.run(["virsh", "-c", uri, "dumpxml", f"vm{i:03d}"],
                                 capture_output=True, check=True).stdout
            subprocess.run([bindir / "virt-aa-hook", "--root", str(root), f"vm{i:03d}",
                            "prepare", "begin", "-"], input=xml, check=True)
            (root / "etc/apparmor.d/local" / f"libvirt-{uuid}").write_text(
                "/srv/a r,\n/srv/b/** rw,\n")
        for j in range(5):
            (root / "etc/apparmor.d/libvirt" / f"libvirt-ffffffff-0000-4000-8000-{j:012x}"
             ).write_text("profile x {}\n")
        cands = {"virsh list --all": ["virsh", "-c", uri, "list", "--all"],
                 "virt-aa status": [str(bindir / "virt-aa"), "--root", str(root), "-c", uri,
                                    "status"],
                 "virt-aa status --json": [str(bindir / "virt-aa"), "--root", str(root),
                                           "-c", uri, "status", "--json"]}
        times: dict[str, list[float]] = {k: [] for k in cands}
        for _ in range(a.runs):
            for k, cmd in cands.items():
                start = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                times[k].append(time.perf_counter() - start)
        base = statistics.median(times["virsh list --all"])
        print(f"{a.domains} domains, median of {a.runs} runs")
        for k, ts in times.items():
            med = statistics.median(ts)
            print(f"  {k:<24} {med * 1000:8.1f} ms   ratio {med / base:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
