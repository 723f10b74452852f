"""The helper and the hook run at every VM start: they import only what the
path needs.  Each module on the path costs start-up time (bench/startup_speed.py
measures it against the previous release), so what was made lazy stays lazy.

Both are run as the lean launcher runs them (``python3 -I -S``, only virt-aa's
directory on ``sys.path``) on the typical corpus domain, and report the
modules loaded once ``main`` returned.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import CORPUS, REPO

TYPICAL = CORPUS / "domains" / "vi-desktop-kitchen-sink.xml"

# Never on a VM-start path: each costs milliseconds (typing, dataclasses,
# re, argparse, subprocess, tempfile) or belongs to the admin commands.
HEAVY = {"typing", "dataclasses", "re", "argparse", "subprocess", "tempfile", "json",
         "pathlib", "importlib.resources", "virt_aa.cli", "virt_aa.ops", "virt_aa.denials"}
# Lazy on the helper's dry run: the store, per-VM rules and named policies.
HELPER_LAZY = {"virt_aa.host.store", "virt_aa.host.fsutil", "virt_aa.host.vmprofile",
               "virt_aa.policy", "virt_aa.policy.localrules", "virt_aa.policy.named",
               "virt_aa.host.apparmor", "virt_aa.host.config"}
# Lazy in the hook: it reads identity only (no device parser, no version
# model, no image probing), and no rule or policy parser when there are none.
HOOK_LAZY = {"virt_aa.generate.domain", "virt_aa.generate.versions",
             "virt_aa.generate.accesses", "virt_aa.generate.images",
             "virt_aa.generate.images.names", "virt_aa.generate.paths",
             "virt_aa.host.hostfacts", "virt_aa.host.libvirtversion", "virt_aa.policy",
             "virt_aa.policy.localrules", "virt_aa.policy.named", "virt_aa.host.config"}


def loaded(entry: str, args: list[str], xml: bytes) -> set[str]:
    """Modules loaded after ``entry``'s main(args) ran, started as the launcher does."""
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'src')!r}); "
            f"from {entry} import main; rc = main({args!r}); "
            "mods = sorted(sys.modules); import json; sys.stdout.write(json.dumps([rc, mods]))")
    proc = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", code], input=xml,
                          capture_output=True, check=True)
    rc, modules = json.loads(proc.stdout)
    assert rc == 0, proc.stderr.decode(errors="replace")
    return set(modules)


def uuid_of(xml: bytes) -> str:
    return xml.decode().split("<uuid>", 1)[1].split("</uuid>", 1)[0].strip()


def test_helper_dry_run_imports_only_the_generator(corpus_images: Path) -> None:
    xml = TYPICAL.read_bytes()
    mods = loaded("virt_aa.helper", ["-d", "-r", "-u", f"libvirt-{uuid_of(xml)}"], xml)
    assert "virt_aa.generate.accesses" in mods   # it did generate the rules
    assert not mods & HEAVY, sorted(mods & HEAVY)
    assert not mods & HELPER_LAZY, sorted(mods & HELPER_LAZY)


def test_hook_prepare_imports_identity_only(corpus_images: Path, sandbox: Path) -> None:
    xml = TYPICAL.read_bytes()
    name = xml.decode().split("<name>", 1)[1].split("</name>", 1)[0].strip()
    args = ["--root", str(sandbox), name, "prepare", "begin", "-"]
    loaded("virt_aa.hook", args, xml)   # the first start asks apparmor_parser its version
    mods = loaded("virt_aa.hook", args, xml)
    assert (sandbox / "etc/apparmor.d/libvirt" / f"libvirt-{uuid_of(xml)}").is_file()
    assert "virt_aa.generate.identity" in mods
    assert not mods & HEAVY, sorted(mods & HEAVY)
    assert not mods & HOOK_LAZY, sorted(mods & HOOK_LAZY)


def test_hook_prepare_with_rules_parses_them_only(corpus_images: Path, sandbox: Path) -> None:
    """With per-VM rules the hook parses them (the parser's verdict is cached
    after the first start); the path tables and escaping are not needed."""
    xml = TYPICAL.read_bytes()
    name = xml.decode().split("<name>", 1)[1].split("</name>", 1)[0].strip()
    local = sandbox / "etc/apparmor.d/local" / f"libvirt-{uuid_of(xml)}"
    local.write_text("/srv/a r,\n/srv/b/** rw,\n/srv/c rwk,\n")
    args = ["--root", str(sandbox), name, "prepare", "begin", "-"]
    loaded("virt_aa.hook", args, xml)   # the first start has apparmor_parser check them
    mods = loaded("virt_aa.hook", args, xml)
    assert "virt_aa.policy.localrules" in mods
    assert not mods & HEAVY, sorted(mods & HEAVY)
    lazy = HOOK_LAZY - {"virt_aa.policy", "virt_aa.policy.localrules"}
    assert not mods & lazy, sorted(mods & lazy)

