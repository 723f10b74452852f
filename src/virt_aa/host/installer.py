"""``virt-aa install`` / ``uninstall``: plug virt-aa into a libvirt host.

Hook mode (default) works with libvirt's stock helper: a hook script in
``/etc/libvirt/hooks/qemu.d/`` execs the privileged entry point
``/usr/sbin/virt-aa-hook`` (the daemon's own profile denies its hooks
writes to ``/etc/apparmor.d/libvirt`` and running ``apparmor_parser``, but
lets ``/usr/sbin/*`` run under their own profile), which gets a tight
profile of its own.  Helper mode diverts libvirt's helper with
``dpkg-divert --rename`` and puts our launcher in its place, with the
local override libvirt's helper profile needs for Python.

Everything created is listed in a manifest, so uninstall removes exactly
that and restores what was there; files that are not ours are never
touched.  Both commands are idempotent and only touch userspace files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

from virt_aa.host import launcher
from virt_aa.host.fsutil import read_text, write_atomic

MARK = "virt-aa:managed"            # every file we write has this in its first lines
HOOK = "etc/libvirt/hooks/qemu.d/virt-aa"
ENTRY = "usr/sbin/virt-aa-hook"
ENTRY_PROFILE = "etc/apparmor.d/usr.sbin.virt-aa-hook"
HELPER = "usr/lib/libvirt/virt-aa-helper"
HELPER_STOCK = "usr/lib/libvirt/virt-aa-helper.stock"
HELPER_OVERRIDE = "etc/apparmor.d/local/usr.lib.libvirt.virt-aa-helper"
HELPER_PROFILE = "etc/apparmor.d/usr.lib.libvirt.virt-aa-helper"
MANIFEST = "var/lib/virt-aa/install.json"
BEGIN, END = "# BEGIN virt-aa (virt-aa install --mode helper)", "# END virt-aa"
RESTART_NOTE = ("libvirtd looks for hooks only when it starts: restart it or send it SIGHUP "
                "(systemctl restart libvirtd, or kill -HUP $(pidof libvirtd virtqemud))")


class InstallError(RuntimeError):
    """One line: why nothing was (or could be) changed, and what to do."""


def _abs(root: str, rel: str) -> str:
    return os.path.join(root, rel)


def _is_sandbox(root: str) -> bool:
    return os.path.normpath(root) != "/"


def _python() -> str:
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def _launcher(entry: str) -> str:
    return launcher.render(entry, _python()).replace("# virt-aa launcher",
                                                     f"# {MARK} launcher", 1)


def hook_script(root: str) -> str:
    entry = "/" + ENTRY if not _is_sandbox(root) else _abs(root, ENTRY)
    extra = f" --root {root}" if _is_sandbox(root) else ""
    return ("#!/bin/sh\n"
            f"# {MARK}: libvirt qemu hook, installed by `virt-aa install`, removed by\n"
            "# `virt-aa uninstall`.  It only hands over to the privileged entry point,\n"
            "# which runs under its own AppArmor profile.\n"
            f'exec {entry}{extra} "$@"\n')


def entry_profile(root: str, pkg: str | None = None) -> str:
    """A tight profile for the entry point: read its code (in ``pkg``, by default
    where this copy of virt-aa lives), write P and state."""
    pkg = pkg or launcher.package_dir()
    r = "" if not _is_sandbox(root) else root.rstrip("/")
    return f"""# {MARK}: AppArmor profile of virt-aa's libvirt hook entry point.
abi <abi/3.0>,
#include <tunables/global>

