"""virt_aa.denials: the log parser and the file scanner.

* recall on `tests/tools/gendenials.py` output in all 7 formats against its --truth file
  (counts printed beside LibAppArmor 3.0.8's on the same input),
* differential test against LibAppArmor.parse_record where it understands a
  record,
* the 27 real samples,
* hostile input (size, bytes, forged profile text),
* group_file: same groups as the line-by-line path, with 1 and 2 workers.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import DENIAL_SAMPLES, GENDENIALS
from virt_aa.denials import parse as P
from virt_aa.denials.parse import iter_records, notices, parse_line
from virt_aa.denials.scan import group_file, group_lines

GEN = GENDENIALS
SAMPLES = DENIAL_SAMPLES
FORMATS = ["audit", "kern", "syslog", "dmesg", "dmesg-T", "journal-short", "journal-json"]
LINES = 20000
SEED = 11

# truth key -> how to read it from a Record
TRUTH_FIELDS = ["profile", "name", "operation", "requested_mask", "denied_mask", "comm", "pid",
                "family", "sock_type", "protocol", "addr", "peer_addr", "peer", "signal",
                "capname", "capability", "info", "target", "bus", "path", "interface", "member",
                "mask", "fsuid", "ouid"]


def ours(rec: P.Record, key: str) -> Any:
    if key == "profile":
        return rec.profile
    if key == "requested_mask":
        return rec.requested
    if key == "denied_mask":
        return rec.denied
    if key == "pid":
        return rec.pid
    return rec.fields.get(key)


def read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        return f.readlines()


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("denials")
    procs = [subprocess.Popen([sys.executable, str(GEN), "--format", fmt, "--lines", str(LINES),
                               "--seed", str(SEED), "-o", str(d / (fmt + ".log")),
                               "--truth", str(d / (fmt + ".truth"))]) for fmt in FORMATS]
    for p in procs:
        assert p.wait() == 0
    return d


def truth_of(d: Path, fmt: str) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    with open(d / (fmt + ".truth"), encoding="utf-8") as f:
        for line in f:
            t = json.loads(line)
            out.setdefault(t["line"], []).append(t)
    return out


def libapparmor_count(lines: list[str], fmt: str) -> tuple[int, int] | None:
    """(records parse_record returns, lines offered) the way aa-logprof's reader offers them."""
    try:
        import LibAppArmor
    except ImportError:
        return None
    n = offered = 0
    for line in lines:
        if fmt == "journal-json":
            try:
                msg = json.loads(line).get("MESSAGE")
            except ValueError:
                continue
            if not isinstance(msg, str):
                continue
            line = msg
        if "apparmor=" not in line:
            continue
        offered += 1
        r = LibAppArmor.parse_record(line)
        if r.event not in (0, 1):       # INVALID, ERROR
            n += 1
        LibAppArmor.free_record(r)
    return n, offered


# ---------------------------------------------------------------- recall against the truth


