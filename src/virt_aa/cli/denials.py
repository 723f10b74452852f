"""From a log to a reviewed rule: denials, explain, suggest, check."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from virt_aa.cli.common import CliError, _emit, _split_domain, _store, _vm, verb

if TYPE_CHECKING:
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
    name = vm.dom.name if vm is not None else None
    if uuid is not None and name is None:
        name = _store(args).settings(uuid).get("name")
    try:
        found = dc.scan(args, uuid, name)
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


def _follow(args: argparse.Namespace) -> int:
    """``denials --follow``: one line per new record (JSON Lines with ``--json``)."""
    from virt_aa.denials import commands as dc
    from virt_aa.denials.sources import SourceError

    uuid, vm = _log_domain(args)
    names: dict[str, str] = {}
    try:
        for g in dc.follow_groups(args, uuid):
            if g.uuid and g.uuid not in names:
                names.update(_vm_names(args, {g.uuid}, vm))
                names.setdefault(g.uuid, g.profile.split("//", 1)[0])
            row = g.to_dict(names)
            if getattr(args, "json", False):
                print(json.dumps(row, ensure_ascii=True), flush=True)
            else:
                print(f"{row['first_seen'] or '?'}  {row['vm']}  {row['mode']} "
                      f"{row['operation']} {row['perms'] or '-'} {row['resource']}", flush=True)
    except SourceError as exc:
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:
        pass
    return 0


def _denials(args: argparse.Namespace) -> int:
    from virt_aa.denials import commands as dc
    from virt_aa.denials import rows as dr

    if getattr(args, "follow", False):
        return _follow(args)
    if (getattr(args, "json", False) and not sys.stdout.isatty() and dc.big_file(args)
            and not getattr(args, "domain", None) and not getattr(args, "xml", None)):
        # a big file to a pipe or file: both cores to the last byte (denials/pair.py)
        from virt_aa.denials.pair import denials_json

        progress = dc.Progress(os.path.getsize(args.file), "scanning")
        try:
            if denials_json(args.file, None, sys.stdout,
                            lambda uuids: _vm_names(args, uuids, None),
                            lambda found, profiles: dc.honesty(found, _store(args), profiles),
                            progress.update):
                return 0
        finally:
            progress.close()
    found, _, _, names = _denial_scan(args)
    warnings = dc.honesty(found, _store(args), {p.split("//")[0] for p in found.profiles()})
    rows = dr.rows(found, names)
    if getattr(args, "json", False) and not sys.stdout.isatty():
        # streamed: 100k groups never sit in memory as one document
        head = json.dumps({"source": found.kind, "records": found.records})[:-1]
        out = sys.stdout
        out.write(head + ', "groups": [')
        dr.write_json_rows(found, names, out)
        out.write('], ' + json.dumps(found.accounting())[1:-1] + ', "warnings": '
                  + json.dumps(warnings, ensure_ascii=True) + "}\n")
        return 0
    if getattr(args, "json", False):
        result = {"source": found.kind, "records": found.records, "groups": list(rows),
                  **found.accounting(), "warnings": warnings}
        return _emit(args, result, "")
    return _emit(args, {}, "\n".join(_denials_text(found, rows, warnings)))


def _denials_text(found: Any, rows: Any, warnings: list[str]) -> list[str]:
    """The groups under one heading per program of the stack, then how every record is
    accounted for."""
    from virt_aa.denials.programs import HEADING, ORDER

    per: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        per.setdefault(r["program"], []).append(r)
    lines = []
    shown = 0
    for program in sorted(per, key=ORDER.__getitem__):
        got = per[program]
        n = sum(r["count"] for r in got)
        shown += n
        lines.append(f"== {HEADING[program]}: {n} record(s)")
        current = None
        for r in got:
            if r["vm"] != current:
                current = r["vm"]
                lines.append(f"{current} ({r['profile'].split('//')[0]})")
            child = f" [{r['child']}]" if r["child"] else ""
            guess = " (year guessed)" if r["flags"].get("year_guessed") else ""
            lines.append(f"  {r['count']:>7}  {r['mode']:<7} {r['operation']:<12} "
                         f"{r['perms'] or '-':<5} {r['resource']}{child}  "
                         f"({r['first_seen'] or '?'} .. {r['last_seen'] or '?'}{guess})")
    acc = found.accounting()
    lines.append(f"{found.records} AppArmor record(s): {shown} in the groups above, "
                 f"{acc['not_denials']} that deny nothing (STATUS, AUDIT ...), "
                 f"{acc['excluded']} of other VMs/profiles or outside the time window, "
                 f"{acc['twins']} journald twin(s) counted once")
    lines += [f"warning: {w}" for w in warnings]
    return lines


def _generated(vm: VM) -> list[Any]:
    from virt_aa.generate.accesses import GenerationError, fixed_rules, generate
    from virt_aa.host.hostfacts import SystemHost
    from virt_aa.host.libvirtversion import host_libvirt

    try:
        gen = generate(vm.dom, SystemHost(), lv=host_libvirt())
    except GenerationError as exc:
        raise CliError(f"{vm.dom.name}: " + "; ".join(exc.lines)) from None
    return (fixed_rules(vm.dom) if vm.dom.is_qemu else []) + gen.rules


def _command(args: argparse.Namespace, vm: VM | None) -> Any:
    """verb + words -> the `virt-aa` command line that does it for this domain, exactly as
    it must be typed here (--root, --connect, --xml as given); None without a domain."""
    if vm is None:
        return None
    import shlex

    base = ["virt-aa"]
    if args.root:
        base += ["--root", args.root]
    if args.connect:
        base += ["--connect", args.connect]
    target = ["--xml", args.xml] if getattr(args, "xml", None) else [vm.dom.name]
    return lambda words: shlex.join(base + words[:1] + target + words[1:])


def _advice(args: argparse.Namespace, found: Any, vm: VM | None
            ) -> list[tuple[Any, dict[str, Any], dict[str, Any]]]:
    """(group, explanation, advice) for every group, the effective policy consulted for
    the VM's file denials (as `check` does), biggest groups first."""
    from virt_aa.denials import commands as dc
    from virt_aa.denials.advice import advise
    from virt_aa.denials.report import explain, find_known, perms_for_check

    matches = dc.matcher()
    generated = _generated(vm) if vm is not None else []
    decide = None
    unchecked = ""
    if vm is not None:
        from virt_aa.ops.checkaccess import CheckError, checker

        try:
            decide = checker(_store(args), vm, generated)
        except CheckError as exc:       # said with each advice: it could not be checked
            unchecked = f" (not checked against the current policy: {exc})"
    cmd = _command(args, vm)
    program_cmds: dict[str, Any] = {}
    out = []
    for g in sorted(found.groups.values(), key=lambda g: (-g.count, g.resource)):
        why = explain(g, vm.dom if vm else None, generated, matches)
        verdict = None
        if (decide is not None and g.program == "vm" and g.is_file
                and g.uuid == vm.uuid):      # type: ignore[union-attr]
            verdict = decide(g.resource, perms_for_check(g.perms, g.operation))
        props = dc.proposals_for(g, matches)
        adv = advise(g.program, g.profile, verdict, why["restricted"], props,
                     find_known(g, matches) if why["element"] != "tpm passthrough" else None,
                     cmd if g.uuid is not None and vm is not None and g.uuid == vm.uuid
                     else None, why["rule"], _program_command(args, g, program_cmds))
        adv["proposals"] = props
        if unchecked and g.program == "vm" and g.is_file:
            adv["text"] += unchecked
        out.append((g, why, adv))
    return out


