"""Issue 14: the whole product on a real AppArmor kernel, the way users run it.

One guest per session (``tests/realhost/rhguest.py``): Debian's kernel under
QEMU TCG with AppArmor enforcing, the host's own ``/`` as its root (9p,
read-only, tmpfs overlay), so it runs this machine's libvirt 9.0 with
``security_driver = "apparmor"``, QEMU, apparmor_parser and this worktree's
virt-aa.  ``tests/realhost/scenario.py`` runs there step by step (install,
confine a VM, live rules, modes, restarts, helper mode, uninstall) and
records facts; each test below asserts one numbered claim of the issue on
those facts and prints what the kernel logged during its step.

Artefacts (results.json, the guest's kern.log, scenario.log, console.log)
stay in $VIRT_AA_REALHOST_OUT, else in a pytest tmp directory; the path is
printed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from realhost import rhguest
from realhost.scenario import PROFILE1, UUID1, VM1

pytestmark = [pytest.mark.realhost, pytest.mark.slow]


@pytest.fixture(scope="module")
def run(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> rhguest.RealHostRun:
    out = Path(os.environ.get("VIRT_AA_REALHOST_OUT") or tmp_path_factory.mktemp("realhost"))
    result = rhguest.boot(out.resolve())
    lines = [f"real-host guest: {result.seconds:.0f} s wall, artefacts in {out}"]
    for sid in result.results["order"]:
        st = result.results["steps"][sid]
        lines.append(f"  step {sid}: {st['t1'] - st['t0']:.1f} s  {st.get('error') or 'ok'}")
    # the timings show in CI's quiet run too, not only when a test fails
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print("\n" + "\n".join(lines))
    return result


def show(run: rhguest.RealHostRun, sid: str) -> dict[str, Any]:
    """The step's facts; prints what the kernel said during it and its probes."""
    st = run.step(sid)
    print(f"\n--- step {sid}: the kernel's AppArmor records")
    for line in run.apparmor_records(sid):
        print("  " + line)
    for p in st["probes"]:
        print(f"  probe {p['key']}: {p['op']} {p['path']} -> rc {p['rc']} ({p['output']})")
    assert st["error"] is None, f"step {sid} failed: {st['error']}\n{commands(st)}"
    return st


def commands(st: dict[str, Any]) -> str:
    return "\n".join(f"$ {' '.join(c['argv'])} -> {c['rc']}\n{c['stdout']}{c['stderr']}"
                     for c in st["commands"])


def probe(st: dict[str, Any], key: str) -> dict[str, Any]:
    found = [p for p in st["probes"] if p["key"] == key]
    assert found, f"probe {key} did not run"
    return found[0]


def allowed(st: dict[str, Any], key: str) -> bool:
    return probe(st, key)["rc"] == 0


def records(run: rhguest.RealHostRun, st: dict[str, Any], key: str) -> list[str]:
    """The kernel's AppArmor records caused by one probe (matched by its pid)."""
    pid = probe(st, key)["pid"]
    assert pid, f"probe {key} printed no pid"
    return run.records_of_pid(pid)


def test_0_boot_real_apparmor_kernel(run: rhguest.RealHostRun) -> None:
    st = show(run, "0-boot")
    f = st["facts"]
    assert f["apparmor_enabled"] == "Y" and "apparmor" in f["lsm"]
    assert f["kernel"].endswith("-amd64")        # Debian's kernel, not this machine's
    assert f["virt_aa_path"].startswith(str(Path(__file__).resolve().parents[1]))
    st = show(run, "0-install")
    f = st["facts"]
    assert f["libvirtd_label"] == ["libvirtd (enforce)"], f
    # hook mode: the profile of the VM's first start was written by our hook
    assert f"include if exists <local/{PROFILE1}>" in f["profile_text"], f["profile_text"]
    assert any('profile="virt-aa-hook"' in r for r in run.apparmor_records("0-install"))
    print(f"\nVM start (define + start --paused) {f['vm_start_s']} s, "
          f"libvirtd ready in {f['libvirtd_ready_s']} s")


