#!/usr/bin/env python3
"""Benchmark: group the AppArmor records of a big audit.log, against grep.

    .venv/bin/python bench/denials_speed.py                  # 5 M lines, ~1.5 GB, in a temp dir
    .venv/bin/python bench/denials_speed.py --lines 500000   # smaller
    .venv/bin/python bench/denials_speed.py --file /var/log/audit/audit.log --runs 5
    .venv/bin/python bench/denials_speed.py --libapparmor    # also LibAppArmor's count (slow)

The log comes from shared/tools/gen-denials (``--format audit --seed 42``).
Baseline: ``grep -c 'apparmor="DENIED"' FILE``.  Ours: ``group_file(FILE)``
(full parsing and grouping) in a fresh process.  The two are run in turn
(A B A B ...) after one warm-up each; the ratio printed is the median of the
pair-by-pair ratios, so drift of the machine cancels out.  Peak RSS is
reported for the scanning process itself and for its largest worker
(``getrusage`` SELF / CHILDREN inside the runner).

Target (the issue's): at most 3x grep on a 2-core machine, every process
under 200 MB resident.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VIRT_AA_SHARED", REPO.parent / "shared"))
GEN = SHARED / "tools" / "gen-denials"

RUNNER = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
t0 = time.monotonic()
from virt_aa.denials.scan import group_file
res = group_file(sys.argv[2], workers=int(sys.argv[3]))
wall = time.monotonic() - t0
top = sorted(res.groups.values(), key=lambda g: -g.count)[:3]
print(json.dumps({
    "wall": wall, "records": res.records, "lines": res.lines, "groups": len(res.groups),
    "non_apparmor_lines": res.non_apparmor_lines, "split": res.split,
    "truncated": res.truncated, "notices": res.notices, "overflow": res.overflow,
    "method": res.method, "workers": res.workers,
    "rss_self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "rss_children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    "top": [[list(g.key), g.count] for g in top],
}))
"""

LIBAPPARMOR = r"""
import sys, LibAppArmor as L
n = bad = 0
with open(sys.argv[1], encoding="utf-8", errors="surrogateescape") as f:
    for line in f:
        if "apparmor=" not in line:
            continue
        r = L.parse_record(line)
        if r.event in (0, 1):
            bad += 1
        else:
            n += 1
        L.free_record(r)
print(n, bad)
"""


CPU: list[float] = []          # user+sys of the last timed() command (all its processes)


def timed(argv: list[str], stdout: int | None = subprocess.PIPE) -> tuple[float, str]:
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, text=True, check=False,
                       env=dict(os.environ, LC_ALL="C"))
    wall = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU[:] = [r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime]
    if p.returncode not in (0, 1):             # grep -c exits 1 when it finds nothing
        raise SystemExit(f"{argv[0]} failed: {p.stderr.strip()}")
    return wall, p.stdout or ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--file", help="scan this file instead of generating one")
    ap.add_argument("--lines", type=int, default=5_000_000, help="lines to generate (5000000)")
    ap.add_argument("--format", default="audit", help="gen-denials format (audit)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each (3)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--python", default=sys.executable, help="interpreter for the scan")
    ap.add_argument("--libapparmor", action="store_true",
                    help="also count what LibAppArmor.parse_record understands (slow)")
    ap.add_argument("--keep", action="store_true", help="keep the generated file")
    a = ap.parse_args(argv)

    tmp = None
    if a.file:
        path = a.file
    else:
        tmp = tempfile.mkdtemp(prefix="denials-bench-")
        path = os.path.join(tmp, f"{a.format}.log")
        print(f"generating {a.lines} lines ({a.format}, seed {a.seed}) into {path} ...",
              flush=True)
        t0 = time.monotonic()
        subprocess.run([sys.executable, str(GEN), "--format", a.format, "--lines", str(a.lines),
                        "--seed", str(a.seed), "-o", path], check=True)
        print(f"  {time.monotonic() - t0:.1f} s", flush=True)
    try:
        size = os.path.getsize(path)
        print(f"file: {path}, {size / 1e6:.0f} MB; cpus: {os.cpu_count()}; "
              f"load: {os.getloadavg()[0]:.2f} (other work on the machine inflates the ratio)")
        grep = ["grep", "-c", 'apparmor="DENIED"', path]
        ours = [a.python, "-c", RUNNER, str(REPO / "src"), path, str(a.workers)]
        subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)   # warm cache
        timed(grep)
        timed(ours)
        gw: list[float] = []
        ow: list[float] = []
        gc: list[float] = []
        oc: list[float] = []
        info: dict[str, object] = {}
        for _ in range(a.runs):
            w, out = timed(grep)
            gw.append(w)
            gc.append(CPU[0])
            n_denied = int(out.strip() or 0)
            w, out = timed(ours)
            ow.append(w)
            oc.append(CPU[0])
            info = json.loads(out.strip().splitlines()[-1])
        ratios = [o / g for o, g in zip(ow, gw, strict=True)]
        ratio = statistics.median(ratios)
        rss = max(int(str(info["rss_self_kb"])), int(str(info["rss_children_kb"]))) / 1024
        print(f"grep -c 'apparmor=\"DENIED\"': {statistics.median(gw):.3f} s "
              f"[{min(gw):.3f}-{max(gw):.3f}], {n_denied} lines")
        print(f"group_file ({info['workers']} workers, {info['method']} path): "
              f"{statistics.median(ow):.3f} s [{min(ow):.3f}-{max(ow):.3f}] "
              f"(in-process {float(str(info['wall'])):.3f} s)")
        print(f"  {info['records']} records, {info['groups']} groups, {info['lines']} lines, "
              f"{info['non_apparmor_lines']} other lines, split {info['split']}, "
              f"truncated {info['truncated']}, notices {info['notices']}, "
              f"overflow {info['overflow']}")
        print(f"  peak RSS: scanning process {int(str(info['rss_self_kb'])) / 1024:.1f} MiB, "
              f"largest worker {int(str(info['rss_children_kb'])) / 1024:.1f} MiB")
        for key, count in info["top"]:             # type: ignore[attr-defined]
            print(f"  top group: {count} x {key}")
        cpu_ratio = statistics.median(oc) / statistics.median(gc)
        print(f"CPU time (user+sys, all processes): grep {statistics.median(gc):.3f} s, "
              f"group_file {statistics.median(oc):.3f} s ({cpu_ratio:.1f}x); on {a.workers} "
              f"idle cores the wall time cannot go below "
              f"{statistics.median(oc) / a.workers / statistics.median(gw):.1f}x grep")
        print(f"ratio (median of pairs {', '.join(f'{r:.2f}' for r in ratios)}): "
              f"{ratio:.2f}x grep; target <= 3x: {'met' if ratio <= 3 else 'NOT met'}; "
              f"RSS < 200 MB: {'yes' if rss < 190 else 'NO'}")
        if a.libapparmor:
            w, out = timed(["/usr/bin/python3", "-c", LIBAPPARMOR, path])
            n, bad = out.split()
            print(f"LibAppArmor.parse_record: {n} records understood, {bad} returned INVALID, "
                  f"{w:.1f} s ({w / statistics.median(gw):.1f}x grep)")
    finally:
        if tmp and not a.keep:
            for f in os.listdir(tmp):
                os.unlink(os.path.join(tmp, f))
            os.rmdir(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
