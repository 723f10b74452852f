"""The real-host scenario: virt-aa on stock libvirt under a real AppArmor kernel.

Runs as root (PID 1's child) inside the guest that ``rhguest.py`` boots: the
host's own root filesystem under a tmpfs overlay, so libvirt, QEMU, Python,
apparmor_parser and this worktree's virt-aa are the host's.  Each step runs
what an admin would run (``virt-aa``, ``virsh``, ``libvirtd``), and records
facts: commands with their exit status and output, the confinement of
processes (``/proc/PID/attr/current``) and what a process under a VM's
profile may do (``aa-exec -p libvirt-<uuid> -- virt-aa-probe OP PATH``).
It decides nothing: ``tests/test_realhost.py`` asserts on the facts.

Results: ``OUT/results.json`` (rewritten after every step, so a crash keeps
what was done).  Before each step a ``virt-aa-realhost step ID`` line goes to
the kernel log; the probes' pids tie their AppArmor records to them.

Extension point: a step is a function ``step(r: Recorder) -> None`` listed in
STEPS; new claims (host-wide rules, ``--profile`` rules) add a step here and a
test in ``tests/test_realhost.py`` that reads ``results["steps"][ID]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent           # the project's venv: virt-aa is there
VIRT_AA = str(BIN / "virt-aa")
PROBE = "/usr/libexec/virt-aa-probe"
IMAGES = "/var/lib/libvirt/images"
EXTRA = "/srv/virt-aa-realhost"
VM1, VM2 = "rh-vm1", "rh-vm2"
UUID1 = "7e571000-0000-4000-8000-000000000001"
UUID2 = "7e571000-0000-4000-8000-000000000002"
PROFILE1 = f"libvirt-{UUID1}"
HOST_PROFILES = ["/etc/apparmor.d/usr.sbin.libvirtd",
                 "/etc/apparmor.d/usr.lib.libvirt.virt-aa-helper"]
# Test instrumentation (not part of the product): an `audit` rule in the local
# include of the hook's and the helper's profiles makes the kernel log one
# AUDIT record when the program reads its own launcher -- proof that libvirt
# ran it under that profile.  Appended outside virt-aa's block.
AUDIT_HOOK = "/etc/apparmor.d/local/usr.sbin.virt-aa-hook"
AUDIT_HELPER = "/etc/apparmor.d/local/usr.lib.libvirt.virt-aa-helper"


def domain_xml(name: str, uuid: str) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{IMAGES}/{name}.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def kmsg(text: str) -> None:
    with open("/dev/kmsg", "w") as f:
        f.write(text + "\n")


class Recorder:
    """Runs commands and keeps what they did in the current step."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.results: dict[str, Any] = {"steps": {}, "order": []}
        self.step: dict[str, Any] = {}

    def begin(self, sid: str) -> None:
        kmsg(f"virt-aa-realhost step {sid}")
        self.step = {"id": sid, "t0": uptime(), "commands": [], "probes": [], "facts": {}}
        self.results["steps"][sid] = self.step
        self.results["order"].append(sid)

    def end(self, error: str | None = None) -> None:
        time.sleep(0.3)   # kauditd prints asynchronously: let this step's records land
        self.step["t1"] = uptime()
        self.step["error"] = error
        self.save()

    def save(self) -> None:
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=1, sort_keys=True))
        os.replace(tmp, self.out / "results.json")

    def fact(self, key: str, value: Any) -> Any:
        self.step["facts"][key] = value
        return value

    def run(self, *argv: str, input: str | None = None, timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        t0 = time.monotonic()
        proc = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                              timeout=timeout, check=False)
        self.step["commands"].append({"argv": list(argv), "rc": proc.returncode,
                                      "stdout": proc.stdout[-6000:],
                                      "stderr": proc.stderr[-6000:],
                                      "seconds": round(time.monotonic() - t0, 2)})
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: "
                               f"{proc.stderr.strip()[-800:]}")
        return proc

    def virt_aa(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(VIRT_AA, *args, check=check)

    def probe(self, key: str, op: str, path: str, profile: str = PROFILE1) -> bool:
        """What the kernel lets a process under ``profile`` do: op r (read), o (open
        for writing, nothing written: a disk in use), c (create)."""
        proc = subprocess.run(["aa-exec", "-p", profile, "--", PROBE, op, path],
                              capture_output=True, text=True, timeout=60, check=False)
        msg = (proc.stdout + proc.stderr).strip()
        pid = msg.split("pid=", 1)[1].split()[0] if "pid=" in msg else ""
        self.step["probes"].append({"key": key, "profile": profile, "op": op, "path": path,
                                    "rc": proc.returncode, "output": msg, "pid": pid})
        return proc.returncode == 0


# ---------------------------------------------------------------- host facts

def qemu_pid(name: str = VM1) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())


