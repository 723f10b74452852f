"""Named policies across hosts: live migration between two real libvirtds, and
forged metadata that must never widen a profile.

1. ``test_live_migration_*``: two private libvirtds on this machine
   (tests/e2e_two_daemons.py: each in its own mount namespace with its own
   ``host_uuid``, its own migration ports and its own virt-aa root with the
   hook installed).  A running 64 MiB TCG VM (no disk) with an attached
   policy is migrated live with ``virsh migrate --live NAME
   qemu+unix:///system?socket=<B> --migrateuri tcp://127.0.0.1``:
   refused by B's hook while B lacks the policy or has another version of
   it (the VM keeps running on A, B has no trace of it), accepted once B has
   the same policy: the VM runs on B and the profile B's hook wrote at
   ``prepare`` includes B's copy of the policy.

2. ``test_forged_*``: what libvirt gives the hook (``prepare begin`` and
   ``migrate begin``, the XML on stdin) with metadata an attacker who can
   write domain XML might forge: unknown policies, wrong hashes, rule text,
   includes, path names, oversized and malformed elements, complain mode
   without the host's consent.  The hook either refuses, or writes exactly
   the profile of the same domain without metadata: never an extra include,
   never the complain flag.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_daemon import missing_requirements, tiny_domain_xml
from e2e_two_daemons import Host, start_all

from conftest import cli_argv, compile_profile

HOOK = str(Path(sys.executable).parent / "virt-aa-hook")
POLICY = "mig-data"
POLICY_TEXT = '"/srv/mig/**" rwk,\n'
OTHER_TEXT = '"/srv/mig/**" r,\n'
NAME = "mig-tiny"
UUID = "5e7c1d2a-3b4c-4d5e-8f6a-7b8c9d0e1f2a"
PROFILE = f"libvirt-{UUID}"
BUDGET = 120.0
DOMAIN_XML = tiny_domain_xml(NAME, UUID)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def virt_aa(root: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*cli_argv(), "--root", str(root), *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False,
                          env=dict(os.environ, VIRT_AA_DEBUG="1"))
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def hook(root: Path, name: str, op: str, xml: bytes) -> subprocess.CompletedProcess[bytes]:
    """The hook entry point as libvirt runs it: NAME OP SUB-OP EXTRA, the XML on stdin."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRT_AA_")}
    return subprocess.run([HOOK, "--root", str(root), name, op, "begin", "-"], input=xml,
                          capture_output=True, timeout=60, check=False, env=env)


# == 1. live migration between two real libvirtds ==============================================

class Phases:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.done: list[tuple[str, float]] = []

    def run(self, name: str, start: float) -> None:
        took = time.monotonic() - start
        self.done.append((name, took))
        print(f"\n[migration] {name:<52} {took:6.2f} s", end="", flush=True)

    def report(self) -> str:
        rows = [f"  {n:<52} {t:6.2f} s" for n, t in self.done]
        rows.append(f"  {'total (fixture + test)':<52} {time.monotonic() - self.t0:6.2f} s")
        return "\n".join(rows)


@dataclass
class Pair:
    a: Host
    b: Host
    phases: Phases

    def migrate(self) -> subprocess.CompletedProcess[str]:
        return self.a.virsh("migrate", "--live", NAME,
                            f"qemu+unix:///system?socket={self.b.sock}",
                            "--migrateuri", "tcp://127.0.0.1", check=False, timeout=120)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    why = missing_requirements()
    if why:
        pytest.fail(f"no private libvirtd here: {why} (scripts/setup.sh installs it)")
    phases = Phases()
    base = tmp_path_factory.mktemp("mig")
    a = Host("A", base / "a", base / "a-state", "0a0a0a0a-0000-4000-8000-00000000000a",
             (61200, 61215))
    b = Host("B", base / "b", base / "b-state", "0b0b0b0b-0000-4000-8000-00000000000b",
             (61216, 61231))
    try:
        t = time.monotonic()
        for h in (a, b):
            h.prepare()
            for args in (("sandbox", str(h.root)), ("install",)):
                proc = virt_aa(h.root, *args)
                assert proc.returncode == 0, proc.stderr
        phases.run("two hosts: copy libvirt state, virt-aa install", t)
        t = time.monotonic()
        start_all([a, b])
        phases.run("start both libvirtds (in parallel)", t)
        yield Pair(a, b, phases)
    finally:
        t = time.monotonic()
        notes = a.stop() + b.stop()
        print(f"\n[migration] {'stop daemons (teardown)':<52} {time.monotonic() - t:6.2f} s")
        for note in notes:
            print(f"[migration] teardown: {note}")


