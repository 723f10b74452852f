"""Parity with libvirt 9.0's helper on the shared corpus, and the compile check.

The compare script is the project's yardstick (DESIGN §6): every corpus
domain must match the recorded real helper, except the deliberate safety
differences listed in the README, which are checked here one by one.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CORPUS, compile_profile, helper_argv, rules_of, run_helper

# README "Deliberate differences from stock": the corpus cases they show in.
DELIBERATE = {
    "hw-filesystem-readonly-root.xml",
    "hw-tpm-emulator-default-version.xml",
}


def expected(name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((CORPUS / "expected" / (name[:-4] + ".json")).read_text())


def test_compare_matches_all_but_deliberate_differences() -> None:
    template = " ".join(shlex.quote(a) for a in helper_argv()) + " -d -r -u {profile}"
    proc = subprocess.run([sys.executable, str(CORPUS / "compare"), "-q", "--strict", template],
                          capture_output=True, text=True, errors="replace", timeout=600,
                          check=False)
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr
    failed = {line.split()[1] for line in lines if line.startswith("FAIL ")}
    total = len(list((CORPUS / "domains").glob("*.xml")))
    print(f"compare: {lines[-1]}  (deliberate differences: {sorted(failed)})")
    assert failed == DELIBERATE, proc.stdout[-5000:]
    assert lines[-1] == f"{total - len(DELIBERATE)}/{total} domains match"
    assert "Traceback" not in proc.stdout


def _ours(name: str) -> subprocess.CompletedProcess[bytes]:
    xml = (CORPUS / "domains" / name).read_bytes()
    return run_helper(expected(name)["args"], xml)


def test_readonly_share_of_root_is_refused(corpus_images: Path) -> None:
    """Stock grants `/** r` (all of /etc, /root ...); we refuse the share."""
    name = "hw-filesystem-readonly-root.xml"
    exp = expected(name)
    assert exp["exit_code"] == 0
    assert ["/**", "r"] in exp["rules"] and ["/", "r"] in exp["rules"]
    ours = _ours(name)
    assert ours.returncode == 1
    err = ours.stderr.decode()
    assert "skipped restricted file" in err and "invalid VM definition" in err
    assert '"/**"' not in err


def test_tpm_without_version_gets_libvirtds_default(corpus_images: Path) -> None:
    """Stock writes `(null)` into the state path; we use the version libvirtd picks."""
    name = "hw-tpm-emulator-default-version.xml"
    exp = expected(name)
    null_rules = [p for p, _ in exp["rules"] if "(null)" in p]
    assert len(null_rules) == 2
    ours = _ours(name)
    assert ours.returncode == 0
    rules = rules_of(ours.stderr)
    assert not any("(null)" in r for r in rules)
    uuid = exp["profile"][len("libvirt-"):]
    # tpm-tis on x86 without a version: libvirtd fills in 1.2
    assert f'"/var/lib/libvirt/swtpm/{uuid}/tpm1.2/**" rwk,' in rules


def _accepted() -> list[str]:
    out = []
    for path in sorted((CORPUS / "domains").glob("*.xml")):
        exp = expected(path.name)
        if exp["exit_code"] == 0 and path.name not in DELIBERATE:
            out.append(path.name)
    return out


@pytest.mark.slow
def test_every_accepted_corpus_domain_compiles(corpus_images: Path, sandbox: Path) -> None:
    """-c into a --root sandbox, then the real apparmor_parser compiles P."""
    libvirt_dir = sandbox / "etc/apparmor.d/libvirt"
    # the admin provides TEMPLATE.<type> for other hypervisors; the corpus has xen
    (libvirt_dir / "TEMPLATE.xen").write_text((libvirt_dir / "TEMPLATE.qemu").read_text())
    names = _accepted()
    assert len(names) > 120
    compiled = 0
    for name in names:
        exp = expected(name)
        args = [a for a in exp["args"] if a not in ("-d", "-r", "-c")]
        xml = (CORPUS / "domains" / name).read_bytes()
        proc = run_helper(["-c", *args], xml, root=str(sandbox))
        assert proc.returncode == 0, (name, proc.stderr.decode(errors="replace"))
        profile = libvirt_dir / exp["profile"]
        assert profile.exists(), name
        files = libvirt_dir / (exp["profile"] + ".files")
        if "type='lxc'" in xml.decode() or 'type="lxc"' in xml.decode():
            assert not files.exists()
        else:
            assert files.read_text(errors="surrogateescape").startswith("# DO NOT EDIT")
        check = compile_profile(profile, sandbox)
        assert check.returncode == 0, (name, check.stderr)
        compiled += 1
    print(f"compiled {compiled} corpus profiles with apparmor_parser")
