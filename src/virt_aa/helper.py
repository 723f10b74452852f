"""``virt-aa-helper``: a drop-in, safer replacement for libvirt's helper.

Same command line (including getopt's quirks that libvirt relies on), same
files, dry-run output, messages and exit codes as the installed libvirt's
helper (8.0 to 12.8; :mod:`virt_aa.host.libvirtversion` finds which and
``VIRT_AA_LIBVIRT_VERSION`` overrides it); see ``libvirt-apparmor.md`` §1.
It runs at every VM start, so it imports only what the chosen mode needs:
no argparse, no re, no subprocess in a dry run.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~8 ms
if TYPE_CHECKING:
    from virt_aa.generate.domain import Domain
    from virt_aa.host.store import Store

USAGE = """
{prog} mode [options] [extra file] [< def.xml]

  Modes:
    -a | --add                     load profile
    -c | --create                  create profile from template
    -D | --delete                  unload profile and delete generated rules
    -r | --replace                 reload profile
    -R | --remove                  unload profile
  Options:
    -d | --dryrun                  dry run
    -u | --uuid <uuid>             uuid (profile name)
    -h | --help                    this help
    --root <dir>                   prefix for every host path written (virt-aa;
                                   also $VIRT_AA_ROOT)
  Extra File:
    -f | --add-file <file>         add file to a profile generated from XML
    -F | --append-file <file>      append file to an existing profile

This command is intended to be used by libvirtd and not used directly.
"""
MAX_XML = 10 * 1024 * 1024
PROFILE_PREFIX = "libvirt-"
# (long name, short letter, takes an argument) - as stock declares them:
# --add-file/--append-file take no argument there, so their value is lost.
LONG_OPTS = (
    ("add", "a", False), ("create", "c", False), ("dryrun", "d", False),
    ("delete", "D", False), ("add-file", "f", False), ("append-file", "F", False),
    ("help", "h", False), ("replace", "r", False), ("remove", "R", False),
    ("uuid", "u", True), ("root", "root", True),
)
SHORT_WITH_ARG = frozenset("HbupfF")
SHORT_OPTS = frozenset("acdDhrRHbupfF")


class Fail(Exception):
    """Exit 1 after printing these (level, message) lines."""

    def __init__(self, *lines: tuple[str, str]) -> None:
        super().__init__(lines)
        self.lines = lines


class Options:
    def __init__(self) -> None:
        self.cmd = ""
        self.dryrun = False
        self.uuid = ""
        self.newfile: str | None = None
        self.append = False
        self.help = False
        self.root = os.environ.get("VIRT_AA_ROOT") or "/"


def _apply(opts: Options, letter: str, arg: str | None) -> None:
    if letter in "acDrR":
        opts.cmd = letter
    elif letter == "d":
        opts.dryrun = True
    elif letter in "fF":
        opts.newfile = arg
        opts.append = letter == "F"
    elif letter == "h":
        opts.help = True
    elif letter == "u":
        if arg is None or len(arg) > 44:
            raise Fail(("error", "invalid UUID"))
        opts.uuid = arg
    elif letter == "root":
        opts.root = arg or "/"
    else:
        raise Fail(("error", "unsupported option"))


def parse_argv(argv: list[str], prog: str) -> Options:
    """GNU getopt_long semantics for stock's option table (permuting, abbreviations)."""
    opts = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        if arg.startswith("--"):
            name, eq, given = arg[2:].partition("=")
            value: str | None = given
            matches = [o for o in LONG_OPTS if o[0] == name] or \
                [o for o in LONG_OPTS if o[0].startswith(name)]
            if len(matches) != 1:
                what = "ambiguous" if matches else "unrecognized"
                print(f"{prog}: {what} option '{arg}'", file=sys.stderr)
                raise Fail(("error", "unsupported option"))
            long_name, letter, has_arg = matches[0]
            if has_arg and not eq:
                if i >= len(argv):
                    print(f"{prog}: option '--{long_name}' requires an argument",
                          file=sys.stderr)
                    raise Fail(("error", "unsupported option"))
                value = argv[i]
                i += 1
            elif eq and not has_arg:
                print(f"{prog}: option '--{long_name}' doesn't allow an argument",
                      file=sys.stderr)
                raise Fail(("error", "unsupported option"))
            _apply(opts, letter, value if has_arg else None)
            if opts.help:
                return opts
            continue
        if not arg.startswith("-") or arg == "-":
            continue  # getopt permutes non-options to the end; stock ignores them
        j = 1
        while j < len(arg):
            letter = arg[j]
            j += 1
            if letter not in SHORT_OPTS:
                print(f"{prog}: invalid option -- '{letter}'", file=sys.stderr)
                raise Fail(("error", "unsupported option"))
            value = None
            if letter in SHORT_WITH_ARG:
                if j < len(arg):
                    value = arg[j:]
                elif i < len(argv):
                    value = argv[i]
                    i += 1
                else:
                    print(f"{prog}: option requires an argument -- '{letter}'",
                          file=sys.stderr)
                    raise Fail(("error", "unsupported option"))
                j = len(arg)
            _apply(opts, letter, value)
            if opts.help:
                return opts
    return opts