def state(h: Host) -> str:
    proc = h.virsh("domstate", NAME, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "absent"


def refused(pair: Pair, expect: str) -> str:
    a, b = pair.a, pair.b
    qemu = a.qemu_pids()[NAME]
    proc = pair.migrate()
    assert proc.returncode != 0, proc.stdout
    err = " ".join(proc.stderr.split())
    assert "Hook script execution failed" in err, err
    assert "virt-aa-hook: error:" in err and expect in err, err
    assert "refusing the incoming migration" in err, err
    # the VM keeps running on A, the same QEMU; B has no trace of it
    assert state(a) == "running"
    assert a.qemu_pids().get(NAME) == qemu
    assert state(b) == "absent" and NAME not in b.qemu_pids()
    assert not (b.root / "etc/apparmor.d/libvirt" / PROFILE).exists()
    return proc.stderr.strip()


@pytest.mark.slow
def test_live_migration_between_two_libvirtds(pair: Pair, tmp_path: Path) -> None:
    a, b, ph = pair.a, pair.b, pair.phases
    policy_file = tmp_path / "policy"

    def install(root: Path, text: str) -> None:
        policy_file.write_text(text)
        proc = virt_aa(root, "policy", "add", POLICY, str(policy_file))
        assert proc.returncode == 0, proc.stderr

    t = time.monotonic()
    assert a.sysinfo_uuid() != b.sysinfo_uuid()
    install(a.root, POLICY_TEXT)
    xml = tmp_path / "dom.xml"
    xml.write_text(DOMAIN_XML)
    a.virsh("define", str(xml))
    proc = virt_aa(a.root, "-c", a.uri, "attach", NAME, POLICY)
    assert proc.returncode == 0, proc.stderr
    a.virsh("start", NAME)
    assert state(a) == "running"
    p_a = (a.root / "etc/apparmor.d/libvirt" / PROFILE).read_text()
    a_policy = os.path.realpath(a.root / "etc/virt-aa/policies" / POLICY)
    assert f'#include "{a_policy}"' in p_a, p_a
    live = a.virsh("dumpxml", NAME).stdout
    assert f'sha256="{sha(POLICY_TEXT)}"' in live, live
    ph.run("A: policy, define, attach (metadata API), start", t)

    t = time.monotonic()
    said = refused(pair, f"policy '{POLICY}' named by domain '{NAME}' is not installed on host")
    ph.run("migrate to B without the policy: refused", t)
    print(f"\n[migration]   virsh migrate said: {said}", end="")

    t = time.monotonic()
    install(b.root, OTHER_TEXT)
    said = refused(pair, f"policy '{POLICY}' on host")
    assert f"differs from the one domain '{NAME}' references" in " ".join(said.split())
    ph.run("migrate to B with another version: refused", t)

    t = time.monotonic()
    install(b.root, POLICY_TEXT)
    proc = pair.migrate()
    assert proc.returncode == 0, proc.stderr
    assert state(b) == "running" and NAME in b.qemu_pids()
    assert state(a) == "shut off" and NAME not in a.qemu_pids()
    p_b = (b.root / "etc/apparmor.d/libvirt" / PROFILE).read_text()
    b_policy = os.path.realpath(b.root / "etc/virt-aa/policies" / POLICY)
    assert f'#include "{b_policy}"' in p_b, p_b
    assert a_policy not in p_b
    res = compile_profile(b.root / "etc/apparmor.d/libvirt" / PROFILE, b.root)
    assert res.returncode == 0, res.stderr
    assert f'sha256="{sha(POLICY_TEXT)}"' in b.virsh("dumpxml", NAME).stdout
    ph.run("migrate to B with the same policy: VM runs on B", t)

    t = time.monotonic()
    b.virsh("destroy", NAME)
    ph.run("destroy on B", t)
    print(f"\n[migration] phases:\n{ph.report()}")
    total = time.monotonic() - ph.t0
    assert total < BUDGET, f"took {total:.1f} s (budget {BUDGET:.0f} s)\n{ph.report()}"


# == 2. forged metadata through the hook entry point ============================================

FNAME = "forged"
FUUID = "6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
FPROFILE = f"libvirt-{FUUID}"
NS = "https://virt-aa.dev/xmlns/policies/1"
GOOD = "good"
GOOD_TEXT = '"/srv/good/**" r,\n'
ZERO = "0" * 64


def forged_xml(metadata: str, head: str = "", domain_attrs: str = "") -> bytes:
    return (f"{head}<domain type='kvm'{domain_attrs}><name>{FNAME}</name><uuid>{FUUID}</uuid>"
            f"<memory>65536</memory><os><type arch='x86_64' machine='pc'>hvm</type></os>"
            f"{metadata}<devices/></domain>").encode()


def ours(inner: str) -> str:
    return f'<metadata><policies xmlns="{NS}">{inner}</policies></metadata>'


def good_ref() -> str:
    return f'<policy name="{GOOD}" sha256="{sha(GOOD_TEXT)}"/>'


def nested(depth: int) -> str:
    return "<x>" * depth + "</x>" * depth


# (case id, XML, text the refusal names); every one is refused under the default config
REFUSED = [
    ("unknown-policy", forged_xml(ours(f'<policy name="nope" sha256="{ZERO}"/>')),
     "policy 'nope' named by domain 'forged' is not installed on host"),
    ("wrong-hash", forged_xml(ours(f'<policy name="{GOOD}" sha256="{sha("x")}"/>')),
     f"policy '{GOOD}' on host"),
    ("rule-text-in-policy",
     forged_xml(ours(f'<policy name="{GOOD}" sha256="{sha(GOOD_TEXT)}">"/etc/shadow" r,'
                     f'</policy>')),
     "rule text is never taken from the domain XML"),
    ("rule-element-in-policy",
     forged_xml(ours(f'<policy name="{GOOD}" sha256="{sha(GOOD_TEXT)}"><rule>/** rwk,</rule>'
                     f'</policy>')),
     "rule text is never taken from the domain XML"),
    ("include-element", forged_xml(ours(good_ref() + "<include>abstractions/base</include>")),
     "unexpected <include> in virt-aa's domain metadata"),
    ("rule-element", forged_xml(ours(good_ref() + '<rule>"/etc/**" rw,</rule>')),
     "unexpected <rule> in virt-aa's domain metadata"),
    ("path-as-name", forged_xml(ours(f'<policy name="../../../etc/shadow" sha256="{ZERO}"/>')),
     "invalid policy name '../../../etc/shadow'"),
    ("absolute-name", forged_xml(ours(f'<policy name="/etc/shadow" sha256="{ZERO}"/>')),
     "invalid policy name '/etc/shadow'"),
    ("name-with-quote", forged_xml(ours(f'<policy name="a&quot;b" sha256="{ZERO}"/>')),
     "invalid policy name"),
    ("uppercase-name", forged_xml(ours(f'<policy name="GOOD" sha256="{sha(GOOD_TEXT)}"/>')),
     "invalid policy name 'GOOD'"),
    ("no-hash", forged_xml(ours(f'<policy name="{GOOD}"/>')), "needs its sha256"),
    ("short-hash", forged_xml(ours(f'<policy name="{GOOD}" sha256="{sha(GOOD_TEXT)[:40]}"/>')),
     "needs its sha256"),
    ("non-hex-hash", forged_xml(ours(f'<policy name="{GOOD}" sha256="{"g" * 64}"/>')),
     "needs its sha256"),
    ("named-twice", forged_xml(ours(good_ref() + good_ref())), "named twice"),
    ("33-policies", forged_xml(ours("".join(f'<policy name="p{i}" sha256="{ZERO}"/>'
                                            for i in range(33)))),
     "more than 32 policies"),
    ("huge-name", forged_xml(ours(f'<policy name="{"a" * 1_000_000}" sha256="{ZERO}"/>')),
     "invalid policy name"),
    ("unknown-mode", forged_xml(ours("<mode>unconfined</mode>")), "unknown mode 'unconfined'"),
    ("mode-with-rules", forged_xml(ours('<mode>complain, "/etc/**" rw</mode>')),
     "unknown mode"),
]
# refused because the XML itself cannot be read (any configuration)
UNREADABLE = [
    ("deep-metadata", forged_xml(ours(good_ref() + nested(200))), "nested deeper than 128"),
    ("dtd-entity", forged_xml(ours("&rules;"),
                              head='<!DOCTYPE domain [<!ENTITY rules "x">]>'), "DTD"),
    ("over-10-MiB", forged_xml(ours(good_ref() + "<!--" + "x" * (10 << 20) + "-->")),
     "larger than 10 MiB"),
]
# accepted, but must give exactly the profile of the domain without metadata
IGNORED = [
    ("complain-without-consent", forged_xml(ours("<mode>complain</mode>"))),
    ("foreign-namespace",
     forged_xml(f'<metadata><policies xmlns="https://evil.example/ns">{good_ref()}'
                f'<mode>complain</mode></policies></metadata>')),
    ("no-namespace", forged_xml(f"<metadata><policies>{good_ref()}</policies></metadata>")),
    ("second-element-ignored",
     forged_xml(f'<metadata><policies xmlns="{NS}"/><p:policies xmlns:p="{NS}">{good_ref()}'
                f'<p:mode>complain</p:mode></p:policies></metadata>')),
    ("outside-metadata",
     forged_xml(f'<description><policies xmlns="{NS}">{good_ref()}</policies></description>')),
]


@dataclass
class Forge:
    root: Path
    baseline: str     # P of the domain without metadata

    @property
    def p(self) -> Path:
        return self.root / "etc/apparmor.d/libvirt" / FPROFILE

    def config(self, text: str) -> None:
        (self.root / "etc/virt-aa/config.toml").write_text(text)

    def prepare(self, xml: bytes) -> tuple[int, str, str | None]:
        self.p.unlink(missing_ok=True)
        proc = hook(self.root, FNAME, "prepare", xml)
        err = " ".join(proc.stderr.decode(errors="replace").split())
        return proc.returncode, err, self.p.read_text() if self.p.exists() else None


@pytest.fixture
def forge(sandbox: Path) -> Forge:
    from virt_aa.host.store import Store
    from virt_aa.ops.fleet import add_policy

    add_policy(Store(str(sandbox)), GOOD, GOOD_TEXT)
    f = Forge(sandbox, "")
    code, err, p = f.prepare(forged_xml(""))
    assert code == 0 and p is not None, err
    f.baseline = p
    return f


def extra_includes(p: str) -> list[str]:
    return [line for line in p.splitlines() if "etc/virt-aa/policies" in line]


def test_forged_baseline_and_honest_control(forge: Forge) -> None:
    """The controls: no metadata gives no policy include and no complain flag; an honest
    reference adds exactly one include; complain asked by metadata needs host consent."""
    assert extra_includes(forge.baseline) == []
    head = [ln for ln in forge.baseline.splitlines() if ln.startswith(f"profile {FPROFILE}")]
    assert len(head) == 1 and "complain" not in head[0], head
    code, err, p = forge.prepare(forged_xml(ours(good_ref())))
    assert code == 0, err
    assert p is not None
    good_path = os.path.realpath(forge.root / "etc/virt-aa/policies" / GOOD)
    assert extra_includes(p) == [f'  #include "{good_path}"']
    assert p.replace(f'  #include "{good_path}"\n', "") == forge.baseline
    # the namespace declared on <domain> with a prefix is ours as well
    code, err, p = forge.prepare(forged_xml(
        f"<metadata><v:policies>{good_ref().replace('<policy', '<v:policy')}</v:policies>"
        f"</metadata>", domain_attrs=f' xmlns:v="{NS}"'))
    assert code == 0 and p is not None and len(extra_includes(p)) == 1, err
    # complain by metadata: only with the host's consent
    forge.config("metadata_complain = true\n")
    code, err, p = forge.prepare(forged_xml(ours("<mode>complain</mode>")))
    assert code == 0 and p is not None, err
    head = [ln for ln in p.splitlines() if ln.startswith(f"profile {FPROFILE}")]
    assert "complain" in head[0], head


@pytest.mark.parametrize("case,xml,why", REFUSED, ids=[c[0] for c in REFUSED])
def test_forged_metadata_refused(forge: Forge, case: str, xml: bytes, why: str) -> None:
    code, err, p = forge.prepare(xml)
    assert code == 1, f"{case}: exit {code}, P:\n{p}"
    assert why in err, err
    assert f"refusing to start {FNAME}" in err, err
    assert p is None
    # the same XML arriving by migration is refused before anything starts
    proc = hook(forge.root, FNAME, "migrate", xml)
    err = " ".join(proc.stderr.decode(errors="replace").split())
    assert proc.returncode == 1 and proc.stdout == b"", err
    assert why in err and "refusing the incoming migration" in err, err


@pytest.mark.parametrize("case,xml,why", REFUSED, ids=[c[0] for c in REFUSED])
def test_forged_metadata_with_warn_never_widens(forge: Forge, case: str, xml: bytes,
                                                why: str) -> None:
    """With on_policy_mismatch = "warn" the VM starts: with the profile it would have
    without any metadata."""
    forge.config('on_policy_mismatch = "warn"\n')
    code, err, p = forge.prepare(xml)
    assert code == 0, err
    assert why in err and "starting without it" in err, err
    assert p == forge.baseline
    proc = hook(forge.root, FNAME, "migrate", xml)
    assert proc.returncode == 0 and proc.stdout == xml


@pytest.mark.parametrize("case,xml,why", UNREADABLE, ids=[c[0] for c in UNREADABLE])
@pytest.mark.parametrize("config", ["", 'on_policy_mismatch = "warn"\n'], ids=["refuse", "warn"])
def test_forged_unreadable_xml_refused(forge: Forge, case: str, xml: bytes, why: str,
                                       config: str) -> None:
    forge.config(config)
    code, err, p = forge.prepare(xml)
    assert code == 1 and why in err, err
    assert p is None
    proc = hook(forge.root, FNAME, "migrate", xml)
    assert proc.returncode == 1 and proc.stdout == b""
    assert why in " ".join(proc.stderr.decode(errors="replace").split())


@pytest.mark.parametrize("case,xml", IGNORED, ids=[c[0] for c in IGNORED])
def test_forged_metadata_ignored_gives_the_plain_profile(forge: Forge, case: str,
                                                         xml: bytes) -> None:
    code, err, p = forge.prepare(xml)
    assert code == 0, err
    assert p == forge.baseline, f"{case} changed P:\n{p}"
    proc = hook(forge.root, FNAME, "migrate", xml)
    assert proc.returncode == 0 and proc.stdout == xml


def test_forged_metadata_never_widens_random(forge: Forge) -> None:
    """Random junk in our element (any tags, attributes, text): refused, or the plain P."""
    import random

    rng = random.Random(20240611)
    tags = ["policy", "mode", "include", "rule", "p:policy", "abi", "profile"]
    values = [GOOD, sha(GOOD_TEXT), ZERO, "complain", "/etc/**", "..", "", "a" * 70,
              '"/srv/x/**" rwk,', "}", "\n"]
    good_path = os.path.realpath(forge.root / "etc/virt-aa/policies" / GOOD)
    # the plain P, or (an honest reference to "good" came out of the dice) P + its include
    allowed = {forge.baseline, forge.baseline.replace(
        f"{FPROFILE}>\n", f'{FPROFILE}>\n  #include "{good_path}"\n', 1)}
    widened = []
    outcomes: dict[int, int] = {}
    for _ in range(60):
        inner = ""
        for _ in range(rng.randint(1, 4)):
            tag = rng.choice(tags)
            attrs = "".join(f' {k}="{rng.choice(values).replace(chr(34), "&quot;")}"'
                            for k in rng.sample(["name", "sha256", "x"], rng.randint(0, 3)))
            text = rng.choice(values).replace("<", "&lt;") if rng.random() < 0.4 else ""
            inner += f"<{tag}{attrs}>{text}</{tag}>"
        xml = forged_xml(f'<metadata><policies xmlns="{NS}" xmlns:p="{NS}">{inner}'
                         f'</policies></metadata>')
        code, _err, p = forge.prepare(xml)
        outcomes[code] = outcomes.get(code, 0) + 1
        if code == 0 and p not in allowed:
            widened.append((inner, p))
    assert widened == []
    assert outcomes.get(1, 0) > 30, outcomes       # most junk is refused outright

