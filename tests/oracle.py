"""Oracle recordings: what each libvirt version's real virt-aa-helper prints per domain.

A *corpus* is a directory of domain XMLs (plus an optional ``cases.json``
giving other arguments than ``-d -r -u libvirt-<uuid>``).  A *recording* is
``tests/oracle/<libvirt version>/<corpus>.json``: per domain the XML's sha256,
the arguments, the exit code, the first line of stdout and stderr, and the
rules in the order the helper printed them.  The recordings are committed;
the tests compare our helper with them and fail when an XML changed since it
was recorded.  Standard library only (it also runs from scripts/).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
ORACLE_DIR = TESTS / "oracle"
CORPUS_DIR = TESTS / "corpus"
CACHE = Path(os.environ.get("VIRT_AA_ORACLE_CACHE", "/var/cache/virt-aa-oracle"))
HOST_HELPER = "/usr/lib/libvirt/virt-aa-helper"
UNPARSED = "<unparsed>"
# Debian suite -> the libvirt it ships (checked against the chroot's package)
SUITES = {"bookworm": "9.0.0", "trixie": "11.3.0", "sid": "12.8.0"}

Entry = dict[str, object]
Rule = list[str]

_UUID = re.compile(rb"<uuid>\s*([^<]*?)\s*</uuid>")
_RULE = re.compile(r'^\s*(deny\s+)?"((?:[^"\\]|\\.)*)"\s*([A-Za-z]*)\s*,\s*$')


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- cases


def load_manifest(xml_dir: Path) -> dict[str, dict[str, object]]:
    path = xml_dir / "cases.json"
    if not path.exists():
        return {}
    data: dict[str, dict[str, object]] = json.loads(path.read_text())
    return data


def case_args(name: str, xml: bytes, manifest: dict[str, dict[str, object]]) -> list[str]:
    """The helper's arguments for one domain: libvirt's ``-d -r -u libvirt-<uuid>``
    unless cases.json says otherwise ("{profile}" is substituted)."""
    spec = manifest.get(name, {})
    profile = spec.get("profile")
    if not isinstance(profile, str):
        m = _UUID.search(xml)
        profile = ("libvirt-" + m.group(1).decode("utf-8", "replace").lower() if m
                   else "libvirt-00000000-0000-0000-0000-000000000000")
    args = spec.get("args")
    if not isinstance(args, list):
        args = ["-d", "-r", "-u", "{profile}"]
    return [str(a).replace("{profile}", profile) for a in args]


def domains(xml_dir: Path) -> list[str]:
    return sorted(p.name for p in xml_dir.glob("*.xml"))


# ----------------------------------------------------------------------------- parsing


def parse_rules(text: str) -> list[Rule]:
    """The rules block of a dry run, in order: ``"P" rwk,`` -> ["P", "rwk"],
    ``deny "P" w,`` -> ["P", "deny w"]; comments dropped; anything else kept
    as ["<unparsed>", line] so broken output shows."""
    lines = text.split("\n")
    for i in range(len(lines) - 2):
        head = lines[i]
        if head.endswith(":") and not head.startswith(" ") and lines[i + 1].endswith(".files") \
                and lines[i + 2] == head:
            break
    else:
        return []
    rules: list[Rule] = []
    for line in lines[i + 3:]:
        if line == head or (not line.strip() and rules):
            break
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _RULE.match(line)
        if m:
            perms = m.group(3)
            rules.append([m.group(2), "deny " + perms if m.group(1) else perms])
        else:
            rules.append([UNPARSED, stripped])
    return rules


def verdict(out: bytes, err: bytes, code: int | str) -> Entry:
    o = out.decode("utf-8", "surrogateescape")
    e = err.decode("utf-8", "surrogateescape")
    # "errors" (every error line) helps classify a mismatch; recordings keep
    # only the first line of stderr
    return {"exit": code, "stdout": o.split("\n", 1)[0], "stderr": e.split("\n", 1)[0],
            "rules": parse_rules(e) or parse_rules(o),
            "errors": [line for line in e.split("\n") if ": error: " in line]}


# ----------------------------------------------------------------------------- running

Runner = Callable[[list[str], bytes], tuple[bytes, bytes, int | str]]


def command_runner(prefix: list[str], env: dict[str, str] | None = None,
                   timeout: float = 120) -> Runner:
    """A runner executing ``prefix + args`` with the XML on stdin."""
    def run(args: list[str], xml: bytes) -> tuple[bytes, bytes, int | str]:
        try:
            p = subprocess.run(prefix + args, input=xml, capture_output=True, env=env,
                               timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            return exc.stdout or b"", exc.stderr or b"", "timeout"
        return p.stdout, p.stderr, p.returncode
    return run


def stock_runner(source: str) -> Runner:
    """``host``: this machine's helper; a suite name: that suite's oracle chroot."""
    if source == "host":
        return command_runner([HOST_HELPER])
    return command_runner([str(CACHE / "run-helper"), source])


def ours_runner(version: str | None) -> Runner:
    """Our helper (the installed console script) emulating libvirt ``version``."""
    import sys
    script = Path(sys.executable).parent / "virt-aa-helper"
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "virt_aa.helper"]
    env = dict(os.environ, VIRT_AA_DEBUG="1")
    if version:
        env["VIRT_AA_LIBVIRT_VERSION"] = version
    return command_runner(prefix, env)


def run_corpus(xml_dir: Path, runner: Runner, names: Iterable[str] | None = None,
               manifest: dict[str, dict[str, object]] | None = None) -> dict[str, Entry]:
    """Run every domain (one helper process per CPU at a time; each run is
    independent: the XML on stdin, a dry run)."""
    from concurrent.futures import ThreadPoolExecutor
    manifest = load_manifest(xml_dir) if manifest is None else manifest

    def one(name: str) -> Entry:
        xml = (xml_dir / name).read_bytes()
        args = case_args(name, xml, manifest)
        stdin = b"" if manifest.get(name, {}).get("stdin") is False else xml
        entry: Entry = {"sha256": sha256(xml), "args": args}
        entry.update(verdict(*runner(args, stdin)))
        return entry

    todo = list(names if names is not None else domains(xml_dir))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(zip(todo, pool.map(one, todo), strict=True))


# ----------------------------------------------------------------------------- recordings


def recording_path(version: str, corpus: str) -> Path:
    return ORACLE_DIR / version / (corpus + ".json")


def dump(meta: dict[str, object], entries: dict[str, Entry]) -> str:
    """JSON with one rule per line, so a re-recording diffs line by line."""
    parts = ["{"]
    for key, value in meta.items():
        parts.append(f" {json.dumps(key)}: {json.dumps(value)},")
    parts.append(' "domains": {')
    names = sorted(entries)
    for n, name in enumerate(names):
        e = entries[name]
        parts.append(f"  {json.dumps(name)}: {{")
        for key in ("sha256", "args", "exit", "stdout", "stderr"):
            parts.append(f"   {json.dumps(key)}: {json.dumps(e[key])},")
        rules = e["rules"]
        assert isinstance(rules, list)
        if rules:
            body = ",\n".join("    " + json.dumps(r) for r in rules)
            parts.append(f'   "rules": [\n{body}\n   ]')
        else:
            parts.append('   "rules": []')
        parts.append("  }" + ("," if n + 1 < len(names) else ""))
    parts.append(" }")
    parts.append("}")
    return "\n".join(parts) + "\n"


def save(version: str, corpus: str, meta: dict[str, object], entries: dict[str, Entry]) -> Path:
    path = recording_path(version, corpus)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(dump(meta, entries), encoding="ascii")
    json.loads(tmp.read_text())
    os.replace(tmp, path)
    return path


def load(version: str, corpus: str) -> dict[str, object]:
    path = recording_path(version, corpus)
    data: dict[str, object] = json.loads(path.read_text())
    return data


def recorded_versions(corpus: str) -> list[str]:
    found = [p.parent.name for p in ORACLE_DIR.glob(f"*/{corpus}.json")]
    return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))


def stale(xml_dir: Path, entries: dict[str, Entry]) -> list[str]:
    """Domains whose XML is missing, new, or changed since the recording."""
    have = {name: sha256((xml_dir / name).read_bytes()) for name in domains(xml_dir)}
    bad = [n for n, e in entries.items() if have.get(n) != e["sha256"]]
    bad += [n for n in have if n not in entries]
    return sorted(bad)


def stock_version(source: str) -> tuple[str, str]:
    """(libvirt version X.Y.Z, Debian package version) of a stock helper."""
    if source == "host":
        argv = ["dpkg-query", "-W", "-f=${Version}", "libvirt-daemon"]
    else:
        argv = ["chroot", str(CACHE / source / "root"), "dpkg-query", "-W",
                "-f=${Version}", "libvirt-daemon"]
    pkg = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    m = re.match(r"^(?:\d+:)?(\d+\.\d+\.\d+)", pkg)
    if not m:
        raise RuntimeError(f"cannot read the libvirt version from {pkg!r}")
    return m.group(1), pkg


def record(source: str, corpus: str, xml_dir: Path) -> tuple[Path, dict[str, Entry], float]:
    """Run a stock helper over a corpus and save the recording."""
    version, pkg = stock_version(source)
    t0 = time.monotonic()
    entries = run_corpus(xml_dir, stock_runner(source))
    took = time.monotonic() - t0
    meta: dict[str, object] = {"libvirt": version, "package": pkg,
                               "helper": "host" if source == "host" else f"chroot {source}",
                               "corpus": corpus}
    if corpus == "libvirt-tests":
        import libvirt_tests
        suite, src = libvirt_tests.PINNED[libvirt_tests.source_for(version)]
        meta["inputs"] = f"Debian {suite} source libvirt={src}"
    return save(version, corpus, meta, entries), entries, took


# ----------------------------------------------------------------------------- comparing


def fmt(rule: Rule) -> str:
    path, perms = rule
    if path == UNPARSED:
        return perms
    if perms.startswith("deny "):
        return f'deny "{path}" {perms[5:]},'
    return f'"{path}" {perms},'


def differences(expected: Entry, actual: Entry) -> list[str]:
    """Strict comparison: same exit code and the same rules in the same order."""
    import difflib
    problems = []
    if expected["exit"] != actual["exit"]:
        problems.append(f"exit {actual['exit']} (stock {expected['exit']}): {actual['stderr']}")
    er, ar = expected["rules"], actual["rules"]
    assert isinstance(er, list) and isinstance(ar, list)
    if er != ar:
        diff = difflib.unified_diff([fmt(r) for r in er], [fmt(r) for r in ar],
                                    "stock", "ours", lineterm="", n=1)
        problems.append("rules differ:\n" + "\n".join(list(diff)[2:]))
    return problems


def rules_of(entry: Entry) -> list[Rule]:
    rules = entry["rules"]
    assert isinstance(rules, list)
    return rules


def grants(rules: list[Rule]) -> dict[str, set[str]]:
    """path -> permissions it ends up with: allow letters minus deny letters."""
    allow: dict[str, set[str]] = {}
    deny: dict[str, set[str]] = {}
    for path, perms in rules:
        if path == UNPARSED:
            continue
        if perms.startswith("deny "):
            deny.setdefault(path, set()).update(perms[5:])
        else:
            allow.setdefault(path, set()).update(perms)
    return {p: s - deny.get(p, set()) for p, s in allow.items()}


def _literal(path: str) -> str:
    """The file an escaped rule path names (``a\\,b`` -> ``a,b``); a path with
    glob characters is kept as written (compared as a pattern string)."""
    if re.search(r"(?<!\\)[*?\[\]{}]", path):
        return path
    return re.sub(r"\\(.)", r"\1", path)


def wider(stock_rules: list[Rule], our_rules: list[Rule]) -> list[tuple[str, str, str]]:
    """Every path where we grant a permission that stock does not, as
    (path, stock's permissions, ours).  Stock's permissions for a path are
    those of every stock rule whose pattern matches it (AppArmor globbing),
    minus stock's denies; ours likewise minus our denies."""
    from virt_aa.policy.aare import AareError, compile_aare

    stock = grants(stock_rules)
    stock_deny = {p: set(perms[5:]) for p, perms in stock_rules if perms.startswith("deny ")}
    patterns = []
    for pat, perms in stock.items():
        try:
            patterns.append((compile_aare('"' + pat + '"'), perms))
        except AareError:
            continue
    out = []
    for path, perms in grants(our_rules).items():
        have = set(stock.get(path, set()))
        if not perms <= have:
            literal = _literal(path)
            for pattern, p in patterns:
                if pattern.matches(literal.encode("utf-8", "surrogateescape")):
                    have |= p
            have -= stock_deny.get(path, set()) | stock_deny.get(literal, set())
        extra = perms - have
        if extra:
            out.append((path, "".join(sorted(have)) or "-", "".join(sorted(perms))))
    return out


# ----------------------------------------------------------------------------- corpora

CORPORA = ("domains", "newer", "random", "libvirt-tests")


def corpus_path(corpus: str, libvirt: str) -> Path:
    """Directory of a corpus's XMLs; libvirt's test inputs depend on the version."""
    if corpus == "libvirt-tests":
        import libvirt_tests
        return libvirt_tests.inputs(libvirt)
    return CORPUS_DIR / corpus


def prepare(corpus: str) -> None:
    """Build the files a corpus's XMLs point at (images, chains, FIFOs ...)."""
    setup = CORPUS_DIR / corpus / "setup-images.sh"
    if setup.exists():
        subprocess.run(["sh", str(setup)], check=True, stdout=subprocess.DEVNULL)


_OURS: dict[tuple[str, str], dict[str, Entry]] = {}


def compare_corpus(corpus: str, version: str,
                   ours: dict[str, Entry] | None = None) -> tuple[dict[str, Entry],
                                                                   dict[str, list[str]]]:
    """Our helper in ``version``'s mode over a corpus, against the recording.
    Returns (our entries, {domain: problems}) for the mismatching domains.
    Our run is kept for the process: the parity and never-wider tests share it."""
    rec = load(version, corpus)
    expected = rec["domains"]
    assert isinstance(expected, dict)
    xml_dir = corpus_path(corpus, version)
    bad = stale(xml_dir, expected)
    if bad:
        raise AssertionError(
            f"{corpus}: {len(bad)} domain XMLs differ from the libvirt {version} recording "
            f"({', '.join(bad[:5])}...): re-record with scripts/record-oracle.sh SUITE")
    if ours is None:
        ours = _OURS.get((corpus, version))
    if ours is None:
        prepare(corpus)
        ours = run_corpus(xml_dir, ours_runner(version), sorted(expected))
        _OURS[(corpus, version)] = ours
    problems = {}
    for name, exp in expected.items():
        diff = differences(exp, ours[name])
        if diff:
            problems[name] = diff
    return ours, problems


WIDER = "wider than stock"
CLASSES = (WIDER, "accepted by us, rejected by stock", "refused by us, accepted by stock",
           "missing rules", "other rules", "rule order")


def _restricted(path: str) -> bool:
    """Paths the README's deliberate differences refuse where stock grants them:
    all of / (a read-only share of /), /etc and /root."""
    return path in ("/**", "/etc", "/root") or path.startswith(("/etc/", "/root/"))


def deliberate(stock: Entry, ours: Entry) -> str | None:
    """The README's deliberate difference a mismatch is, if it is one."""
    errors = ours.get("errors") or []
    assert isinstance(errors, list)
    if stock["exit"] == 0 and ours["exit"] != 0 and \
            any("skipped restricted file" in e for e in errors) and \
            any(_restricted(p) for p, _ in rules_of(stock)):
        return "deliberate: restricted path refused"
    if stock["exit"] != 0 or ours["exit"] != 0:
        return None
    mine = [[_literal(p), perms] for p, perms in rules_of(ours)]
    if mine == rules_of(stock):
        return "deliberate: glob characters escaped"
    for version in ("tpm2", "tpm1.2"):
        filled = [[p.replace("/(null)/", f"/{version}/"), perms] for p, perms in rules_of(stock)]
        if filled != rules_of(stock) and filled == rules_of(ours):
            return "deliberate: TPM version filled in as libvirtd does"
    return None


def classify(stock: Entry, ours: Entry) -> str:
    """One mismatch's class (the report's table).  A domain stock rejects is
    never started by libvirt, so what we would grant it is not "wider"."""
    why = deliberate(stock, ours)
    if why:
        return why
    if stock["exit"] != 0 and ours["exit"] == 0:
        return "accepted by us, rejected by stock"
    if stock["exit"] == 0 and ours["exit"] != 0:
        return "refused by us, accepted by stock"
    if wider(rules_of(stock), rules_of(ours)):
        return WIDER
    mine = {tuple(r) for r in rules_of(ours)}
    if any(tuple(r) not in mine for r in rules_of(stock)):
        return "missing rules"
    if sorted(map(tuple, rules_of(stock))) == sorted(map(tuple, rules_of(ours))):
        return "rule order"
    return "other rules"


KNOWN = ORACLE_DIR / "known-mismatches.json"


def known() -> dict[str, dict[str, dict[str, dict[str, object]]]]:
    """version -> corpus -> domain -> {"class", "wider": [paths]}: the mismatches
    of our helper at the time of writing (scripts: tests/oracle.py known)."""
    data: dict[str, dict[str, dict[str, dict[str, object]]]] = json.loads(KNOWN.read_text())
    return data


def wider_entry(stock: Entry, ours: Entry) -> list[tuple[str, str, str]]:
    """``wider`` for one domain, when both helpers accept it."""
    if stock["exit"] != 0 or ours["exit"] != 0:
        return []
    return wider(rules_of(stock), rules_of(ours))


def known_entry(stock: Entry, ours: Entry) -> dict[str, object]:
    return {"class": classify(stock, ours),
            "wider": sorted(p for p, _, _ in wider_entry(stock, ours))}


def main(argv: list[str]) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="tests/oracle.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    rp = sub.add_parser("record", help="record a stock helper over corpora")
    rp.add_argument("source", help="host, or a Debian suite with an oracle chroot")
    rp.add_argument("corpora", nargs="*", default=list(CORPORA))
    cp = sub.add_parser("compare", help="our helper against a recording (strict order)")
    cp.add_argument("version", help="libvirt version X.Y.Z (a directory of tests/oracle)")
    cp.add_argument("corpora", nargs="*", default=list(CORPORA))
    cp.add_argument("-v", "--verbose", action="store_true", help="show each diff")
    kp = sub.add_parser("known", help="write tests/oracle/known-mismatches.json from a "
                                      "comparison of every recording")
    kp.add_argument("versions", nargs="*")
    kp.add_argument("--reuse", action="store_true", help="classify our cached outputs again")
    sub.add_parser("table", help="print the README's parity table")
    a = ap.parse_args(argv)
    if a.cmd == "table":
        print(table())
        return 0
    if a.cmd == "known":
        return write_known(a.versions, a.reuse)
    if a.cmd == "record":
        version = stock_version(a.source)[0]
        for corpus in a.corpora:
            prepare(corpus)
            path, entries, took = record(a.source, corpus, corpus_path(corpus, version))
            ok = sum(1 for e in entries.values() if e["exit"] == 0)
            print(f"{path.relative_to(REPO)}: {len(entries)} domains ({ok} exit 0), "
                  f"{path.stat().st_size // 1024} KiB, {took:.1f}s")
        return 0
    status = 0
    for corpus in a.corpora:
        if not recording_path(a.version, corpus).exists():
            print(f"{corpus}: no recording for libvirt {a.version}")
            continue
        t0 = time.monotonic()
        ours, problems = compare_corpus(corpus, a.version)
        rec = load(a.version, corpus)["domains"]
        assert isinstance(rec, dict)
        wide = {n: w for n in rec if (w := wider_entry(rec[n], ours[n]))}
        for name, diff in sorted(problems.items()):
            print(f"FAIL {corpus}/{name}: " + ("\n  ".join(diff) if a.verbose else diff[0][:160]))
        for name, w in sorted(wide.items()):
            for where, stock, mine in w:
                print(f"WIDER {corpus}/{name}: {where!r} stock {stock} ours {mine}")
        print(f"{corpus} libvirt {a.version}: {len(rec) - len(problems)}/{len(rec)} match, "
              f"{len(wide)} wider ({time.monotonic() - t0:.0f}s)")
        status |= bool(problems) or bool(wide)
    return int(status)


def _ours_cache(version: str, corpus: str) -> Path:
    return CACHE / "ours" / version / (corpus + ".json")


def table() -> str:
    """The README's parity table: per version and corpus, matches and the
    remaining mismatches by class (from the recordings and known-mismatches)."""
    data = known()
    short = {WIDER: "wider", "accepted by us, rejected by stock": "we accept, stock rejects",
             "refused by us, accepted by stock": "we refuse, stock accepts",
             "missing rules": "missing rules", "other rules": "other rules",
             "rule order": "order"}
    lines = ["| libvirt | corpus | match | mismatches by class |", "|---|---|---|---|"]
    for version in sorted(data, key=lambda v: tuple(int(x) for x in v.split("."))):
        for corpus in CORPORA:
            if corpus not in data[version]:
                continue
            total = len(load(version, corpus)["domains"])  # type: ignore[arg-type]
            mism = data[version][corpus]
            counts: dict[str, int] = {}
            for e in mism.values():
                c = str(e["class"])
                label = short.get(c, c.replace("deliberate: ", "deliberate (") + ")"
                                  if c.startswith("deliberate") else c)
                counts[label] = counts.get(label, 0) + 1
            desc = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"
            lines.append(f"| {version} | {corpus} | {total - len(mism)}/{total} | {desc} |")
    return "\n".join(lines)


def write_known(versions: list[str], reuse: bool = False) -> int:
    """Compare every recording and store the remaining mismatches by class.
    Our outputs are kept in the cache; ``reuse`` classifies them again
    without re-running (when only the classification changed)."""
    out = known() if KNOWN.exists() else {}
    for version in versions or sorted({p.parent.name for p in ORACLE_DIR.glob("*/*.json")}):
        out[version] = {}
        for corpus in CORPORA:
            if not recording_path(version, corpus).exists():
                continue
            t0 = time.monotonic()
            cached = _ours_cache(version, corpus)
            mine = json.loads(cached.read_text()) if reuse and cached.exists() else None
            ours, problems = compare_corpus(corpus, version, mine)
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(ours))
            rec = load(version, corpus)["domains"]
            assert isinstance(rec, dict)
            out[version][corpus] = {n: known_entry(rec[n], ours[n]) for n in sorted(problems)}
            counts: dict[str, int] = {}
            for e in out[version][corpus].values():
                counts[str(e["class"])] = counts.get(str(e["class"]), 0) + 1
            print(f"libvirt {version} {corpus}: {len(rec) - len(problems)}/{len(rec)} match; "
                  f"{counts} ({time.monotonic() - t0:.0f}s)", flush=True)
    KNOWN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    import sys
    sys.path.insert(0, str(TESTS))
    sys.exit(main(sys.argv[1:]))
