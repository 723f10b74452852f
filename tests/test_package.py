"""The Debian package, for real: build, lintian, install, upgrade, remove, purge.

The .deb is built from a temporary copy of the source with
``dpkg-buildpackage`` (cached per source hash, tests/debpkg.py) and installed
with ``apt-get`` into this machine's root under a private overlay
(``OverlaySystem``): real apt/dpkg, maintainer scripts, ``dpkg-divert``, a real
libvirtd starting a real TCG guest through the hook from the package -- and the
host is never changed, so the rest of the suite keeps importing the checkout.
The checkout is hidden inside the overlay (a tmpfs over it): every VM start
here works without it.

The tests share one overlay system and run in file order (install, upgrade,
AppArmor upgrade, remove, purge, helper mode + libvirt upgrade).  Timings are
printed per phase (``pytest -s``).
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from debpkg import REPO, OverlaySystem, build_debs, bumped, cached_deb
from e2e_daemon import tiny_domain_xml

import virt_aa
from conftest import rules_of

pytestmark = [pytest.mark.package, pytest.mark.slow]

NAME = "pkg-tiny"
UUID = "6d1f3c2a-8b4e-4f70-9c1d-2e3f4a5b6c7d"
OTHER_UUID = "0a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d"
P = f"/etc/apparmor.d/libvirt/libvirt-{UUID}"
LOCAL = f"/etc/apparmor.d/local/libvirt-{UUID}"
RULE = "/srv/pkg-test/** rwk,"
SITE = "/usr/lib/python3/dist-packages"
HOOK = "/etc/libvirt/hooks/qemu.d/virt-aa"
ENTRY = "/usr/sbin/virt-aa-hook"
ENTRY_PROFILE = "/etc/apparmor.d/usr.sbin.virt-aa-hook"
HELPER = "/usr/lib/libvirt/virt-aa-helper"
# what virt-aa install / uninstall / the maintainer scripts may change in libvirt's world
LIBVIRT_STATE = ["/etc/libvirt/hooks", HELPER, HELPER + ".stock", ENTRY, ENTRY_PROFILE,
                 "/etc/apparmor.d/local/usr.lib.libvirt.virt-aa-helper",
                 "/var/lib/virt-aa/install.json", "/var/lib/dpkg/diversions"]
# the admin's data that upgrades, removal and purge keep
ADMIN_DATA = [LOCAL, f"/etc/virt-aa/domains/{UUID}.conf", f"/var/lib/virt-aa/history/{UUID}.jsonl"]
DEV_CHECKOUT = "/opt/virt-aa-checkout"
BEFORE: dict[str, dict[str, str]] = {}
TIMES: list[tuple[str, float]] = []


def phase(name: str, t0: float) -> None:
    took = time.monotonic() - t0
    TIMES.append((name, took))
    print(f"\n[package] {name:<50} {took:6.2f} s", end="", flush=True)


@pytest.fixture(scope="module")
def debs() -> dict[str, object]:
    t0 = time.monotonic()
    data = build_debs()
    phase("build (or cache hit) of both .debs + lintian", t0)
    for step, took in dict(data["timings"]).items():  # type: ignore[call-overload]
        print(f"\n[package]   when built: {step:<38} {took:6.2f} s", end="")
    return data


@pytest.fixture(scope="module")
def system(debs: dict[str, object]) -> Iterator[OverlaySystem]:
    t0 = time.monotonic()
    sysm = OverlaySystem(hide=[str(REPO)])
    try:
        sysm.start()
        sysm.configure_libvirt()
        sysm.write("/tmp/pkg-tiny.xml", tiny_domain_xml(NAME, UUID))
        phase("overlay system up", t0)
        yield sysm
    finally:
        sysm.stop()
        total = sum(t for _, t in TIMES)
        print(f"\n[package] {'sum of the timed phases':<50} {total:6.2f} s")


def deb(debs: dict[str, object], key: str) -> str:
    return str(Path(str(debs["dir"])) / str(debs[key]))


def start_vm(sysm: OverlaySystem) -> str:
    """(Re)start the VM with P deleted first: the P seen afterwards is the hook's."""
    if sysm.virsh("domstate", NAME, check=False).stdout.strip() == "running":
        sysm.virsh("destroy", NAME)
    sysm.run(["rm", "-f", P, P + ".files"])
    proc = sysm.virsh("start", NAME, check=False)
    assert proc.returncode == 0, f"{proc.stderr}\n{sysm.libvirtd_log()}"
    assert sysm.virsh("domstate", NAME).stdout.strip() == "running"
    return sysm.path(P).read_text() if sysm.path(P).exists() else ""


