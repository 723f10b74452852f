#!/usr/bin/env python3
"""Crash safety of `virt-aa allow`: kill -9 at random moments, check what is left.

    .venv/bin/python bench/crash_allow.py [--runs 300] [--seed 20261125]
        [--max-delay-ms 120] [--keep DIR]

A `--root` sandbox in which the shut-off test-driver domain `vm-stopped`
already has 3 per-VM rules.  Each run starts
`virt-aa allow vm-stopped '/srv/k/<i> r,'`, sleeps a random 0-120 ms
(fixed seed), sends SIGKILL and waits.  After every kill:

* the per-VM file parses with no problems, ends in a newline, and every
  rule has its provenance line with the matching id (no truncated line);
* every rule that was there before the run still is (nothing is lost);
* nothing but the run's own rule was added; a run that finished before the
  kill exited 0 and its rule is there;
* when the run's rule landed (so it held the lock), the temp files that
  earlier killed runs left are gone.

At the end the history holds no allow record without its rule, and the temp
files left by the last kill are gone after the next command that takes the
lock.  Prints how many kills landed before / after the write, then OK or
FAIL; exits 1 on any violation.  tests/test_concurrency.py runs the same loop
with fewer runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from virt_aa.policy.localrules import parse_file, rule_id

REPO = Path(__file__).resolve().parents[1]
URI = f"test://{REPO}/examples/node.xml"
DOMAIN = "vm-stopped"
BASE_RULES = [f"/srv/k/base{i} r," for i in range(3)]


def cli_argv() -> list[str]:
    script = Path(sys.executable).parent / "virt-aa"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "virt_aa.cli"]


def virt_aa(root: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_argv() + ["--root", str(root), "-c", URI, *args],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)


def temp_files(root: Path) -> set[str]:
    """Every ``*.tmp`` under the sandbox, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*.tmp")}


def check_file(text: str) -> tuple[list[str], list[str]]:
    """The rules of a per-VM file, and what is wrong with it (empty: intact)."""
    issues = []
    rules, problems = parse_file(text)
    issues += [f"line {n}: {why}" for n, why in problems]
    if text and not text.endswith("\n"):
        issues.append(f"no final newline (truncated?): last line {text.rsplit(chr(10), 1)[-1]!r}")
    for r in rules:
        if r.fields.get("id") != rule_id(r.text):
            issues.append(f"line {r.line}: rule {r.text!r} without a matching provenance line "
                          f"(fields {r.fields})")
        elif not r.fields.get("added") or not r.fields.get("by"):
            issues.append(f"line {r.line}: provenance of {r.text!r} incomplete: {r.fields}")
    texts = [r.text for r in rules]
    issues += [f"rule {t!r} stored {texts.count(t)} times" for t in sorted(set(texts))
               if texts.count(t) > 1]
    return texts, issues


