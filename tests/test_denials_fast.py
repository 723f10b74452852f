"""The fast path of `virt-aa denials`: the C raw-key counter and the streamed output.

* the C counter is built here (CI installs gcc and the Python headers; no skip),
* it gives exactly what the pure-Python path gives: same groups, counts,
  first/last stamps and counters, on gendenials output and on fuzzed and
  hostile auditd text, with any chunking and any number of workers,
* its API: batches newest-first, a feed after a partial take, stamps and
  names decoded like the Python helpers, the parent= cut,
* `denials --file --json` through the big-file path (workers, fold, streamed
  JSON, the two-process rendering) prints the same document as the line path.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import GENDENIALS
from virt_aa.denials import commands as dc
from virt_aa.denials import rows as dr
from virt_aa.denials import scan
from virt_aa.denials.rawkeys import _unsplit
from virt_aa.denials.scan import _PARENT_RE, _split, _stamp_time, group_file

GEN = GENDENIALS


def test_the_c_counter_is_built() -> None:
    from virt_aa.denials import _avcscan

    t = _avcscan.Table(os.urandom(8))
    assert len(t) == 0 and t.kbytes == 0
    with pytest.raises(ValueError):
        _avcscan.Table(b"short")


def same(a: Any, b: Any) -> None:
    assert (a.records, a.lines, a.split, a.truncated, a.notices, a.filtered, a.overflow,
            a.long_lines, a.bytes) == (b.records, b.lines, b.split, b.truncated, b.notices,
                                       b.filtered, b.overflow, b.long_lines, b.bytes)
    assert a.raw == b.raw


@pytest.fixture(scope="module")
def audit_logs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("fast")
    out = []
    procs = []
    for seed in (3, 5):
        p = d / f"audit{seed}.log"
        procs.append(subprocess.Popen([sys.executable, str(GEN), "--format", "audit", "--lines",
                                       "30000", "--seed", str(seed), "-o", str(p)]))
        out.append(p)
    for pr in procs:
        assert pr.wait() == 0
    return out


def test_c_and_python_paths_agree_on_generated_logs(audit_logs: list[Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for path in audit_logs:
        ref = group_file(str(path), workers=1, fast=False)
        assert ref.records > 5000
        for w in (1, 2, 3):
            same(group_file(str(path), workers=w, fast=True), group_file(str(path), workers=w,
                                                                        fast=False))
        same(group_file(str(path), workers=1, fast=True), ref)
        # small chunks and small flushes: chunk edges and repeated keys across flushes
        monkeypatch.setattr(scan, "CHUNK", 4096)
        monkeypatch.setattr(scan, "RAW_FLUSH", 300)
        monkeypatch.setattr(scan, "RAW_FLUSH_PY", 300)
        monkeypatch.setattr(scan, "RAW_BATCH", 77)
        same(group_file(str(path), workers=2, fast=True), group_file(str(path), workers=2,
                                                                    fast=False))
        # the group cap: the same groups folded in the same order
        small_c = group_file(str(path), workers=1, fast=True, max_groups=40)
        small_py = group_file(str(path), workers=1, fast=False, max_groups=40)
        same(small_c, small_py)
        assert small_c.overflow
        monkeypatch.undo()


AVC = ('type=AVC msg=audit({stamp}:{serial}): apparmor="{mode}" operation="{op}"{parent}'
       '{klass} profile="{prof}" name={name} pid={pid} comm={comm} requested_mask="{m}" '
       'denied_mask="{m}"{tail}')
DBUS = ("type=USER_AVC msg=audit({stamp}:{serial}): pid=837 uid=101 auid=4294967295 "
        "ses=4294967295 subj=unconfined msg='apparmor=\"DENIED\" operation=\"dbus_bind\"  "
        "bus=\"system\" mask=\"bind\" name=\"org.qemu.{n}\" pid={pid} label=\"{prof}\"  "
        "exe=\"/usr/bin/dbus-daemon\" sauid=101 hostname=? addr=? terminal=?'")
OTHER = ['type=SYSCALL msg=audit(1700000000.071:5715): arch=c000003e syscall=257 success=no '
         'pid=360935 comm="qemu-system-x86"',
         'type=DAEMON_ERR msg=audit(1700000001.000:1): auditd error: queue-full, dropped',
         'type=PROCTITLE msg=audit(1700000000.071:5715): proctitle=2F7573722F',
         'type=AVC msg=audit(1700000002.5:3): apparmor="DENIED" operation="capable" '
         'profile="libvirt-x" pid=12 comm="q" capability=12  capname="net_admin"',
         'type=AVC msg=audit(1700000003.5:4): apparmor="ALLOWED" operation="signal" '
         'profile="libvirt-x" pid=12 comm="q" requested_mask="send" denied_mask="send" '
         'signal=kill peer="unconfined"']


def _name(rng: random.Random) -> str:
    path = rng.choice(["/var/lib/libvirt/images/a.qcow2", "/etc/shadow", "/tmp/x y",
                       '/tmp/x" profile="libvirt-evil', "/srv/}{*", "/dev/kvm",
                       "/tmp/\u00e9t\u00e9", "/a" * rng.randint(1, 40)])
    if rng.random() < 0.3 or '"' in path or " " in path:
        return path.encode("utf-8").hex().upper()
    return f'"{path}"'


def fuzz_text(rng: random.Random, n: int) -> bytes:
    lines: list[bytes] = []
    for i in range(n):
        r = rng.random()
        if r < 0.55:
            line = AVC.format(
                stamp=rng.choice(["1700000000.071", "1700000000.5", "17e8", "1_0.5", "x", ""]),
                serial=i, mode=rng.choice(["DENIED", "ALLOWED", "AUDIT", "denied", "X1"]),
                op=rng.choice(["open", "file_mmap", "exec", "mknod", "Op"]),
                parent=rng.choice(["", "", f" parent={rng.randint(1, 9999)}", " parent=",
                                   " parent=12x"]),
                klass=rng.choice(["", ' class="file"']),
                prof=rng.choice(["libvirt-3838b326-8e94-4239-b02b-61c4a3d70628",
                                 "libvirt-x//qemu_bridge_helper", "virt-aa-helper", ""]),
                name=_name(rng), pid=rng.choice([str(rng.randint(1, 99999)), "", "x"]),
                comm=rng.choice(['"qemu-system-x86"', '"a b"', "7166", '"q"']),
                m=rng.choice(["r", "w", "wr", "k"]),
                tail=rng.choice(["", " fsuid=64055 ouid=0", ' fsuid=1 ouid=0FSUID="x" OUID="y"',
                                 " fsuid=", ' target="/x"']))
        elif r < 0.65:
            line = DBUS.format(stamp="1700000005.775", serial=i, n=rng.randint(0, 30),
                               pid=rng.randint(1, 99999),
                               prof="libvirt-66b2bc5b-50c1-47fc-8e17-7b4e0837b8a3")
        else:
            line = rng.choice(OTHER)
        b = line.encode("utf-8", "surrogateescape")
        m = rng.random()
        if m < 0.08:                    # cut anywhere (printk limit, rate limiting)
            b = b[:rng.randint(0, len(b))]
        elif m < 0.12:                  # junk bytes in the middle
            k = rng.randint(0, len(b))
            b = b[:k] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + b[k:]
        elif m < 0.14:                  # two records on a line, a forged one in a value
            b = b + b" " + b[rng.randint(0, len(b)):]
        elif m < 0.15:
            b = b.replace(b"\n", b"") + b"\x00" * 3
        lines.append(b.replace(b"\n", b" "))
    if rng.random() < 0.5:              # a huge line, with the separator many times in it
        lines.insert(rng.randint(0, len(lines)), b'x): apparmor="DENIED" ' * 60000)
    text = b"\n".join(lines)
    return text if rng.random() < 0.5 else text + b"\n"


@pytest.mark.parametrize("seed", range(12))
def test_c_and_python_paths_agree_on_fuzzed_text(tmp_path: Path, seed: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    path = tmp_path / "fuzz.log"
    path.write_bytes(b"type=AVC msg=audit(1.0:1): x\n" + fuzz_text(rng, 3000))
    chunk = rng.choice([scan.CHUNK, 1 << 14, 777])
    monkeypatch.setattr(scan, "CHUNK", chunk)
    monkeypatch.setattr(scan, "MAX_LINE", rng.choice([scan.MAX_LINE, 1 << 20, 5000]))
    for w in (1, 2):
        a = group_file(str(path), workers=w, fast=True)
        b = group_file(str(path), workers=w, fast=False)
        assert a.method == "auditd"
        same(a, b)
    assert a.records > 1000


def test_both_vector_widths_count_alike(audit_logs: list[Path], tmp_path: Path) -> None:
    """The search runs 32 bytes at a time where the CPU has AVX2 and 16 (SSE2) elsewhere:
    both give what the pure-Python path gives, on generated and fuzzed logs."""
    from virt_aa.denials import _avcscan

    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        has_avx2 = " avx2" in f.read()
    assert bool(_avcscan.AVX2) is has_avx2
    fuzzed = tmp_path / "fuzz.log"
    fuzzed.write_bytes(fuzz_text(random.Random(99), 6000))
    code = ("import pickle, sys; from virt_aa.denials import _avcscan; "
            "from virt_aa.denials.scan import group_file; assert not _avcscan.AVX2; "
            "r = [group_file(p, workers=1, fast=True) for p in sys.argv[1:]]; "
            "sys.stdout.buffer.write(pickle.dumps([(x.raw, x.records, x.lines, x.truncated, "
            "x.notices, x.filtered) for x in r]))")
    paths = [str(p) for p in (*audit_logs, fuzzed)]
    env = dict(os.environ, VIRT_AA_NO_AVX2="1")
    out = subprocess.run([sys.executable, "-c", code, *paths], env=env, capture_output=True,
                         check=True).stdout
    import pickle

    for got, p in zip(pickle.loads(out), paths, strict=True):
        for fast in (True, False):
            ref = group_file(p, workers=1, fast=fast)
            assert got == (ref.raw, ref.records, ref.lines, ref.truncated, ref.notices,
                           ref.filtered), p


DBUS_SHAPES = [
    # the usual ones: bind, and a method call with its peer
    DBUS,
    "type=USER_AVC msg=audit({stamp}:{serial}): pid=1 uid=103 auid=4294967295 ses=4294967295 "
    "subj=unconfined msg='apparmor=\"DENIED\" operation=\"dbus_method_call\"  bus=\"system\" "
    "path=\"/org/qemu/{n}\" interface=\"org.freedesktop.DBus.Properties\" member=\"GetAll\" "
    "mask=\"send\" name=\":1.{n}\" pid={pid} label=\"{prof}\" peer_pid=77 "
    "peer_label=\"unconfined\"  exe=\"/usr/bin/dbus-daemon\" sauid=103 hostname=? addr=? "
    "terminal=?'\x1dUID=\"messagebus\" AUID=\"unset\"",
    # the parser's cases: a quote or ENRICHED's separator inside, text after msg, no label
    # (incomplete: truncated), a mode it cannot read, a cut value
    "type=USER_AVC msg=audit({stamp}:{serial}): pid=1 uid=1 msg='apparmor=\"DENIED\" "
    "operation=\"dbus_bind\" bus=\"system\" mask=\"bind\" name=\"o'x{n}\" pid={pid} "
    "label=\"{prof}\" exe=\"/d\"'",
    "type=USER_AVC msg=audit({stamp}:{serial}): pid=1 uid=1 msg='apparmor=\"DENIED\" "
    "operation=\"dbus_bind\" bus=\"system\" mask=\"bind\" name=\"o\x1dx{n}\" pid={pid} "
    "label=\"{prof}\" exe=\"/d\"'",
    "type=USER_AVC msg=audit({stamp}:{serial}): pid=1 uid=1 msg='apparmor=\"DENIED\" "
    "operation=\"dbus_bind\" bus=\"system\" mask=\"bind\" name=\"o{n}\" pid={pid} "
    "label=\"{prof}\" exe=\"/d\"' extra=1",
    "type=USER_AVC msg=audit({stamp}:{serial}): pid=1 uid=1 msg='apparmor=\"DENIED\" "
    "operation=\"dbus_bind\" bus=\"system\" mask=\"bind\" name=\"o{n}\" pid={pid} "
    "exe=\"/d\"'",
    "type=USER_AVC msg=audit({stamp}:{serial}): pid=1 uid=1 msg='apparmor=\"denied\" "
    "operation=\"dbus_bind\" bus=\"system\" mask=\"bind\" name=\"o{n}\" pid={pid} "
    "label=\"{prof}\"'",
    "type=USER_AVC msg=audit({stamp}:{serial}): pid=1 uid=1 msg='apparmor=\"DENIED\" "
    "operation=\"dbus_bind\" bus=\"system\" mask=\"bind\" name=\"o{n} pid={pid} "
    "label=\"{prof}\"'",
]


def test_dbus_records_read_as_the_parser_reads_them(audit_logs: list[Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A dbus record of the usual shape is read without the line parser: the same groups,
    counts and flags as through it (which the unusual ones still take)."""
    from virt_aa.denials import auditscan

    rng = random.Random(7)
    lines = [rng.choice(DBUS_SHAPES).format(
        stamp=f"1700000{i:03d}.5", serial=i, n=rng.randint(0, 40), pid=rng.randint(1, 99999),
        prof=rng.choice(["libvirt-66b2bc5b-50c1-47fc-8e17-7b4e0837b8a3", "unconfined"]))
        for i in range(3000)]
    shapes = tmp_path / "dbus.log"
    shapes.write_bytes("\n".join(lines).encode() + b"\n" + fuzz_text(rng, 3000))
    paths = [str(p) for p in (*audit_logs, shapes)]
    taken: Counter[bool] = Counter()
    real = auditscan._dbus_record

    def counted(*a: bytes) -> Any:
        rec = real(*a)
        taken[rec is not None] += 1
        return rec
    monkeypatch.setattr(auditscan, "_dbus_record", counted)
    runs = [(p, w, f) for p in paths for w in (1, 2) for f in (True, False)]
    short = [group_file(p, workers=w, fast=f) for p, w, f in runs]
    assert taken[True] > 200 and taken[False] > 20      # both ways taken
    monkeypatch.setattr(auditscan, "_dbus_record", lambda *a: None)
    parsed = [group_file(p, workers=w, fast=f) for p, w, f in runs]
    for a, b in zip(short, parsed, strict=True):
        same(a, b)
    assert any(k[2].startswith("dbus") for k in short[-1].raw) and short[-1].truncated