def cut(r: P.Record) -> set[str]:
    """The record's split/truncated flags (year_guessed says something else)."""
    return set(r.flags) & {"split", "truncated"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_recall_against_truth(gen_dir: Path, fmt: str) -> None:
    truth = truth_of(gen_dir, fmt)
    lines = read_lines(gen_dir / (fmt + ".log"))
    recs = list(iter_records(lines))
    byline: dict[int | None, list[P.Record]] = {}
    for r in recs:
        byline.setdefault(r.lineno, []).append(r)
    c: Counter[str] = Counter()
    problems: list[str] = []
    for lineno, ts in truth.items():
        got = byline.get(lineno, [])
        for t in ts:
            complete = bool(t.get("complete"))
            c["truth_complete" if complete else "truth_incomplete"] += 1
            if not got:
                problems.append(f"line {lineno}: no record")
                continue
            r = got[0]
            want_flags = {k for k in ("split", "truncated") if t.get(k)}
            src = "dbus" if t["source"].startswith("dbus") else t["source"]
            if complete:
                bad = [k for k in TRUTH_FIELDS if k in t and str(ours(r, k)) != str(t[k])]
                if r.mode != t["apparmor"]:
                    bad.append("mode")
                if r.source != src:
                    bad.append("source")
                if cut(r):
                    bad.append("flags")
                if r.event_id is not None and r.event_id != t["event_id"]:
                    bad.append("event_id")
                if r.event_id is None and src == "kernel":
                    bad.append("no event_id")
                if bad:
                    problems.append(f"line {lineno}: {bad} differ")
                else:
                    c["complete_exact"] += 1
                continue
            # split / truncated: what is there must be right, and it must be flagged
            wrong = []
            for k in TRUTH_FIELDS:
                v = ours(r, k)
                if k in t and v is not None and str(v) != str(t[k]) \
                        and not str(t[k]).startswith(str(v)):
                    wrong.append(k)
            if r.mode not in (t["apparmor"], "UNKNOWN"):
                wrong.append("mode")
            if r.event_id is not None and r.event_id != t["event_id"]:
                wrong.append("event_id")
            if wrong:
                problems.append(f"line {lineno} ({sorted(want_flags)}): wrong {wrong}")
            if not cut(r):
                problems.append(f"line {lineno}: cut record not flagged")
            c["incomplete_flagged"] += bool(cut(r))
            c["incomplete_flags_as_truth"] += cut(r) == want_flags
            full = all(str(ours(r, k)) == str(t[k]) for k in TRUTH_FIELDS if k in t)
            c["incomplete_fully_recovered"] += full and r.mode == t["apparmor"]
    extra = [ln for ln in byline if ln not in truth]
    la = libapparmor_count(lines, fmt)
    n_truth = sum(map(len, truth.values()))
    la_txt = f"{la[0]} of {la[1]} lines" if la else "n/a"
    print(f"\n{fmt:13s} truth {n_truth:5d} (complete {c['truth_complete']:5d}, split/truncated "
          f"{c['truth_incomplete']:3d}) | ours {len(recs):5d}, complete exact "
          f"{c['complete_exact']:5d}, cut flagged {c['incomplete_flagged']:3d} (flags as truth "
          f"{c['incomplete_flags_as_truth']:3d}, fully recovered "
          f"{c['incomplete_fully_recovered']:3d}) | LibAppArmor {la_txt}")
    assert not extra, f"records where the truth has none: lines {extra[:5]}"
    assert not problems, f"{len(problems)} problems, first: {problems[:8]}"
    assert len(recs) == n_truth


def test_harder_mix(tmp_path: Path) -> None:
    """20 % of kernel records split, BSD time, node= prefix, newer spelling only."""
    for fmt in ("audit", "kern", "journal-short"):
        log, tr = tmp_path / (fmt + ".log"), tmp_path / (fmt + ".truth")
        subprocess.run([sys.executable, str(GEN), "--format", fmt, "--lines", "8000", "--seed",
                        "3", "--split-share", "0.2", "--ratelimit-share", "0.2", "--time-style",
                        "bsd", "--node-prefix", "--class-share", "1", "-o", str(log),
                        "--truth", str(tr)], check=True)
        truth = truth_of(tmp_path, fmt)
        recs = {r.lineno: r for r in iter_records(read_lines(log))}
        c: Counter[str] = Counter()
        for lineno, ts in truth.items():
            t = ts[0]
            r = recs.get(lineno)
            assert r is not None, (fmt, lineno)
            if t.get("complete"):
                assert (r.mode, r.profile, r.name, r.denied, cut(r)) == (
                    t["apparmor"], t["profile"], t.get("name", r.name),
                    t.get("denied_mask", r.denied), set()), (fmt, lineno)
                if fmt == "audit":
                    assert r.event_id == t["event_id"]
                    assert r.node == "kvmhost01"      # auditd prefixes every record
            else:
                c["cut"] += 1
                c["flagged"] += bool(cut(r))
        print(f"\n{fmt}: {c['cut']} cut records, {c['flagged']} flagged")
        # a record cut exactly between two fields that are both optional cannot be told
        assert c["flagged"] >= c["cut"] * 0.98


# ---------------------------------------------------------------- LibAppArmor differential

EV = {2: "AUDIT", 3: "ALLOWED", 4: "DENIED", 5: "HINT", 6: "STATUS"}


def _proto(v: str) -> str:
    """LibAppArmor names protocols; the kernel prints numbers."""
    if v.isdigit():
        return v
    if v == "icmpv6":                   # /etc/protocols calls it ipv6-icmp
        return "58"
    if v.startswith("unknown(") and v.endswith(")"):
        return v[8:-1]
    try:
        return str(socket.getprotobyname(v))
    except OSError:
        return v


def test_differential_libapparmor(gen_dir: Path) -> None:
    LibAppArmor = pytest.importorskip("LibAppArmor")
    c: Counter[str] = Counter()
    diffs: list[tuple[str, str, Any, Any, str]] = []
    for fmt in FORMATS:
        for line in read_lines(gen_dir / (fmt + ".log")):
            msg = line
            if fmt == "journal-json":
                m = json.loads(line).get("MESSAGE")
                if not isinstance(m, str):
                    continue
                msg = m
            if "apparmor=" not in msg:
                continue
            r = LibAppArmor.parse_record(msg)
            try:
                if r.event not in EV:
                    continue
                c["understood"] += 1
                o = parse_line(line)
                assert o is not None, line
                la = {"mode": EV[r.event], "operation": r.operation, "profile": r.profile,
                      "name": r.name, "requested": r.requested_mask, "denied": r.denied_mask,
                      "pid": r.pid or None, "comm": r.comm, "event_id": r.audit_id or None,
                      "info": r.info, "family": r.net_family, "sock_type": r.net_sock_type,
                      "protocol": r.net_protocol, "peer": r.peer, "signal": r.signal,
                      "target": r.name2, "fsuid": r.fsuid, "ouid": r.ouid}
                f = o.fields
                mine = {"mode": o.mode, "operation": o.operation, "profile": o.profile,
                        "name": o.name, "requested": o.requested, "denied": o.denied,
                        "pid": o.pid, "comm": o.comm, "event_id": o.event_id}
                for k in ("info", "family", "sock_type", "protocol", "peer", "signal",
                          "target", "fsuid", "ouid"):
                    mine[k] = f.get(k)
                # representation differences, not disagreements:
                if o.operation == "capable":
                    mine["name"] = f.get("capname")         # LibAppArmor puts capname in name
                for k in ("fsuid", "ouid"):
                    if la[k] in (-1, 2 ** 64 - 1):
                        la[k] = None                        # LibAppArmor: -1 for "absent"
                if la["protocol"] is not None:
                    la["protocol"] = _proto(str(la["protocol"]))
                if o.source == "dbus":
                    la["requested"] = la["denied"] = o.requested   # ours mirror mask=
                for k, v in la.items():
                    w = mine[k]
                    if (v in (None, "", 0) and w is None) or str(v) == str(w):
                        continue
                    if k == "name" and isinstance(w, str) and "\\" in w \
                            and v == w.replace("\\", ""):
                        c["libapparmor_drops_backslashes"] += 1     # its bug, see below
                        continue
                    diffs.append((fmt, k, v, w, line[:160]))
            finally:
                LibAppArmor.free_record(r)
    print(f"\nLibAppArmor understood {c['understood']} records; fields equal in all but "
          f"{len(diffs)}; LibAppArmor strips backslashes from quoted names (systemd's \\x2d "
          f"in cgroup paths) in {c['libapparmor_drops_backslashes']}")
    assert c["understood"] > 10000
    assert not diffs, diffs[:5]


# ---------------------------------------------------------------- real samples


def sample_blocks() -> list[tuple[str, list[str]]]:
    blocks: list[tuple[str, list[str]]] = []
    with open(SAMPLES, encoding="utf-8", errors="surrogateescape") as f:
        for line in f.read().split("\n"):
            if line.startswith("# source:"):
                blocks.append((line[10:], []))
            elif line.startswith("#") or not line.strip():
                continue
            elif blocks:
                blocks[-1][1].append(line)
    return blocks


U40 = "libvirt-040adaf0-83ad-4568-977a-d78a11204cad"
U18 = "libvirt-18e61047-83d5-4d0e-b98e-d9b3e8cb9cf4"
DBUS = "/tmp/apparmor-2.8.0/tests/regression/apparmor/dbus_service"

# per sample: list of records, each a dict of what must hold ("flags" as a set)
EXPECT: list[list[dict[str, Any]]] = [
    [dict(source="kernel", mode="DENIED", operation="open", profile=U40,
          name="/sys/devices/pci0000:00/0000:00:02.0/virtio0/host2/target2:0:2/2:0:2:0/block"
               "/sda/queue/max_segments", requested="r", denied="r",
          event_id="1512578443.620:30", pid=1321, flags=set())],
    [dict(mode="DENIED", operation="open", profile="libvirt-1c01664c-8f99-4942-85c9-2c0c90b2e92b",
          name="/run/shm/lttng-ust-wait-5", event_id="1438180376.667:12391", pid=1104,
          requested="r", denied="r", flags={"split"})],                       # wrapped, glued
    [dict(mode="STATUS", operation="profile_replace", profile="unconfined", name=U18)],
    [dict(mode="DENIED", operation="exec", profile=U18, name="/usr/local/bin/qemu-system-x86_64",
          comm="libvirtd", requested="x")],
    [dict(mode="STATUS", operation="profile_remove", profile="unconfined", name=U18)],
    [dict(source="audit", mode="DENIED", profile="libvirt-15de3735-d0a2-482b-95ce-42ab775ceaa7",
          name="/proc/sys/dev/i915/perf_stream_paranoid", pid=14630, event_id=None)],
    [dict(mode="STATUS", operation="profile_load", event_id="1471289779.791:72",
          name="libvirt-2afa1131-bc8c-43d2-9c4a-962c1bf7723e")],
    [dict(mode="ALLOWED", operation="exec", profile="libvirtd",
          f_target="libvirtd//null-/usr/libexec/qemu-kvm", comm="rpc-worker")],
    [dict(source="audit", operation="capable", f_capname="net_admin", f_capability="12")],
    [dict(source="audit", comm="Thread (pooled)", name="/etc/ssh/ssh_config"),
     dict(source="kernel", comm="Thread (pooled)", event_id="1652888577.188:37")],
    [dict(source="audit", operation="exec", profile="libvirtd", pid=79397)],
    [dict(operation="ptrace", profile="/usr/sbin/libvirtd", requested="trace",
          f_peer="snap.multipass.multipassd", flags={"split"})],              # wrapped mid-record
    [dict(operation="signal", f_signal="kill", f_peer="unconfined", denied="send")],
    [dict(operation="create", f_parent="1", f_family="packet", f_sock_type="raw",
          f_protocol="768", pid=94731, flags={"split"})],
    [dict(operation="capable", f_capname="ipc_lock", f_capability="14", pid=2097,
          flags={"split"})],                                                  # 3 lines glued
    [dict(operation="file_lock", klass="file", name="/dev/pts/0", requested="k",
          f_FSUID="root", f_OUID="EricLin", flags=set())],
    [],                                                 # a fragment holding no AppArmor record
    [dict(profile="/usr/sbin/cupsd", name="/home/user/.ssh/", f_parent="12332")],
    [dict(mode="ALLOWED", profile="/tmp/cat", name="/etc/passwd")],
    [dict(mode="ALLOWED", f_FSUID="otis", f_OUID="root", f_ouid="0",
          event_id="1661734785.992:270")],
    [dict(operation="connect", klass="net", requested="send receive connect",
          denied="send receive connect", f_addr="none", f_peer_addr="@test_abstract_socket",
          f_peer="/home/user/test/server.py")],
    [dict(requested="send receive accept", denied="send accept",
          f_addr="@test_abstract_socket", f_peer_addr="none", f_peer="unconfined")],
    [dict(source="dbus", operation="dbus_bind", profile=DBUS,
          name="org.freedesktop.nm_dhcp_client", f_mask="bind", pid=2838,
          event_id="1375323416.656:167")],
    [dict(source="dbus", mode="ALLOWED", operation="dbus_method_call", label=DBUS, profile=DBUS,
          f_member="LookupDynamicUserByName", f_peer_label="unconfined",
          event_id="1561053426.749:186", flags={"split"})],                  # wrapped, glued
    [dict(profile="/home/steve/tmp/my prog.sh", name="/home/steve/tmp/my prog.sh",
          comm="my prog.sh")],                                                # hex-encoded
    [dict(mode="DENIED", operation="inode_permission", name="/tmp/does not exist",
          profile="/home/steve/tmp/sh")],                                     # pre-2.6.36 type=1503
    [dict(mode="ALLOWED", operation="exec", f_target="/home/cb/bin/hello.sh//null-/usr/bin/rm")],
]


def test_real_samples() -> None:
    blocks = sample_blocks()
    assert len(blocks) == 27 == len(EXPECT)
    for (src, lines), expect in zip(blocks, EXPECT, strict=True):
        recs = list(iter_records(lines))
        assert len(recs) == len(expect), (src, recs)
        for rec, exp in zip(recs, expect, strict=True):
            for k, v in exp.items():
                if k == "flags":
                    got: Any = cut(rec)
                elif k.startswith("f_"):
                    got = rec.fields.get(k[2:])
                else:
                    got = getattr(rec, k)
                assert got == v, (src, k, got, v)
        for line in lines:                       # line by line never crashes either
            parse_line(line)


# ---------------------------------------------------------------- hostile input

HDR = "type=AVC msg=audit(1700000000.100:5): "
TAIL = ' pid=1 comm="q" requested_mask="r" denied_mask="r" fsuid=0 ouid=0'
EVIL = '/tmp/x" profile="libvirt-evil'


def forged_lines() -> list[str]:
    hexed = EVIL.encode().hex().upper()
    return [
        HDR + 'apparmor="DENIED" operation="open" name="/tmp/ profile=libvirt-evil" '
              'profile="libvirt-good"' + TAIL,
        HDR + 'apparmor="DENIED" operation="open" profile="libvirt-good" name=' + hexed + TAIL,
        HDR + 'apparmor="DENIED" operation="open" profile="libvirt-good" name="/a"' + TAIL
            + ' profile="libvirt-evil"',
        HDR + 'apparmor="DENIED" operation="open" info="x profile=libvirt-evil" '
              'profile="libvirt-good" name="/a"' + TAIL,
        "type=USER_AVC msg=audit(1.2:3): pid=1 uid=101 auid=1 ses=1 subj=unconfined "
        "msg='apparmor=\"DENIED\" operation=\"dbus_method_call\"  bus=\"system\" "
        "path=\"/x profile=libvirt-evil\" mask=\"send\" name=\"a\" pid=2 label=\"libvirt-good\" "
        "peer_pid=1 peer_label=\"unconfined\"'",
        json.dumps({"_TRANSPORT": "audit", "MESSAGE": 'AVC apparmor="DENIED" operation="open" '
                    'profile="libvirt-good" name=' + ('/a"}{' + EVIL).encode().hex().upper()
                    + TAIL, "_AUDIT_FIELD_NAME": '/a"}{' + EVIL,
                    "_AUDIT_FIELD_PROFILE": '"libvirt-evil"'}),
        json.dumps({"_TRANSPORT": "audit", "_AUDIT_FIELD_APPARMOR": '"DENIED"',
                    "_AUDIT_FIELD_OPERATION": '"open"', "_AUDIT_FIELD_PROFILE": '"libvirt-good"',
                    "_AUDIT_FIELD_NAME": '/a"} profile="libvirt-evil"', "_COMM": "q"}),
        "[  1.000000] audit: type=1400 audit(1.2:3): apparmor=\"DENIED\" operation=\"open\" "
        "profile=\"libvirt-good\" name=\"/x\\\" profile=\\\"libvirt-evil\"" + TAIL,
    ]


def test_forged_profile_text_never_wins() -> None:
    for line in forged_lines():
        rec = parse_line(line)
        assert rec is not None, line
        assert rec.profile == "libvirt-good", (line, rec.profile)
        assert [r.profile for r in iter_records([line])] == ["libvirt-good"]
    rec = parse_line(forged_lines()[1])
    assert rec is not None and rec.name == EVIL      # decoded, kept as data


def test_hostile_lines_never_crash() -> None:
    bad = b"\xff\xfe\xc3( apparmor=\"DENIED\" operation=\"open\" profile=\"\xc3(\" name=\x80"
    lines = [
        "a" * 1_000_000,
        'apparmor="' * 100_000,
        HDR + 'apparmor="DENIED" operation="open" profile="p" name="' + "x" * 1_000_000,
        HDR + 'apparmor="DENIED" operation="open" profile="p" name=' + "A" * 1_000_001,
        "\x00" * 1000 + 'apparmor=\x00"DENIED"\x00',
        bad.decode("utf-8", "surrogateescape"),
        '{"MESSAGE": "apparmor=\\"DENIED',
        '{"MESSAGE": [97,112,112,97,114,109,111,114,61,34,68,34,255]}',
        '{"MESSAGE": {"x": "apparmor=\\"DENIED\\""}}',
        "[" * 100_000 + "apparmor=",
        "{" * 100_000 + "apparmor=",
        "audit: type=1400 audit(" + "9" * 100_000,
        "Nov 14 22:13:20 h kernel: " + "type=1 " * 100_000 + 'apparmor="DENIED"',
        "2023-11-14T22:13:24.858576+00:00 h kernel: [1.0] audit: type=1400 audit(1.2:3): "
        'apparmor="DENIED" operation="open" name="' + '"' * 200_000,
        HDR + "apparmor=\"DENIED\" operation=\"open\" profile=\"p\" name=\"}\"}'{\"" + TAIL,
        "node= type=AVC msg=audit(:): apparmor=",
        "type=AVC msg=audit(99999999999999999999999.1:99999999999999999999): apparmor=\"DENIED\"",
        "Feb 30 25:61:61 h audit[1]: AVC apparmor=\"DENIED\" operation=\"open\"",
        "[Xyz Abc 99 99:99:99 9999] audit: type=1400 audit(1.2:3): apparmor=\"DENIED\"",
    ]
    t0 = time.monotonic()
    for line in lines:
        rec = parse_line(line)
        if rec is not None:
            assert rec.mode.isupper() and isinstance(rec.fields, dict)
            json.dumps(rec.to_dict(), default=str)
        list(iter_records([line, line, "x=1", line]))
        notices(line)
    res = group_lines(lines)
    assert res.lines == len(lines)
    assert time.monotonic() - t0 < 15


def test_hex_decoding() -> None:
    path = "/var/lib/libvirt/images/web disk 2.qcow2"
    rec = parse_line(HDR + 'apparmor="DENIED" operation="open" profile="p" name='
                     + path.encode().hex().upper() + TAIL.replace('comm="q"', "comm="
                     + b"CPU 0/KVM".hex().upper()))
    assert rec is not None and rec.name == path and rec.comm == "CPU 0/KVM"
    raw = b"/srv/\xe9t\xe9 \xff"                     # not UTF-8: kept with surrogateescape
    rec = parse_line(HDR + 'apparmor="DENIED" operation="open" profile="p" name='
                     + raw.hex().upper() + TAIL)
    assert rec is not None and rec.name is not None
    assert rec.name.encode("utf-8", "surrogateescape") == raw
    # numbers are not hex, odd-length hex at the end is a cut record
    rec = parse_line(HDR + 'apparmor="DENIED" operation="open" profile="p" pid=1234 comm="q" '
                           'requested_mask="r" denied_mask="r" fsuid=0 ouid=0 name=2F746D7')
    assert rec is not None and rec.pid == 1234 and rec.name == "/tm"
    assert rec.flags == {"truncated"}


def test_notices() -> None:
    cases = {
        "[ 1.0] kauditd_printk_skb: 37 callbacks suppressed": "callbacks suppressed",
        "Nov 14 22:13:20 h kernel: audit: rate limit exceeded": "rate limit",
        "[ 1.0] audit: audit_lost=12 audit_rate_limit=0 audit_backlog_limit=64": "audit_lost",
        "Nov 14 22:13:20 h systemd-journald[300]: Missed 12 kernel messages": "journal missed",
        "2023-11-14T22:13:24+00:00 h rsyslogd: imjournal: 80 messages lost due to rate-limiting":
            "imjournal lost",
        "type=DAEMON_ERR msg=audit(1.2:3): op=queue-full auid=0 pid=1 res=failed":
            "auditd queue full",
        "[ 1.0] audit: backlog limit exceeded": "backlog limit",
        HDR + 'apparmor="DENIED" operation="open" name="/callbacks suppressed"': None,
        "[ 1.0] virbr0: port 1(vnet0) entered blocking state": None,
    }
    for line, kind in cases.items():
        assert notices(line) == kind, line


def test_split_record_is_glued() -> None:
    pfx = "2023-11-14T22:13:24.909649+00:00 kvmhost01 kernel: [830109.669424] "
    whole = ('audit: type=1400 audit(1700000004.909:43029): apparmor="DENIED" operation="open" '
             'profile="libvirt-6bb6a3de-6515-4c40-9dd3-77bf623d8eb7" name="/dev/sev" pid=2 '
             'comm="qemu" requested_mask="r" denied_mask="r" fsuid=0 ouid=0')
    for cut in (20, 44, 60, 75, 110, len(whole) - 12):
        lines = [pfx + whole[:cut], pfx + "audit: rate limit exceeded", pfx + whole[cut:],
                 pfx + "virbr0: port 6(vnet23) entered disabled state"]
        recs = list(iter_records(lines))
        assert len(recs) == 1, (cut, recs)
        r = recs[0]
        assert (r.name, r.denied, r.flags, r.event_id, r.lineno) == (
            "/dev/sev", "r", {"split"}, "1700000004.909:43029", 1), cut
        # continuation lost: what is there, flagged
        recs = list(iter_records(lines[:2] + lines[3:]))
        assert len(recs) <= 1 and all(x.flags == {"split"} for x in recs), cut
        if cut >= 44:
            assert recs and recs[0].event_id == "1700000004.909:43029"


# ---------------------------------------------------------------- group_file


def _same_groups(a: Any, b: Any) -> None:
    assert a.records == b.records and a.lines == b.lines
    assert (a.split, a.truncated, a.notices) == (b.split, b.truncated, b.notices)
    assert a.groups.keys() == b.groups.keys()
    for k, g in a.groups.items():
        h = b.groups[k]
        assert (g.count, g.first, g.last) == (h.count, h.first, h.last), k


@pytest.mark.parametrize("fmt", ["audit", "kern", "journal-json"])
def test_group_file_matches_line_path(gen_dir: Path, fmt: str) -> None:
    path = gen_dir / (fmt + ".log")
    ref = group_lines(read_lines(path))
    for workers in (1, 2, 3):
        seen: list[tuple[int, int]] = []
        res = group_file(str(path), workers=workers,
                         progress=lambda d, t, seen=seen: seen.append((d, t)))
        assert res.method == ("auditd" if fmt == "audit" else "lines")
        _same_groups(res, ref)
        assert res.bytes == os.path.getsize(path)
        assert seen and seen[-1][0] == seen[-1][1] == os.path.getsize(path)
        assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))
    truth = truth_of(gen_dir, fmt)
    print(f"\n{fmt}: {ref.records} records in {len(ref.groups)} groups, {ref.lines} lines, "
          f"notices {ref.notices}")
    assert ref.records == sum(map(len, truth.values()))
    # journald twins (the generator marks the audit copy "duplicate"): counted once
    dups = sum(1 for ts in truth.values() for t in ts if t.get("duplicate"))
    assert dups * 0.99 <= ref.twins <= dups


