"""Never wider than stock, and parity, for every corpus and every recorded libvirt.

The corpora: the project's own (tests/corpus/domains), what newer libvirt and
virtinst write (tests/corpus/newer), and libvirt's own test inputs, fetched
from Debian's source package at test time (tests/libvirt_tests.py).  For each
libvirt version with a recording (tests/oracle/<version>/), our helper runs
with ``VIRT_AA_LIBVIRT_VERSION=<version>`` and is compared with that
version's real helper:

* never wider: no path gets a permission from us that stock does not grant it
  (stock's globs and ``deny`` lines counted); a failure names the domain, the
  path and both permission sets.  A domain stock rejects is never started by
  libvirt, so it cannot be "wider" (it is a parity mismatch instead);
* parity, strict (exit code, every rule, rule order): each mismatch must be one
  of tests/oracle/known-mismatches.json, the list of what remains to fix, by
  class (``python tests/oracle.py known`` rewrites it).  A fix only shrinks it.
"""

from __future__ import annotations

import pytest

import libvirt_tests
import oracle

CASES = [(corpus, version) for corpus in oracle.CORPORA
         for version in oracle.recorded_versions(corpus)]


def _known(corpus: str, version: str) -> dict[str, dict[str, object]]:
    return oracle.known().get(version, {}).get(corpus, {})


def test_every_corpus_is_recorded_for_every_version() -> None:
    versions = sorted(oracle.SUITES.values())
    for corpus in oracle.CORPORA:
        assert set(oracle.recorded_versions(corpus)) == set(versions), corpus


@pytest.mark.slow
@pytest.mark.parametrize(("corpus", "version"), CASES)
def test_never_wider_than_stock(corpus: str, version: str) -> None:
    """0 wider grants, no exception list: deliberate differences may only narrow."""
    ours, _ = oracle.compare_corpus(corpus, version)
    stock = oracle.load(version, corpus)["domains"]
    assert isinstance(stock, dict)
    found = [f"{name}: {path!r} stock {theirs}, ours {mine}"
             for name, entry in stock.items()
             for path, theirs, mine in oracle.wider_entry(entry, ours[name])]
    listed = sum(len(e.get("wider", [])) for e in _known(corpus, version).values())  # type: ignore[arg-type]
    print(f"{corpus} libvirt {version}: {len(stock)} domains, {len(found)} wider grants")
    assert listed == 0, "known-mismatches.json may not excuse a wider grant"
    assert not found, "wider than stock:\n" + "\n".join(found)


@pytest.mark.slow
@pytest.mark.parametrize(("corpus", "version"), CASES)
def test_every_mismatch_is_known(corpus: str, version: str) -> None:
    ours, problems = oracle.compare_corpus(corpus, version)
    total = len(ours)
    known = _known(corpus, version)
    new = {name: diff for name, diff in problems.items() if name not in known}
    fixed = sorted(set(known) - set(problems))
    print(f"{corpus} libvirt {version}: {total - len(problems)}/{total} match "
          f"({len(known)} known mismatches, {len(fixed)} of them fixed since)")
    assert not new, "new mismatches with the real helper:\n" + "\n".join(
        f"{name}: {p}" for name, diff in sorted(new.items()) for p in diff)


def test_wider_names_domain_path_and_both_permission_sets() -> None:
    stock = [["/img/a.raw", "r"], ["/img/a.raw", "deny w"], ["/share/**", "rw"],
             ["/dev/HostVG/QEMU,Guest", "rwk"]]
    assert oracle.wider(stock, [["/img/a.raw", "r"], ["/share/x/y", "rw"],
                                ["/dev/HostVG/QEMU\\,Guest", "rwk"]]) == []
    assert oracle.wider(stock, [["/img/a.raw", "rwk"], ["/etc/x", "r"]]) == [
        ("/img/a.raw", "r", "krw"), ("/etc/x", "-", "r")]
    # our own deny takes back what we grant
    assert oracle.wider(stock, [["/etc/x", "rw"], ["/etc/x", "deny rw"]]) == []
    # a domain stock rejects is never started: nothing to be wider than
    assert oracle.wider_entry({"exit": 1, "rules": []},
                              {"exit": 0, "rules": [["/x", "rw"]]}) == []


def test_mismatch_classes() -> None:
    ok = {"exit": 0, "rules": [["/a", "r"], ["/b", "rw"]]}
    assert oracle.classify({"exit": 1, "rules": []}, ok) == \
        "accepted by us, rejected by stock"
    assert oracle.classify(ok, {"exit": 1, "rules": []}) == \
        "refused by us, accepted by stock"
    assert oracle.classify(ok, {"exit": 0, "rules": [["/a", "rw"], ["/b", "rw"]]}) == \
        oracle.WIDER
    assert oracle.classify(ok, {"exit": 0, "rules": [["/a", "r"]]}) == "missing rules"
    assert oracle.classify(ok, {"exit": 0, "rules": [["/b", "rw"], ["/a", "r"]]}) == \
        "rule order"


def test_libvirt_test_inputs_exclude_expected_outputs() -> None:
    assert libvirt_tests.is_input("libvirt-9.0.0/tests/qemuxml2argvdata/disk-cdrom.xml")
    assert libvirt_tests.is_input("libvirt-11.3.0/tests/qemuxmlconfdata/sgx-epc.xml")
    for out in ("sgx-epc.x86_64-latest.xml", "sgx-epc.x86_64-7.0.0.xml",
                "launch-security-sev.x86_64-latest+amdsev.xml",
                "cpu-host.aarch64-latest.abi-update.xml"):
        assert not libvirt_tests.is_input(f"libvirt-11.3.0/tests/qemuxmlconfdata/{out}")
    assert not libvirt_tests.is_input("libvirt-11.3.0/tests/qemuxmlconfdata/sub/x.xml")
    assert not libvirt_tests.is_input("libvirt-11.3.0/tests/qemuxml2xmloutdata/x.xml")
    assert libvirt_tests.source_for("12.8.0") == "11.3.0"
    assert libvirt_tests.source_for("9.0.0") == "9.0.0"