def test_1_confined(run: rhguest.RealHostRun) -> None:
    st = show(run, "1-confined")
    f = st["facts"]
    assert f["qemu_label"] == f"{PROFILE1} (enforce)"
    assert f["stored_mode"] == "enforce"
    assert f["profile_loaded"] == [f"{PROFILE1} (enforce)"]
    assert allowed(st, "own-disk-read") and allowed(st, "own-disk-write")
    for key in ("other-disk-read", "other-disk-write", "shadow-read"):
        assert not allowed(st, key), key
        recs = records(run, st, key)
        assert any('apparmor="DENIED"' in r and f'profile="{PROFILE1}"' in r
                   for r in recs), (key, recs)
    assert not records(run, st, "own-disk-read")


def test_2_live_rules(run: rhguest.RealHostRun) -> None:
    st = show(run, "2-live")
    f = st["facts"]
    assert not allowed(st, "before-allow")
    assert allowed(st, "after-allow")
    assert not allowed(st, "after-revoke")
    assert f["pid_before"] == f["pid_after"], "the VM was restarted"
    assert f["label_after"] == f"{PROFILE1} (enforce)"
    assert "extra.bin" in f["rules_after_allow"]
    # the live path is the real parser replacing the loaded profile
    assert any('operation="profile_replace"' in r and f'name="{PROFILE1}"' in r
               for r in run.apparmor_records("2-live"))


def test_7_host_wide_rule_live(run: rhguest.RealHostRun) -> None:
    """`allow --all-vms` reaches the running VM at once; `revoke --all-vms` closes it."""
    st = show(run, "7-hostwide")
    f = st["facts"]
    assert not allowed(st, "before-all-vms")
    assert allowed(st, "after-all-vms")
    assert not allowed(st, "after-revoke-all-vms")
    assert f["pid_before"] == f["pid_after"], "the VM was restarted"
    assert "every-vm.bin" in f["rules_all_vms"]
    assert any('operation="profile_replace"' in r and f'name="{PROFILE1}"' in r
               for r in run.apparmor_records("7-hostwide"))


def test_3_modes_denials_suggest(run: rhguest.RealHostRun) -> None:
    st = show(run, "3-modes")
    f = st["facts"]
    assert f["label_complain"] == f"{PROFILE1} (complain)"
    assert f["stored_complain"] == "complain"
    assert f["label_enforce"] == f"{PROFILE1} (enforce)"
    assert f["stored_enforce"] == "enforce"
    assert allowed(st, "complain-read")
    assert any('apparmor="ALLOWED"' in r for r in records(run, st, "complain-read"))
    assert not allowed(st, "enforce-read")
    assert any('apparmor="DENIED"' in r for r in records(run, st, "enforce-read"))
    # virt-aa denials read both back from the kernel log, under the right VM
    groups = {(g["resource"], g["mode"]): g for g in f["denials"]["groups"]}
    for key in (("/srv/virt-aa-realhost/complain.bin", "allowed"),
                ("/srv/virt-aa-realhost/enforce.bin", "denied")):
        assert key in groups, (key, sorted(groups))
        assert groups[key]["vm"] == VM1 and groups[key]["uuid"] == UUID1
        assert groups[key]["profile"] == PROFILE1
    # suggest proposed the exact rule; allow accepted it; the kernel then allows
    assert f["suggested_rule"] == '"/srv/virt-aa-realhost/enforce.bin" r,', f["suggest"]
    # never a rule for a restricted path: /etc/shadow's denial gets none
    by_resource = {sg["denial"]["resource"]: sg for sg in f["suggest"]["suggestions"]}
    assert by_resource["/etc/shadow"]["proposals"] == []
    assert not any("/etc/shadow" in p["rule"] for sg in f["suggest"]["suggestions"]
                   for p in sg["proposals"])
    assert allowed(st, "after-suggested-allow")


