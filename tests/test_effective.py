"""virt_aa.policy.effective: the file policy of a real P built by ``virt-aa-helper -c``
in a sandbox, the decisions for a VM's accesses, and a cross-check of those
decisions against the DFA the real parser compiles from the same P."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from test_aare import Dfa, compile_dump, mutations

from conftest import PROFILE, domain_xml, run_helper
from virt_aa.policy.aare import load_tunables
from virt_aa.policy.effective import (
    Decision,
    FileRule,
    ParseStats,
    decide,
    effective_rules,
    parse_perms,
    rules_from_text,
)
from virt_aa.policy.localrules import LocalRule, render_file

DEVICES = (
    "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
    "<source file='{top}'/>"
    "<backingStore type='file'><format type='raw'/><source file='{base}'/><backingStore/>"
    "</backingStore><target dev='vda' bus='virtio'/></disk>"
    "<filesystem type='mount' accessmode='passthrough'><source dir='{ro}'/>"
    "<target dir='ro'/><readonly/></filesystem>"
    "<filesystem type='mount' accessmode='mapped'><source dir='{rw}'/>"
    "<target dir='rw'/></filesystem>"
)

LOCAL_RULES = [
    LocalRule('"/srv/a\\*b" r,', {"id": "esc00001", "by": "test", "comment": "literal star"}),
    LocalRule("/srv/data/** rwk,", {"id": "data0001"}),
    LocalRule("deny /srv/data/secret w,", {"id": "deny0001"}),
    LocalRule("owner /srv/mine/* rw,", {"id": "own00001"}),
]


class VM:
    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.top = tmp / "images" / "top.qcow2"
        self.base = tmp / "images" / "base.raw"
        self.ro = tmp / "share ro"
        self.rw = tmp / "share-rw"
        self.profile = root / "etc/apparmor.d/libvirt" / PROFILE
        self.files = root / "etc/apparmor.d/libvirt" / (PROFILE + ".files")
        self.local = root / "etc/apparmor.d/local" / PROFILE
        self.search = [str(root / "etc/apparmor.d"), "/etc/apparmor.d"]
        self.stats = ParseStats()
        self.rules: list[FileRule] = []

    def decide(self, path: Path | str, perms: str, owner: bool = True) -> Decision:
        return decide(self.rules, str(path), perms, owner)


@pytest.fixture
def vm(sandbox: Path, tmp_path: Path) -> VM:
    v = VM(sandbox, tmp_path)
    v.top.parent.mkdir()
    v.top.write_bytes(b"")
    v.base.write_bytes(b"")
    (v.ro / "sub").mkdir(parents=True)
    (v.rw / "sub").mkdir(parents=True)
    xml = domain_xml(DEVICES.format(top=v.top, base=v.base, ro=v.ro, rw=v.rw))
    proc = run_helper(["-c", "-u", PROFILE], xml, root=str(sandbox))
    assert proc.returncode == 0, proc.stderr
    v.local.write_text(render_file("t", PROFILE[len("libvirt-"):], LOCAL_RULES))
    v.rules = effective_rules(str(v.profile), v.search, v.stats)
    return v


# ----------------------------------------------------------------------------- decisions


def test_policy_is_read_completely(vm: VM) -> None:
    """Every rule of P's includes is understood; the three sources all contribute."""
    assert vm.stats.not_understood == [] and vm.stats.missing_includes == []
    assert vm.stats.non_file > 20          # capability, network, signal, ptrace, unix...
    kinds = {r.source.split(" ")[0] for r in vm.rules}
    assert {"generated:", "per-VM"} <= kinds
    assert any(r.source.startswith("/etc/apparmor.d/abstractions/libvirt-qemu:")
               for r in vm.rules)
    assert all(r.pattern is not None for r in vm.rules)


