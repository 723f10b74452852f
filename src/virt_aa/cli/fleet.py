"""Named policies that follow the VM: policy, attach/detach, export, import."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from virt_aa.cli.common import (
    CliError,
    _emit,
    _read_xml,
    _split_domain,
    _store,
    _vm,
    recover,
)

if TYPE_CHECKING:
    from virt_aa.ops.manage import VM


def cmd_policy(args: argparse.Namespace) -> int:
    from virt_aa.ops import fleet

    store = _store(args)
    if args.action == "list":
        rows = fleet.list_policies(store)
        return _emit(args, {"policies": rows},
                     "\n".join(f"{r['name']:<24} {r['sha256'][:12]}  {r['rules']} rule(s)"
                               + (f"  {r['problems']} BROKEN" if r["problems"] else "")
                               for r in rows) or "no policies installed")
    if not args.name:
        raise CliError(f"policy {args.action} needs a NAME")
    if args.action == "show":
        info = fleet.show_policy(store, args.name)
        return _emit(args, info, f"# {info['name']}  sha256 {info['sha256']}\n{info['text']}")
    if args.action == "remove":
        res = fleet.remove_policy(store, args.name)
        return _emit(args, res, f"removed {args.name}" if res["changed"] else
                     f"no policy {args.name}: nothing to do")
    source = args.file or "-"
    if source == "-":
        text = sys.stdin.read()
    else:
        text = _read_xml(source).decode("utf-8", "surrogateescape")
    res = fleet.add_policy(store, args.name, text, args.force, _host_domains(args))
    flag = "".join(f"\nFORCED: {r['rule']} reaches {r['other']}'s {r['what']} {r['file']}"
                   for r in res.get("reaches", []))
    return _emit(args, {k: v for k, v in res.items() if k != "previous"},
                 f"{'installed' if res['changed'] else 'unchanged'}: {args.name} "
                 f"sha256 {res['sha256']}{flag}")


def _host_domains(args: argparse.Namespace) -> list[Any]:
    """The host's domains for the isolation checks (none when libvirt is unreachable)."""
    from virt_aa.ops.isolation import host_domains

    domains, why = host_domains(args.connect)
    if why:
        print(f"virt-aa: warning: isolation not checked against other domains: {why}",
              file=sys.stderr)
    return domains


