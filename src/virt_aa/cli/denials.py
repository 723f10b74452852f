"""From a log to a reviewed rule: denials, explain, suggest, check."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from virt_aa.cli.common import CliError, _emit, _split_domain, _store, _vm, verb
from virt_aa.ops.manage import VM


def _log_domain(args: argparse.Namespace) -> tuple[str | None, VM | None]:
    """The domain to filter on: its UUID, and the VM when libvirt or --xml gives it."""
    ref = getattr(args, "domain", None)
    if getattr(args, "xml", None):
        vm = _vm(args, None)
        return vm.uuid, vm
    if not ref:
        return None, None
    from virt_aa.denials.report import uuid_of

    text = ref[8:] if ref.startswith("libvirt-") else ref
    if uuid_of("libvirt-" + text.lower()) is not None and args.file and not args.connect:
        return text.lower(), None        # offline: a UUID needs no libvirt
    vm = _vm(args, ref)
    return vm.uuid, vm


def _denial_scan(args: argparse.Namespace) -> tuple[Any, str | None, VM | None,
                                                    dict[str, str]]:
    from virt_aa.denials import commands as dc
    from virt_aa.denials.sources import SourceError

    uuid, vm = _log_domain(args)
    try:
        found = dc.scan(args, uuid)
    except SourceError as exc:
        raise CliError(str(exc)) from None
    from virt_aa.denials.report import uuid_of

    names = _vm_names(args, {u for u in map(uuid_of, found.profiles()) if u}, vm)
    return found, uuid, vm, names


def _vm_names(args: argparse.Namespace, uuids: set[str], vm: VM | None) -> dict[str, str]:
    """Names for the VMs of these UUIDs: stored, libvirt's (unless offline), --xml's."""
    from virt_aa.denials import commands as dc

    uri = args.connect if (args.connect or not args.file) else None
    names = dc.vm_names(_store(args), uuids, uri)
    if vm is not None:
        names[vm.uuid] = vm.dom.name
    return names


def cmd_denials(args: argparse.Namespace) -> int:
    from virt_aa.denials.scan import no_gc

    with no_gc():
        return _denials(args)


def _denials(args: argparse.Namespace) -> int:
    from virt_aa.denials import commands as dc

    if getattr(args, "json", False) and not sys.stdout.isatty() and dc.big_file(args):
        # a big file to a pipe or file: both cores to the last byte (denials/pair.py)
        from virt_aa.denials.pair import denials_json

        uuid, vm = _log_domain(args)
        progress = dc.Progress(os.path.getsize(args.file), "scanning")
        try:
            if denials_json(args.file, uuid, sys.stdout,
                            lambda uuids: _vm_names(args, uuids, vm),
                            lambda found, profiles: dc.honesty(found, _store(args), profiles),
                            progress.update):
                return 0
        finally:
            progress.close()
    found, _, _, names = _denial_scan(args)
    warnings = dc.honesty(found, _store(args), {p.split("//")[0] for p in found.profiles()})
    rows = dc.rows(found, names)
    if getattr(args, "json", False) and not sys.stdout.isatty():
        # streamed: 100k groups never sit in memory as one document
        head = json.dumps({"source": found.kind, "records": found.records})[:-1]
        out = sys.stdout
        out.write(head + ', "groups": [')
        dc.write_json_rows(found, names, out)
        out.write('], "warnings": ' + json.dumps(warnings, ensure_ascii=True) + "}\n")
        return 0
    if getattr(args, "json", False):
        result = {"source": found.kind, "records": found.records, "groups": list(rows),
                  "warnings": warnings}
        return _emit(args, result, "")
    lines = []
    current = None
    for r in rows:
        if r["vm"] != current:
            current = r["vm"]
            lines.append(f"{current} ({r['profile'].split('//')[0]})")
        child = f" [{r['child']}]" if r["child"] else ""
        lines.append(f"  {r['count']:>7}  {r['mode']:<7} {r['operation']:<12} "
                     f"{r['perms'] or '-':<5} {r['resource']}{child}  "
                     f"({r['first_seen'] or '?'} .. {r['last_seen'] or '?'})")
    lines += [f"warning: {w}" for w in warnings]
    return _emit(args, {}, "\n".join(lines) or "no AppArmor denials of libvirt guests")


def _generated(vm: VM) -> list[Any]:
    from virt_aa.generate.accesses import GenerationError, fixed_rules, generate
    from virt_aa.host.hostfacts import SystemHost
    from virt_aa.host.libvirtversion import host_libvirt

    try:
        gen = generate(vm.dom, SystemHost(), lv=host_libvirt())
    except GenerationError as exc:
        raise CliError(f"{vm.dom.name}: " + "; ".join(exc.lines)) from None
    return (fixed_rules(vm.dom) if vm.dom.is_qemu else []) + gen.rules


def cmd_explain(args: argparse.Namespace) -> int:
    from virt_aa.denials import commands as dc
    from virt_aa.denials.report import explain

    found, _, vm, names = _denial_scan(args)
    matches = dc.matcher()
    generated = _generated(vm) if vm is not None else []
    out = []
    lines = []
    groups = sorted(found.groups.values(), key=lambda g: (-g.count, g.resource))
    for g in groups:
        why = explain(g, vm.dom if vm else None, generated, matches)
        row = {**g.to_dict(names), "explanation": why}
        out.append(row)
        lines.append(f"{row['vm']}: {g.mode} {g.operation} {g.perms or ''} {g.resource} "
                     f"(x{g.count})")
        lines.append(f"    {why['relation']}" if vm else
                     "    (name the domain to relate this to its XML)")
        if why["covered_by"]:
            lines.append(f"    rule: {why['covered_by']}")
        if why["known"]:
            lines.append(f"    known: {why['known']['what']}")
            lines.append(f"    fix:   {why['known']['fix']}  [{why['known']['source']}]")
        if why["risk"]:
            lines.append(f"    risk:  {why['risk']}")
    return _emit(args, {"groups": out}, "\n".join(lines) or "no denials to explain")


def cmd_suggest(args: argparse.Namespace) -> int:
    from virt_aa.denials import commands as dc
    from virt_aa.ops.manage import allow

    found, _, vm, names = _denial_scan(args)
    if vm is None:
        raise CliError("suggest needs the domain (name, UUID or id via libvirt, or --xml)")
    matches = dc.matcher()
    items = []
    for g in sorted(found.groups.values(), key=lambda g: (-g.count, g.resource)):
        props = dc.proposals_for(g, matches)
        items.append({"denial": g.to_dict(names), "proposals": props})
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not args.json
    chosen: list[tuple[str, dict[str, Any]]] = []
    for item in items:
        props = item["proposals"]
        d = item["denial"]
        if not props:
            item["skipped"] = "no rule proposed (restricted or not a file/capability/network)"
            continue
        if interactive:
            choice = _review(d, props)
            if choice is not None:
                chosen.append((choice, d))
        else:
            chosen.append((props[0]["rule"], d))
    result: dict[str, Any] = {"domain": vm.dom.name, "suggestions": items, "applied": []}
    if args.apply or (interactive and chosen and _confirm(len(chosen))):
        store = _store(args)
        for rule, d in chosen:
            res = allow(store, vm, [rule], comment=f"from denial: {d['operation']} "
                        f"{d['resource']} x{d['count']}", denial=d["event"] or "")
            result["applied"].extend(res["added"])
    lines = []
    for item in items:
        d = item["denial"]
        lines.append(f"{d['mode']} {d['operation']} {d['perms']} {d['resource']} "
                     f"(x{d['count']})")
        for p in item["proposals"]:
            lines.append(f"    {p['kind']:<15} {p['rule']}"
                         + ("" if p["covers"] else "   (would NOT cover it)"))
        if "skipped" in item:
            lines.append(f"    {item['skipped']}")
    lines += [f"applied [{r['id']}] {r['rule']}" for r in result["applied"]]
    if not args.apply and not interactive:
        lines.append("(nothing stored: review, then run with --apply to store the first "
                     "proposal of each)")
    return _emit(args, result, "\n".join(lines) or "nothing to suggest")


def _review(d: dict[str, Any], props: list[dict[str, Any]]) -> str | None:
    print(f"\n{d['vm']}: {d['mode']} {d['operation']} {d['perms']} {d['resource']} "
          f"(x{d['count']})")
    for i, p in enumerate(props, 1):
        print(f"  [{i}] {p['kind']:<15} {p['rule']}")
    while True:
        answer = input("accept [1-9], s(kip), d(eny quietly), q(uit)? ").strip().lower()
        if answer in ("s", ""):
            return None
        if answer == "q":
            raise KeyboardInterrupt
        if answer == "d":
            return "deny " + str(props[0]["rule"])
        if answer.isdigit() and 1 <= int(answer) <= len(props):
            return str(props[int(answer) - 1]["rule"])


def _confirm(n: int) -> bool:
    return input(f"store {n} rule(s)? [y/N] ").strip().lower() in ("y", "yes")


def cmd_check(args: argparse.Namespace) -> int:
    from virt_aa.ops.checkaccess import CheckError, check

    domain, rest = _split_domain(args, args.items)
    if not 1 <= len(rest) <= 2 or not rest[0].startswith("/"):
        raise CliError("usage: virt-aa check DOMAIN PATH [PERMS] (an absolute path)")
    args.path, args.perms = rest[0], (rest[1] if len(rest) > 1 else "r")
    vm = _vm(args, domain)
    try:
        result = check(_store(args), vm, _generated(vm), args.path, args.perms)
    except CheckError as exc:
        raise CliError(str(exc)) from None
    verdict = "ALLOWED" if result["allowed"] else "DENIED"
    lines = [f"{vm.dom.name}: {args.perms} {args.path}: {verdict}"]
    lines += [f"  allow: {r}" for r in result["allow_rules"]]
    lines += [f"  deny:  {r}" for r in result["deny_rules"]]
    if result["missing"]:
        lines.append(f"  missing permission(s): {result['missing']}")
    _emit(args, result, "\n".join(lines))
    return 0 if result["allowed"] else 2


# -- fleets -------------------------------------------------------------------------------------


def register(sub: Any) -> None:
    """Add this family's verbs to the parser."""
    def log_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--file", metavar="F", help="read this log (audit.log, kern.log, "
                        "journalctl -o json output, dmesg ...; .gz ok; - for stdin)")
        sp.add_argument("--source", choices=("auto", "audit", "journal", "kern", "syslog",
                                             "dmesg"), default="auto",
                        help="where to read when no --file is given (default: auto picks "
                             "auditd's log, else the journal, else kern.log/syslog, else "
                             "dmesg)")
        sp.add_argument("--since", help="only records at/after this time (ISO, -2h, today)")
        sp.add_argument("--until", help="only records at/before this time")
        sp.add_argument("--follow", action="store_true", help="keep reading as the log grows")

    sp = verb(sub, "denials", "AppArmor denials of libvirt guests, grouped",
              "AppArmor records of libvirt guests (libvirt-<uuid> profiles and their "
              "children), grouped by VM, operation, resource and permission, with counts, "
              "first/last seen, and whether they were denied or allowed in complain mode.  "
              "Warns when the logs cannot be trusted.")
    log_options(sp)
    sp.set_defaults(func=cmd_denials)

    sp = verb(sub, "explain", "why each denial happened",
              "For each group of denials: the XML element it belongs to (disk, backing file, "
              "share, char device, TPM, nvram ...) or 'not named by the domain', whether it "
              "is a known gap with a proper fix, and a risk note for sensitive targets.")
    log_options(sp)
    sp.set_defaults(func=cmd_explain)

    sp = verb(sub, "suggest", "per-VM rules that would have allowed the denials",
              "The minimal per-VM rules that would have allowed what was denied (exact path "
              "first; same directory, subtree, owner-only as choices), never a restricted "
              "path.  On a terminal: review each (accept, choose a generalisation, skip, "
              "deny quietly).  --apply stores the chosen (or, without a terminal, the "
              "exact) ones, with the denial as provenance.")
    log_options(sp)
    sp.add_argument("--apply", action="store_true", help="store the rules (see above)")
    sp.set_defaults(func=cmd_suggest)

    sp = sub.add_parser("check", help="would the VM's profile allow this access?",
                        description="Whether the VM's effective profile (generated rules, "
                                    "per-VM rules, the abstraction) allows PATH with PERMS "
                                    "(default r), and which rules decide.  Exit 0 allowed, "
                                    "2 denied.")
    sp.add_argument("items", nargs="+", metavar="DOMAIN PATH [PERMS]",
                    help="the domain (unless --xml), the path, the permissions")
    sp.add_argument("--xml", metavar="FILE", help="give the domain offline as an XML file")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_check)