def test_disk_read_write_lock(vm: VM) -> None:
    d = vm.decide(vm.top, "rwk")
    assert d.allowed and d.perms_missing == ""
    assert [r.source.split(":")[0] for r in d.allow_rules] == ["generated"]
    assert vm.decide(vm.top, "rwk", owner=False).allowed


def test_backing_file_write_denied_by_deny_rule(vm: VM) -> None:
    assert vm.decide(vm.base, "rk").allowed
    d = vm.decide(vm.base, "w")
    assert not d.allowed and d.perms_missing == "w" and d.perms_denied == "w"
    assert len(d.deny_rules) == 1 and d.deny_rules[0].deny
    assert d.deny_rules[0].source.startswith(f"generated: {vm.files}:")
    assert d.deny_rules[0].path == str(vm.base)
    # append is refused by the same rule: in AppArmor "w" covers append
    assert vm.decide(vm.base, "a").perms_denied == "a"


def test_shares_follow_their_mode(vm: VM) -> None:
    # read-only share: contents and the directory itself readable, nothing writable
    assert vm.decide(vm.ro / "sub" / "file", "r").allowed
    assert vm.decide(f"{vm.ro}/", "r").allowed
    ro_write = vm.decide(vm.ro / "file", "w")
    assert not ro_write.allowed and ro_write.deny_rules == []   # simply not granted
    # read-write share: rwl below it, still no lock, and the tree itself only readable
    for path in (vm.rw / "file", vm.rw / "sub" / "deep" / "x"):
        d = vm.decide(path, "rwl")
        assert d.allowed, d.explain()
        assert d.allow_rules[0].source.startswith("generated: ")
    assert not vm.decide(vm.rw / "file", "k").allowed
    assert vm.decide(f"{vm.rw}/", "r").allowed
    assert not vm.decide(f"{vm.rw}/", "w").allowed
    # a sibling whose name only starts like the share is not in it
    assert not vm.decide(f"{vm.rw}x/file", "r").allowed


def test_etc_shadow_is_not_allowed(vm: VM) -> None:
    d = vm.decide("/etc/shadow", "r")
    assert not d.allowed and d.allow_rules == [] and d.perms_missing == "r"


def test_abstraction_rule_is_named(vm: VM) -> None:
    d = vm.decide("/dev/kvm", "rw")
    assert d.allowed
    (rule,) = d.allow_rules
    path, _, line = rule.source.rpartition(":")
    assert path == "/etc/apparmor.d/abstractions/libvirt-qemu"
    assert Path(path).read_text().split("\n")[int(line) - 1].strip() == "/dev/kvm rw,"
    assert "/dev/kvm rw," in d.explain()


def test_variables_from_tunables_apply(vm: VM) -> None:
    """P includes tunables/global: @{PROC}, @{pid}, @{HOME} expand as the parser does."""
    assert vm.decide("/proc/4711/cmdline", "r").allowed
    assert not vm.decide("/proc/self/cmdline", "r").allowed
    assert vm.decide("/home/alice/.pulse-cookie", "rwk").allowed
    assert not vm.decide("/home/alice/x/.pulse-cookie", "r").allowed
    assert vm.decide("/usr/lib/x86_64-linux-gnu/qemu/block-curl.so", "mr").allowed


def test_escaped_glob_name_is_literal(vm: VM) -> None:
    d = vm.decide("/srv/a*b", "r")
    assert d.allowed and d.allow_rules[0].source.startswith("per-VM [esc00001] ")
    for other in ("/srv/axb", "/srv/ab", "/srv/a/b", "/srv/a\\*b", "/srv/a*bc"):
        assert not vm.decide(other, "r").allowed, other


def test_per_vm_deny_wins(vm: VM) -> None:
    assert vm.decide("/srv/data/x/y", "rwk").allowed
    d = vm.decide("/srv/data/secret", "rw")
    assert not d.allowed and d.perms_missing == "w" and d.perms_denied == "w"
    assert [r.source.split(" ")[1] for r in d.deny_rules] == ["[deny0001]"]
    assert [r.source.split(" ")[1] for r in d.allow_rules] == ["[data0001]"]
    assert vm.decide("/srv/data/secret", "rk").allowed