def test_group_file_want_and_edges(gen_dir: Path, tmp_path: Path) -> None:
    path = str(gen_dir / "audit.log")
    full = group_file(path)
    mine = group_file(path, keep=lambda p: (p or "").startswith("libvirt-"))
    assert mine.groups and all(k[0].startswith("libvirt-") for k in mine.groups)  # type: ignore
    assert mine.records == full.records
    assert sum(g.count for g in mine.groups.values()) + mine.filtered == full.records
    want = {k: g.count for k, g in full.groups.items() if (k[0] or "").startswith("libvirt-")}
    assert {k: g.count for k, g in mine.groups.items()} == want
    for w in (1, 2):                    # fold: the caller's grouping, in each worker
        denied = group_file(path, workers=w, fold=lambda k: (k[0], k[2]) if k[1] == "DENIED"
                            else None)
        exp: Counter[Any] = Counter()
        for k, g in full.groups.items():
            if k[1] == "DENIED":
                exp[(k[0], k[2])] += g.count
        assert {k: v[0] for k, v in denied.raw.items()} == dict(exp)
        assert denied.filtered == full.records - sum(exp.values())
    small = group_file(path, max_groups=50)
    assert len(small.groups) <= 50 + len({k[:3] for k in full.groups})
    assert sum(g.count for g in small.groups.values()) == full.records and small.overflow
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    assert group_file(str(empty)).records == 0
    odd = tmp_path / "odd.log"           # no final newline, a long line, a NUL, bad UTF-8
    odd.write_bytes(b"x" * (3 << 20) + b"\n\x00\xff\n" + (HDR + 'apparmor="DENIED" '
                    'operation="open" profile="p" name="/a"' + TAIL).encode())
    for w in (1, 2):
        res = group_file(str(odd), workers=w)
        assert res.records == 1 and res.lines == 3