def test_table_batches_and_helpers_match_python() -> None:
    from virt_aa.denials import _avcscan

    t = _avcscan.Table(os.urandom(8))
    rec = ('type=AVC msg=audit({}:1): apparmor="DENIED" operation="open"{} profile="p" '
           'name={} pid=9 comm="q" requested_mask="r" denied_mask="r" fsuid=1 ouid=0\n')
    names = ['"/a"', '"/b c"', "2F78", "2F7", '"/x"y"', "", '"']
    text = "".join(rec.format(stamp, parent, nm)
                   for stamp in ("1700000000.5", "1700000001.25")
                   for parent in ("", " parent=77", " parent=77x")
                   for nm in names).encode()
    lines, bad, qf = t.feed(text)
    assert (lines, bad, qf) == (text.count(b"\n"), [], [])
    assert len(t) == len(names) * 2 and t.kbytes > 0      # parent=77 shares a key with none
    first, tks, restart = t.take(3)
    assert len(first) == 3 and len(t) == len(names) * 2 - 3 and not restart
    # a feed after a partial take: the slots are rebuilt, counts keep adding up
    t.feed(text)
    rest, more, restart = t.take(1000)
    assert len(t) == 0 and t.kbytes == 0 and t.take(5) == ([], [], False) and not restart
    tks += more
    items = first + rest
    assert sum(i[2] for i in items) == 2 * text.count(b"\n")
    # templates numbered in order of first use, each once; a raw key where the name is
    # not the usual one (empty, unquoted, odd hex, an inner quote)
    assert len(set(tks)) == len(tks) and {i[0] for i in items if i[1]} == set(range(len(tks)))
    for k0, name, _n, fst, lst in items:
        key = k0 if name is None else _unsplit(tks[k0], name)
        assert isinstance(key, bytes)
        assert _split(key) == ((k0, None) if name is None else (tks[k0], name))
        assert not key.startswith(b'DENIED" operation="open" parent=77 ')
        assert fst == _stamp_time(b"msg=audit(1700000000.5:1): ")
        assert lst == _stamp_time(b"msg=audit(1700000001.25:1): ")
    assert sorted(i[1] for i in items if i[1]) == sorted(["/a", "/b c", "/x"] * 2)
    assert _PARENT_RE.sub(rb"\1", b'DENIED" operation="open" parent=77 x', 1) == \
        b'DENIED" operation="open" x'
    # stamps as the parser reads them (SECONDS[.FRAC]:SERIAL); a line with any other
    # header is left to the parser (the fallback), as are a later apparmor=" on a line
    for s in ("1700000000.071", "12", "1_0.5", " 12 ", "1e3", "nan", "1..2", "", "1.",
              "9" * 400):
        line = f'type=AVC msg=audit({s}:1): apparmor="DENIED" operation="open" profile="p" ' \
               f'name="/s" pid=1 comm="q" x=1\n'
        _, bad, _ = t.feed(line.encode())
        got = t.take(10)[0]
        if s in ("1700000000.071", "12"):
            assert not bad and got[0][3] == float(s) == _stamp_time(
                line.split("apparmor=")[0][-36:].encode()), s
        else:
            assert bad == [line.index("apparmor=")] and got == [], s
    for junk in ("x type=AVC msg=audit(1.5:1): ", "type=AVC  msg=audit(1.5:1): ",
                 "node=a\x1db type=AVC msg=audit(1.5:1): ", "type=AVC msg=audit(1.5:1x): "):
        line = junk + 'apparmor="DENIED" operation="open" profile="p" name="/s" pid=1 x=1\n'
        assert t.feed(line.encode())[1] == [len(junk)] and t.take(10)[0] == [], junk
    two = ('type=AVC msg=audit(1.5:1): apparmor="DENIED" operation="open" profile="p" '
           'name="/s" pid=1 comm="q" x="y): apparmor="DENIED" pid=2 comm="q"\n')
    assert t.feed(two.encode())[1] == [] and len(t.take(10)[0]) == 1