def test_owner_rules_need_ownership(vm: VM) -> None:
    assert vm.decide("/srv/mine/f", "rw").allowed
    assert not vm.decide("/srv/mine/f", "rw", owner=False).allowed
    # the abstraction's "owner @{PROC}/@{pid}/task/@{tid}/comm rw"
    assert vm.decide("/proc/1/task/2/comm", "w").allowed
    assert not vm.decide("/proc/1/task/2/comm", "w", owner=False).allowed


def test_exec_modes_count_as_x(vm: VM) -> None:
    for perms in ("x", "ix", "px", "rmix"):
        assert vm.decide("/usr/bin/qemu-system-x86_64", perms).allowed, perms
    assert not vm.decide("/usr/bin/qemu-system-x86_64", "w").allowed
    assert not vm.decide("/usr/bin/ls", "x").allowed
    # "ix" implies "m", as in the parser
    assert vm.decide("/bin/dash", "m").allowed


def test_audit_deny_from_abstraction(vm: VM) -> None:
    d = vm.decide("/run/qemu/v1/block.so", "mrw")
    assert d.perms_missing == "w" and d.deny_rules[0].audit and d.deny_rules[0].deny


# ----------------------------------------------------------------------------- the parser's view

SAMPLE = ["/etc/shadow", "/etc/passwd", "/etc/ld.so.cache", "/dev/kvm", "/dev/net/tun",
          "/dev/null", "/dev/snd/pcmC0D0p", "/dev/shm/lttng-ust-wait-5", "/dev/shm/spice.1",
          "/proc/1/status", "/proc/123/cmdline", "/proc/self/cmdline", "/proc/1/task/2/comm",
          "/proc/sys/kernel/cap_last_cap", "/home/u/.pulse-cookie", "/root/.pulse/x",
          "/root/.pulse-cookie", "/usr/lib/x86_64-linux-gnu/qemu/a.so", "/run/qemu/v/x.so",
          "/var/run/qemu/v/x.so", "/usr/bin/qemu-system-x86_64", "/usr/bin/kvm", "/bin/dash",
          "/usr/share/qemu/bios.bin", "/usr/share/OVMF/OVMF_CODE.fd", "/tmp/", "/tmp/a/",
          "/tmp/a", "/var/tmp/b/c/", "/var/lib/libvirt/qemu/nvram/x_VARS.fd",
          "/etc/pki/libvirt-vnc/ca.pem", "/sys/devices/pci0000:00/usb1/1-1/x",
          "/sys/bus/nd/devices/", "/sys/bus/nd/devices/a/b/", "/run/udev/data/c166:0",
          "/srv/a*b", "/srv/axb", "/srv/data/secret", "/srv/data/f", "/srv/mine/f",
          "/var/log/libvirt/qemu/t.log", "/run/libvirt/qemu/t.pid", "/usr/lib/locale/C/x",
          "/", "/usr/share/zoneinfo/UTC", "/etc/libnl-3/classid", "/etc/libnl/classid"]
LETTERS = {"r": 0x4, "w": 0x2, "a": 0x8, "k": 0x20, "l": 0x10, "m": 0x40, "x": 0x1}


