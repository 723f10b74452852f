"""Parity with libvirt 9.0's helper on the corpus, and the compile check.

The recorded real helper (tests/oracle/9.0.0/domains.json, see tests/oracle.py)
is the project's yardstick (DESIGN §6): every corpus domain must match it,
rule for rule and in the same order, except the deliberate safety differences
listed in the README, which are checked here one by one.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import oracle
from conftest import CORPUS, compile_profile, rules_of, run_helper

# README "Deliberate differences from stock": the corpus cases they show in.
DELIBERATE = {
    "hw-filesystem-readonly-root.xml",
}


def expected(name: str) -> dict[str, object]:
    """The real 9.0 helper's recorded verdict, with the profile name it got."""
    entry = dict(oracle.load("9.0.0", "domains")["domains"][name])  # type: ignore[index]
    args = entry["args"]
    assert isinstance(args, list)
    entry["profile"] = args[args.index("-u") + 1]
    return entry


def test_matches_all_but_deliberate_differences_in_order(corpus_images: Path) -> None:
    """Exit code and every rule in the stock helper's order (README: "same
    rules in the same order"); a changed XML without a new recording fails."""
    ours, problems = oracle.compare_corpus("domains", "9.0.0")
    total = len(ours)
    assert b"Traceback" not in b"".join(str(e["stderr"]).encode() for e in ours.values())
    print(f"corpus: {total - len(problems)}/{total} match libvirt 9.0 "
          f"(deliberate differences: {sorted(problems)})")
    assert set(problems) == DELIBERATE, "\n".join(
        f"{n}: {p}" for n, ps in problems.items() if n not in DELIBERATE for p in ps)
    assert total == len(oracle.domains(CORPUS / "domains")) == 140


def test_a_changed_domain_xml_fails_loudly(tmp_path: Path) -> None:
    """The recordings carry each XML's sha256: an XML edited, added or removed
    without re-recording is named, with the command that re-records."""
    copy = tmp_path / "domains"
    copy.mkdir()
    names = oracle.domains(CORPUS / "domains")
    for name in names:
        (copy / name).write_bytes((CORPUS / "domains" / name).read_bytes())
    entries = oracle.load("9.0.0", "domains")["domains"]
    assert isinstance(entries, dict)
    assert oracle.stale(copy, entries) == []
    (copy / names[0]).write_bytes((copy / names[0]).read_bytes().replace(b"</domain>",
                                                                         b"<!-- -->\n</domain>"))
    (copy / "new-domain.xml").write_bytes(b"<domain/>")
    (copy / names[1]).unlink()
    assert oracle.stale(copy, entries) == sorted([names[0], names[1], "new-domain.xml"])


@pytest.mark.parametrize("version", oracle.recorded_versions("domains"))
@pytest.mark.parametrize("corpus", ["domains", "newer", "random"])
def test_recordings_are_current(corpus: str, version: str) -> None:
    """Every committed recording matches the XMLs it was made from."""
    if not oracle.recording_path(version, corpus).exists():
        pytest.fail(f"no {corpus} recording for libvirt {version}: "
                    f"scripts/record-oracle.sh SUITE {corpus}")
    entries = oracle.load(version, corpus)["domains"]
    assert isinstance(entries, dict)
    bad = oracle.stale(CORPUS / corpus, entries)
    assert not bad, (f"{corpus}: {bad} changed since the libvirt {version} recording; "
                     f"re-record with scripts/record-oracle.sh SUITE {corpus}")


def _ours(name: str) -> subprocess.CompletedProcess[bytes]:
    xml = (CORPUS / "domains" / name).read_bytes()
    return run_helper(expected(name)["args"], xml)


def test_readonly_share_of_root_is_refused(corpus_images: Path) -> None:
    """Stock grants `/** r` (all of /etc, /root ...); we refuse the share."""
    name = "hw-filesystem-readonly-root.xml"
    exp = expected(name)
    assert exp["exit"] == 0
    assert ["/**", "r"] in exp["rules"] and ["/", "r"] in exp["rules"]
    ours = _ours(name)
    assert ours.returncode == 1
    err = ours.stderr.decode()
    assert "skipped restricted file" in err and "invalid VM definition" in err
    assert '"/**"' not in err


def test_tpm_without_version_is_stocks_null_directory(corpus_images: Path) -> None:
    """Without a version stock writes `(null)` into the state path (libvirtd always
    fills the version in before it calls the helper): we write the same, never a
    wider grant than stock's."""
    name = "hw-tpm-emulator-default-version.xml"
    exp = oracle.load("9.0.0", "domains")["domains"][name]
    assert isinstance(exp, dict)
    ours = _ours(name)
    assert ours.returncode == 0
    rules = rules_of(ours.stderr)
    null_rules = [r for r in rules if "(null)" in r]
    assert len(null_rules) == 2 and not any("tpm1.2" in r or "tpm2" in r for r in rules)
    stock = [f'"{path}" {perms},' for path, perms in exp["rules"] if "(null)" in path]
    assert null_rules == stock


def _accepted() -> list[str]:
    out = []
    for path in sorted((CORPUS / "domains").glob("*.xml")):
        exp = expected(path.name)
        if exp["exit"] == 0 and path.name not in DELIBERATE:
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
        profile = libvirt_dir / str(exp["profile"])
        assert profile.exists(), name
        files = libvirt_dir / (str(exp["profile"]) + ".files")
        if "type='lxc'" in xml.decode() or 'type="lxc"' in xml.decode():
            assert not files.exists()
        else:
            assert files.read_text(errors="surrogateescape").startswith("# DO NOT EDIT")
        check = compile_profile(profile, sandbox)
        assert check.returncode == 0, (name, check.stderr)
        compiled += 1
    print(f"compiled {compiled} corpus profiles with apparmor_parser")


@pytest.mark.parametrize("corpus", ["domains", "newer", "random"])
def test_recorder_reproduces_the_host_recording(corpus: str) -> None:
    """The recorder run with this host's real 9.0 helper gives back the committed
    9.0 recording, entry for entry (setup.sh installs the same libvirt)."""
    oracle.prepare(corpus)
    again = oracle.run_corpus(CORPUS / corpus, oracle.stock_runner("host"))
    recorded = oracle.load("9.0.0", corpus)["domains"]
    assert isinstance(recorded, dict)
    keys = ("sha256", "args", "exit", "stdout", "stderr", "rules")
    differ = [n for n in recorded if {k: again[n][k] for k in keys} != recorded[n]]
    assert sorted(again) == sorted(recorded)
    assert not differ, differ