def host_state() -> dict[str, str]:
    """What a package test must never change on the host itself."""
    dpkg = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", "virt-aa"],
                          capture_output=True, text=True, check=False).stdout
    divert = subprocess.run(["dpkg-divert", "--list", HELPER], capture_output=True,
                            text=True, check=False).stdout
    files = {p: (hashlib.sha256(Path(p).read_bytes()).hexdigest() if Path(p).is_file()
                 else str(Path(p).exists()))
             for p in (HELPER, HELPER + ".stock", ENTRY, HOOK, ENTRY_PROFILE)}
    return {"dpkg": dpkg, "divert": divert, **files}


HOST_BEFORE = host_state()


def test_guard_suite_imports_the_checkout() -> None:
    """The rest of the suite must test the checkout, never an installed package."""
    assert Path(virt_aa.__file__).resolve().is_relative_to(REPO / "src"), virt_aa.__file__


def test_build_contents_and_lintian(debs: dict[str, object], tmp_path: Path) -> None:
    path = deb(debs, "deb")
    size = Path(path).stat().st_size
    print(f"\n[package] {Path(path).name}: {size} bytes", end="")
    names = subprocess.run(["dpkg-deb", "-c", path], capture_output=True, text=True,
                           check=True).stdout
    for want in ("./usr/bin/virt-aa", f".{SITE}/virt_aa/cli/__init__.py",
                 f".{SITE}/virt_aa/denials/_avcscan.cpython-",
                 "./usr/libexec/virt-aa/virt-aa-helper", "./usr/libexec/virt-aa/virt-aa-hook",
                 "./usr/share/man/man8/virt-aa.8.gz",
                 "./usr/share/bash-completion/completions/virt-aa",
                 "./usr/share/virt-aa/apparmor/usr.sbin.virt-aa-hook"):
        assert want in names, want
    # nothing that loads or plugs in at install time
    for never in ("./etc/apparmor.d/", "./etc/libvirt/", "./usr/sbin/", "./usr/bin/virt-aa-"):
        assert never not in names, never
    fields = {f: subprocess.run(["dpkg-deb", "-f", path, f], capture_output=True, text=True,
                                check=True).stdout.strip()
              for f in ("Depends", "Recommends", "Version", "Architecture")}
    depends = [d.strip().split()[0] for d in fields["Depends"].split(",")]
    assert "apparmor" in depends and "python3-libvirt" in depends
    assert not any(d.startswith("libvirt-daemon") for d in depends), fields["Depends"]
    assert "libvirt-daemon-system" in fields["Recommends"]
    assert fields["Version"] == str(debs["version"])
    subprocess.run(["dpkg-deb", "-x", path, str(tmp_path)], check=True)
    launcher = (tmp_path / "usr/libexec/virt-aa/virt-aa-hook").read_text()
    assert launcher.startswith("#!/usr/bin/python3 -IS\n") and repr(SITE) in launcher
    print("\n[package] lintian --pedantic -I:\n  " + "\n  ".join(debs["lintian"]) if
          debs["lintian"] else "\n[package] lintian: no tags", end="")
    # every tag counts (pedantic and info too); the few accepted ones are overridden,
    # with their reason, in debian/virt-aa.lintian-overrides
    tags = [ln for ln in debs["lintian"] if ln[1:3] == ": "]  # type: ignore[attr-defined]
    assert not tags, tags
    assert debs["lintian_rc"] == 0