def _program_command(args: argparse.Namespace, g: Any, cache: dict[str, Any]) -> Any:
    """For a denial in a program's own profile (not a child profile): the `allow --profile
    NAME` command maker, when its installed profile has a local/ file; else None."""
    from virt_aa.ops import hostrules
    from virt_aa.ops.manage import ManageError

    base = g.profile.split("//", 1)[0]
    name = next((n for n, names in hostrules.PROGRAM_PROFILES.items() if base in names),
                None)
    if name is None or "//" in g.profile:
        return None
    if name not in cache:
        try:
            hostrules.program(_store(args), name)
        except ManageError:
            cache[name] = None
        else:
            import shlex

            pre = ["virt-aa"] + (["--root", args.root] if args.root else [])
            cache[name] = lambda words, name=name: shlex.join(
                pre + words[:1] + ["--profile", name] + words[1:])
    return cache[name]


def cmd_explain(args: argparse.Namespace) -> int:
    found, _, vm, names = _denial_scan(args)
    out = []
    lines = []
    for g, why, adv in _advice(args, found, vm):
        row = {**g.to_dict(names), "explanation": why,
               "advice": {k: v for k, v in adv.items() if k != "proposals"}}
        out.append(row)
        lines.append(f"{row['vm']}: {g.mode} {g.operation} {g.perms or ''} {g.resource} "
                     f"(x{g.count})")
        if g.program != "vm":
            pass
        elif vm is not None:
            lines.append(f"    {why['relation']}")
        else:
            lines.append("    (name the domain to relate this to its XML)")
        if why["covered_by"]:
            lines.append(f"    rule:  {why['covered_by']}")
        if why["known"]:
            lines.append(f"    known: {why['known']['what']}  [{why['known']['source']}]")
        if why["risk"]:
            lines.append(f"    risk:  {why['risk']}")
        lines.append(f"    next:  {adv['text']}")
        lines += [f"    run:   {c}" for c in adv["commands"]]
    from virt_aa.denials.catalogue import NOT_APPARMOR

    other = [{"line": NOT_APPARMOR[i][0], "count": n, "what": NOT_APPARMOR[i][1],
              "fix": NOT_APPARMOR[i][2], "source": NOT_APPARMOR[i][3]}
             for i, n in sorted(found.not_apparmor.items())]
    for o in other:
        lines.append(f"not AppArmor ({o['count']}x): {o['line']}")
        lines.append(f"    known: {o['what']}  [{o['source']}]")
        lines.append(f"    next:  {o['fix']}")
    return _emit(args, {"groups": out, "not_apparmor": other},
                 "\n".join(lines) or "no denials to explain")