def label(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/attr/current").read_text().strip()
    except OSError as exc:
        return f"<{exc.strerror}>"


def loaded_profiles() -> list[str]:
    return Path("/sys/kernel/security/apparmor/profiles").read_text().splitlines()


def pidof(exe: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.readlink(d / "exe") == exe:
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 180) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
    return round(time.monotonic() - t0, 2)


def virsh_ok() -> bool:
    return subprocess.run(["virsh", "-q", "version"], capture_output=True,
                          check=False).returncode == 0


def start_libvirtd(r: Recorder) -> None:
    r.run("libvirtd", "-d")
    r.fact("libvirtd_ready_s", wait_for("libvirtd", virsh_ok))
    r.fact("libvirtd_label", [label(p) for p in pidof("/usr/sbin/libvirtd")])


def stop_libvirtd(r: Recorder) -> None:
    pids = pidof("/usr/sbin/libvirtd")
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    wait_for("libvirtd to exit", lambda: not pidof("/usr/sbin/libvirtd"), 60)
    Path("/run/libvirtd.pid").unlink(missing_ok=True)


def start_vm(r: Recorder, name: str = VM1) -> None:
    """Start paused: the VM is confined from its first instruction, and a paused
    TCG guest inside a TCG guest costs no CPU."""
    r.run("virsh", "start", "--paused", name, timeout=300)
    pid = qemu_pid(name)
    r.fact("qemu_pid", pid)
    r.fact("qemu_label", label(pid))


def restart_vm(r: Recorder, name: str = VM1) -> None:
    r.run("virsh", "destroy", name)
    start_vm(r, name)


def stored_mode(r: Recorder) -> str:
    out = r.virt_aa("status", "--json").stdout
    data = json.loads(out)
    doms = data.get("domains", data) if isinstance(data, dict) else data
    for d in doms:
        if isinstance(d, dict) and (d.get("uuid") == UUID1 or d.get("name") == VM1):
            return str(d.get("mode"))
    return "?"


def read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        return f"<{exc.strerror}>"


# ---------------------------------------------------------------- steps

def step_boot(r: Recorder) -> None:
    """The kernel, AppArmor, the host's tools; the host's libvirt profiles loaded."""
    r.fact("kernel", os.uname().release)
    r.fact("apparmor_enabled", read("/sys/module/apparmor/parameters/enabled").strip())
    r.fact("lsm", read("/sys/kernel/security/lsm").strip())
    r.fact("parser", r.run("apparmor_parser", "--version").stdout.splitlines()[0])
    r.fact("libvirtd", r.run("libvirtd", "--version").stdout.strip())
    r.fact("qemu", r.run("qemu-system-x86_64", "--version").stdout.splitlines()[0])
    r.fact("virt_aa", r.virt_aa("--version").stdout.strip())
    r.fact("python", sys.version.split()[0])
    r.fact("virt_aa_path", VIRT_AA)
    t0 = time.monotonic()
    r.run("apparmor_parser", "-r", *HOST_PROFILES)
    r.fact("host_profiles_load_s", round(time.monotonic() - t0, 2))
    # libvirt as Debian ships it, with its AppArmor driver named explicitly;
    # nothing autostarted (no dnsmasq here; the host's own guests stay off)
    with open("/etc/libvirt/qemu.conf", "a") as f:
        f.write('\n# virt-aa realhost guest\nsecurity_driver = "apparmor"\n')
    for pattern in ("networks/autostart/*", "autostart/*"):
        for link in Path("/etc/libvirt/qemu").glob(pattern):
            link.unlink()
    # a known start: virt-aa not installed, nothing stored for the test VMs
    # (all in the guest's overlay: the host's files are untouched)
    r.fact("uninstall_first", r.virt_aa("uninstall").stdout)
    for pattern in ("etc/apparmor.d/libvirt/libvirt-7e571000-*",
                    "etc/apparmor.d/local/libvirt-7e571000-*", "etc/virt-aa/domains/7e571000-*",
                    "var/lib/virt-aa/history/7e571000-*"):
        for p in Path("/").glob(pattern):
            p.unlink()
    Path(EXTRA).mkdir(parents=True, exist_ok=True)
    for name in ("extra.bin", "complain.bin", "enforce.bin", "every-vm.bin"):
        Path(EXTRA, name).write_text("realhost canary\n")
    for name in (VM1, VM2):
        r.run("qemu-img", "create", "-q", "-f", "qcow2", f"{IMAGES}/{name}.qcow2", "16M")


def step_install(r: Recorder) -> None:
    """virt-aa install (hook mode), then the daemons, then the VMs."""
    r.fact("install", r.virt_aa("install").stdout)
    with open(AUDIT_HOOK, "a") as f:
        f.write("# realhost test: log that the hook ran under this profile\n"
                "audit /usr/sbin/virt-aa-hook r,\n")
    r.run("apparmor_parser", "-r", "/etc/apparmor.d/usr.sbin.virt-aa-hook")
    r.run("virtlogd", "-d")
    start_libvirtd(r)
    for name, uuid in ((VM1, UUID1), (VM2, UUID2)):
        xml = Path(f"/tmp/{name}.xml")
        xml.write_text(domain_xml(name, uuid))
        r.run("virsh", "define", str(xml))
    t0 = time.monotonic()
    start_vm(r)
    r.fact("vm_start_s", round(time.monotonic() - t0, 2))
    # the first start: no profile existed, the hook wrote it at `prepare`
    # (stock libvirt's helper then loaded it as-is)
    r.fact("profile_text", read(f"/etc/apparmor.d/libvirt/{PROFILE1}"))


def step_confined(r: Recorder) -> None:
    """1. The VM's QEMU runs as libvirt-<uuid> in the stored mode; what it may touch."""
    pid = qemu_pid()
    r.fact("qemu_pid", pid)
    r.fact("qemu_label", label(pid))
    r.fact("stored_mode", stored_mode(r))
    r.fact("profile_loaded", [p for p in loaded_profiles() if UUID1 in p])
    r.fact("vm2_running", subprocess.run(["virsh", "domstate", VM2], capture_output=True,
                                         text=True, check=False).stdout.strip())
    r.probe("own-disk-read", "r", f"{IMAGES}/{VM1}.qcow2")
    r.probe("own-disk-write", "o", f"{IMAGES}/{VM1}.qcow2")
    r.probe("other-disk-read", "r", f"{IMAGES}/{VM2}.qcow2")
    r.probe("other-disk-write", "o", f"{IMAGES}/{VM2}.qcow2")
    r.probe("shadow-read", "r", "/etc/shadow")


def step_live(r: Recorder) -> None:
    """2. allow / revoke on the running VM: effective at once, no restart."""
    path = f"{EXTRA}/extra.bin"
    r.fact("pid_before", qemu_pid())
    r.probe("before-allow", "r", path)
    r.virt_aa("allow", VM1, f"{path} r,", "--comment", "realhost live rule")
    r.probe("after-allow", "r", path)
    r.fact("rules_after_allow", r.virt_aa("rules", VM1).stdout)
    r.virt_aa("revoke", VM1, f"{path} r,")
    r.probe("after-revoke", "r", path)
    r.fact("pid_after", qemu_pid())
    r.fact("label_after", label(qemu_pid()))


def step_modes(r: Recorder) -> None:
    """3. complain logs ALLOWED, enforce DENIED; denials/suggest read them back."""
    r.virt_aa("complain", VM1)
    r.fact("label_complain", label(qemu_pid()))
    r.fact("stored_complain", stored_mode(r))
    r.probe("complain-read", "r", f"{EXTRA}/complain.bin")
    r.virt_aa("enforce", VM1)
    r.fact("label_enforce", label(qemu_pid()))
    r.fact("stored_enforce", stored_mode(r))
    r.probe("enforce-read", "r", f"{EXTRA}/enforce.bin")
    time.sleep(0.5)
    r.fact("denials", json.loads(r.virt_aa("denials", VM1, "--source", "dmesg",
                                           "--json").stdout))
    suggest = json.loads(r.virt_aa("suggest", VM1, "--source", "dmesg", "--json").stdout)
    r.fact("suggest", suggest)
    rule = pick_rule(suggest, f"{EXTRA}/enforce.bin")
    r.fact("suggested_rule", rule)
    if rule:
        r.virt_aa("allow", VM1, rule, "--comment", "from virt-aa suggest")
        r.probe("after-suggested-allow", "r", f"{EXTRA}/enforce.bin")


def step_hostwide(r: Recorder) -> None:
    """7. A rule for every VM (`allow --all-vms`): live in the running VM at once, and
    `revoke --all-vms` closes it again; nothing restarted."""
    path = f"{EXTRA}/every-vm.bin"
    rule = f"{path} r,"
    r.fact("pid_before", qemu_pid())
    r.probe("before-all-vms", "r", path)
    r.virt_aa("allow", "--all-vms", rule, "--comment", "realhost host-wide rule")
    r.probe("after-all-vms", "r", path)
    r.fact("rules_all_vms", r.virt_aa("rules", "--all-vms").stdout)
    r.virt_aa("revoke", "--all-vms", rule)
    r.probe("after-revoke-all-vms", "r", path)
    r.fact("pid_after", qemu_pid())


def pick_rule(suggest: Any, path: str) -> str | None:
    """The proposed rule text for ``path`` in suggest's JSON (searched, so the
    shape of the document may grow)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("rule", "exact"):
                val = node.get(key)
                if isinstance(val, str) and path in val and val not in found:
                    found.append(val)
            for val in node.values():
                walk(val)
        elif isinstance(node, list):
            for val in node:
                walk(val)

    walk(suggest)
    return found[0] if found else None


def step_restarts(r: Recorder) -> None:
    """4. A libvirtd restart, then the VM stopped and started again under the new
    daemon: the rules and the mode are kept and the profile is loaded again."""
    r.virt_aa("complain", VM1)
    pid = qemu_pid()
    r.fact("label_before", label(pid))
    stop_libvirtd(r)
    r.fact("profile_loaded_without_libvirtd", [p for p in loaded_profiles() if UUID1 in p])
    start_libvirtd(r)
    r.fact("qemu_kept", qemu_pid() == pid and Path(f"/proc/{pid}").exists())
    r.fact("label_after_libvirtd_restart", label(pid))
    r.run("virsh", "destroy", VM1)
    r.fact("profile_loaded_while_stopped", [p for p in loaded_profiles() if UUID1 in p])
    start_vm(r)
    r.fact("new_pid", qemu_pid() != pid)
    r.fact("label_after_both", label(qemu_pid()))
    r.fact("profile_loaded_after_both", [p for p in loaded_profiles() if UUID1 in p])
    # complain mode: a ruled access leaves no record, an unruled one an ALLOWED one
    r.probe("ruled-complain", "r", f"{EXTRA}/enforce.bin")
    r.probe("unruled-complain", "r", f"{EXTRA}/complain.bin")
    r.virt_aa("enforce", VM1)
    r.fact("label_enforce_again", label(qemu_pid()))
    r.probe("rule-kept-enforce", "r", f"{EXTRA}/enforce.bin")
    r.probe("unruled-enforce", "r", f"{EXTRA}/complain.bin")
    r.fact("local_rules", read(f"/etc/apparmor.d/local/{PROFILE1}"))


def step_helper(r: Recorder) -> None:
    """5. install --mode helper: libvirt runs our helper under its profile, and it
    writes the VM's profile from scratch with the stored rules and mode."""
    r.fact("uninstall_hook", r.virt_aa("uninstall").stdout)
    r.fact("hook_profile_after_uninstall",
           [p for p in loaded_profiles() if p.startswith("virt-aa-hook")])
    r.fact("install_helper", r.virt_aa("install", "--mode", "helper").stdout)
    with open(AUDIT_HELPER, "a") as f:
        f.write("# realhost test: log that the helper ran under this profile\n"
                "audit /usr/lib/libvirt/virt-aa-helper r,\n")
    r.run("apparmor_parser", "-r", "/etc/apparmor.d/usr.lib.libvirt.virt-aa-helper")
    r.fact("helper_head", read("/usr/lib/libvirt/virt-aa-helper")[:300])
    r.fact("diversion", r.run("dpkg-divert", "--list", "*virt-aa-helper*").stdout)
    r.run("virsh", "destroy", VM1)
    stop_libvirtd(r)       # the hook is gone: libvirtd looks for hooks at start
    # no profile left behind by hook mode: our helper must create it (-c)
    for suffix in ("", ".files"):
        Path(f"/etc/apparmor.d/libvirt/{PROFILE1}{suffix}").unlink(missing_ok=True)
    r.fact("profile_loaded_before_start", [p for p in loaded_profiles() if UUID1 in p])
    start_libvirtd(r)
    start_vm(r)
    r.fact("label_helper_mode", label(qemu_pid()))
    r.probe("rule-kept-helper-mode", "r", f"{EXTRA}/enforce.bin")
    r.probe("unruled-helper-mode", "r", f"{EXTRA}/complain.bin")
    r.probe("own-disk-write-helper-mode", "o", f"{IMAGES}/{VM1}.qcow2")
    r.probe("other-disk-read-helper-mode", "r", f"{IMAGES}/{VM2}.qcow2")
    r.fact("profile_text", read(f"/etc/apparmor.d/libvirt/{PROFILE1}"))


def step_uninstall(r: Recorder) -> None:
    """6. virt-aa uninstall: stock libvirt again, and the VM still starts."""
    r.fact("uninstall", r.virt_aa("uninstall").stdout)
    r.fact("helper_is_elf", Path("/usr/lib/libvirt/virt-aa-helper").read_bytes()[:4]
           == b"\x7fELF")
    r.fact("diversion", r.run("dpkg-divert", "--list", "*virt-aa-helper*").stdout)
    r.fact("hooks_left", sorted(str(p) for p in Path("/etc/libvirt/hooks").rglob("*")))
    # helper mode installed no hook: libvirtd runs the restored helper at once
    restart_vm(r)
    r.fact("label_stock", label(qemu_pid()))
    r.fact("vm_state", r.run("virsh", "domstate", VM1).stdout.strip())
    r.probe("own-disk-read-stock", "r", f"{IMAGES}/{VM1}.qcow2")
    r.probe("shadow-read-stock", "r", "/etc/shadow")
    r.fact("profile_text", read(f"/etc/apparmor.d/libvirt/{PROFILE1}"))
    r.fact("files_text", read(f"/etc/apparmor.d/libvirt/{PROFILE1}.files"))


def step_final(r: Recorder) -> None:
    """The state at the end: every loaded profile, the daemons' labels."""
    r.fact("loaded", loaded_profiles())
    r.fact("libvirtd_label", [label(p) for p in pidof("/usr/sbin/libvirtd")])


STEPS: list[tuple[str, Callable[[Recorder], None]]] = [
    ("0-boot", step_boot),
    ("0-install", step_install),
    ("1-confined", step_confined),
    ("2-live", step_live),
    ("3-modes", step_modes),
    ("4-restarts", step_restarts),
    ("7-hostwide", step_hostwide),      # while hook mode is installed
    ("5-helper", step_helper),
    ("6-uninstall", step_uninstall),
    ("final", step_final),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--only", help="comma-separated step ids (debugging)")
    args = ap.parse_args(argv)
    r = Recorder(args.out)
    r.results["started"] = uptime()
    only = set(args.only.split(",")) if args.only else None
    failed = 0
    for sid, fn in STEPS:
        if only and sid not in only:
            continue
        print(f"== step {sid}", flush=True)
        r.begin(sid)
        try:
            fn(r)
        except Exception as exc:   # recorded; later steps still run
            failed += 1
            print(f"step {sid} failed: {exc!r}", flush=True)
            r.end(f"{type(exc).__name__}: {exc}")
            continue
        r.end()
    r.results["finished"] = uptime()
    r.save()
    kmsg("virt-aa-realhost end")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
