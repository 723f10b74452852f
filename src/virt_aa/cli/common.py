"""What every verb family shares: errors, the store, the domain argument, output."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from virt_aa.host.store import Store

if TYPE_CHECKING:
    from virt_aa.ops.manage import VM


class CliError(Exception):
    """One-line error for the admin, printed as ``virt-aa: error: ...``; exit 1."""


def _root(args: argparse.Namespace) -> str:
    return str(args.root or os.environ.get("VIRT_AA_ROOT") or "/")


def _store(args: argparse.Namespace) -> Store:
    return Store(_root(args))


def _read_xml(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(10 * 1024 * 1024 + 1)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None


def _vm(args: argparse.Namespace, domain: str | None) -> VM:
    """The domain named on the command line (or --xml), with its running state."""
    from virt_aa.ops.manage import vm_from_xml

    recover(args)
    if getattr(args, "xml", None):
        vm = vm_from_xml(_read_xml(args.xml), None, args.xml)
        if getattr(args, "connect", None):
            from virt_aa.ops.isolation import host_domains

            vm.peers, vm.peers_note = host_domains(args.connect)
        return vm
    if not domain:
        raise CliError("name a domain (name, UUID or id), or give --xml FILE")
    from virt_aa.host import libvirt as lv
    from virt_aa.ops.isolation import domains_of

    try:
        conn = lv.connect(args.connect)
        dom = lv.lookup(conn, domain)
        vm = vm_from_xml(lv.domain_xml(dom), lv.is_running(dom), f"domain {domain}")
        vm.peers = domains_of(conn)
        return vm
    except lv.LibvirtError as exc:
        raise CliError(str(exc)) from None


def recover(args: argparse.Namespace) -> None:
    """Roll back a change a dead process left half done, before reading any state
    (an offline XML file is part of it)."""
    from virt_aa.host.store import JOURNAL

    store = _store(args)
    if os.path.exists(store.path(JOURNAL)):
        with store:
            pass


def _split_domain(args: argparse.Namespace, items: list[str]) -> tuple[str | None, list[str]]:
    """With --xml every positional word is a rule; otherwise the first is DOMAIN."""
    if getattr(args, "xml", None):
        return None, items
    if not items:
        raise CliError("name a domain (name, UUID or id), or give --xml FILE")
    return items[0], items[1:]


def _emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> int:
    if getattr(args, "json", False):
        # raw bytes as \\udcXX escapes; indented for a person, compact (C encoder: fast on
        # 100k denial groups) for a pipe
        indent = 2 if sys.stdout.isatty() else None
        sys.stdout.write(json.dumps(result, indent=indent, ensure_ascii=True) + "\n")
    else:
        data = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        print(data)
    return 0


def verb(sub: Any, name: str, help_: str, desc: str, domain: bool = True,
         json_: bool = True) -> argparse.ArgumentParser:
    """A subcommand that takes one domain (or --xml FILE) and, usually, --json."""
    sp: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=desc)
    if domain:
        sp.add_argument("domain", nargs="?", metavar="DOMAIN",
                        help="domain name, UUID or id")
    sp.add_argument("--xml", metavar="FILE",
                    help="give the domain offline as an XML file (DOMAIN left out)")
    if json_:
        sp.add_argument("--json", action="store_true", help="machine-readable output")
    return sp