@dataclass
class Result:
    runs: int = 0
    before_write: int = 0     # killed before the new rule was stored
    after_write: int = 0      # the new rule was stored (killed later, or finished)
    finished: int = 0         # exited on its own before the SIGKILL
    stale_tmp_kills: int = 0  # kills after which a *.tmp was left behind
    leaked_check_files: int = 0  # virt-aa-check-*.aa left in TMPDIR by killed runs
    rules_clears_tmp: bool | None = None  # did `virt-aa rules` remove stale temps?
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def prepare(root: Path) -> Path:
    """A sandbox where vm-stopped has the 3 base rules; returns its per-VM file."""
    proc = subprocess.run(cli_argv() + ["sandbox", str(root)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"virt-aa sandbox failed: {proc.stderr}")
    proc = virt_aa(root, "allow", DOMAIN, *BASE_RULES)
    if proc.returncode != 0:
        raise SystemExit(f"virt-aa allow (setup) failed: {proc.stderr}")
    proc = virt_aa(root, "rules", DOMAIN, "--json")
    if proc.returncode != 0:
        raise SystemExit(f"virt-aa rules (setup) failed: {proc.stderr}")
    info = json.loads(proc.stdout)
    if sorted(r["rule"] for r in info["rules"]) != sorted(BASE_RULES):
        raise SystemExit(f"setup: unexpected rules {info['rules']}")
    return Path(info["file"])


def run(runs: int, seed: int, workdir: Path, log: Callable[[str], None] = print,
        max_delay: float = 0.120) -> Result:
    """The kill -9 loop in ``workdir`` (which must be empty or absent)."""
    res = Result()
    root = workdir / "root"
    tmpdir = workdir / "tmpdir"   # TMPDIR of the killed runs: what they leak is countable
    tmpdir.mkdir(parents=True, exist_ok=True)
    local = prepare(root)
    env = dict(os.environ, TMPDIR=str(tmpdir))
    rng = random.Random(seed)
    argv = cli_argv() + ["--root", str(root), "-c", URI, "allow", DOMAIN]

    for i in range(runs):
        before_text = local.read_text()
        before, _ = check_file(before_text)
        stale_before = temp_files(root)
        rule = f"/srv/k/{i} r,"
        delay = rng.uniform(0, max_delay)
        proc = subprocess.Popen(argv + [rule], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env)
        time.sleep(delay)
        done = proc.poll() is not None
        if not done:
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        res.runs += 1
        where = f"run {i} (killed after {delay * 1000:.0f} ms)"

        try:
            after_text = local.read_text()
        except OSError as exc:
            res.violations.append(f"{where}: per-VM file unreadable: {exc}")
            break
        after, issues = check_file(after_text)
        res.violations += [f"{where}: {m}" for m in issues]
        lost = set(before) - set(after)
        if lost:
            res.violations.append(f"{where}: earlier rules lost: {sorted(lost)}")
        extra = set(after) - set(before) - {rule}
        if extra:
            res.violations.append(f"{where}: unexpected rules appeared: {sorted(extra)}")
        landed = rule in after
        if done:
            res.finished += 1
            if proc.returncode != 0 or not landed:
                res.violations.append(f"{where}: finished with exit {proc.returncode}, rule "
                                      f"stored: {landed}; stderr: {err.decode(errors='replace')}")
        if b"Traceback" in err:
            res.violations.append(f"{where}: traceback: {err.decode(errors='replace')}")
        if landed:
            res.after_write += 1
        else:
            res.before_write += 1
            if after_text != before_text:
                res.violations.append(f"{where}: rule not stored but the file changed")

        now = temp_files(root)
        if now:
            res.stale_tmp_kills += 1
        if landed and stale_before & now:
            # this run held the lock, which clears what earlier killed runs left
            res.violations.append(f"{where}: stale temp files survived a locked command: "
                                  f"{sorted(stale_before & now)}")

    # the history never records a rule that is not stored
    proc = virt_aa(root, "history", DOMAIN, "--json")
    if proc.returncode != 0:
        res.violations.append(f"history failed: {proc.stderr.strip()}")
    else:
        stored, _ = check_file(local.read_text())
        recorded = [r["rule"] for r in json.loads(proc.stdout)["history"]
                    if r.get("action") == "allow"]
        missing = sorted(set(recorded) - set(stored))
        if missing:
            res.violations.append(f"history records rules that are not stored: {missing}")
        twice = sorted({r for r in recorded if recorded.count(r) > 1})
        if twice:
            res.violations.append(f"history records these rules more than once: {twice}")

    # what the last kills left: gone after the next command.  `rules` is read-only and
    # (as of this writing) takes no lock, so it is reported; a locking command must clear.
    left = temp_files(root)
    proc = virt_aa(root, "rules", DOMAIN)
    if proc.returncode != 0:
        res.violations.append(f"rules failed: {proc.stderr.strip()}")
    if left:
        res.rules_clears_tmp = not temp_files(root)
    proc = virt_aa(root, "reload", DOMAIN)
    if proc.returncode != 0:
        res.violations.append(f"reload failed: {proc.stderr.strip()}")
    remaining = temp_files(root)
    if remaining:
        res.violations.append(f"temp files left after `virt-aa reload` took the lock: "
                              f"{sorted(remaining)}")
    res.leaked_check_files = len(list(tmpdir.glob("virt-aa-check-*")))

    log(f"runs: {res.runs}  killed before the write: {res.before_write}  "
        f"after the write: {res.after_write} (of which finished before the kill: "
        f"{res.finished})")
    log(f"kills that left a *.tmp in the sandbox: {res.stale_tmp_kills}; "
        f"`virt-aa rules` cleared stale temps: "
        f"{'n/a (none left at the end)' if res.rules_clears_tmp is None else res.rules_clears_tmp}")
    log(f"virt-aa-check-*.aa files leaked into TMPDIR by killed runs: {res.leaked_check_files}")
    for v in res.violations:
        log(f"VIOLATION: {v}")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=20261125)
    ap.add_argument("--max-delay-ms", type=float, default=120,
                    help="kill after a random 0..N ms (default 120)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR (kept) instead of a temp dir")
    args = ap.parse_args(argv)
    start = time.monotonic()
    if args.keep:
        res = run(args.runs, args.seed, Path(args.keep), max_delay=args.max_delay_ms / 1000)
    else:
        with tempfile.TemporaryDirectory(prefix="virt-aa-crash-") as d:
            res = run(args.runs, args.seed, Path(d), max_delay=args.max_delay_ms / 1000)
    print(f"{time.monotonic() - start:.1f} s")
    print("OK" if res.ok else f"FAIL: {len(res.violations)} violation(s)")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
