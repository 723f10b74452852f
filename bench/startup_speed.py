#!/usr/bin/env python3
"""Benchmark: helper and hook start-up, a git ref's tree against this tree.

    .venv/bin/python bench/startup_speed.py [--ref c71b2fd] [--runs 100] [--json]

libvirt runs the helper (``-d -r`` for a dry run, ``-r`` at start) and the
hook (``prepare begin``) at every VM start, so their start-up must not grow
release after release.  The ref's ``src/`` is taken with ``git archive``
(it works in any clone that has the history), both trees are started
through the lean ``-IS`` launcher ``virt-aa install`` writes, and the runs
are interleaved (the order flips every round) so machine noise hits both
alike.  Input: the typical corpus domain, for the helper with the
``-u libvirt-<uuid>`` argument libvirt passes, for the hook in a ``--root``
sandbox (each tree its own), without and with three per-VM rules.  Prints
medians, quartiles and the ratio this/ref: the median of the rounds' own
ratios, so that drift of a shared machine cancels out.  Not a timed test:
the numbers go in the notes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from corpus_path import TYPICAL, domains_dir  # noqa: E402

RELEASE = "c71b2fd"
RULES = "/srv/a r,\n/srv/b/** rw,\n/srv/c rwk,\n"


def field(xml: bytes, tag: str) -> str:
    return xml.decode().split(f"<{tag}>", 1)[1].split(f"</{tag}>", 1)[0].strip()


def export_src(ref: str, dest: Path) -> Path:
    """``src/`` of ``ref`` under ``dest``, byte-compiled like an install."""
    tar = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref, "src"],
                         check=True, capture_output=True).stdout
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(dest / "src")], check=True)
    return dest / "src"


def launchers(tree: Path, where: Path, python: str) -> dict[str, str]:
    """The helper and hook launchers for the package under ``tree``."""
    from virt_aa.host.launcher import ENTRY_POINTS, render

    out = {}
    for entry in ENTRY_POINTS:
        path = where / entry
        path.write_text(render(entry, python=python, path=str(tree)))
        path.chmod(0o755)
        out[entry] = str(path)
    return out


def run_once(argv: list[str], xml: bytes) -> tuple[float, bytes]:
    start = time.perf_counter()
    proc = subprocess.run(argv, input=xml, capture_output=True, check=False)
    took = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{argv[0]} failed: {proc.stderr.decode(errors='replace')}")
    return took, proc.stderr


def interleave(cands: dict[str, list[str]], xml: bytes, runs: int
               ) -> tuple[dict[str, list[float]], dict[str, bytes]]:
    """``runs`` rounds; each round runs every candidate once, order flipped each round."""
    names = list(cands)
    times: dict[str, list[float]] = {k: [] for k in names}
    outputs: dict[str, bytes] = {}
    for k in names:  # warm-up: page cache, bytecode
        run_once(cands[k], xml)
    for i in range(runs):
        for k in (names if i % 2 == 0 else names[::-1]):
            took, outputs[k] = run_once(cands[k], xml)
            times[k].append(took)
    return times, outputs


def summary(ts: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ts, n=4)
    return {"median_ms": statistics.median(ts) * 1000, "q1_ms": q[0] * 1000,
            "q3_ms": q[2] * 1000}


def measure(ref: str, runs: int, python: str) -> dict[str, dict[str, object]]:
    sys.path.insert(0, str(REPO / "src"))
    from virt_aa.host.sandbox import seed

    subprocess.run(["sh", str(domains_dir() / "setup-images.sh")], check=True,
                   capture_output=True)
    xml = (domains_dir() / TYPICAL).read_bytes()
    name, uuid = field(xml, "name"), field(xml, "uuid")
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="virt-aa-startup-") as tmpdir:
        tmp = Path(tmpdir)
        trees = {"ref": export_src(ref, tmp / "ref"), "this": REPO / "src"}
        helper: dict[str, list[str]] = {}
        hook: dict[str, list[str]] = {}
        for label, tree in trees.items():
            (tmp / label / "bin").mkdir(parents=True, exist_ok=True)
            exe = launchers(tree, tmp / label / "bin", python)
            root = tmp / label / "root"
            seed(str(root))
            helper[label] = [exe["virt-aa-helper"], "-d", "-r", "-u", f"libvirt-{uuid}"]
            hook[label] = [exe["virt-aa-hook"], "--root", str(root), name, "prepare",
                           "begin", "-"]
        cases = (("helper -d -r", helper, ""), ("hook prepare", hook, ""),
                 ("hook prepare, 3 per-VM rules", hook, RULES))
        for what, cands, rules in cases:
            for label in trees:     # the hook checks stored rules (cached after one check)
                (tmp / label / "root/etc/apparmor.d/local" / f"libvirt-{uuid}").write_text(rules)
            times, outputs = interleave(cands, xml, runs)
            if what.startswith("helper") and outputs["ref"] != outputs["this"]:
                print(f"note: {what}: the two trees print different dry runs",
                      file=sys.stderr)
            stats = {k: summary(v) for k, v in times.items()}
            # each round's own ratio: drift of the machine between rounds cancels out
            paired = statistics.median(t / r for t, r in zip(times["this"], times["ref"],
                                                                 strict=True))
            results[what] = {**stats, "ratio": paired}
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default=RELEASE, help=f"git ref to compare with ({RELEASE}, "
                                                   f"the previous release)")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--python", default="/usr/bin/python3",
                    help="interpreter the launchers use (as `virt-aa install` writes them)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    a = ap.parse_args(argv)
    results = measure(a.ref, a.runs, a.python)
    if a.json:
        print(json.dumps({"ref": a.ref, "runs": a.runs, "domain": TYPICAL,
                          "results": results}, indent=2))
        return 0
    print(f"wall time over {a.runs} interleaved runs, {TYPICAL}: median [q1-q3]")
    for what, res in results.items():
        print(f"\n{what}")
        for k in ("ref", "this"):
            s = res[k]
            assert isinstance(s, dict)
            label = a.ref if k == "ref" else "this tree"
            print(f"  {label:<10} {s['median_ms']:7.2f} ms  "
                  f"[{s['q1_ms']:.2f}-{s['q3_ms']:.2f}]")
        print(f"  ratio this/ref {res['ratio']:.3f} (median of the rounds' ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