def test_write_json_rows_is_json_dumps_of_rows(tmp_path: Path) -> None:
    rng = random.Random(1)
    for n in (10, 60_000):
        found = dc.Scan()
        for i in range(n):
            prof = rng.choice(["libvirt-3838b326-8e94-4239-b02b-61c4a3d70628",
                               "libvirt-66b2bc5b-50c1-47fc-8e17-7b4e0837b8a3//qemu_bridge_helper",
                               "libvirt-00257ad1-eb22-43dd-87c5-421eec24a3c5"])
            first = rng.choice([None, 1700000000.5 + i, -3.5])
            found.table[(prof, rng.choice(["denied", "allowed"]), rng.choice(["open", "exec"]),
                         f"/x/\udcff\"{i}\u00e9", rng.choice(["r", "", "wr"]))] = [
                rng.randint(1, 9), first, None if first is None else first + 3]
        names = {"3838b326-8e94-4239-b02b-61c4a3d70628": "web\"01"}
        out = tmp_path / f"rows{n}.json"
        with open(out, "w", encoding="ascii") as f:
            f.write("[")
            dr.write_json_rows(found, names, f)
            f.write("]")
        want = json.dumps(list(dr.rows(found, names)), ensure_ascii=True)
        assert out.read_text() == want
        small = io.StringIO()           # no file descriptor: one process
        dr.write_json_rows(found, names, small)
        assert "[" + small.getvalue() + "]" == want
        rows = json.loads(want)
        assert rows == dr.group_dicts(found.groups.values(), names)
    # the output going away (`| head`) or filling up: the usual errors
    r, w = os.pipe()
    os.close(r)
    with os.fdopen(w, "w", encoding="ascii") as gone, pytest.raises(BrokenPipeError):
        dr.write_json_rows(found, names, gone)
    with open("/dev/full", "w", encoding="ascii") as full, pytest.raises(OSError) as err:
        dr.write_json_rows(found, names, full)
    assert err.value.errno == errno.ENOSPC