def valid_profile_name(name: str) -> bool:
    """``libvirt-`` + a UUID in canonical 8-4-4-4-12 form (any case)."""
    if len(name) != 44 or not name.startswith(PROFILE_PREFIX):
        return False
    uuid = name[len(PROFILE_PREFIX):]
    for pos, ch in enumerate(uuid):
        if pos in (8, 13, 18, 23):
            if ch != "-":
                return False
        elif ch not in "0123456789abcdefABCDEF":
            return False
    return True


class Output:
    """stderr writer that keeps raw bytes (names cut mid-character) intact."""

    def __init__(self, prog: str) -> None:
        self.prog = prog
        self.buf: list[str] = []

    def line(self, level: str, msg: str) -> None:
        self.buf.append(f"{self.prog}: {level}: {msg}\n")

    def info(self, text: str) -> None:
        self.buf.append(f"{self.prog}:\n{text}\n")

    def flush(self) -> None:
        if not self.buf:
            return
        data = "".join(self.buf).encode("utf-8", "surrogateescape")
        self.buf.clear()
        try:
            sys.stderr.flush()
            os.write(2, data)
        except OSError:
            pass


def _read_stdin() -> bytes:
    chunks = []
    total = 0
    while True:
        try:
            chunk = os.read(0, 1 << 20)
        except OSError as exc:
            raise Fail(("error", f"could not read xml file: {exc.strerror}")) from None
        if not chunk:
            break
        total += len(chunk)
        if total > MAX_XML:
            raise Fail(("error", "could not read xml file: larger than 10 MiB"))
        chunks.append(chunk)
    return b"".join(chunks)


def _paths(opts: Options) -> tuple[str, str]:
    base = os.path.join(opts.root, "etc/apparmor.d/libvirt")
    profile = os.path.join(base, opts.uuid)
    return profile, profile + ".files"


