#!/usr/bin/env python3
"""Benchmark: `virt-aa allow` and `virt-aa show` on a VM with 1,000 per-VM rules.

    .venv/bin/python bench/persist_speed.py [--runs 30] [--rules 1000]

A `--root` sandbox where the shut-off test-driver domain `vm-stopped`
(`test://<repo>/examples/node.xml`) already has 1,000 rules, written in the
stored format with `virt_aa.policy.localrules.render_file` (not 1,000 CLI calls).
Then, interleaved in one loop so machine noise hits every command alike,
wall clock of each as a subprocess:

* `virt-aa allow vm-stopped '/srv/new/<i> r,'`   (a new rule every run)
* `virt-aa show vm-stopped`
* `virsh -c URI dominfo vm-stopped`              (baseline: libvirt's own client)
* `python -c pass` with the venv's interpreter   (baseline: bare start-up)
* `virt-aa --version`                            (start-up + virt-aa's CLI imports)
* `python -c 'import virt_aa.cli, libvirt'`      (+ the libvirt bindings)
* `apparmor_parser -Q -T -K` on a one-rule profile, as `allow` checks a rule

Prints medians, ratios, the share of `allow` that is start-up + imports,
and whether allow and show meet the target (< 150 ms median).
Not a timed test: the numbers go in the notes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from virt_aa.host.apparmor import FEATURES_FILE, parser_path
from virt_aa.host.store import Store
from virt_aa.policy.localrules import LocalRule, parse_file, render_file

REPO = Path(__file__).resolve().parents[1]
URI = f"test://{REPO}/examples/node.xml"
DOMAIN = "vm-stopped"
TARGET_MS = 150.0


def cli_argv() -> list[str]:
    script = Path(sys.executable).parent / "virt-aa"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "virt_aa.cli"]


def stored_rule(i: int) -> LocalRule:
    """A varied but valid per-VM rule with full provenance."""
    kinds = [f'"/srv/data/{i}/my dir/**" rwk,', f"/srv/data/{i}/ r,",
             f"owner /srv/data/{i}/{{a,b}}.log w,", f"/srv/data/{i}/*.img rw,",
             f"deny /srv/data/{i}/secret r,"]
    text = kinds[i % len(kinds)]
    fields = {"added": "2026-11-25T15:00:00Z", "by": "alice"}
    if i % 3 == 0:
        fields["comment"] = f"ticket {i}: data for \"job\" {i}"
    rule = LocalRule(text, fields)
    rule.fields["id"] = rule.id
    return rule


def setup(root: Path, n: int) -> tuple[Path, str]:
    subprocess.run(cli_argv() + ["sandbox", str(root)], check=True, capture_output=True)
    uuid = subprocess.run(["virsh", "-c", URI, "domuuid", DOMAIN], check=True,
                          capture_output=True, text=True).stdout.strip()
    store = Store(str(root))
    rules = [stored_rule(i) for i in range(n)]
    text = render_file(DOMAIN, uuid, rules)
    parsed, problems = parse_file(text)
    if problems or len(parsed) != n:
        raise SystemExit(f"generated file does not parse: {len(parsed)} rules, {problems[:3]}")
    store.write_local(f"libvirt-{uuid}", text)
    # one warm-up allow: creates the settings and history files as a first use would
    run(cli_argv() + ["--root", str(root), "-c", URI, "allow", DOMAIN, "/srv/new/warmup r,"])
    return Path(store.local(f"libvirt-{uuid}")), uuid


def run(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(argv, capture_output=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): "
                         f"{proc.stderr.decode(errors='replace')}")
    return proc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--rules", type=int, default=1000)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="virt-aa-speed-") as d:
        root = Path(d) / "root"
        local, _ = setup(root, args.rules)
        check = Path(d) / "one-rule.aa"
        check.write_text("#include <tunables/global>\nprofile virt-aa-rule-check {\n"
                         "  /srv/new/x r,\n}\n")
        parser = [parser_path(), "-Q", "-T", "-K", "-I", str(root / "etc/apparmor.d"),
                  "-I", "/etc/apparmor.d"]
        if os.path.exists(FEATURES_FILE):
            parser += ["--features-file", FEATURES_FILE]
        base = cli_argv() + ["--root", str(root), "-c", URI]
        py = sys.executable
        cands: dict[str, list[str] | None] = {
            "virt-aa allow": None,  # argv differs per run
            "virt-aa show": base + ["show", DOMAIN],
            "virsh dominfo": ["virsh", "-c", URI, "dominfo", DOMAIN],
            "python -c pass": [py, "-c", "pass"],
            "virt-aa --version": cli_argv() + ["--version"],
            "import cli+libvirt": [py, "-c", "import virt_aa.cli, libvirt"],
            "apparmor_parser 1 rule": parser + [str(check)],
        }
        times: dict[str, list[float]] = {k: [] for k in cands}
        for i in range(args.runs):
            for name, cmd in cands.items():
                cmd = cmd or base + ["allow", DOMAIN, f"/srv/new/{i} r,"]
                start = time.perf_counter()
                run(cmd)
                times[name].append((time.perf_counter() - start) * 1000)

        stored, problems = parse_file(local.read_text())
        expected = args.rules + 1 + args.runs
        if problems or len(stored) != expected:
            raise SystemExit(f"after the runs: {len(stored)} rules (expected {expected}), "
                             f"problems {problems[:3]}")
        size_kib = local.stat().st_size / 1024
        shown = json.loads(run(base + ["show", DOMAIN, "--json"]).stdout)
        if len(shown["vm_rules"]) != expected:
            raise SystemExit(f"show --json lists {len(shown['vm_rules'])} rules")

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"vm-stopped with {args.rules} stored per-VM rules ({size_kib:.0f} KiB "
          f"at the end, {expected} rules); median of {args.runs} runs, wall clock, ms")
    print(f"{'command':<24} {'median':>8} {'min':>8} {'max':>8} {'x dominfo':>10} "
          f"{'x python':>9}")
    for k, v in times.items():
        print(f"{k:<24} {med[k]:8.1f} {min(v):8.1f} {max(v):8.1f} "
              f"{med[k] / med['virsh dominfo']:10.2f} {med[k] / med['python -c pass']:9.2f}")
    allow = med["virt-aa allow"]
    print(f"allow: start-up + CLI imports (virt-aa --version) = {med['virt-aa --version']:.1f} ms "
          f"= {med['virt-aa --version'] / allow:.0%} of allow; with the libvirt bindings "
          f"({med['import cli+libvirt']:.1f} ms) {med['import cli+libvirt'] / allow:.0%}; "
          f"bare interpreter {med['python -c pass'] / allow:.0%}; the rule's parser check "
          f"(one apparmor_parser run) {med['apparmor_parser 1 rule'] / allow:.0%}")
    ok = True
    for k in ("virt-aa allow", "virt-aa show"):
        verdict = "meets" if med[k] < TARGET_MS else "MISSES"
        ok = ok and med[k] < TARGET_MS
        print(f"{k}: {med[k]:.1f} ms {verdict} the < {TARGET_MS:.0f} ms target")
    print("OK: both under target" if ok else "TARGET MISSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