def test_big_file_paths_print_what_the_line_path_prints(
        audit_logs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two-process document (denials/pair.py), the one-process one (scan workers, then
    one renderer) and the line-by-line path's agree, for all guests and for one."""
    from virt_aa import cli
    from virt_aa.denials import pair

    def run(big: int, *dom: str) -> dict[str, Any]:
        monkeypatch.setattr(dc, "BIG", big)
        out = tmp_path / "out.json"
        with open(out, "w", encoding="utf-8") as f:     # a real descriptor, as in a pipe
            monkeypatch.setattr(sys, "stdout", f)
            assert cli.main(["--root", str(tmp_path / "root"), "denials", *dom, "--file",
                             str(audit_logs[0]), "--json"]) == 0
        monkeypatch.setattr(sys, "stdout", sys.__stdout__)
        doc: dict[str, Any] = json.loads(out.read_text())
        return doc

    def plain(doc: dict[str, Any]) -> dict[str, Any]:
        for g in doc["groups"]:         # the big paths keep no event ids or per-group flags
            g["event"] = None
            g["flags"] = {}
        return doc

    (tmp_path / "root").mkdir()
    lines = plain(run(1 << 60))         # the line-by-line path
    two = run(0)                        # both processes to the end
    assert len(two["groups"]) > 1000 and two == lines
    calls: list[int] = []
    real = pair.denials_json

    def one_process(*a: Any, **k: Any) -> bool:
        calls.append(1)
        return False
    monkeypatch.setattr(pair, "denials_json", one_process)
    assert run(0) == lines and calls    # the one-process path (1 CPU)
    monkeypatch.setattr(pair, "denials_json", real)
    uuid = Counter(g["uuid"] for g in two["groups"] if g["uuid"]).most_common(1)[0][0]
    one = run(0, uuid)
    assert one["groups"] and all(g["uuid"] == uuid or (g["program"] in ("swtpm", "passt",
                                                                        "virtiofsd")
                                                       and uuid in g["resource"])
                                 for g in one["groups"])
    assert one == plain(run(1 << 60, uuid))
    monkeypatch.setattr(scan, "MAX_GROUPS", 100)    # past the cap: counted, and said
    capped = run(0)
    assert sum(g["count"] for g in capped["groups"]) == sum(g["count"] for g in two["groups"])
    assert any(g["resource"] == "?" for g in capped["groups"])
    assert any("rarely seen" in w for w in capped["warnings"])


def test_two_process_output_errors_are_the_usual_ones(audit_logs: list[Path]) -> None:
    """The worker writes half the document itself: a reader that went away or a full disk
    is reported as if this process had hit it, and nothing is left running."""
    from virt_aa.denials import pair

    def go(out: Any) -> bool:
        return pair.denials_json(str(audit_logs[1]), None, out, lambda u: {},
                                 lambda found, profiles: [])

    r, w = os.pipe()
    os.close(r)
    gone = os.fdopen(w, "w", encoding="ascii")
    with pytest.raises(BrokenPipeError):
        go(gone)
    with pytest.raises(BrokenPipeError):
        gone.close()                    # what is still buffered cannot go either
    full = open("/dev/full", "w", encoding="ascii")   # noqa: SIM115
    with pytest.raises(OSError) as err:
        go(full)
    assert err.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        full.close()
    assert not go(io.StringIO())        # no descriptor: the caller's one-process path
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)      # every worker was waited for