def compare(rules: list[FileRule], dfa: Dfa, paths: set[bytes],
            rng: random.Random, walks: int = 400) -> tuple[int, int, int, list[object]]:
    """Add random walks of ``dfa`` (and mutations) to ``paths``; for each
    path, owner or not, and each of r w a k l m x, compare the verdicts.

    Allowed must agree exactly.  The DFA's deny mask is compared where a deny
    rule is what refuses the access (an allow rule grants it): elsewhere the
    parser treats deny bits as don't-care and minimisation may add or drop
    them.  A deny of ``l`` lives in the link pair rule, not in the path's own
    state, so ``l`` under a deny rule is left out.
    Returns (checks, parser allowances, deny-wins cases, disagreements)."""
    sampled = list(dfa.sample(rng, tries=walks))
    paths = set(paths) | set(sampled)
    for w in sampled[:walks // 4]:
        paths.update(mutations(w, rng))
    checked = allowed_seen = denied_seen = 0
    problems: list[object] = []
    for raw in sorted(paths):
        # NUL separates the two halves of a link pair in the DFA: not a path
        if not raw.startswith(b"/") or b"\0" in raw:
            continue
        path = raw.decode("utf-8", "surrogateescape")
        allow, deny, _audit, _quiet = dfa.masks(raw)
        for owner, shift in ((True, 0), (False, 14)):
            ours = decide(rules, path, "".join(LETTERS), owner)
            granted = 0
            for rule in ours.allow_rules:
                granted |= rule.bits
            for letter, bit in LETTERS.items():
                denied = letter in ours.perms_denied
                if letter == "l" and denied:
                    continue
                theirs_allowed = bool((allow >> shift) & bit)
                if (letter not in ours.perms_missing) != theirs_allowed:
                    problems.append((path, owner, letter, "allowed", theirs_allowed))
                if denied and granted & bit:
                    denied_seen += 1
                    if not (deny >> shift) & bit:
                        problems.append((path, owner, letter, "deny bit missing"))
                checked += 1
                allowed_seen += theirs_allowed
    return checked, allowed_seen, denied_seen, problems


def test_decisions_agree_with_the_parser(vm: VM) -> None:
    """Compile the same P with apparmor_parser and compare, for paths from a
    fixed list, from the VM's devices and from random walks of P's own DFA
    (plus one-byte mutations), which of r w a k l m x each side allows and
    denies, for the owner of the file and for anyone else."""
    dfa = compile_dump(str(vm.profile), tuple(vm.search))
    paths = {p.encode() for p in SAMPLE}
    for p in (vm.top, vm.base, vm.ro / "f", vm.rw / "sub" / "f"):
        paths.add(str(p).encode())
    paths |= {f"{vm.ro}/".encode(), f"{vm.rw}/".encode(), f"{vm.rw}x/f".encode()}
    checked, allowed_seen, denied_seen, problems = compare(vm.rules, dfa, paths,
                                                          random.Random(1))
    assert not problems, problems[:10]
    assert checked > 3000 and allowed_seen > 300 and denied_seen >= 4


# the profile and which DFA of its dump is the file DFA (an attachment's comes first)
SYSTEM_PROFILES = [("lsb_release", 0), ("usr.lib.libvirt.virt-aa-helper", 1)]


@pytest.mark.parametrize(("name", "which"), SYSTEM_PROFILES)
def test_system_profiles_agree_with_the_parser(name: str, which: int) -> None:
    """The same comparison on the host's own profiles: other abstractions,
    exec rules, owner rules, an attachment."""
    path = f"/etc/apparmor.d/{name}"
    stats = ParseStats()
    rules = effective_rules(path, ["/etc/apparmor.d"], stats)
    assert stats.not_understood == [] and stats.missing_includes == []
    dfa = compile_dump(path, ("/etc/apparmor.d",), which)
    checked, allowed_seen, _, problems = compare(rules, dfa, set(), random.Random(2), 1200)
    assert not problems, problems[:10]
    assert checked > 10000 and allowed_seen > 1000


SYNTHETIC = """\
include <tunables/global>
@{D}=/data1 /data2/
profile synthetic {
  /a/** rw,
  deny /a/b a,
  deny /a/c w,
  audit deny /a/d/** r,
  owner /a/e/* k,
  deny owner /a/f l,
  file /b/{x,y}/* rk,
  r /c/[0-9]*,
  allow /c/*/z w,
  "/d/with space/*" rw,
  /e/tool Px -> other,
  /e/inherit rix,
  /e/child cx -> child,
  /e/{usr/,}bin/* mr,
  @{D}/** rwl,
  owner @{HOME}/.cache/** rwk,
  deny @{PROC}/@{pid}/mem rw,
  @{PROC}/@{pid}/** r,
  /f/\\*literal r,
  /g/?/ r,
  /h/ r,
  /h/** w,
}
"""


def test_synthetic_profile_agrees_with_the_parser(tmp_path: Path) -> None:
    """Qualifiers, exec modes, deny of append or write only, owner-only deny,
    variables: the parser and decide() agree on every sampled path."""
    profile = tmp_path / "synthetic"
    profile.write_text(SYNTHETIC)
    stats = ParseStats()
    rules = effective_rules(str(profile), ["/etc/apparmor.d"], stats)
    assert len(rules) == 22 and stats.not_understood == [] and stats.missing_includes == []
    dfa = compile_dump(str(profile), ("/etc/apparmor.d",))
    extra = {b"/a/b", b"/a/c", b"/a/d/x", b"/a/e/f", b"/a/f", b"/b/x/1", b"/c/12", b"/c/1/z",
             b"/d/with space/f", b"/e/tool", b"/e/inherit", b"/e/usr/bin/ls", b"/data1/x",
             b"/data2/y/z", b"/home/u/.cache/f", b"/proc/1/mem", b"/proc/1/maps",
             b"/f/*literal", b"/f/xliteral", b"/g/a/", b"/g//", b"/h/", b"/h/x"}
    checked, allowed_seen, denied_seen, problems = compare(rules, dfa, extra,
                                                          random.Random(3), 1200)
    assert not problems, problems[:10]
    assert checked > 10000 and allowed_seen > 1000 and denied_seen >= 10


# ----------------------------------------------------------------------------- rule syntax


def test_rule_forms(tmp_path: Path) -> None:
    (tmp_path / "abstractions").mkdir()
    (tmp_path / "abstractions" / "inc").write_text("/inc/file r,\n")
    (tmp_path / "tunables").mkdir()
    (tmp_path / "tunables" / "vars").write_text("@{D}=/data1 /data2\n")
    text = """\
#include <tunables/vars>
profile p flags=(attach_disconnected) {
  #include <abstractions/inc>
  include if exists <abstractions/missing>
  include <abstractions/also-missing>
  # include <abstractions/inc>
  /plain/path rw,
  file /with/keyword r,
  r /perms/first,
  audit deny owner /qualified w,
  allow /allowed k,
  "/quoted path/x" r,   # trailing comment
  /usr/bin/tool Px -> other_profile,
  /usr/bin/tool2 cix->child,
  @{D}/** r,
  /alt/{a,b}/c r,
  /hash#in/path r,#comment
  capability sys_admin,
  network inet stream,
  unix (send, receive) type=stream addr=none peer=(label=libvirtd),
  dbus send
       bus=system
       path=/org/freedesktop/DBus
       member=Hello,
  signal (receive) peer=unconfined,
  /bad/perms rwz,
  this is nonsense,
  profile child {
    /child/only r,
  }
  ^hat {
    /hat/only r,
  }
  /after/children r,
}
"""
    stats = ParseStats()
    variables: dict[str, list[str]] = {}
    rules = rules_from_text(text, "P", [str(tmp_path)], variables, stats)
    got = {r.path: r for r in rules}
    assert list(got) == ["/inc/file", "/plain/path", "/with/keyword", "/perms/first",
                         "/qualified", "/allowed", "/quoted path/x", "/usr/bin/tool",
                         "/usr/bin/tool2", "@{D}/**", "/alt/{a,b}/c", "/hash#in/path",
                         "/after/children"]
    assert got["/inc/file"].source == f"{tmp_path}/abstractions/inc:1"
    assert got["/plain/path"].source == "P:7" and got["/plain/path"].perms == {"r", "w"}
    q = got["/qualified"]
    assert q.deny and q.owner and q.audit and q.perms == {"w"}
    assert not got["/allowed"].deny
    assert got["/usr/bin/tool"].exec_mode == "Px" and got["/usr/bin/tool"].target == \
        "other_profile"
    assert got["/usr/bin/tool2"].exec_mode == "cix" and got["/usr/bin/tool2"].target == "child"
    assert variables == {"D": ["/data1", "/data2"]}
    assert decide(rules, "/data2/x", "r").allowed and not decide(rules, "/data3/x", "r").allowed
    assert decide(rules, "/quoted path/x", "r").allowed
    assert decide(rules, "/alt/b/c", "r").allowed
    assert [r.path for r in rules].count("/inc/file") == 1
    assert not decide(rules, "/child/only", "r").allowed
    assert not decide(rules, "/hat/only", "r").allowed
    assert stats.non_file == 5 and stats.child_blocks == 2
    assert [s.split(": ", 1)[1] for s in stats.not_understood] == \
        ["/bad/perms rwz,", "this is nonsense,"]
    assert stats.missing_includes == ["P:5: include <abstractions/also-missing>"]


def test_abstraction_text_with_tunables() -> None:
    """rules_from_text on an abstraction, with the system's tunables."""
    text = Path("/etc/apparmor.d/abstractions/libvirt-qemu").read_text()
    stats = ParseStats()
    rules = rules_from_text(text, "/etc/apparmor.d/abstractions/libvirt-qemu",
                            "/etc/apparmor.d", load_tunables(), stats)
    assert stats.not_understood == [] and stats.missing_includes == []
    d = decide(rules, "/dev/vfio/vfio", "rw")
    assert d.allowed and d.allow_rules[0].source.endswith("libvirt-qemu:" + str(
        text.split("\n").index("  /dev/vfio/vfio rw,") + 1))
    assert not decide(rules, "/dev/shm/lttng-ust-wait-1", "r").allowed


def test_parse_perms() -> None:
    assert parse_perms("rwk") == (frozenset("rwk"), None)
    assert parse_perms("rmpix") == (frozenset("rmx"), "pix")
    assert parse_perms("PUx") == (frozenset("x"), "PUx")
    assert parse_perms("mrixwlk") == (frozenset("mrxwlk"), "ix")
    for bad in ("", "rwz", "ixix", "i", "rwp", "/x"):
        assert parse_perms(bad) is None, bad


def test_decide_semantics() -> None:
    rules = [FileRule("/a/**", "rw"), FileRule("/a/b", "a", deny=True),
             FileRule("/a/c", "w", deny=True), FileRule("/o", "r", owner=True),
             FileRule("/e", "ix")]
    assert decide(rules, "/a/x", "rwa").allowed               # w includes append
    d = decide(rules, "/a/b", "w")
    assert d.allowed and d.deny_rules == []                   # deny a leaves w
    assert decide(rules, "/a/b", "a").perms_denied == "a"
    assert decide(rules, "/a/c", "a").perms_denied == "a"     # deny w takes append too
    assert not decide(rules, "/o", "r", owner=False).allowed
    assert decide(rules, "/e", "m").allowed                   # ix implies m
    assert not decide(rules, "/nowhere", "r").allowed
    with pytest.raises(ValueError):
        decide(rules, "/a/x", "rq")
    broken = FileRule("/a/{", "r")
    assert not broken.matches("/a/{") and broken.error


def test_broken_pattern_is_reported(tmp_path: Path) -> None:
    profile = tmp_path / "p"
    profile.write_text("profile p {\n  @{NOPE}/x r,\n  /ok r,\n}\n")
    stats = ParseStats()
    rules = effective_rules(str(profile), [str(tmp_path)], stats)
    assert [r.path for r in rules] == ["@{NOPE}/x", "/ok"]
    assert len(stats.not_understood) == 1 and "@{NOPE}" in stats.not_understood[0]
    assert not decide(rules, "/x", "r").allowed and decide(rules, "/ok", "r").allowed
