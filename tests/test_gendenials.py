"""The project's denial-log generator (tests/tools/gendenials.py) is itself right.

Its truth must say exactly where each record is, independently of our parser:
a complete record's text is on its line (in MESSAGE for the JSON journal), a
cut one starts there; every feature the parser is tested on occurs; output is
deterministic and exactly --lines long.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from conftest import GENDENIALS

sys.path.insert(0, str(GENDENIALS.parent))
import gendenials

FORMATS = gendenials.FORMATS


@pytest.mark.parametrize("fmt", FORMATS)
def test_truth_points_at_the_records(fmt: str) -> None:
    lines, truth = gendenials.generate_lists(format=fmt, lines=6000, seed=5, split_share=0.1)
    assert len(lines) == 6000
    seen: Counter[str] = Counter()
    for t in truth:
        line = lines[t["line"] - 1]
        if fmt == "journal-json":
            line = json.loads(line)["MESSAGE"]
        text = t["text"]
        if t["complete"]:
            assert text in line, (t, line)
        else:       # the record starts here, cut somewhere after its stamp
            assert t.get("split") or t.get("truncated")
            assert "audit(" + t["event_id"][:10] in line, (t, line)
            if not t.get("split"):
                assert text[:300] in line, (t, line)
        seen["split"] += bool(t.get("split"))
        seen["truncated"] += bool(t.get("truncated"))
        seen["hex"] += "name=" in text and 'name="' not in text
        seen["dbus"] += t["source"].startswith("dbus")
        seen["guest"] += bool(t.get("vm_uuid"))
        seen["stack"] += t["profile"] in ("libvirtd", "virt-aa-helper", "swtpm",
                                          "/usr/sbin/dnsmasq")
        seen["status"] += t["apparmor"] == "STATUS"
        seen["allowed"] += t["apparmor"] == "ALLOWED"
        seen["duplicate"] += bool(t.get("duplicate"))
    want = ["hex", "dbus", "guest", "stack", "status", "allowed"]
    if fmt != "audit":
        want += ["truncated"] if fmt != "syslog" else []
        want += ["split"] if fmt != "journal-json" else []
    if fmt in ("journal-json", "journal-short"):
        want.append("duplicate")
    assert all(seen[k] for k in want), (fmt, seen)
    text = "\n".join(lines)
    if fmt == "audit":
        assert "\x1dFSUID=" in text and "type=USER_AVC" in text and "type=SYSCALL" in text
    if fmt == "journal-json":
        transports = Counter(json.loads(ln)["_TRANSPORT"] for ln in lines)
        assert transports["kernel"] and transports["audit"]
    if fmt == "dmesg-T":
        assert lines[0][0] == "[" and lines[0][4] == " "           # [Tue Nov 14 ...]


def test_node_prefix_and_time_styles() -> None:
    lines, _ = gendenials.generate_lists(format="audit", lines=300, seed=1, node_prefix=True)
    assert all(ln.startswith("node=kvmhost01 type=") for ln in lines)
    rfc, _ = gendenials.generate_lists(format="kern", lines=50, seed=1)
    bsd, _ = gendenials.generate_lists(format="kern", lines=50, seed=1, time_style="bsd")
    assert rfc[0][:4].isdigit() and rfc[0][10] == "T"
    assert bsd[0][:3] in gendenials.MONTHS


def test_script_is_deterministic_and_exact(tmp_path: object) -> None:
    def run(*extra: str) -> bytes:
        return subprocess.run([sys.executable, str(GENDENIALS), "--format", "syslog",
                               "--lines", "777", "--seed", "9", *extra], capture_output=True,
                              check=True).stdout

    a, b = run(), run()
    assert a == b and a.count(b"\n") == 777
    assert run("--seed", "10") != a