def test_names_have_a_byte_budget_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """150k groups of 4 KiB names would be 600 MB: names count against a budget as well."""
    path = tmp_path / "long.log"
    with open(path, "w", encoding="ascii") as f:
        for i in range(300):
            f.write(f'type=AVC msg=audit(1700000000.{i:03d}:{i}): apparmor="DENIED" '
                    f'operation="open" profile="libvirt-3838b326-8e94-4239-b02b-61c4a3d70628" '
                    f'name="/{i:04d}{"x" * 20000}" pid=1 comm="q" requested_mask="r" '
                    f'denied_mask="r"\n')
    monkeypatch.setattr(scan, "MAX_GROUP_BYTES", 200_000)
    for w in (1, 2):
        a = group_file(str(path), workers=w, fast=True)
        b = group_file(str(path), workers=w, fast=False)
        same(a, b)
        named = [k for k in a.raw if k[3] is not None]
        assert 10 <= len(named) <= 2 * 11 and a.overflow == 300 - len(named)
        assert sum(v[0] for v in a.raw.values()) == 300


@pytest.mark.slow
def test_c_counter_under_address_and_undefined_behaviour_sanitizers(tmp_path: Path) -> None:
    """The C counter reads hostile bytes: build it with ASan + UBSan and run the fuzz,
    table and budget tests against that build (any bad access aborts the run)."""
    import shutil
    import sysconfig

    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert os.path.exists(libasan), "gcc's libasan is missing (scripts/setup.sh installs gcc)"
    src = Path(__file__).resolve().parents[1] / "src"
    pkg = tmp_path / "virt_aa"
    shutil.copytree(src / "virt_aa", pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    so = pkg / "denials" / ("_avcscan" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                    f"-I{sysconfig.get_paths()['include']}",
                    str(src / "virt_aa" / "denials" / "_avcscan.c"), "-o", str(so)], check=True)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{Path(__file__).parent}",
               LD_PRELOAD=os.path.realpath(libasan), ASAN_OPTIONS="detect_leaks=0",
               UBSAN_OPTIONS="print_stacktrace=1")
    where = subprocess.run([sys.executable, "-c", "import virt_aa.denials._avcscan as a; "
                            "print(a.__file__)"], capture_output=True, text=True, env=env,
                           check=True).stdout.strip()
    assert where == str(so)             # the instrumented copy is what the tests import
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(Path(__file__)), "-k", "fuzzed or table or budget"],
                          capture_output=True, text=True, env=env, check=False,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "passed" in proc.stdout and "ERROR: AddressSanitizer" not in proc.stderr