profile virt-aa-hook {r}/{ENTRY} flags=(attach_disconnected) {{
  #include <abstractions/base>
  #include <abstractions/python>

  {r}/{ENTRY} r,
  /usr/bin/python3* rix,
  {pkg}/ r,
  {pkg}/** r,
  /etc/apparmor.d/ r,
  /etc/apparmor.d/** r,
  {r}/etc/apparmor.d/libvirt/ r,
  {r}/etc/apparmor.d/libvirt/TEMPLATE.* r,
  {r}/etc/apparmor.d/libvirt/libvirt-[0-9a-f]*-[0-9a-f]*-[0-9a-f]*-[0-9a-f]*-[0-9a-f]* rw,
  {r}/etc/apparmor.d/local/ r,
  {r}/etc/apparmor.d/local/libvirt-[0-9a-f]*-[0-9a-f]*-[0-9a-f]*-[0-9a-f]*-[0-9a-f]* rw,
  {r}/etc/virt-aa/ r,
  {r}/etc/virt-aa/** r,
  {r}/var/lib/virt-aa/ rw,
  {r}/var/lib/virt-aa/** rwk,
  /usr/share/apparmor-features/** r,
  /etc/apparmor/parser.conf r,
  /{{usr/,}}sbin/apparmor_parser rix,
  @{{PROC}}/@{{pid}}/mounts r,
  /sys/kernel/security/apparmor/{{,**}} r,
  deny /etc/shadow r,
  # Python tries to cache bytecode next to stale or missing .pyc: refused quietly
  deny {pkg}/**/__pycache__/** w,

  include if exists <local/usr.sbin.virt-aa-hook>
}}
"""


def helper_override() -> str:
    """What libvirt's helper profile needs to run our Python helper."""
    pkg = launcher.package_dir()
    return f"""{BEGIN}
# libvirt's helper runs virt-aa's Python re-implementation (see `virt-aa status`)
/usr/bin/python3* rix,
{pkg}/ r,
{pkg}/** r,
/usr/lib/python3*/** r,
deny {pkg}/**/__pycache__/** w,
/etc/apparmor.d/libvirt/ r,
/etc/apparmor.d/local/ r,
/etc/apparmor.d/local/libvirt-[0-9a-f]*-[0-9a-f]*-[0-9a-f]*-[0-9a-f]*-[0-9a-f]* rw,
/etc/virt-aa/ r,
/etc/virt-aa/** r,
/var/lib/virt-aa/ rw,
/var/lib/virt-aa/** rwk,
/sys/kernel/security/apparmor/profiles r,
{END}
"""


class Plan:
    """The changes an install or uninstall makes, each one line for --dry-run."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    def add(self, text: str) -> None:
        self.steps.append(text)


def _ours(path: str) -> bool:
    """A file we wrote: the marker sits in one of its first three lines."""
    try:
        text = read_text(path, 1 << 20)
    except OSError:
        return False
    return text is not None and any(MARK in line for line in text.split("\n", 3)[:3])


def _manifest(root: str) -> dict[str, Any]:
    text = read_text(_abs(root, MANIFEST))
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _write_manifest(root: str, data: dict[str, Any]) -> None:
    path = _abs(root, MANIFEST)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def _place(root: str, rel: str, text: str, mode: int, plan: Plan, dry: bool,
           created: list[str]) -> None:
    """Write one of our files; refuse to overwrite a file that is not ours."""
    path = _abs(root, rel)
    current = read_text(path, 1 << 20) if os.path.lexists(path) else None
    if current is not None and not _ours(path):
        raise InstallError(f"{path} exists and is not virt-aa's: move it away first "
                           f"(nothing was changed)")
    if current == text and os.path.isfile(path):
        plan.add(f"keep   {path} (up to date)")
    else:
        plan.add(("update " if current is not None else "create ") + path)
        if not dry:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomic(path, text.encode(), mode)
    if rel not in created:
        created.append(rel)


def _check_profile(text: str, root: str) -> None:
    import tempfile

    from virt_aa.host import apparmor

    with tempfile.NamedTemporaryFile("w", suffix=".aa", prefix="virt-aa-install-") as f:
        f.write(text)
        f.flush()
        res = apparmor.compile_check(f.name, root)
    if not res.ok:
        raise InstallError(f"the entry point's profile does not compile: {res.message}")


def _load(path: str, root: str, plan: Plan, dry: bool) -> None:
    from virt_aa.host import apparmor

    if _is_sandbox(root) or not apparmor.kernel_has_apparmor():
        plan.add(f"note   {path}: not loaded (no AppArmor in this kernel or a --root "
                 f"sandbox); it loads with the other profiles at boot")
        return
    plan.add(f"load   {path}")
    if not dry:
        res = apparmor.run("-r", path, root, "virt-aa")
        if not res.ok:
            raise InstallError(f"apparmor_parser could not load {path}: {res.message}")


def _unload(path: str, root: str, plan: Plan, dry: bool) -> None:
    """Remove our profile from the kernel before its file goes (the parser reads
    the profile's name from the file)."""
    from virt_aa.host import apparmor

    if _is_sandbox(root) or not apparmor.kernel_has_apparmor():
        return
    plan.add(f"unload {path}")
    if not dry:
        res = apparmor.run("-R", path, root, "virt-aa")
        if not res.ok:
            plan.add(f"note   {path} stays loaded until reboot: {res.message}")


def _require_libvirt(root: str) -> None:
    if not os.path.isdir(_abs(root, "etc/libvirt")):
        raise InstallError(f"libvirt is not installed here ({_abs(root, 'etc/libvirt')} is "
                           f"missing): install libvirt-daemon-system first")


def install(root: str, mode: str = "hook", dry: bool = False) -> list[str]:
    """Install (or bring up to date) virt-aa in ``mode``; return the steps."""
    _require_libvirt(root)
    manifest = _manifest(root)
    if manifest.get("mode") and manifest["mode"] != mode:
        raise InstallError(f"virt-aa is installed in {manifest['mode']} mode: run "
                           f"`virt-aa uninstall` first")
    plan = Plan()
    override_created = False
    created: list[str] = list(manifest.get("created", []))
    dirs: list[str] = list(manifest.get("created_dirs", []))
    owned = [HOOK, ENTRY, ENTRY_PROFILE] if mode == "hook" else [HELPER]
    for rel in owned:   # all checks before the first write: refuse, or do it all
        path = _abs(root, rel)
        if os.path.lexists(path) and not _ours(path) and not (
                rel == HELPER and not _diverted(root)):
            raise InstallError(f"{path} exists and is not virt-aa's: move it away first "
                               f"(nothing was changed)")
    for rel in ("etc/libvirt/hooks", "etc/libvirt/hooks/qemu.d") if mode == "hook" else ():
        if not os.path.isdir(_abs(root, rel)):
            plan.add(f"mkdir  {_abs(root, rel)}")
            if not dry:
                os.makedirs(_abs(root, rel), exist_ok=True)
            if rel not in dirs:
                dirs.append(rel)
    if mode == "hook":
        profile = entry_profile(root)
        _check_profile(profile, root)
        _place(root, ENTRY, _launcher("virt-aa-hook"), 0o755, plan, dry, created)
        _place(root, HOOK, hook_script(root), 0o755, plan, dry, created)
        _place(root, ENTRY_PROFILE, profile, 0o644, plan, dry, created)
        _load(_abs(root, ENTRY_PROFILE), root, plan, dry)
        plan.add(f"note   {RESTART_NOTE}")
        _warn_location(plan)
    elif mode == "helper":
        override_created = _install_helper(root, plan, dry, created)
        _warn_location(plan)
    else:
        raise InstallError(f"unknown mode {mode!r}: use hook or helper")
    if not dry:
        _write_manifest(root, {"version": 1, "mode": mode, "created": created,
                               "created_dirs": dirs,
                               "override_created": bool(manifest.get("override_created"))
                               or (mode == "helper" and override_created)})
    return plan.steps


def location_warning() -> str | None:
    """Why the launchers written now would break if a directory moved (None: they
    point at a system-wide install, e.g. the Debian package's)."""
    pkg = launcher.package_dir()
    if launcher.is_system_install():
        return None
    return (f"the launchers libvirt runs load virt-aa from {pkg} (a checkout or "
            f"virtualenv): moving or deleting it makes every VM start fail; on a "
            f"production host install the Debian package (README: Install on a hypervisor)")


def _warn_location(plan: Plan) -> None:
    warning = location_warning()
    if warning:
        plan.add(f"warn   {warning}")


def refresh(root: str, dry: bool = False) -> list[str]:
    """Bring an existing install up to date in its recorded mode (the package's
    postinst runs this on upgrade: launchers and profile follow the code)."""
    mode = _manifest(root).get("mode")
    if mode not in ("hook", "helper"):
        return ["virt-aa is not installed here: nothing to refresh"]
    return install(root, str(mode), dry)


def _divert_argv(root: str, *args: str) -> list[str]:
    tool = shutil.which("dpkg-divert")
    if tool is None:
        raise InstallError("dpkg-divert not found: helper mode needs Debian/Ubuntu's dpkg "
                           "(use the default hook mode instead)")
    argv = [tool]
    if _is_sandbox(root):
        argv += ["--root", root]
    return argv + list(args)


def _diverted(root: str) -> bool:
    out = subprocess.run(_divert_argv(root, "--listpackage", "/" + HELPER),
                         capture_output=True, text=True, check=False).stdout.strip()
    return bool(out)


def _install_helper(root: str, plan: Plan, dry: bool, created: list[str]) -> bool:
    """Divert the stock helper, put our launcher in its place; True if we made the
    local override file (so uninstall may delete it again)."""
    helper = _abs(root, HELPER)
    if not _diverted(root):
        if not os.path.exists(helper):
            raise InstallError(f"{helper} not found: is libvirt-daemon installed?")
        if _ours(helper):
            raise InstallError(f"{helper} is a virt-aa launcher but not diverted: run "
                               f"`virt-aa uninstall` to clean up first")
        plan.add(f"divert {helper} -> {_abs(root, HELPER_STOCK)} (dpkg-divert --rename)")
        if not dry:
            proc = subprocess.run(_divert_argv(root, "--local", "--rename", "--divert",
                                               "/" + HELPER_STOCK, "--add", "/" + HELPER),
                                  capture_output=True, text=True, check=False)
            if proc.returncode:
                raise InstallError(f"dpkg-divert failed: {proc.stderr.strip()}")
    text = _launcher("virt-aa-helper")
    if os.path.exists(helper) and not _ours(helper):
        raise InstallError(f"{helper} exists and is not virt-aa's")
    if not os.path.exists(helper) or read_text(helper) != text:
        plan.add(f"create {helper} (virt-aa's helper launcher)")
        if not dry:
            write_atomic(helper, text.encode(), 0o755)
    if HELPER not in created:
        created.append(HELPER)
    override = _abs(root, HELPER_OVERRIDE)
    made = not os.path.exists(override)
    current = read_text(override) or ""
    block = helper_override()
    if block not in current:
        stripped = _strip_block(current)
        plan.add(("create " if not os.path.exists(override) else "update ") + override)
        if not dry:
            os.makedirs(os.path.dirname(override), exist_ok=True)
            sep = "" if not stripped or stripped.endswith("\n") else "\n"
            write_atomic(override, (stripped + sep + block).encode())
    _load(_abs(root, HELPER_PROFILE), root, plan, dry)
    return made


def _strip_block(text: str) -> str:
    if BEGIN not in text:
        return text
    start = text.index(BEGIN)
    end = text.find(END, start)
    end = len(text) if end < 0 else end + len(END)
    if end < len(text) and text[end] == "\n":
        end += 1
    return text[:start] + text[end:]


def uninstall(root: str, dry: bool = False) -> list[str]:
    """Remove exactly what install created and restore what was there."""
    manifest = _manifest(root)
    plan = Plan()
    created = list(manifest.get("created", []))
    # a half-finished install may have left files without a manifest entry
    for rel in (HOOK, ENTRY, ENTRY_PROFILE, HELPER):
        if rel not in created and os.path.exists(_abs(root, rel)) and _ours(_abs(root, rel)):
            created.append(rel)
    if not created and not manifest and BEGIN not in (read_text(_abs(root, HELPER_OVERRIDE))
                                                      or ""):
        return ["virt-aa is not installed here: nothing to do"]
    for rel in created:
        path = _abs(root, rel)
        if not os.path.lexists(path):
            continue
        if not _ours(path):
            plan.add(f"keep   {path} (not virt-aa's)")
            continue
        if rel == ENTRY_PROFILE:
            _unload(path, root, plan, dry)
        plan.add(f"remove {path}")
        if not dry:
            os.unlink(path)
    if HELPER in created and shutil.which("dpkg-divert") and _diverted(root):
        plan.add(f"restore {_abs(root, HELPER)} (dpkg-divert --rename --remove)")
        if not dry:
            proc = subprocess.run(_divert_argv(root, "--local", "--rename", "--divert",
                                               "/" + HELPER_STOCK, "--remove", "/" + HELPER),
                                  capture_output=True, text=True, check=False)
            if proc.returncode:
                raise InstallError(f"dpkg-divert failed: {proc.stderr.strip()}")
    override = _abs(root, HELPER_OVERRIDE)
    text = read_text(override)
    if text and BEGIN in text:
        rest = _strip_block(text)
        if not rest.strip() and manifest.get("override_created"):
            plan.add(f"remove {override}")
            if not dry:
                os.unlink(override)
        else:
            plan.add(f"update {override} (virt-aa block removed)")
            if not dry:
                write_atomic(override, rest.encode())
        if not _is_sandbox(root) and os.path.exists(_abs(root, HELPER_PROFILE)):
            try:            # the kernel drops the rules we added
                _load(_abs(root, HELPER_PROFILE), root, plan, dry)
            except InstallError as exc:
                plan.add(f"note   {exc}")
    for rel in sorted(manifest.get("created_dirs", []), key=len, reverse=True):
        path = _abs(root, rel)
        if os.path.isdir(path) and not os.listdir(path):
            plan.add(f"rmdir  {path}")
            if not dry:
                os.rmdir(path)
    if manifest:
        plan.add(f"remove {_abs(root, MANIFEST)}")
        if not dry:
            os.unlink(_abs(root, MANIFEST))
    if not dry and created and HOOK in created:
        plan.add(f"note   {RESTART_NOTE}")
    return plan.steps
