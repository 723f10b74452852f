"""Issue 7: the profiles virt-aa generates, loaded into a real AppArmor kernel.

A guest made of Debian packages (scripts/build-kernel-guest.sh: the
distribution kernel with AppArmor, busybox, apparmor_parser, aa-exec and a
static probe) boots in qemu (TCG unless VIRT_AA_KGUEST_ACCEL=kvm).  The
profiles are generated on the host (virt-aa-helper -c, virt-aa allow,
virt-aa complain into a --root sandbox; the guest has no Python), shipped
with the host's /etc/apparmor.d include files, loaded in the guest with
``apparmor_parser -r`` and probed with ``aa-exec -p PROFILE -- probe OP PATH``.
Every kernel verdict is compared with ``virt-aa check`` (our model) and,
where the issue states one, with the expected verdict.  One profile is
deliberately broken (a rule removed from its .files) and must be caught.

The kernel log of the guest (all AppArmor records, each after the
``virt-aa-probe ID`` marker of the probe that caused it) is kept in
``apparmor-records.log`` in the run directory printed by the tests
($VIRT_AA_KGUEST_OUT, else a pytest tmp directory).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kernel import kguest

from conftest import CORPUS, cli_argv, run_helper

pytestmark = pytest.mark.slow

IMG = "/tmp/virt-aa-kguest"  # fixed: the guest recreates the same paths
OPS_PERMS = {"r": "r", "w": "w", "c": "w", "l": "r", "u": "w"}
CANARIES = [("/etc/shadow", "r", False), ("/root/secret", "r", False),
            (f"{IMG}/img/other-vm.raw", "r", False), (f"{IMG}/img/other-vm.raw", "w", False),
            ("/srv/canary/file", "w", False)]
EXTRA = "/srv/extra/data.bin"
AUTO_PREFIXES = (IMG + "/", "/tmp/virt-aa-corpus/", "/srv/")
GLOB_CHARS = set("*?[]{}")


def uuid(n: int) -> str:
    return f"7e570000-0000-4000-8000-{n:012d}"


def xml(name: str, n: int, devices: str) -> str:
    return (f"<domain type='kvm'><name>{name}</name><uuid>{uuid(n)}</uuid>"
            "<memory>65536</memory><os><type arch='x86_64' machine='pc'>hvm</type></os>"
            f"<devices>{devices}</devices></domain>")


DISK = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{IMG}/img/overlay.qcow2'/><target dev='vda' bus='virtio'/></disk>")
GLOB = ("<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        "<source file='/srv/vm/disk*.img'/><target dev='vda' bus='virtio'/></disk>")
SHARES = (f"<filesystem type='mount' accessmode='passthrough'><source dir='{IMG}/share-rw'/>"
          "<target dir='rw'/></filesystem>"
          f"<filesystem type='mount' accessmode='passthrough'><readonly/>"
          f"<source dir='{IMG}/share-ro'/><target dir='ro'/></filesystem>")
CHARDEV = (f"<serial type='unix'><source mode='bind' path='{IMG}/sock/serial0.sock'/>"
           "<target port='0'/></serial>")

DISK_PROBES = [(f"{IMG}/img/overlay.qcow2", "r", True), (f"{IMG}/img/overlay.qcow2", "w", True),
               (f"{IMG}/img/base.raw", "r", True), (f"{IMG}/img/base.raw", "w", False),
               (EXTRA, "r", False)]
# name, uuid number, devices, explicit probes (path, op, expected in enforce mode), setup
DOMAINS: list[tuple[str, int, str, list[tuple[str, str, bool]]]] = [
    ("kg-disk", 1, DISK, DISK_PROBES),
    ("kg-disk-complain", 2, DISK, DISK_PROBES),
    ("kg-disk-allow", 3, DISK, DISK_PROBES[:-1] + [(EXTRA, "r", True), (EXTRA, "w", False)]),
    ("kg-disk-broken", 4, DISK, DISK_PROBES),
    ("kg-9p", 5, SHARES, [
        (f"{IMG}/share-rw/file", "r", True), (f"{IMG}/share-rw/file", "w", True),
        (f"{IMG}/share-rw/new-file", "c", True), (f"{IMG}/share-rw/", "l", True),
        (f"{IMG}/share-ro/file", "r", True), (f"{IMG}/share-ro/file", "w", False),
        (f"{IMG}/share-ro/new-file", "c", False), (f"{IMG}/share-ro/", "l", True),
        (f"{IMG}/share-other/file", "r", False)]),
    ("kg-chardev", 6, CHARDEV, [
        (f"{IMG}/sock/serial0.sock", "u", True), (f"{IMG}/sock/other.sock", "u", False)]),
    ("kg-glob", 7, GLOB, [
        ("/srv/vm/disk*.img", "r", True), ("/srv/vm/disk*.img", "w", True),
        ("/srv/vm/disk1.img", "r", False), ("/srv/vm/disk1.img", "w", False),
        ("/srv/vm/diskX.img", "r", False), ("/srv/vm/disk.img", "r", False)]),
    ("kg-glob-complain", 8, GLOB, [
        ("/srv/vm/disk*.img", "r", True), ("/srv/vm/disk1.img", "r", False),
        ("/srv/vm/disk1.img", "w", False)]),
]
COMPLAIN = {"kg-disk-complain", "kg-glob-complain"}
BROKEN = "kg-disk-broken"  # its .files loses the backing file's rule after generation
# Differences between our model and this kernel, checked and explained: each
# must still show (so a change of kernel or model is noticed), nothing else may.
KNOWN_DIFFERENCES = {
    ("kg-chardev", "u", f"{IMG}/sock/other.sock"):
        "Debian's 6.1 kernel does not mediate connect() to path-named unix sockets "
        "(upstream AppArmor has no af_unix mediation yet): a socket the profile does "
        "not name is reachable, while the file rules (and so our model) say denied",
}
CORPUS_DOMAINS = ["vi-backing-chain-3.xml", "vi-filesystem-9p.xml", "vi-path-with-space.xml",
                  "vi-chardev-unix.xml"]


@dataclass
class Probe:
    pid: str
    domain: str
    profile: str
    xml: Path
    op: str
    path: str
    expected: bool | None  # the claim in enforce mode (None: model only)
    complain: bool
    model: dict[str, Any] | None = None
    model_rc: int = -1
    kernel_rc: int = -1
    kernel_out: str = ""

    @property
    def perms(self) -> str:
        return OPS_PERMS[self.op]

    @property
    def check_path(self) -> str:
        return self.path

    @property
    def kernel_allowed(self) -> bool:
        return self.kernel_rc == 0

    @property
    def kernel_denied(self) -> bool:
        return self.kernel_rc == 1 and self.kernel_out.startswith("errno 13 ")

    @property
    def model_allowed(self) -> bool:
        return self.model_rc == 0

    @property
    def model_explicit_deny(self) -> bool:
        return bool(self.model and self.model.get("deny_rules"))

    def predicted_kernel_allowed(self) -> bool:
        """What the kernel must do if our model is right (complain: all but explicit denies)."""
        if self.complain:
            return not self.model_explicit_deny
        return self.model_allowed

    def line(self) -> str:
        return (f"{self.pid} {self.domain} {self.op} {self.path!r}: kernel "
                f"{'allowed' if self.kernel_allowed else self.kernel_out or self.kernel_rc}, "
                f"model {'allowed' if self.model_allowed else 'denied'} (rc {self.model_rc}), "
                f"expected {self.expected}")


def unescape(p: str) -> str:
    return re.sub(r"\\(.)", r"\1", p)


def literal_paths(files_text: str) -> list[tuple[str, str]]:
    """(literal path, perms) of the file rules of a .files without glob characters."""
    out = []
    for line in files_text.splitlines():
        m = re.match(r'^\s*(?:(?:audit|owner|allow|file)\s+)*("(?:[^"\\]|\\.)*"|/\S*)\s+'
                     r'([rwkmlixaPpUuCc]+)\s*,', line)
        if not m:
            continue
        raw = m.group(1).strip('"')
        if any(c in GLOB_CHARS for c in re.sub(r"\\.", "", raw)):
            continue
        out.append((unescape(raw), m.group(2)))
    return out


def host_images() -> None:
    shutil.rmtree(IMG, ignore_errors=True)
    for d in ("img", "share-rw", "share-ro", "share-other", "sock"):
        os.makedirs(f"{IMG}/{d}")
    q = ["qemu-img", "create", "-q"]
    subprocess.run(q + ["-f", "raw", f"{IMG}/img/base.raw", "1M"], check=True)
    subprocess.run(q + ["-f", "raw", f"{IMG}/img/other-vm.raw", "1M"], check=True)
    subprocess.run(q + ["-f", "qcow2", "-b", f"{IMG}/img/base.raw", "-F", "raw",
                        f"{IMG}/img/overlay.qcow2"], check=True)
    for d in ("share-rw", "share-ro", "share-other"):
        Path(IMG, d, "file").write_text("content\n")


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_argv() + ["--root", str(root), *args], capture_output=True,
                          text=True, check=False, timeout=120)


def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("VIRT_AA_KGUEST_OUT")
    if env:
        p = Path(env)
        p.mkdir(parents=True, exist_ok=True)
        return p
    return tmp_path_factory.mktemp("kernel-guest")


@dataclass
class Run:
    probes: list[Probe]
    guest: kguest.GuestRun
    out: Path
    profiles: dict[str, str]  # domain -> profile
    timings: dict[str, float]


@pytest.fixture(scope="module")
def kernel_run(tmp_path_factory: pytest.TempPathFactory, corpus_images: Path) -> Run:
    if shutil.which("qemu-system-x86_64") is None and os.geteuid() != 0:
        pytest.fail("needs qemu-system-x86_64 (or root, to install it): run as CI does")
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        cache = kguest.build()
    except RuntimeError as exc:
        if os.geteuid() != 0:
            pytest.fail(f"kernel guest not built and not root: {exc}")
        raise
    timings["build"] = time.monotonic() - t0

    t1 = time.monotonic()
    out = out_dir(tmp_path_factory)
    host_images()
    root = out / "root"
    shutil.rmtree(root, ignore_errors=True)
    from virt_aa.host.sandbox import seed
    seed(str(root))
    xmldir = out / "domains"
    xmldir.mkdir(exist_ok=True)

    doms: list[tuple[str, str, Path, list[tuple[str, str, bool]]]] = []
    for name, n, devices, explicit in DOMAINS:
        p = xmldir / f"{name}.xml"
        p.write_text(xml(name, n, devices))
        doms.append((name, f"libvirt-{uuid(n)}", p, explicit))
    for fn in CORPUS_DOMAINS:
        src = CORPUS / "domains" / fn
        m = re.search(r"<uuid>([^<]+)</uuid>", src.read_text())
        assert m, fn
        shutil.copy(src, xmldir / fn)
        doms.append((fn.removesuffix(".xml"), f"libvirt-{m.group(1).lower()}", xmldir / fn, []))

    profiles: dict[str, str] = {}
    for name, profile, p, _ in doms:
        res = run_helper(["-c", "-u", profile], p.read_bytes(), root=str(root))
        assert res.returncode == 0, (name, res.stderr.decode())
        profiles[name] = profile
    res = cli(root, "allow", "--xml", str(xmldir / "kg-disk-allow.xml"), f"{EXTRA} r,")
    assert res.returncode == 0, res.stderr
    for name in COMPLAIN:
        res = cli(root, "complain", "--xml", str(xmldir / f"{name}.xml"))
        assert res.returncode == 0, res.stderr
        ptext = (root / "etc/apparmor.d/libvirt" / profiles[name]).read_text()
        assert "complain" in ptext, ptext
    broken = root / "etc/apparmor.d/libvirt" / f"{profiles[BROKEN]}.files"
    text = broken.read_text()
    kept = [line for line in text.splitlines(True)
            if not ("/img/base.raw" in line and line.lstrip().startswith('"'))]
    assert len(kept) == len(text.splitlines(True)) - 1, text
    broken.write_text("".join(kept))

    # probes: the explicit ones, every literal path of the generated rules, the canaries
    probes: list[Probe] = []
    for name, profile, p, explicit in doms:
        files = (root / "etc/apparmor.d/libvirt" / f"{profile}.files").read_text()
        wanted: list[tuple[str, str, bool | None]] = list(explicit)
        for path, _perms in literal_paths(files):
            if not path.startswith(AUTO_PREFIXES):
                continue
            if path.endswith(".sock"):
                wanted.append((path, "u", None))
            elif path.endswith("/") or os.path.isdir(path):
                wanted.append((path.rstrip("/") + "/", "l", None))
            else:
                wanted += [(path, "r", None), (path, "w", None)]
        wanted += CANARIES
        seen: set[tuple[str, str]] = set()
        for path, op, expected in wanted:
            if (path, op) in seen:
                continue
            seen.add((path, op))
            probes.append(Probe(f"p{len(probes)}", name, profile, p, op, path, expected,
                                complain=name in COMPLAIN))

    # the plan: files, directories and listening sockets first, then loads, then probes
    plan: list[tuple[str, ...]] = []
    made: set[str] = set()
    for pr in probes:
        if pr.path in made or pr.op == "c":
            continue
        made.add(pr.path)
        kind = {"u": "sock", "l": "dir"}.get(pr.op, "file")
        plan.append((kind, pr.path))
    plan.append(("file", "/srv/vm/disk1.img"))
    for _name, profile, _, _ in doms:
        plan.append(("load", "main", profile))
    for pr in probes:
        plan.append(("probe", pr.pid, pr.profile, pr.op, pr.path))
    payload = kguest.Cpio()
    payload.add_file("payload/run.sh", kguest.RUN_SCRIPT.read_bytes(), 0o755)
    payload.add_file("payload/plan", "".join("\t".join(s) + "\n" for s in plan).encode())
    for d in ("abi", "abstractions", "tunables", "local"):
        if Path("/etc/apparmor.d", d).is_dir():
            payload.add_tree(Path("/etc/apparmor.d", d), f"etc/apparmor.d/{d}")
    payload.add_tree(root / "etc/apparmor.d", "payload/v/main/etc/apparmor.d")
    timings["generate"] = time.monotonic() - t1

    # the model's verdicts are computed while the guest runs
    def model(pr: Probe) -> None:
        res = cli(root, "check", "--json", "--xml", str(pr.xml), pr.check_path, pr.perms)
        pr.model_rc = res.returncode
        pr.model = json.loads(res.stdout) if res.stdout.strip() else None

    t2 = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        futs = [pool.submit(model, pr) for pr in probes]
        guest = kguest.boot(cache, payload, out)
        for f in futs:
            f.result()
    timings["guest"] = guest.seconds
    timings["guest+model"] = time.monotonic() - t2
    for pr in probes:
        rc, msg = guest.probes.get(pr.pid, (-1, "not run"))
        pr.kernel_rc, pr.kernel_out = rc, msg

    # kept for later parsing: the kernel's AppArmor records, per probe
    recs = guest.records_by_probe()
    with open(out / "apparmor-records.log", "w") as f:
        for pr in [None, *probes]:
            pid = "-" if pr is None else pr.pid
            for rec in recs.get(pid, []):
                f.write(f"{pid}\t{rec}\n")
    (out / "dmesg.log").write_text(guest.dmesg)
    (out / "results.json").write_text(json.dumps(
        [{"id": pr.pid, "domain": pr.domain, "profile": pr.profile, "op": pr.op,
          "path": pr.path, "perms": pr.perms, "complain": pr.complain,
          "expected": pr.expected, "kernel_rc": pr.kernel_rc, "kernel": pr.kernel_out,
          "model_rc": pr.model_rc} for pr in probes], indent=1))
    timings["total"] = time.monotonic() - t0
    return Run(probes, guest, out, profiles, timings)


def mismatches(probes: list[Probe]) -> list[str]:
    """Every probe whose kernel verdict is not what our model (and the issue) predicts."""
    return [msg for _pr, msg in mismatched(probes)]


def mismatched(probes: list[Probe]) -> list[tuple[Probe, str]]:
    bad: list[tuple[Probe, str]] = []
    for pr in probes:
        if not (pr.kernel_allowed or pr.kernel_denied):
            bad.append((pr, f"probe failed to run: {pr.line()}"))
        elif pr.model_rc not in (0, 2):
            bad.append((pr, f"virt-aa check failed: {pr.line()}"))
        elif pr.kernel_allowed != pr.predicted_kernel_allowed():
            bad.append((pr, f"kernel differs from model: {pr.line()}"))
        elif pr.expected is not None and not pr.complain and pr.model_allowed != pr.expected:
            bad.append((pr, f"model and kernel agree but not as the issue claims: {pr.line()}"))
    return bad


def test_all_profiles_load(kernel_run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    g = kernel_run.guest
    assert "apparmor=Y" in g.banner, g.banner
    failed = [ld for ld in g.loads if ld[2] != 0]
    assert not failed, failed
    assert len(g.loads) == len(kernel_run.profiles)
    for profile in kernel_run.profiles.values():
        assert profile in g.loaded
    with capsys.disabled():
        t = kernel_run.timings
        print(f"\nkernel guest: {g.banner.strip()} accel={g.accel}; "
              f"{len(g.loads)} profiles loaded in "
              f"{sum(ld[3] for ld in g.loads):.1f}s; build {t['build']:.1f}s, "
              f"generate {t['generate']:.1f}s, guest {t['guest']:.1f}s, "
              f"total {t['total']:.1f}s; results in {kernel_run.out}")


def test_kernel_verdicts_match_model(kernel_run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    probes = [pr for pr in kernel_run.probes if pr.domain != BROKEN]
    found = mismatched(probes)
    known = {(pr.domain, pr.op, pr.path): msg for pr, msg in found
             if (pr.domain, pr.op, pr.path) in KNOWN_DIFFERENCES}
    bad = [msg for pr, msg in found if (pr.domain, pr.op, pr.path) not in known]
    doms = sorted({pr.domain for pr in probes})
    allowed = sum(pr.kernel_allowed for pr in probes)
    with capsys.disabled():
        print(f"\nkernel guest: {len(doms)} domains x {len(probes)} probes "
              f"({len(probes) / len(doms):.1f} per domain): {allowed} allowed, "
              f"{len(probes) - allowed} denied, {len(probes) - len(found)} as predicted, "
              f"{len(found)} not ({len(known)} known kernel differences); "
              f"{sum(pr.expected is not None for pr in probes)} with a stated expectation")
        for b in bad:
            print("  " + b)
        for k, msg in known.items():
            print(f"  known: {msg}\n    why: {KNOWN_DIFFERENCES[k]}")
    assert not bad
    assert set(known) == set(KNOWN_DIFFERENCES), "a known difference no longer shows"


def test_deliberately_wrong_profile_is_caught(kernel_run: Run) -> None:
    probes = [pr for pr in kernel_run.probes if pr.domain == BROKEN]
    bad = mismatches(probes)
    # the backing file's rule was removed: reading it is denied by the kernel
    # while the model (from the XML) says allowed -- exactly that must show
    assert len(bad) == 1, bad
    assert "kernel differs from model" in bad[0] and "/img/base.raw" in bad[0], bad
    assert " r " in bad[0], bad


def test_per_vm_rule_allows(kernel_run: Run) -> None:
    got = {(pr.domain, pr.op): pr for pr in kernel_run.probes if pr.path == EXTRA}
    assert got[("kg-disk", "r")].kernel_denied
    assert got[("kg-disk-allow", "r")].kernel_allowed
    assert got[("kg-disk-allow", "w")].kernel_denied


def test_complain_mode_allows_and_logs(kernel_run: Run) -> None:
    recs = kernel_run.guest.records_by_probe()
    probes = [pr for pr in kernel_run.probes if pr.complain]
    assert probes
    checked = 0
    for pr in probes:
        if pr.model_allowed:
            continue
        if pr.model_explicit_deny:  # deny rules hold in complain mode too
            assert pr.kernel_denied, pr.line()
            continue
        assert pr.kernel_allowed, pr.line()
        lines = [r for r in recs.get(pr.pid, []) if 'apparmor="ALLOWED"' in r
                 and f'profile="{pr.profile}"' in r]
        assert lines, (pr.line(), recs.get(pr.pid))
        checked += 1
    assert checked >= 5


def test_denial_records_kept(kernel_run: Run) -> None:
    """Every kernel denial left a DENIED record naming the path, kept in a file."""
    kept = (kernel_run.out / "apparmor-records.log").read_text()
    by_probe: dict[str, list[str]] = {}
    for line in kept.splitlines():
        pid, rec = line.split("\t", 1)
        by_probe.setdefault(pid, []).append(rec)
    denied = [pr for pr in kernel_run.probes if pr.kernel_denied]
    assert denied
    quiet = 0
    for pr in denied:
        recs = [r for r in by_probe.get(pr.pid, []) if 'apparmor="DENIED"' in r]
        if pr.model_explicit_deny:  # a plain deny rule is silent (backing files' writes)
            assert not recs, (pr.line(), recs)
            quiet += 1
            continue
        assert recs, pr.line()
        if pr.op != "u":
            assert any(f'name="{pr.path}"' in r for r in recs), (pr.line(), recs)
    assert quiet >= 1


def test_kernel_records_parsed_back_by_our_parser(kernel_run: Run) -> None:
    """The guest kernel's own log, read by virt-aa's parser: nothing missed."""
    from virt_aa.denials.parse import iter_records

    dmesg = (kernel_run.out / "dmesg.log").read_text(errors="surrogateescape").splitlines()
    present = sum(line.count('apparmor="') for line in dmesg)
    records = [r for r in iter_records(dmesg) if r.mode in ("DENIED", "ALLOWED", "STATUS",
                                                            "AUDIT")]
    print(f"\nkernel log: {present} AppArmor records, parsed {len(records)}")
    assert len(records) == present
    guests = [r for r in records if (r.profile or "").startswith("libvirt-")]
    assert guests and all(r.operation and r.mode for r in guests)
    named = {(r.mode, r.name) for r in guests}
    for pr in kernel_run.probes:
        if pr.kernel_denied and not pr.model_explicit_deny and pr.op != "u":
            assert ("DENIED", pr.path) in named, pr.line()
