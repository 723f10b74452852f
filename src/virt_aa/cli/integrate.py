"""Plugging into libvirt and looking after the host: install, status, prune, sandbox, docs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from virt_aa.cli.common import CliError, _emit, _root, _store


def cmd_install(args: argparse.Namespace) -> int:
    from virt_aa.host.installer import InstallError, install, refresh, uninstall

    try:
        if args.command == "install" and args.refresh:
            steps = refresh(_root(args), args.dry_run)
        elif args.command == "install":
            steps = install(_root(args), args.mode, args.dry_run)
        else:
            steps = uninstall(_root(args), args.dry_run)
    except (InstallError, OSError) as exc:
        raise CliError(str(exc)) from None
    prefix = "would: " if args.dry_run else ""
    for step in steps:
        if step.startswith("warn ") and getattr(args, "json", False):
            print(f"virt-aa: warning: {step[5:].strip()}", file=sys.stderr)
    return _emit(args, {"dry_run": args.dry_run, "steps": steps},
                 "\n".join(prefix + s for s in steps))


def cmd_status(args: argparse.Namespace) -> int:
    from virt_aa.ops.status import collect, drift, render, render_drift

    if args.isolation:
        from virt_aa.host import libvirt as lv
        from virt_aa.ops.isolation import domains_of, render_report, report

        try:
            domains = domains_of(lv.connect(args.connect))
        except lv.LibvirtError as exc:
            raise CliError(str(exc)) from None
        rep = report(_store(args), domains)
        _emit(args, rep, render_report(rep))
        return 1 if rep["breaches"] else 0
    result = collect(_store(args), args.connect)
    if args.drift:
        found = drift(result)
        _emit(args, found, render_drift(found))
        return 1 if found["drift"] else 0
    return _emit(args, result, render(result))


def cmd_prune(args: argparse.Namespace) -> int:
    from virt_aa.ops.status import collect, prune

    store = _store(args)
    stale = collect(store, args.connect)["stale_profiles"]
    if not stale:
        return _emit(args, {"removed": []}, "no stale profiles")
    names = ", ".join(s["profile"] for s in stale)
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError(f"{len(stale)} stale profile(s) ({names}): confirm with --yes")
        answer = input(f"remove {len(stale)} stale profile(s) ({names})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return _emit(args, {"removed": []}, "nothing removed")
    removed = prune(store, stale)
    return _emit(args, {"removed": removed}, "\n".join(f"removed {p}" for p in removed))


def cmd_completion(args: argparse.Namespace) -> int:
    from virt_aa.cli import build_parser
    from virt_aa.cli.docgen import bash_completion

    sys.stdout.write(bash_completion(build_parser()))
    return 0


def cmd_man(args: argparse.Namespace) -> int:
    from virt_aa.cli import build_parser
    from virt_aa.cli.docgen import man_page

    sys.stdout.write(man_page(build_parser()))
    return 0


# -- denials ----------------------------------------------------------------------------------

def cmd_sandbox(args: argparse.Namespace) -> int:
    from virt_aa.host.sandbox import seed

    written = seed(args.dir)
    for path in written:
        print(f"created {path}")
    print(f"sandbox ready: use --root {args.dir} (or VIRT_AA_ROOT={args.dir})")
    return 0


def register(sub: Any) -> None:
    """Add this family's verbs to the parser."""
    for name, help_, desc in (
            ("install", "plug virt-aa into this libvirt host",
             "Install the libvirt qemu hook (default, works with libvirt's own helper) or "
             "replace libvirt's virt-aa-helper (--mode helper, via dpkg-divert).  Idempotent; "
             "keeps existing hooks; libvirtd must be restarted or sent SIGHUP afterwards."),
            ("uninstall", "remove what `virt-aa install` put in place",
             "Remove exactly what install created and restore what was there (hook files, "
             "the entry point and its profile, the diversion).  Idempotent.")):
        sp = sub.add_parser(name, help=help_, description=desc)
        if name == "install":
            sp.add_argument("--mode", choices=("hook", "helper"), default="hook",
                            help="hook (default) or helper")
            sp.add_argument("--refresh", action="store_true",
                            help="only bring an existing install up to date in its "
                                 "recorded mode (launchers, profile); nothing if virt-aa "
                                 "is not installed (the Debian package runs this on "
                                 "upgrade)")
        sp.add_argument("--dry-run", action="store_true", help="print what would change")
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=cmd_install)

    sp = sub.add_parser("status", help="every domain's confinement at a glance",
                        description="Every defined domain: state, profile loaded, mode, "
                                    "per-VM rules, whether the profile is current; and "
                                    "stale profiles of domains that no longer exist.")
    sp.add_argument("--drift", action="store_true",
                    help="only what differs: named policies missing or different on this "
                         "host, profiles not current (exit 1 if any)")
    sp.add_argument("--isolation", action="store_true",
                    help="which VM can reach which other VM's files, and through what "
                         "(per-VM rule, policy, host-wide or generated rule); declared "
                         "sharing shown as such (exit 1 if any VM reaches another's)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("prune", help="remove profiles of domains that no longer exist",
                        description="Remove the generated profiles (and .files) of domains "
                                    "libvirt no longer knows, after confirmation.  Per-VM "
                                    "rules and settings are kept (a redefined domain with "
                                    "the same UUID gets them back).")
    sp.add_argument("--yes", "-y", action="store_true", help="do not ask")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_prune)

    sp = sub.add_parser("completion", help="print the bash completion script",
                        description="Print a bash completion script generated from this "
                                    "parser: eval \"$(virt-aa completion)\".")
    sp.set_defaults(func=cmd_completion)
    sp = sub.add_parser("man", help="print the man page (roff)",
                        description="Print virt-aa(8) generated from this parser: "
                                    "virt-aa man | man -l -")
    sp.set_defaults(func=cmd_man)

    sb = sub.add_parser("sandbox", help="create a --root sandbox with libvirt's templates",
                        description="Create DIR/etc/apparmor.d/libvirt with the profile "
                                    "templates, so --root DIR works without touching the "
                                    "host.")
    sb.add_argument("dir", metavar="DIR")
    sb.set_defaults(func=cmd_sandbox)