def test_install_changes_nothing_then_hook_starts_vm(debs: dict[str, object],
                                                   system: OverlaySystem) -> None:
    t0 = time.monotonic()
    BEFORE["libvirt"] = system.snapshot(LIBVIRT_STATE)
    BEFORE["apparmor.d"] = system.snapshot(["/etc/apparmor.d"])
    system.apt("install", deb(debs, "deb"))
    phase("apt-get install ./virt-aa_*.deb", t0)
    assert system.snapshot(LIBVIRT_STATE) == BEFORE["libvirt"]
    assert system.snapshot(["/etc/apparmor.d"]) == BEFORE["apparmor.d"]
    where = system.run(["python3", "-c", "import virt_aa; print(virt_aa.__file__)"]).stdout
    assert where.strip() == f"{SITE}/virt_aa/__init__.py"
    inside = system.path(str(REPO))     # an empty tmpfs over it, or (under /tmp) absent
    assert not inside.exists() or (inside.is_dir() and not list(inside.iterdir())), \
        "the checkout must be hidden inside the overlay"
    # the man page and the completion where man and bash-completion look
    man = gzip.decompress(system.path("/usr/share/man/man8/virt-aa.8.gz").read_bytes())
    assert man.startswith(b".TH VIRT\\-AA 8 ") and b"\n.SS install" in man
    complete = system.run(["bash", "-c", ". /usr/share/bash-completion/completions/virt-aa"
                           " && complete -p virt-aa"]).stdout
    assert complete.startswith("complete ") and complete.rstrip().endswith(" virt-aa")

    t0 = time.monotonic()
    out = system.run(["virt-aa", "install"]).stdout
    phase("virt-aa install (hook mode)", t0)
    assert "warn" not in out, out
    entry = system.path(ENTRY).read_text()
    assert entry.startswith("#!/usr/bin/python3 -IS\n") and repr(SITE) in entry, entry
    assert str(REPO) not in entry
    assert system.path(HOOK).read_text().endswith(f'exec {ENTRY} "$@"\n')
    shipped = system.path("/usr/share/virt-aa/apparmor/usr.sbin.virt-aa-hook").read_bytes()
    assert system.path(ENTRY_PROFILE).read_bytes() == shipped

    t0 = time.monotonic()
    system.start_libvirtd()
    phase("libvirtd up", t0)
    system.virsh("define", "/tmp/pkg-tiny.xml")
    system.run(["virt-aa", "allow", NAME, RULE, "--comment", "package test"])
    system.run(["virt-aa", "complain", NAME])
    t0 = time.monotonic()
    profile = start_vm(system)
    phase("VM start through the packaged hook", t0)
    assert "flags=(complain)" in profile or "complain" in profile.split("{", 1)[0], profile
    assert f"local/libvirt-{UUID}" in profile
    assert RULE in system.path(LOCAL).read_text()


def _data(system: OverlaySystem) -> dict[str, str]:
    snap = system.snapshot(ADMIN_DATA + ["/etc/virt-aa/domains"])
    snap.pop("dpkg-divert")
    assert all(v != "absent" for v in snap.values()), snap
    return snap


def test_upgrade_keeps_data_and_repoints_launchers(debs: dict[str, object],
                                                   system: OverlaySystem) -> None:
    # an earlier install from a checkout: the launchers point into it, with a warning
    dev = system.path(DEV_CHECKOUT + "/src")
    shutil.copytree(REPO / "src", dev, ignore=shutil.ignore_patterns(
        "__pycache__", "*.so", "*.egg-info"))
    out = system.run(["python3", "-I", "-c",
                      f"import sys; sys.path.insert(0, {DEV_CHECKOUT + '/src'!r}); "
                      "from virt_aa.cli import main; sys.exit(main(['install']))"]).stdout
    assert "warn" in out and DEV_CHECKOUT in out, out
    assert DEV_CHECKOUT in system.path(ENTRY).read_text()
    data = _data(system)

    t0 = time.monotonic()
    system.apt("install", deb(debs, "upgrade"))
    phase("apt-get install ./virt-aa_<newer>.deb (upgrade)", t0)
    ver = system.run(["dpkg-query", "-W", "-f=${Version}", "virt-aa"]).stdout
    assert ver.endswith("+upgradetest1"), ver
    entry = system.path(ENTRY).read_text()
    assert DEV_CHECKOUT not in entry and repr(SITE) in entry, entry
    assert _data(system) == data
    system.run(["rm", "-rf", DEV_CHECKOUT])
    profile = start_vm(system)
    assert "complain" in profile.split("{", 1)[0] and f"local/libvirt-{UUID}" in profile


def test_apparmor_upgrade_rekeys_the_parser_stamps(system: OverlaySystem) -> None:
    """An upgrade of the parser's package: the hook's stamps (per-VM rules accepted by
    this parser; the parser's major version) are keyed on the parser binary, so the
    new parser is asked again at the next VM start, and VMs keep starting."""
    stamp = system.path(f"/var/lib/virt-aa/libvirt-{UUID}.checked")
    version_cache = system.path("/var/lib/virt-aa/parser-version")
    before = (stamp.read_text(), version_cache.read_text())
    pkg = bumped(cached_deb("apparmor"))
    t0 = time.monotonic()
    system.run(["dpkg", "-i", str(pkg)])
    phase("dpkg -i apparmor (upgrade, rebuilt +virtaatest1)", t0)
    assert system.run(["dpkg-query", "-W", "-f=${Version}", "apparmor"]).stdout.endswith(
        "+virtaatest1")
    st = system.path("/sbin/apparmor_parser").stat()   # what the stamps are keyed on
    key = f"{st.st_size} {st.st_mtime_ns}"
    assert not before[0].endswith(key) and key not in before[1], before
    profile = start_vm(system)
    assert "complain" in profile.split("{", 1)[0] and f"local/libvirt-{UUID}" in profile
    assert stamp.read_text().endswith(f" {key}"), stamp.read_text()
    assert f" {key} " in version_cache.read_text(), version_cache.read_text()