def cmd_suggest(args: argparse.Namespace) -> int:
    found, _, vm, names = _denial_scan(args)
    if vm is None:
        raise CliError("suggest needs the domain (name, UUID or id via libvirt, or --xml)")
    items = []
    for g, _why, adv in _advice(args, found, vm):
        item: dict[str, Any] = {"denial": g.to_dict(names), "advice": adv["text"],
                                "commands": adv["commands"], "proposals": []}
        if adv["status"] == "allow":    # the advised rule first (explain's), then the rest
            props = sorted(adv["proposals"], key=lambda p: p["rule"] != adv["rule"])
            if not props or props[0]["rule"] != adv["rule"]:
                props.insert(0, {"kind": "advised", "rule": adv["rule"], "covers": True})
            item["proposals"] = props
        else:
            item["skipped"] = adv["text"]
        items.append(item)
    from virt_aa.ops.isolation import isolate_proposals

    isolate_proposals(items, vm)
    for item in items:
        if item.get("isolation") and not item["proposals"]:
            # nothing left that keeps the VMs apart: no command to print
            item["advice"], item["commands"] = item["isolation"], []
    return _suggested(args, vm, items)


def _suggested(args: argparse.Namespace, vm: VM, items: list[dict[str, Any]]) -> int:
    """Review (on a terminal), store (--apply) and print the suggestions."""
    from virt_aa.ops.manage import allow

    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not args.json
    chosen: list[tuple[str, dict[str, Any]]] = []
    for item in items:
        props = item["proposals"]
        d = item["denial"]
        if not props:
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
        if item.get("isolation"):
            lines.append(f"    {item['isolation']}")
        if "skipped" in item:
            lines.append(f"    {item['skipped']}")
            lines += [f"    run: {c}" for c in item["commands"]]
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