class _Offline:
    """Stores the metadata in an offline domain's XML file (``path``: for the journal)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, element: str | None) -> None:
        from virt_aa.ops import fleet

        fleet.set_offline(self.path, element)


def _vm_setter(args: argparse.Namespace, domain: str | None) -> tuple[VM, Any]:
    """The VM and a function that stores its virt-aa metadata."""
    recover(args)

    if getattr(args, "xml", None):
        return _vm(args, None), _Offline(args.xml)
    if not domain:
        raise CliError("name a domain (name, UUID or id), or give --xml FILE")
    from virt_aa.host import libvirt as lv
    from virt_aa.ops.manage import vm_from_xml

    try:
        conn = lv.connect(args.connect, readonly=False)
        dom = lv.lookup(conn, domain)
        vm = vm_from_xml(lv.domain_xml(dom), lv.is_running(dom), f"domain {domain}")
        from virt_aa.ops.isolation import domains_of

        vm.peers = domains_of(conn)
    except lv.LibvirtError as exc:
        raise CliError(str(exc)) from None

    def setter(element: str | None) -> None:
        try:
            lv.set_metadata(dom, element)
        except lv.LibvirtError as exc:
            raise CliError(str(exc)) from None

    return vm, setter


def cmd_attach(args: argparse.Namespace) -> int:
    from virt_aa.ops import fleet

    domain, rest = _split_domain(args, args.items)
    if len(rest) != 1:
        raise CliError(f"usage: virt-aa {args.command} DOMAIN POLICY")
    vm, setter = _vm_setter(args, domain)
    store = _store(args)
    if args.command == "attach":
        res = fleet.attach(store, vm, rest[0], setter, args.force)
    else:
        res = fleet.detach(store, vm, rest[0], setter)
    return _emit(args, res, f"{vm.dom.name}: {args.command} {rest[0]}: "
                            f"{'done' if res['changed'] else 'nothing to do'}; {res['status']}")


def cmd_export(args: argparse.Namespace) -> int:
    from virt_aa.ops import fleet

    doc = fleet.export_state(_store(args))
    text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if args.output and args.output != "-":
        from virt_aa.host.fsutil import write_atomic

        write_atomic(args.output, text.encode())
        print(f"exported {len(doc['policies'])} policies and {len(doc['domains'])} domains "
              f"to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from virt_aa.ops import fleet

    try:
        doc = json.loads(_read_xml(args.file).decode() if args.file != "-" else sys.stdin.read())
    except ValueError as exc:
        raise CliError(f"{args.file}: not JSON: {exc}") from None
    store = _store(args)
    recover(args)
    changes = fleet.plan_import(store, doc)
    text = "\n".join(f"== {c['kind']} {c.get('name') or c.get('uuid')}\n{c['diff']}"
                     for c in changes) or "nothing to import: this host already matches"
    if not changes or args.dry_run:
        return _emit(args, {"changes": changes, "applied": False}, text)
    if not args.yes:
        if not sys.stdin.isatty():
            print(text)
            raise CliError(f"{len(changes)} change(s) shown above: confirm with --yes")
        print(text)
        if input(f"apply {len(changes)} change(s)? [y/N] ").strip().lower() not in ("y", "yes"):
            return _emit(args, {"changes": changes, "applied": False}, "nothing changed")
    fleet.apply_import(store, doc, args.force, _host_domains(args))
    return _emit(args, {"changes": changes, "applied": True},
                 text + f"\napplied {len(changes)} change(s); running VMs pick them up at "
                        f"their next start or `virt-aa reload --all`")


def register(sub: Any) -> None:
    """Add this family's verbs to the parser."""
    sp = sub.add_parser("policy", help="named policies installed on this host",
                        description="Named policies: rule sets installed on the host "
                                    "(/etc/virt-aa/policies/NAME, per-VM rule syntax, checked "
                                    "like per-VM rules) that domains reference by name and "
                                    "sha256 from their metadata (`virt-aa attach`).")
    sp.add_argument("action", choices=("add", "list", "show", "remove"))
    sp.add_argument("name", nargs="?", metavar="NAME")
    sp.add_argument("file", nargs="?", metavar="FILE", help="add: the rules (default: stdin)")
    sp.add_argument("--force", action="store_true",
                    help="allow restricted paths and rules that reach a VM's files")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_policy)

    for name, desc in (("attach", "Reference a named policy from a domain's metadata (name "
                                  "and sha256, never rule text), persistently and live, so it "
                                  "travels with the domain (migration, save/restore, "
                                  "backups); the profile is updated at once."),
                       ("detach", "Remove a named policy reference from a domain.")):
        sp = sub.add_parser(name, help=desc.split(",")[0].split(" (")[0].lower(),
                            description=desc)
        sp.add_argument("items", nargs="+", metavar="DOMAIN POLICY")
        sp.add_argument("--xml", metavar="FILE",
                        help="an offline domain: the XML file is updated in place")
        if name == "attach":
            sp.add_argument("--force", action="store_true",
                            help="attach a policy that reaches another VM's files")
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=cmd_attach)

    sp = sub.add_parser("export", help="the host's whole virt-aa state as one document",
                        description="Policies, per-VM rules, modes and history as one JSON "
                                    "document, for backup and review in Git.")
    sp.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("import", help="make this host's state match an exported document",
                        description="Show the differences with an exported document, then "
                                    "apply them (checked like every change).  Idempotent.")
    sp.add_argument("file", metavar="FILE", help="the document (- for stdin)")
    sp.add_argument("--yes", "-y", action="store_true", help="apply without asking")
    sp.add_argument("--dry-run", action="store_true", help="only show the differences")
    sp.add_argument("--force", action="store_true",
                    help="allow restricted paths and rules that reach another VM's files")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_import)