def test_4_survives_restarts(run: rhguest.RealHostRun) -> None:
    st = show(run, "4-restarts")
    f = st["facts"]
    complain = f"{PROFILE1} (complain)"
    assert f["label_before"] == complain
    # libvirtd restarted: the running QEMU is kept, still confined, same mode
    assert f["qemu_kept"] and f["label_after_libvirtd_restart"] == complain
    # the VM stopped (profile unloaded) and started under the new daemon
    assert f["profile_loaded_while_stopped"] == []
    assert f["new_pid"] and f["label_after_both"] == complain
    assert f["profile_loaded_after_both"] == [complain]
    # complain mode: the stored rule covers one access (no record), not the other
    assert allowed(st, "ruled-complain") and allowed(st, "unruled-complain")
    assert records(run, st, "ruled-complain") == []
    assert any('apparmor="ALLOWED"' in r for r in records(run, st, "unruled-complain"))
    assert f["label_enforce_again"] == f"{PROFILE1} (enforce)"
    assert allowed(st, "rule-kept-enforce")
    assert not allowed(st, "unruled-enforce")
    assert "enforce.bin" in f["local_rules"]


def test_5_helper_mode(run: rhguest.RealHostRun) -> None:
    st = show(run, "5-helper")
    f = st["facts"]
    assert f["hook_profile_after_uninstall"] == [], "uninstall unloads the hook's profile"
    assert "virt-aa" in f["helper_head"] and f["helper_head"].startswith("#!")
    assert "virt-aa-helper.stock" in f["diversion"]
    assert f["profile_loaded_before_start"] == []
    # our helper wrote the VM's profile from scratch, with the local include
    assert f"include if exists <local/{PROFILE1}>" in f["profile_text"]
    assert f["label_helper_mode"] == f"{PROFILE1} (enforce)"
    assert allowed(st, "rule-kept-helper-mode")
    assert not allowed(st, "unruled-helper-mode")
    assert allowed(st, "own-disk-write-helper-mode")
    assert not allowed(st, "other-disk-read-helper-mode")
    # libvirt ran our helper under libvirt's helper profile: the audit rule the
    # scenario added to its local include logged the launcher being read
    helper = [r for r in run.apparmor_records("5-helper")
              if 'profile="virt-aa-helper"' in r and 'apparmor="AUDIT"' in r]
    assert helper, "no AUDIT record of virt-aa-helper"
    # and in hook mode the hook ran under its own profile
    hook = [r for r in run.apparmor_records() if 'profile="virt-aa-hook"' in r
            and 'apparmor="AUDIT"' in r]
    assert hook, "no AUDIT record of virt-aa-hook"
    # neither profile denied anything during the whole run
    denied = [r for r in run.apparmor_records() if 'apparmor="DENIED"' in r
              and re.search(r'profile="(virt-aa-hook|virt-aa-helper)"', r)]
    assert denied == [], "\n".join(denied)


def test_6_uninstall(run: rhguest.RealHostRun) -> None:
    st = show(run, "6-uninstall")
    f = st["facts"]
    assert f["helper_is_elf"], "libvirt's own helper is back"
    assert "virt-aa-helper" not in f["diversion"]
    assert f["hooks_left"] == [], f["hooks_left"]
    assert f["vm_state"] == "paused"
    assert f["label_stock"].startswith(f"{PROFILE1} (")
    assert allowed(st, "own-disk-read-stock")
    assert not allowed(st, "shadow-read-stock")


def test_kernel_log_kept_and_only_probes_denied(run: rhguest.RealHostRun) -> None:
    """The guest's kernel log is an artefact; only the probes were ever denied."""
    log = run.outdir / "kern.log"
    assert log.exists() and "virt-aa-realhost end" in log.read_text(errors="replace")
    st = show(run, "final")
    denied_by_profile: dict[str, int] = {}
    for r in run.apparmor_records():
        m = re.search(r'apparmor="DENIED".*?profile="([^"]+)"', r)
        if m:
            denied_by_profile[m.group(1)] = denied_by_profile.get(m.group(1), 0) + 1
    print(f"\nDENIED records by profile over the whole run: {denied_by_profile}")
    # everything denied was a probe's doing: QEMU itself, libvirtd, the hook and
    # the helper ran the whole scenario without one DENIED record
    others = [r for r in run.apparmor_records()
              if 'apparmor="DENIED"' in r and 'comm="virt-aa-probe"' not in r]
    assert others == [], "\n".join(others)
    print(f"loaded at the end: {len(st['facts']['loaded'])} profiles; "
          f"libvirtd {st['facts']['libvirtd_label']}; kernel log: {log}")