def _generate(opts: Options, out: Output) -> tuple[Domain, str]:
    """Parse the XML on stdin and compute the .files body (stock's get_files)."""
    from virt_aa.generate.accesses import GenerationError, extra_file_rules, fixed_rules, generate
    from virt_aa.generate.domain import DomainError, parse_domain, valid_name
    from virt_aa.generate.profile import render_rules
    from virt_aa.generate.versions import VersionError, libvirt
    from virt_aa.host.hostfacts import SystemHost
    from virt_aa.host.libvirtversion import detect

    try:
        version, notes = detect()
    except VersionError as exc:
        raise Fail(("error", str(exc))) from None
    for note in notes:
        out.line("warning", note)
    lv = libvirt(version)
    data = _read_stdin()
    try:
        dom = parse_domain(data, lv)
    except DomainError as exc:
        raise Fail(*exc.lines) from None
    if not valid_name(dom.name):
        raise Fail(("error", "bad name"), ("error", "could not get VM definition"))
    if dom.profile_name != opts.uuid:
        raise Fail(("error", "given uuid does not match XML uuid"),
                   ("error", "invalid VM definition"))
    host = SystemHost()
    try:
        gen = generate(dom, host, None if opts.append else opts.newfile, lv=lv)
        if opts.append and opts.newfile is not None:
            extra = extra_file_rules(host, opts.newfile, lv)
            gen.warnings.extend(extra.warnings)
            rules = extra.rules
        else:
            rules = (fixed_rules(dom) if dom.is_qemu else []) + gen.rules
    except GenerationError as exc:
        raise Fail(*(("error", m) for m in exc.lines),
                   ("error", "invalid VM definition")) from None
    for w in gen.warnings:
        out.line("warning", w)
    for tag in dom.ignored:
        out.line("warning", f"<devices><{tag}> is not known to virt-aa: no rule written for "
                            f"it (libvirt {version[0]}.{version[1]} may need one; see README)")
    return dom, render_rules(rules)


def _parser(action: str, profile: str, opts: Options, out: Output, prog: str) -> bool:
    from virt_aa.host import apparmor

    out.flush()
    res = apparmor.run(action, profile, opts.root, prog)
    if res.ok:
        if res.message:
            out.line("warning", res.message)
        return True
    if res.message and res.message != "apparmor_parser exited with error":
        out.line("error", res.message)
    out.line("error", "apparmor_parser exited with error")
    return False


def _create_or_replace(opts: Options, out: Output, prog: str) -> int:
    dom, body = _generate(opts, out)
    if opts.dryrun:
        return _dry_run(opts, out, dom, body)
    from virt_aa.host.store import Store

    store = Store(opts.root)
    try:
        store.lock()
    except OSError as exc:
        raise Fail(("error", f"cannot take the virt-aa lock under {opts.root}: "
                             f"{exc.strerror or exc}")) from None
    try:
        return _write_and_load(opts, out, prog, store, dom, body)
    finally:
        store.unlock()


def _dry_run(opts: Options, out: Output, dom: Domain, body: str) -> int:
    """Print what -c/-r would write (stock's dry run): no lock, no store; the
    store and the per-VM rule checker are imported only for ``-d -c``."""
    profile, files = _paths(opts)
    if opts.cmd == "c" and os.path.exists(profile):
        raise Fail(("error", "profile exists"))
    out.info(files)
    out.info(body)
    if opts.cmd == "c":
        from virt_aa.generate.profile import include_lines
        from virt_aa.host import vmprofile
        from virt_aa.host.store import Store

        for problem in vmprofile.local_problems(Store(opts.root), opts.uuid):
            out.line("warning", problem)
        out.info(profile)
        out.info(opts.uuid)
        out.info(include_lines(opts.uuid, dom.virt_type, True))
    return 0


