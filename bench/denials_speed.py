#!/usr/bin/env python3
"""Benchmark: group the AppArmor records of a big audit.log, against grep.

    .venv/bin/python bench/denials_speed.py                  # 5 M lines, ~1.5 GB, in a temp dir
    .venv/bin/python bench/denials_speed.py --lines 500000   # smaller
    .venv/bin/python bench/denials_speed.py --file /var/log/audit/audit.log --runs 5
    .venv/bin/python bench/denials_speed.py --libapparmor    # also LibAppArmor's count (slow)

The log comes from tests/tools/gendenials.py (``--format audit --seed 42``).
Baseline: ``grep -c 'apparmor="DENIED"' FILE``.  Ours, each in a fresh
process: ``group_file(FILE)`` (full parsing and grouping, the library call)
and ``virt-aa denials --file FILE --json > /dev/null`` (the command, with
an empty ``--root``: parsing, grouping, VM mapping, warnings and 100k+ groups
of JSON).  They are run in turn (A B C A B C ...) after one warm-up each; the
ratios printed are medians of the run-by-run ratios, so drift of the machine
cancels out.  Peak RSS is reported for each process itself and for its
largest worker (``getrusage`` SELF / CHILDREN inside the runner).

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
GEN = REPO / "tests" / "tools" / "gendenials.py"

RUNNER = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
t0 = time.monotonic()
from virt_aa.denials.scan import group_file
res = group_file(sys.argv[2], workers=int(sys.argv[3]))
wall = time.monotonic() - t0
top = sorted(res.raw.items(), key=lambda kv: -kv[1][0])[:3]
print(json.dumps({
    "wall": wall, "records": res.records, "lines": res.lines, "groups": len(res.raw),
    "non_apparmor_lines": res.non_apparmor_lines, "split": res.split,
    "truncated": res.truncated, "notices": res.notices, "overflow": res.overflow,
    "method": res.method, "workers": res.workers,
    "rss_self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "rss_children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    "top": [[list(k), v[0]] for k, v in top],
}))
"""

CLI = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from virt_aa.cli import main
rc = main(["--root", sys.argv[3], "denials", "--file", sys.argv[2], "--json"])
sys.stdout.flush()
print(json.dumps({"rc": rc,
    "rss_self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "rss_children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}), file=sys.stderr)
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


def timed(argv: list[str], stdout: int | None = subprocess.PIPE) -> tuple[float, str, str]:
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, text=True, check=False,
                       env=dict(os.environ, LC_ALL="C"))
    wall = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU[:] = [r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime]
    if p.returncode not in (0, 1):             # grep -c exits 1 when it finds nothing
        raise SystemExit(f"{argv[0]} failed: {p.stderr.strip()}")
    return wall, p.stdout or "", p.stderr or ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--file", help="scan this file instead of generating one")
    ap.add_argument("--lines", type=int, default=5_000_000, help="lines to generate (5000000)")
    ap.add_argument("--format", default="audit", help="gendenials format (audit)")
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
        root = tempfile.mkdtemp(prefix="denials-bench-root-")
        cli = [a.python, "-c", CLI, str(REPO / "src"), path, root]
        subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)   # warm cache
        timed(grep)
        timed(ours)
        timed(cli, stdout=subprocess.DEVNULL)
        gw: list[float] = []
        ow: list[float] = []
        cw: list[float] = []
        gc: list[float] = []
        oc: list[float] = []
        cc: list[float] = []
        info: dict[str, object] = {}
        cinfo: dict[str, object] = {}
        n_denied = 0
        for _ in range(a.runs):         # A B C A B C ...: drift of the machine cancels out
            w, out, _err = timed(grep)
            gw.append(w)
            gc.append(CPU[0])
            n_denied = int(out.strip() or 0)
            w, out, _err = timed(ours)
            ow.append(w)
            oc.append(CPU[0])
            info = json.loads(out.strip().splitlines()[-1])
            w, _out, err = timed(cli, stdout=subprocess.DEVNULL)
            cw.append(w)
            cc.append(CPU[0])
            cinfo = json.loads(err.strip().splitlines()[-1])
        os.rmdir(root) if not os.listdir(root) else None
        ratios = [o / g for o, g in zip(ow, gw, strict=True)]
        cratios = [o / g for o, g in zip(cw, gw, strict=True)]
        ratio = statistics.median(ratios)
        cratio = statistics.median(cratios)
        rss = max(int(str(info["rss_self_kb"])), int(str(info["rss_children_kb"])),
                  int(str(cinfo["rss_self_kb"])), int(str(cinfo["rss_children_kb"]))) / 1024
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
        print(f"virt-aa denials --file F --json > /dev/null: {statistics.median(cw):.3f} s "
              f"[{min(cw):.3f}-{max(cw):.3f}]; peak RSS {int(str(cinfo['rss_self_kb'])) / 1024:.1f}"
              f" MiB, largest worker {int(str(cinfo['rss_children_kb'])) / 1024:.1f} MiB")
        print(f"CPU time (user+sys, all processes): grep {statistics.median(gc):.3f} s, "
              f"group_file {statistics.median(oc):.3f} s, denials {statistics.median(cc):.3f} s")
        print(f"ratio group_file (median of pairs {', '.join(f'{r:.2f}' for r in ratios)}): "
              f"{ratio:.2f}x grep")
        print(f"ratio virt-aa denials (median of pairs {', '.join(f'{r:.2f}' for r in cratios)}):"
              f" {cratio:.2f}x grep; target <= 3x: {'met' if cratio <= 3 else 'NOT met'}; "
              f"every process < 200 MB: {'yes' if rss < 190 else 'NO'}")
        if a.libapparmor:
            w, out, _err = timed(["/usr/bin/python3", "-c", LIBAPPARMOR, path])
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
