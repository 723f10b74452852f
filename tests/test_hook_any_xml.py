"""The prepare hook never blocks a VM for XML it does not need.

It reads only name, UUID, virt type, seclabel and our metadata; devices are
the helper's business.  Since libvirt 9.1 every q35 domain carries
``<watchdog model='itco'/>``: a hook that checked device enums stopped every
q35 VM from starting.  Checked here with domains of every version (the
per-version cases, which 12.8's helper accepts) and a fuzz of unknown
elements and values; the P written must compile with the real parser.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROFILE, compile_profile, helper_argv
from versions_cases import CASES, DATA, dom

HOOK_NAME = "ver"


def hook(root: Path, xml: bytes, name: str = HOOK_NAME) -> subprocess.CompletedProcess[bytes]:
    script = Path(helper_argv()[0]).with_name("virt-aa-hook")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "virt_aa.hook"]
    return subprocess.run(argv + ["--root", str(root), name, "prepare", "begin", "-"],
                          input=xml, capture_output=True, timeout=60, check=False)


def written(root: Path) -> Path:
    return root / "etc/apparmor.d/libvirt" / PROFILE


def accepted_by_newest() -> list[str]:
    return [n for n in sorted(CASES)
            if json.loads((DATA / "sid" / f"{n}.json").read_text())["exit_code"] == 0]


@pytest.mark.parametrize("name", accepted_by_newest())
def test_hook_accepts_what_12_8s_helper_accepts(sandbox: Path, name: str) -> None:
    proc = hook(sandbox, CASES[name].encode())
    assert proc.returncode == 0, proc.stderr
    assert written(sandbox).exists()
    res = compile_profile(written(sandbox), sandbox)
    assert res.returncode == 0, res.stderr


def test_q35_with_itco_watchdog_starts(sandbox: Path) -> None:
    """The outage of #11: exit 1 on `<watchdog model='itco'/>`."""
    proc = hook(sandbox, dom("<watchdog model='itco' action='reset'/>").encode())
    assert proc.returncode == 0, proc.stderr
    assert written(sandbox).exists()


JUNK_TAGS = ["frobnicator", "watchdog", "disk", "memory", "launchSecurity", "pstore",
             "iommufd", "crypto", "shim", "x-future"]
JUNK_VALUES = ["itco", "future", "", "vhostvdpa", "sev-snp", "tdx", "😀", "0x" + "f" * 40,
               "../../etc/shadow", "a'b", "yes", "no"]


def fuzzed(rng: random.Random) -> str:
    """A domain with unknown elements, attributes and enum values everywhere but identity."""
    parts = []
    for _ in range(rng.randint(1, 12)):
        tag = rng.choice(JUNK_TAGS)
        attrs = " ".join(f"{rng.choice(['type', 'model', 'mode', 'x'])}"
                         f"='{rng.choice(JUNK_VALUES).replace(chr(39), '&apos;')}'"
                         for _ in range(rng.randint(0, 3)))
        attrs = " ".join(dict.fromkeys(attrs.split(" ")))  # no duplicate attributes
        names = [a.split("=")[0] for a in attrs.split()]
        if len(names) != len(set(names)):
            attrs = ""
        inner = rng.choice(["", "<source file='/nonexistent'/>", "<target dev='zz9'/>",
                            "<unknown><deeper a='1'/></unknown>"])
        parts.append(f"<{tag} {attrs}>{inner}</{tag}>")
    os_extra = rng.choice(["", "<loader type='future'>/x</loader>", "<acpi><table type='new'>"
                           "/x</table><table type='new'>/y</table></acpi>", "<shim>/s</shim>"])
    top = rng.choice(["", "<launchSecurity type='future'/>", "<newthing/>", "<cpu mode='x'/>"])
    return dom("".join(parts), os=os_extra, extra=top)


def test_fuzz_of_unknown_elements_and_values_never_blocks(sandbox: Path) -> None:
    rng = random.Random(1107)
    for _ in range(60):
        xml = fuzzed(rng)
        proc = hook(sandbox, xml.encode())
        assert proc.returncode == 0, (xml, proc.stderr)
        assert b"Traceback" not in proc.stderr
    assert compile_profile(written(sandbox), sandbox).returncode == 0


def test_still_refuses_a_foreign_name_and_a_bad_uuid(sandbox: Path) -> None:
    xml = dom().encode()
    other = hook(sandbox, xml, name="someone-else")
    assert other.returncode == 1 and b"with the XML of" in other.stderr
    bad = hook(sandbox, xml.replace(b"11111111-2222", b"zz111111-2222"))
    assert bad.returncode == 1 and b"malformed uuid" in bad.stderr
    assert not written(sandbox).exists()


def test_seclabel_none_or_static_writes_nothing(sandbox: Path) -> None:
    for label in ("<seclabel type='none'/>",
                  "<seclabel type='static' model='apparmor'><label>mine</label></seclabel>"):
        xml = dom().replace("<devices>", "<devices>").replace("</os>", "</os>" + label)
        proc = hook(sandbox, xml.encode())
        assert proc.returncode == 0, proc.stderr
        assert not written(sandbox).exists(), label
    dac = dom().replace("</os>", "</os><seclabel type='none' model='dac'/>")
    assert hook(sandbox, dac.encode()).returncode == 0
    assert written(sandbox).exists()


def test_hook_does_not_import_the_device_parser_tables() -> None:
    """The hook path stays lean: identity only (no device model built)."""
    xml = dom("<watchdog model='itco'/>").encode()
    code = ("import sys; from virt_aa.generate.identity import read_identity; "
            f"d, c = read_identity({xml!r}); "
            "print(d.name, c, len(d.disks))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ))
    assert out.stdout.split() == ["ver", "True", "0"]
