"""apparmor_parser and the kernel's AppArmor state.

On a kernel without AppArmor (``/sys/kernel/security/apparmor`` absent), or
for a ``--root`` sandbox, a load or replace becomes a compile check with the
real parser and we say so once; nothing ever pretends a profile was loaded.
"""

from __future__ import annotations

import os
import sys

STOCK_PARSER = "/sbin/apparmor_parser"   # what libvirt's helper runs, hard-coded
# The kernel's AppArmor interface.  VIRT_AA_SECURITYFS points tests at a stand-in
# directory (with a ``profiles`` list) together with a recording VIRT_AA_PARSER:
# the one fake the tests use, for the kernel this machine does not have.
SECURITYFS = os.environ.get("VIRT_AA_SECURITYFS") or "/sys/kernel/security/apparmor"
FEATURES_FILE = "/usr/share/apparmor-features/features"
ALREADY_UNLOADED = 234                   # apparmor_parser -R on an unknown profile
_announced = False


class ParserResult:
    __slots__ = ("loaded", "message", "ok", "returncode")

    def __init__(self, ok: bool, message: str, loaded: bool, returncode: int = 0) -> None:
        self.ok = ok
        self.message = message    # one line for the admin ("" when all went well)
        self.loaded = loaded      # True only when the kernel really got the profile
        self.returncode = returncode


def parser_path() -> str:
    """The parser to run: $VIRT_AA_PARSER, else the one libvirt runs, else PATH."""
    env = os.environ.get("VIRT_AA_PARSER")
    if env:
        return env
    for cand in (STOCK_PARSER, "/usr/sbin/apparmor_parser"):
        if os.access(cand, os.X_OK):
            return cand
    return "apparmor_parser"


def kernel_has_apparmor() -> bool:
    return os.path.isdir(SECURITYFS)


def loaded_profiles() -> set[str] | None:
    """Names of the profiles in the kernel, or None without AppArmor."""
    try:
        with open(f"{SECURITYFS}/profiles", encoding="utf-8", errors="replace") as f:
            return {line.rsplit(" (", 1)[0] for line in f if line.strip()}
    except OSError:
        return None


def _announce(prog: str, why: str) -> None:
    global _announced
    if not _announced:
        _announced = True
        print(f"{prog}: warning: {why}: compile check only, nothing loaded into the kernel",
              file=sys.stderr)


def parser_version(parser: str | None = None) -> tuple[int, ...] | None:
    """The parser's version, e.g. (3, 0, 8); None when it cannot be run."""
    import subprocess

    try:
        out = subprocess.run([parser or parser_path(), "--version"], capture_output=True,
                             text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for word in out.split():
        parts = word.strip("()").split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts):
            return tuple(int(p) for p in parts)
    return None


def compile_check(profile: str, root: str) -> ParserResult:
    """Compile ``profile`` with the real parser without loading it."""
    import subprocess

    from virt_aa.host.fsutil import crash_point

    crash_point()
    argv = [parser_path(), "-Q", "-T", "-K"]
    etc = os.path.join(root, "etc/apparmor.d")
    if os.path.normpath(root) != "/":
        argv += ["-I", etc]
    argv += ["-I", "/etc/apparmor.d"]
    if os.path.exists(FEATURES_FILE):
        argv += ["--features-file", FEATURES_FILE]
    argv.append(profile)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              timeout=300, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return ParserResult(False, f"failed to run apparmor_parser: {exc}", False, -1)
    msg = " ".join(proc.stderr.split())[:2000]
    return ParserResult(proc.returncode == 0, msg, False, proc.returncode)


def run(action: str, profile: str, root: str, prog: str) -> ParserResult:
    """``apparmor_parser -a|-r|-R profile`` as libvirt's helper runs it.

    Without a kernel to load into (no AppArmor, or a --root sandbox) -a/-r
    become a compile check and -R has nothing to unload.
    """
    import subprocess

    sandbox = os.path.normpath(root) != "/" and not os.environ.get("VIRT_AA_SECURITYFS")
    if sandbox or not kernel_has_apparmor():
        _announce(prog, "--root sandbox" if sandbox else "no AppArmor in this kernel")
        if action == "-R":
            return ParserResult(True, "", False, 0)
        return compile_check(profile, root)
    from virt_aa.host.fsutil import crash_point

    crash_point()
    try:
        argv = [parser_path(), action, profile]
        if os.path.normpath(root) != "/":
            argv[2:2] = ["-I", os.path.join(root, "etc/apparmor.d")]
        proc = subprocess.run(argv, timeout=300, check=False,
                              env={"PATH": "/sbin:/usr/sbin", "IFS": " \t\n"})
    except (OSError, subprocess.SubprocessError) as exc:
        return ParserResult(False, f"failed to run apparmor_parser: {exc}", False, -1)
    if proc.returncode == 0:
        return ParserResult(True, "", True, 0)
    if action == "-R" and proc.returncode == ALREADY_UNLOADED:
        return ParserResult(True, "unable to unload already unloaded profile", False,
                            proc.returncode)
    return ParserResult(False, "apparmor_parser exited with error", False, proc.returncode)
