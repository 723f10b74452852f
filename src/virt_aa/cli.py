"""``virt-aa``: manage the AppArmor confinement of libvirt guests.

One ``main(argv) -> int``; each verb computes a plain result (a dict) and
renders it as text for people or JSON (``--json``) for scripts.  Domains are
named as virsh names them (name, UUID or id), or given offline with
``--xml FILE``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from . import __version__
from .manage import VM, ManageError, vm_from_xml
from .store import Store, StoreError


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
    if getattr(args, "xml", None):
        return vm_from_xml(_read_xml(args.xml), None, args.xml)
    if not domain:
        raise CliError("name a domain (name, UUID or id), or give --xml FILE")
    from . import libvirt as lv

    try:
        conn = lv.connect(args.connect)
        dom = lv.lookup(conn, domain)
        return vm_from_xml(lv.domain_xml(dom), lv.is_running(dom), f"domain {domain}")
    except lv.LibvirtError as exc:
        raise CliError(str(exc)) from None


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


# -- verbs ---------------------------------------------------------------------------

def cmd_show(args: argparse.Namespace) -> int:
    from .accesses import GenerationError, fixed_rules, generate
    from .hostfacts import SystemHost
    from .manage import list_rules, profile_status

    vm = _vm(args, args.domain)
    store = _store(args)
    dom = vm.dom
    try:
        gen = generate(dom, SystemHost())
    except GenerationError as exc:
        raise CliError(f"{dom.name}: " + "; ".join(exc.lines)) from None
    rules = (fixed_rules(dom) if dom.is_qemu else []) + gen.rules
    local = list_rules(store, vm)
    status = profile_status(store, vm)
    result: dict[str, Any] = {
        "domain": dom.name, "uuid": dom.uuid, "profile": dom.profile_name,
        "virt_type": dom.virt_type, "running": vm.running, "mode": store.mode(dom.uuid),
        "generated_rules": [
            {"path": r.path, "perms": r.perms, "origin": r.origin,
             "deny_write": r.deny_write, "deny": r.deny, "recursive": r.dir_path is not None}
            for r in rules],
        "vm_rules": local["rules"], "vm_rules_file": local["file"],
        "vm_rule_problems": local["problems"], "profile_status": status,
        "warnings": sorted(set(gen.warnings)),
    }
    out = [f"domain {dom.name}  uuid {dom.uuid}  profile {dom.profile_name}",
           f"mode   {result['mode']}",
           f"P      {status['path']}: " + ("current" if status["current"] else
                                           "not current (run `virt-aa reload`)"
                                           if status["on_disk"] else
                                           "not on disk (written when the VM starts)")
           + f"; loaded: {_loaded_text(status['loaded'], status['kernel'])}",
           "", "generated rules (from the domain XML):"]
    width = max((len(r.origin) for r in rules), default=6)
    for r in rules:
        perms = ("deny " if r.deny else "") + r.perms
        note = "  (+ deny w, not audited)" if r.deny_write else ""
        out.append(f"  {r.origin:<{width}}  {perms:<6} {r.path}{note}")
        if r.dir_path is not None:
            out.append(f"  {r.origin:<{width}}  {'r':<6} {r.dir_path}")
    out.append("")
    out.append(f"per-VM rules ({local['file']}):" if local["rules"] else
               "per-VM rules: none")
    for lr in local["rules"]:
        flag = "  RESTRICTED (added with --force)" if lr["restricted"] else ""
        why = f"  # {lr['comment']}" if lr.get("comment") else ""
        out.append(f"  [{lr['id']}] {lr['rule']}{why}  ({lr.get('by', '?')}, "
                   f"{lr.get('added', 'hand-edited')}){flag}")
    for p in local["problems"]:
        out.append(f"  BROKEN {local['file']}:{p['line']}: {p['reason']}")
    return _emit(args, result, "\n".join(out))


def _loaded_text(loaded: object, kernel: object) -> str:
    if loaded is None:
        return str(kernel)
    return "yes" if loaded else "no"


def cmd_allow(args: argparse.Namespace) -> int:
    from .localrules import RuleError, path_rule
    from .manage import allow

    domain, rules = _split_domain(args, args.items)
    if args.path:
        if not args.perms:
            raise CliError("--path needs --perms (e.g. --perms rw)")
        try:
            rules.append(path_rule(_canonical(args.path), args.perms, args.recursive))
        except RuleError as exc:
            raise CliError(str(exc)) from None
    if not rules:
        raise CliError("give at least one rule ('/srv/data/** rwk,') or --path PATH --perms P")
    vm = _vm(args, domain)
    result = allow(_store(args), vm, rules, args.comment or "", args.force)
    added = result["added"]
    lines = [f"allowed on {vm.dom.name}: [{r['id']}] {r['rule']}"
             for r in added] or ["nothing new: " + str(result["status"])]
    if added:
        lines.append(str(result["status"]))
    return _emit(args, result, "\n".join(lines))


def _canonical(path: str) -> str:
    if not path.startswith("/"):
        raise CliError(f"--path must be absolute: {path}")
    from .hostfacts import SystemHost
    from .paths import canonical, has_control

    if has_control(path):
        raise CliError("--path contains a control character")
    host = SystemHost()
    return canonical(path, host.exists, host.realpath)[0]


def cmd_revoke(args: argparse.Namespace) -> int:
    from .manage import revoke

    domain, keys = _split_domain(args, args.items)
    if len(keys) != 1:
        raise CliError("give exactly one rule or rule id to revoke (see `virt-aa rules`)")
    vm = _vm(args, domain)
    result = revoke(_store(args), vm, keys[0])
    r = result["revoked"]
    return _emit(args, result, f"revoked on {vm.dom.name}: [{r['id']}] {r['rule']}\n"
                               f"{result['status']}")


def cmd_rules(args: argparse.Namespace) -> int:
    from .manage import list_rules

    vm = _vm(args, args.domain)
    result = list_rules(_store(args), vm)
    lines = [f"{r['id']}  {r['rule']}" + (f"  # {r['comment']}" if r.get("comment") else "")
             + ("  RESTRICTED" if r["restricted"] else "")
             for r in result["rules"]]
    lines += [f"BROKEN line {p['line']}: {p['reason']}"
              for p in result["problems"]]
    return _emit(args, result, "\n".join(lines) or f"no per-VM rules for {vm.dom.name}")


def cmd_mode(args: argparse.Namespace) -> int:
    from .manage import set_mode

    vm = _vm(args, args.domain)
    result = set_mode(_store(args), vm, args.command, args.comment or "")
    return _emit(args, result, f"{vm.dom.name}: {result['previous']} -> {result['mode']}\n"
                               f"{result['status']}")


def cmd_reload(args: argparse.Namespace) -> int:
    from .manage import reload

    store = _store(args)
    if args.all:
        if args.domain or args.xml:
            raise CliError("--all takes no domain")
        from . import libvirt as lv

        try:
            conn = lv.connect(args.connect)
            vms = [vm_from_xml(lv.domain_xml(d), True, d.name())
                   for d in lv.running_domains(conn)]
        except lv.LibvirtError as exc:
            raise CliError(str(exc)) from None
    else:
        vms = [_vm(args, args.domain)]
    results, failed = {}, 0
    for vm in vms:
        try:
            results[vm.dom.name] = reload(store, vm)
        except ManageError as exc:
            results[vm.dom.name] = f"FAILED: {exc}"
            failed += 1
    _emit(args, {"reloaded": results, "failed": failed},
          "\n".join(f"{k}: {v}" for k, v in results.items()) or "no running domains")
    return 1 if failed else 0


def cmd_history(args: argparse.Namespace) -> int:
    vm = _vm(args, args.domain)
    records = _store(args).history(vm.uuid)
    lines = []
    for r in records:
        what = r.get("rule") or f"{r.get('from', '?')} -> {r.get('action')}"
        why = f"  why: {r['why']}" if r.get("why") else ""
        denial = f"  from denial: {r['denial']}" if r.get("denial") else ""
        lines.append(f"{r.get('time')}  {r.get('user')}  {r.get('action')}  {what}{why}{denial}")
    return _emit(args, {"domain": vm.dom.name, "uuid": vm.uuid, "history": records},
                 "\n".join(lines) or f"no changes recorded for {vm.dom.name}")


def cmd_install(args: argparse.Namespace) -> int:
    from .installer import InstallError, install, uninstall

    try:
        if args.command == "install":
            steps = install(_root(args), args.mode, args.dry_run)
        else:
            steps = uninstall(_root(args), args.dry_run)
    except (InstallError, OSError) as exc:
        raise CliError(str(exc)) from None
    prefix = "would: " if args.dry_run else ""
    return _emit(args, {"dry_run": args.dry_run, "steps": steps},
                 "\n".join(prefix + s for s in steps))


def cmd_status(args: argparse.Namespace) -> int:
    from .status import collect, drift, render, render_drift

    result = collect(_store(args), args.connect)
    if args.drift:
        found = drift(result)
        _emit(args, found, render_drift(found))
        return 1 if found["drift"] else 0
    return _emit(args, result, render(result))


def cmd_prune(args: argparse.Namespace) -> int:
    from .status import collect, prune

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
    from .docgen import bash_completion

    sys.stdout.write(bash_completion(build_parser()))
    return 0


def cmd_man(args: argparse.Namespace) -> int:
    from .docgen import man_page

    sys.stdout.write(man_page(build_parser()))
    return 0


# -- denials ----------------------------------------------------------------------------------

def _log_domain(args: argparse.Namespace) -> tuple[str | None, VM | None]:
    """The domain to filter on: its UUID, and the VM when libvirt or --xml gives it."""
    ref = getattr(args, "domain", None)
    if getattr(args, "xml", None):
        vm = _vm(args, None)
        return vm.uuid, vm
    if not ref:
        return None, None
    from .denials.report import uuid_of

    text = ref[8:] if ref.startswith("libvirt-") else ref
    if uuid_of("libvirt-" + text.lower()) is not None and args.file and not args.connect:
        return text.lower(), None        # offline: a UUID needs no libvirt
    vm = _vm(args, ref)
    return vm.uuid, vm


def _denial_scan(args: argparse.Namespace) -> tuple[Any, str | None, VM | None,
                                                    dict[str, str]]:
    from .denials import commands as dc
    from .denials.sources import SourceError

    uuid, vm = _log_domain(args)
    try:
        found = dc.scan(args, uuid)
    except SourceError as exc:
        raise CliError(str(exc)) from None
    from .denials.report import uuid_of

    names = _vm_names(args, {u for u in map(uuid_of, found.profiles()) if u}, vm)
    return found, uuid, vm, names


def _vm_names(args: argparse.Namespace, uuids: set[str], vm: VM | None) -> dict[str, str]:
    """Names for the VMs of these UUIDs: stored, libvirt's (unless offline), --xml's."""
    from .denials import commands as dc

    uri = args.connect if (args.connect or not args.file) else None
    names = dc.vm_names(_store(args), uuids, uri)
    if vm is not None:
        names[vm.uuid] = vm.dom.name
    return names


def cmd_denials(args: argparse.Namespace) -> int:
    from .denials.scan import no_gc

    with no_gc():
        return _denials(args)


def _denials(args: argparse.Namespace) -> int:
    from .denials import commands as dc

    if getattr(args, "json", False) and not sys.stdout.isatty() and dc.big_file(args):
        # a big file to a pipe or file: both cores to the last byte (denials/pair.py)
        from .denials.pair import denials_json

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
    from .accesses import GenerationError, fixed_rules, generate
    from .hostfacts import SystemHost

    try:
        gen = generate(vm.dom, SystemHost())
    except GenerationError as exc:
        raise CliError(f"{vm.dom.name}: " + "; ".join(exc.lines)) from None
    return (fixed_rules(vm.dom) if vm.dom.is_qemu else []) + gen.rules


def cmd_explain(args: argparse.Namespace) -> int:
    from .denials import commands as dc
    from .denials.report import explain

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
    from .denials import commands as dc
    from .manage import allow

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
    from .checkaccess import CheckError, check

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

def cmd_policy(args: argparse.Namespace) -> int:
    from . import fleet

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
    res = fleet.add_policy(store, args.name, text, args.force)
    return _emit(args, {k: v for k, v in res.items() if k != "previous"},
                 f"{'installed' if res['changed'] else 'unchanged'}: {args.name} "
                 f"sha256 {res['sha256']}")


def _vm_setter(args: argparse.Namespace, domain: str | None) -> tuple[VM, Any]:
    """The VM and a function that stores its virt-aa metadata."""
    from . import fleet

    if getattr(args, "xml", None):
        path = args.xml
        return _vm(args, None), lambda element: fleet.set_offline(path, element)
    if not domain:
        raise CliError("name a domain (name, UUID or id), or give --xml FILE")
    from . import libvirt as lv

    try:
        conn = lv.connect(args.connect, readonly=False)
        dom = lv.lookup(conn, domain)
        vm = vm_from_xml(lv.domain_xml(dom), lv.is_running(dom), f"domain {domain}")
    except lv.LibvirtError as exc:
        raise CliError(str(exc)) from None

    def setter(element: str | None) -> None:
        try:
            lv.set_metadata(dom, element)
        except lv.LibvirtError as exc:
            raise CliError(str(exc)) from None

    return vm, setter


def cmd_attach(args: argparse.Namespace) -> int:
    from . import fleet

    domain, rest = _split_domain(args, args.items)
    if len(rest) != 1:
        raise CliError(f"usage: virt-aa {args.command} DOMAIN POLICY")
    vm, setter = _vm_setter(args, domain)
    store = _store(args)
    fn = fleet.attach if args.command == "attach" else fleet.detach
    res = fn(store, vm, rest[0], setter)
    return _emit(args, res, f"{vm.dom.name}: {args.command} {rest[0]}: "
                            f"{'done' if res['changed'] else 'nothing to do'}; {res['status']}")


def cmd_export(args: argparse.Namespace) -> int:
    from . import fleet

    doc = fleet.export_state(_store(args))
    text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if args.output and args.output != "-":
        from .fsutil import write_atomic

        write_atomic(args.output, text.encode())
        print(f"exported {len(doc['policies'])} policies and {len(doc['domains'])} domains "
              f"to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from . import fleet

    try:
        doc = json.loads(_read_xml(args.file).decode() if args.file != "-" else sys.stdin.read())
    except ValueError as exc:
        raise CliError(f"{args.file}: not JSON: {exc}") from None
    store = _store(args)
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
    fleet.apply_import(store, doc, args.force)
    return _emit(args, {"changes": changes, "applied": True},
                 text + f"\napplied {len(changes)} change(s); running VMs pick them up at "
                        f"their next start or `virt-aa reload --all`")


def cmd_sandbox(args: argparse.Namespace) -> int:
    from .sandbox import seed

    written = seed(args.dir)
    for path in written:
        print(f"created {path}")
    print(f"sandbox ready: use --root {args.dir} (or VIRT_AA_ROOT={args.dir})")
    return 0


# -- parser ----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="virt-aa",
        description="Manage the AppArmor confinement of libvirt/QEMU guests: per-VM rules "
                    "and complain/enforce mode that persist and apply live, and the "
                    "rules each guest gets and why.",
        epilog="Domains are named like virsh does (name, UUID or id) or given offline "
               "with --xml FILE.  Environment: LIBVIRT_DEFAULT_URI, VIRT_AA_ROOT, "
               "SUDO_USER (recorded as who made a change).")
    p.add_argument("--version", action="version", version=f"virt-aa {__version__}")
    p.add_argument("-c", "--connect", metavar="URI",
                   help="libvirt URI (default: $LIBVIRT_DEFAULT_URI or qemu:///system)")
    p.add_argument("--root", metavar="DIR",
                   help="prefix for every host path virt-aa reads config from or writes "
                        "profiles and state to (default: /, or $VIRT_AA_ROOT)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def verb(name: str, help_: str, desc: str, domain: bool = True,
             json_: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=desc)
        if domain:
            sp.add_argument("domain", nargs="?", metavar="DOMAIN",
                            help="domain name, UUID or id")
        sp.add_argument("--xml", metavar="FILE",
                        help="give the domain offline as an XML file (DOMAIN left out)")
        if json_:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    sp = verb("show", "the effective policy of a domain",
              "Show a domain's effective policy: the generated rules with the XML element "
              "each comes from, the per-VM rules with their provenance, the mode, and "
              "whether the profile on disk and in the kernel is current.")
    sp.set_defaults(func=cmd_show)

    sp = sub.add_parser("allow", help="add per-VM rules",
                        description="Add rules to one domain's profile, persistently: "
                                    "checked (grammar, policy, apparmor_parser) before they "
                                    "are stored in /etc/apparmor.d/local/libvirt-<uuid>, "
                                    "applied live, and recorded in the history.",
                        epilog="Examples:\n  virt-aa allow web01 '/srv/data/** rwk,'\n"
                               "  virt-aa allow web01 --path /srv/my*dir --perms rw "
                               "--recursive --comment 'NFS data'\n"
                               "  virt-aa --root R allow --xml dom.xml '/srv/x/ r,'",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("items", nargs="*", metavar="DOMAIN|RULE",
                    help="the domain (unless --xml), then rules in AppArmor syntax")
    sp.add_argument("--xml", metavar="FILE", help="give the domain offline as an XML file")
    sp.add_argument("--path", help="a literal path to allow (quoted and escaped for you)")
    sp.add_argument("--perms", help="permissions for --path, e.g. r, rw, rwk")
    sp.add_argument("--recursive", action="store_true",
                    help="with --path: the directory and everything below it")
    sp.add_argument("--comment", help="why (stored with the rule and in the history)")
    sp.add_argument("--force", action="store_true",
                    help="allow a rule that reaches a restricted path (/etc, /root, ...)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_allow)

    sp = sub.add_parser("revoke", help="remove a per-VM rule",
                        description="Remove one per-VM rule, by its id (see `virt-aa rules`) "
                                    "or its exact text; applied live and recorded.")
    sp.add_argument("items", nargs="*", metavar="DOMAIN|RULE|ID")
    sp.add_argument("--xml", metavar="FILE", help="give the domain offline as an XML file")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_revoke)

    sp = verb("rules", "list a domain's per-VM rules",
              "List the per-VM rules of a domain with ids and provenance; broken "
              "hand edits are reported with their line.")
    sp.set_defaults(func=cmd_rules)

    for mode, desc in (("complain", "log instead of blocking (debugging one VM)"),
                       ("enforce", "block what the profile does not allow (default)")):
        sp = verb(mode, f"put a domain in {mode} mode",
                  f"Put one domain's profile in {mode} mode: {desc}.  Stored, applied "
                  f"live, kept across restarts.")
        sp.add_argument("--comment", help="why (recorded in the history)")
        sp.set_defaults(func=cmd_mode)

    sp = verb("reload", "regenerate and reload profiles",
              "Regenerate a domain's profile from its stored rules and mode and replace "
              "the loaded one (or, with --all, every running domain's).")
    sp.add_argument("--all", action="store_true", help="every running domain")
    sp.set_defaults(func=cmd_reload)

    sp = verb("history", "every change made to a domain's confinement",
              "Every change: when, who (SUDO_USER where set), what, why.")
    sp.set_defaults(func=cmd_history)

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

    sp = sub.add_parser("policy", help="named policies installed on this host",
                        description="Named policies: rule sets installed on the host "
                                    "(/etc/virt-aa/policies/NAME, per-VM rule syntax, checked "
                                    "like per-VM rules) that domains reference by name and "
                                    "sha256 from their metadata (`virt-aa attach`).")
    sp.add_argument("action", choices=("add", "list", "show", "remove"))
    sp.add_argument("name", nargs="?", metavar="NAME")
    sp.add_argument("file", nargs="?", metavar="FILE", help="add: the rules (default: stdin)")
    sp.add_argument("--force", action="store_true", help="allow restricted paths")
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
    sp.add_argument("--force", action="store_true", help="allow restricted paths")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_import)

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

    sp = verb("denials", "AppArmor denials of libvirt guests, grouped",
              "AppArmor records of libvirt guests (libvirt-<uuid> profiles and their "
              "children), grouped by VM, operation, resource and permission, with counts, "
              "first/last seen, and whether they were denied or allowed in complain mode.  "
              "Warns when the logs cannot be trusted.")
    log_options(sp)
    sp.set_defaults(func=cmd_denials)

    sp = verb("explain", "why each denial happened",
              "For each group of denials: the XML element it belongs to (disk, backing file, "
              "share, char device, TPM, nvram ...) or 'not named by the domain', whether it "
              "is a known gap with a proper fix, and a risk note for sensitive targets.")
    log_options(sp)
    sp.set_defaults(func=cmd_explain)

    sp = verb("suggest", "per-VM rules that would have allowed the denials",
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

    sb = sub.add_parser("sandbox", help="create a --root sandbox with libvirt's templates",
                        description="Create DIR/etc/apparmor.d/libvirt with the profile "
                                    "templates, so --root DIR works without touching the "
                                    "host.")
    sb.add_argument("dir", metavar="DIR")
    sb.set_defaults(func=cmd_sandbox)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (CliError, ManageError, StoreError) as exc:
        print(f"virt-aa: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("virt-aa: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"virt-aa: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