def test_remove_restores_libvirt_and_vms_still_start(system: OverlaySystem) -> None:
    data = _data(system)
    t0 = time.monotonic()
    system.apt("remove", "virt-aa")
    phase("apt-get remove virt-aa", t0)
    assert system.snapshot(LIBVIRT_STATE) == BEFORE["libvirt"]
    assert not system.path("/usr/bin/virt-aa").exists()
    assert _data(system) == data
    start_vm(system)                  # the running libvirtd, which had seen the hook
    system.restart_libvirtd()
    start_vm(system)


def test_purge_keeps_rules_unless_told(debs: dict[str, object], system: OverlaySystem) -> None:
    data = _data(system)
    system.apt("purge", "virt-aa")
    assert _data(system) == data
    for gone in ("lock", "parser-version", "install.json", f"libvirt-{UUID}.checked"):
        assert not system.path(f"/var/lib/virt-aa/{gone}").exists(), gone
    system.apt("install", deb(debs, "deb"))
    system.write("/etc/virt-aa/purge-all", "")
    system.apt("purge", "virt-aa")
    for gone in ADMIN_DATA + ["/etc/virt-aa", "/var/lib/virt-aa"]:
        assert not system.path(gone).exists(), gone
    assert system.snapshot(LIBVIRT_STATE) == BEFORE["libvirt"]


def test_helper_mode_survives_libvirt_upgrade(debs: dict[str, object],
                                              system: OverlaySystem) -> None:
    stock = hashlib.sha256(system.path(HELPER).read_bytes()).hexdigest()
    system.apt("install", deb(debs, "deb"))
    system.run(["virt-aa", "install", "--mode", "helper"])
    installed = system.snapshot(LIBVIRT_STATE)
    assert "virt-aa-helper.stock" in installed["dpkg-divert"]
    assert installed[HELPER + ".stock"].endswith(stock)
    assert repr(SITE) in system.path(HELPER).read_text()

    pkg = cached_deb("libvirt-daemon")
    t0 = time.monotonic()
    system.run(["dpkg", "-i", str(pkg)])
    phase("dpkg -i libvirt-daemon (reinstall, helper diverted)", t0)
    assert system.snapshot(LIBVIRT_STATE) == installed
    # libvirt's path runs our helper; the stock one still works where it was diverted to
    xml = tiny_domain_xml("pkg-helper", OTHER_UUID)
    argv = ["-d", "-c", "-u", f"libvirt-{OTHER_UUID}"]
    ours = system.run([HELPER, *argv], input=xml, check=False)
    theirs = system.run([HELPER + ".stock", *argv], input=xml, check=False)
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert rules_of(ours.stderr.encode()) == rules_of(theirs.stderr.encode())
    assert any("pkg-helper" in r for r in rules_of(ours.stderr.encode())), ours.stderr

    system.apt("remove", "virt-aa")
    assert system.snapshot(LIBVIRT_STATE) == BEFORE["libvirt"]
    assert hashlib.sha256(system.path(HELPER).read_bytes()).hexdigest() == stock
    system.apt("purge", "virt-aa")
    if sys.stdout.isatty():
        print()


def test_ansible_collection_is_a_galaxy_artefact(tmp_path: Path) -> None:
    """The collection ships the way Ansible users take collections: a Galaxy tarball."""
    bindir = Path(sys.executable).parent
    coll = REPO / "ansible/collections/ansible_collections/virtaa/libvirt"
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "collections")}
    subprocess.run([str(bindir / "ansible-galaxy"), "collection", "build", str(coll),
                    "--output-path", str(tmp_path)], check=True, env=env,
                   capture_output=True, timeout=300)
    tarball = tmp_path / "virtaa-libvirt-0.1.0.tar.gz"
    names = subprocess.run(["tar", "-tzf", str(tarball)], capture_output=True, text=True,
                           check=True).stdout.split()
    for module in ("policy", "vm_rule", "attachment", "mode"):
        assert f"plugins/modules/{module}.py" in names, names
    assert "MANIFEST.json" in names and not any(n.endswith(".tar.gz") for n in names)
    subprocess.run([str(bindir / "ansible-galaxy"), "collection", "install", str(tarball),
                    "-p", str(tmp_path / "collections")], check=True, env=env,
                   capture_output=True, timeout=300)
    doc = subprocess.run([str(bindir / "ansible-doc"), "-t", "module", "virtaa.libvirt.vm_rule"],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert doc.returncode == 0 and "virtaa.libvirt.vm_rule" in doc.stdout, doc.stderr


def test_host_is_untouched() -> None:
    """Last: everything above happened in the overlay system, none of it on the host."""
    assert host_state() == HOST_BEFORE