def _write_and_load(opts: Options, out: Output, prog: str, store: Store, dom: Domain,
                    body: str) -> int:
    """Stock's -c/-r steps, with P regenerated from the stored per-VM state."""
    from virt_aa.generate.profile import TemplateError, files_content
    from virt_aa.host import vmprofile
    from virt_aa.host.fsutil import read_text, unlink_quiet, write_atomic

    profile, files = store.profile(opts.uuid), store.files(opts.uuid)
    exists = os.path.exists(profile)
    if opts.cmd == "c" and exists:
        raise Fail(("error", "profile exists"))
    purged = False
    if exists and os.path.getsize(profile) == 0:
        out.line("warning", "Profile of 0 size detected, will attempt to remove it")
        if not _parser("-R", profile, opts, out, prog):
            raise Fail(("error", "could not remove profile"))
        unlink_quiet(profile)
        exists, purged = False, True

    with_local = True
    problems = vmprofile.local_problems(store, opts.uuid)
    if problems:
        fallback = vmprofile.on_broken_rules(store) == "stock"
        for problem in problems:
            out.line("warning" if fallback else "error", problem)
        if not fallback:
            raise Fail(("error", f"refusing to (re)load {opts.uuid}: its per-VM rules do not "
                                 f"parse; fix the file or `virt-aa revoke` the rule"))
        out.line("warning", "loading the stock profile without per-VM rules "
                            "(on_broken_rules = \"stock\")")
        with_local = False

    if dom.virt_type != "lxc":
        old = read_text(files) if opts.append else None
        content = files_content(body, old).encode("utf-8", "surrogateescape")
        current = read_text(files)
        if current is None or current.encode("utf-8", "surrogateescape") != content:
            try:
                write_atomic(files, content)
            except OSError as exc:
                raise Fail(("error", f"failed to create include file {files}: "
                                     f"{exc.strerror or exc}")) from None

    if opts.cmd == "r" and not exists and not purged:
        unlink_quiet(files)
        raise Fail(("error", "profile does not exist"))
    previous = read_text(profile) if exists else None
    files_, mode, refusals = vmprofile.policy_files(store, dom)
    if refusals:
        unlink_quiet(files)
        raise Fail(*(("error", r) for r in refusals),
                   ("error", "refusing to load the profile: named policies do not match"))
    try:
        text = vmprofile.render(store, opts.uuid, dom.virt_type, with_local, mode,
                                tuple(files_))
        vmprofile.ensure_local(store, opts.uuid)
        if text != previous:
            write_atomic(profile, text.encode("utf-8", "surrogateescape"))
    except (TemplateError, OSError) as exc:
        out.line("error", str(exc) if isinstance(exc, TemplateError)
                 else f"{profile}: {getattr(exc, 'strerror', None) or exc}")
        out.line("error", "could not create profile")
        unlink_quiet(files)
        return 1
    if _parser("-a" if opts.cmd == "c" else "-r", profile, opts, out, prog):
        return 0
    unlink_quiet(files)
    if opts.cmd == "c":
        unlink_quiet(profile)
    elif previous is not None and previous != text:
        write_atomic(profile, previous.encode("utf-8", "surrogateescape"))
    return 1


def _simple(opts: Options, out: Output, prog: str) -> int:
    """-a, -R, -D: run the parser (these ignore -d, as stock does)."""
    from virt_aa.host.fsutil import unlink_quiet

    profile, files = _paths(opts)
    if opts.cmd == "a":
        if not os.path.exists(profile):
            raise Fail(("error", "profile does not exist"))
        return 0 if _parser("-a", profile, opts, out, prog) else 1
    ok = True
    if os.path.exists(profile):
        ok = _parser("-R", profile, opts, out, prog)
    else:
        out.line("error", "profile does not exist")
        ok = False
    if opts.cmd == "D":
        unlink_quiet(files)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
        prog = os.path.basename(sys.argv[0]) or "virt-aa-helper"
    else:
        prog = "virt-aa-helper"
    out = Output(prog)
    try:
        opts = parse_argv(argv, prog)
        if opts.help:
            sys.stdout.write(USAGE.format(prog=prog) + "\n")
            return 0
        if opts.cmd not in ("", "a", "c", "D", "r", "R"):
            raise Fail(("error", "bad command"))
        if not valid_profile_name(opts.uuid):
            raise Fail(("error", "invalid UUID"))
        if not opts.cmd:
            sys.stdout.write(USAGE.format(prog=prog) + "\n")
            return 1
        if opts.cmd in ("c", "r"):
            return _create_or_replace(opts, out, prog)
        return _simple(opts, out, prog)
    except Fail as exc:
        for level, msg in exc.lines:
            out.line(level, msg)
        return 1
    except KeyboardInterrupt:
        out.line("error", "interrupted")
        return 1
    except Exception as exc:  # never a traceback for libvirt to show; fail closed
        if os.environ.get("VIRT_AA_DEBUG"):
            raise
        out.line("error", f"internal error ({type(exc).__name__}: {exc}); nothing was "
                          f"loaded; set VIRT_AA_DEBUG=1 for details")
        return 1
    finally:
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
