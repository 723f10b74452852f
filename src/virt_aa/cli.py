"""``virt-aa``: manage the AppArmor confinement of libvirt guests.

One ``main(argv) -> int``; each verb computes a plain result and renders it
as a table for people or JSON (``--json``) for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from . import __version__


class CliError(Exception):
    """One-line error for the admin, printed as ``virt-aa: error: ...``; exit 1."""


@dataclass
class Target:
    """The domain a command is about: its XML and where it came from."""

    xml: bytes
    source: str


def _root(args: argparse.Namespace) -> str:
    return str(args.root or os.environ.get("VIRT_AA_ROOT") or "/")


def _target(args: argparse.Namespace) -> Target:
    if args.xml:
        try:
            with open(args.xml, "rb") as f:
                data = f.read(10 * 1024 * 1024 + 1)
        except OSError as exc:
            raise CliError(f"cannot read {args.xml}: {exc.strerror}") from None
        return Target(data, args.xml)
    if not args.domain:
        raise CliError("name a domain (name, UUID or id) or give --xml FILE")
    from . import libvirt as lv

    try:
        conn = lv.connect(args.connect)
        dom = lv.lookup(conn, args.domain)
        return Target(lv.domain_xml(dom), f"{conn.getURI()} domain {dom.name()}")
    except lv.LibvirtError as exc:
        raise CliError(str(exc)) from None


def cmd_show(args: argparse.Namespace) -> int:
    from .accesses import GenerationError, fixed_rules, generate
    from .domain import DomainError, parse_domain
    from .hostfacts import SystemHost

    target = _target(args)
    try:
        dom = parse_domain(target.xml)
        gen = generate(dom, SystemHost())
    except DomainError as exc:
        raise CliError(f"{target.source}: " + "; ".join(m for _, m in exc.lines)) from None
    except GenerationError as exc:
        raise CliError(f"{target.source}: " + "; ".join(exc.lines)) from None
    rules = (fixed_rules(dom) if dom.is_qemu else []) + gen.rules
    result: dict[str, Any] = {
        "domain": dom.name, "uuid": dom.uuid, "profile": dom.profile_name,
        "virt_type": dom.virt_type,
        "generated_rules": [
            {"path": r.path, "perms": r.perms, "origin": r.origin,
             "deny_write": r.deny_write, "deny": r.deny,
             "recursive": r.dir_path is not None}
            for r in rules],
        "warnings": sorted(set(gen.warnings)),
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    print(f"domain {dom.name}  uuid {dom.uuid}  profile {dom.profile_name}")
    width = max((len(r.origin) for r in rules), default=6)
    print(f"{'FROM':<{width}}  {'PERMS':<6} PATH")
    for r in rules:
        perms = ("deny " if r.deny else "") + r.perms
        note = "  (+ deny w, not audited)" if r.deny_write else ""
        print(f"{r.origin:<{width}}  {perms:<6} {r.path}{note}")
        if r.dir_path is not None:
            print(f"{r.origin:<{width}}  {'r':<6} {r.dir_path}")
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from .sandbox import seed

    root = args.dir
    written = seed(root)
    for path in written:
        print(f"created {path}")
    print(f"sandbox ready: use --root {root} (or VIRT_AA_ROOT={root})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="virt-aa",
        description="Manage the AppArmor confinement of libvirt/QEMU guests: see the "
                    "rules each guest gets and why.",
        epilog="Domains are named like virsh does (name, UUID or id) or given offline "
               "with --xml FILE.  Environment: LIBVIRT_DEFAULT_URI, VIRT_AA_ROOT.")
    p.add_argument("--version", action="version", version=f"virt-aa {__version__}")
    p.add_argument("-c", "--connect", metavar="URI",
                   help="libvirt URI (default: $LIBVIRT_DEFAULT_URI or qemu:///system)")
    p.add_argument("--root", metavar="DIR",
                   help="prefix for every host path virt-aa reads config from or writes "
                        "profiles to (default: /, or $VIRT_AA_ROOT)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    show = sub.add_parser("show", help="the rules a domain's profile gets, and where "
                                       "each comes from",
                          description="Show the generated AppArmor rules of a domain, "
                                      "each with the XML element it comes from.")
    show.add_argument("domain", nargs="?", help="domain name, UUID or id")
    show.add_argument("--xml", metavar="FILE", help="read the domain XML from FILE")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_show)

    sb = sub.add_parser("sandbox", help="create a --root sandbox with libvirt's templates",
                        description="Create DIR/etc/apparmor.d/libvirt with the profile "
                                    "templates, so virt-aa-helper --root DIR works "
                                    "without touching the host.")
    sb.add_argument("dir", metavar="DIR")
    sb.set_defaults(func=cmd_sandbox)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"virt-aa: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("virt-aa: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
