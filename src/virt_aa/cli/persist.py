"""Per-VM rules and mode: show, allow, revoke, rules, complain/enforce, reload, history."""

from __future__ import annotations

import argparse
from typing import Any

from virt_aa.cli.common import CliError, _emit, _split_domain, _store, _vm, verb
from virt_aa.ops.errors import ManageError


def cmd_show(args: argparse.Namespace) -> int:
    from virt_aa.generate.accesses import GenerationError, fixed_rules, generate
    from virt_aa.host.hostfacts import SystemHost
    from virt_aa.host.libvirtversion import host_libvirt
    from virt_aa.ops.manage import list_rules, profile_status

    vm = _vm(args, args.domain)
    store = _store(args)
    dom = vm.dom
    try:
        gen = generate(dom, SystemHost(), lv=host_libvirt())
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
        if lr.get("reaches"):
            flag += f"  REACHES OTHER VMs (added with --force): {lr['reaches']}"
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


def _host_target(args: argparse.Namespace) -> Any:
    """The --all-vms or --profile NAME target, or None for a domain's own rules."""
    if not getattr(args, "all_vms", False) and not getattr(args, "profile", None):
        return None
    if args.all_vms and args.profile:
        raise CliError("give --all-vms or --profile NAME, not both")
    if getattr(args, "xml", None) or getattr(args, "domain", None):
        raise CliError("--all-vms and --profile take no domain")
    from virt_aa.ops import hostrules

    store = _store(args)
    return hostrules.all_vms(store) if args.all_vms else hostrules.program(store, args.profile)


def _host_allow(args: argparse.Namespace, target: Any, rules: list[str]) -> int:
    from virt_aa.ops import hostrules

    result = hostrules.allow(_store(args), target, rules, args.comment or "", args.force)
    lines = [f"allowed for {target.label}: [{r['id']}] {r['rule']}"
             for r in result["added"]] or ["nothing new: " + str(result["status"])]
    if result["added"]:
        lines.append(str(result["status"]))
    return _emit(args, result, "\n".join(lines))


def cmd_allow(args: argparse.Namespace) -> int:
    from virt_aa.ops.manage import allow
    from virt_aa.policy.localrules import RuleError, path_rule

    target = _host_target(args)
    domain, rules = (None, list(args.items)) if target else _split_domain(args, args.items)
    if args.path:
        if not args.perms:
            raise CliError("--path needs --perms (e.g. --perms rw)")
        try:
            rules.append(path_rule(_canonical(args.path), args.perms, args.recursive))
        except RuleError as exc:
            raise CliError(str(exc)) from None
    if not rules:
        raise CliError("give at least one rule ('/srv/data/** rwk,') or --path PATH --perms P")
    if target is not None:
        return _host_allow(args, target, rules)
    vm = _vm(args, domain)
    result = allow(_store(args), vm, rules, args.comment or "", args.force)
    added = result["added"]
    lines = [f"allowed on {vm.dom.name}: [{r['id']}] {r['rule']}"
             for r in added] or ["nothing new: " + str(result["status"])]
    if added:
        lines.append(str(result["status"]))
    if result.get("isolation"):
        from virt_aa.ops.manage import warn

        warn(f"isolation {result['isolation']}")
    return _emit(args, result, "\n".join(lines))


def _canonical(path: str) -> str:
    if not path.startswith("/"):
        raise CliError(f"--path must be absolute: {path}")
    from virt_aa.generate.paths import canonical, has_control
    from virt_aa.host.hostfacts import SystemHost

    if has_control(path):
        raise CliError("--path contains a control character")
    host = SystemHost()
    return canonical(path, host.exists, host.realpath)[0]


def cmd_revoke(args: argparse.Namespace) -> int:
    from virt_aa.ops.manage import revoke

    target = _host_target(args)
    domain, keys = (None, list(args.items)) if target else _split_domain(args, args.items)
    if len(keys) != 1:
        raise CliError("give exactly one rule or rule id to revoke (see `virt-aa rules`)")
    if target is not None:
        from virt_aa.ops import hostrules

        res = hostrules.revoke(_store(args), target, keys[0])
        r = res["revoked"]
        return _emit(args, res, f"revoked for {target.label}: [{r['id']}] {r['rule']}\n"
                                f"{res['status']}")
    vm = _vm(args, domain)
    result = revoke(_store(args), vm, keys[0])
    r = result["revoked"]
    return _emit(args, result, f"revoked on {vm.dom.name}: [{r['id']}] {r['rule']}\n"
                               f"{result['status']}")


def cmd_rules(args: argparse.Namespace) -> int:
    from virt_aa.ops.manage import list_rules

    target = _host_target(args)
    if target is not None:
        from virt_aa.ops import hostrules

        res = hostrules.list_rules(target)
        lines = [f"{r['id']}  {r['rule']}" + (f"  # {r['comment']}" if r.get("comment")
                                              else "") for r in res["rules"]]
        return _emit(args, res, "\n".join(lines) or f"no rules for {target.label} in "
                                                      f"{target.path}")
    vm = _vm(args, args.domain)
    result = list_rules(_store(args), vm)
    lines = [f"{r['id']}  {r['rule']}" + (f"  # {r['comment']}" if r.get("comment") else "")
             + ("  RESTRICTED" if r["restricted"] else "")
             + (f"  REACHES OTHER VMs: {r['reaches']}" if r.get("reaches") else "")
             for r in result["rules"]]
    lines += [f"BROKEN line {p['line']}: {p['reason']}"
              for p in result["problems"]]
    return _emit(args, result, "\n".join(lines) or f"no per-VM rules for {vm.dom.name}")


def cmd_mode(args: argparse.Namespace) -> int:
    from virt_aa.ops.manage import set_mode

    vm = _vm(args, args.domain)
    result = set_mode(_store(args), vm, args.command, args.comment or "")
    return _emit(args, result, f"{vm.dom.name}: {result['previous']} -> {result['mode']}\n"
                               f"{result['status']}")


def cmd_reload(args: argparse.Namespace) -> int:
    from virt_aa.ops.manage import reload

    store = _store(args)
    if args.all:
        if args.domain or args.xml:
            raise CliError("--all takes no domain")
        from virt_aa.host import libvirt as lv
        from virt_aa.ops.manage import vm_from_xml

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
    target = _host_target(args)
    if target is not None:
        records = _store(args).history(target.key)
        lines = [f"{r.get('time')}  {r.get('user')}  {r.get('action')}  {r.get('rule')}"
                 for r in records]
        return _emit(args, {"target": target.label, "history": records},
                     "\n".join(lines) or f"no changes recorded for {target.label}")
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


def host_options(sp: argparse.ArgumentParser) -> None:
    """--all-vms and --profile NAME: rules beyond one domain (ops/hostrules.py)."""
    sp.add_argument("--all-vms", action="store_true",
                    help="every VM: the extension point of the installed "
                         "abstractions/libvirt-qemu (libvirt-qemu.d/ or local/)")
    sp.add_argument("--profile", metavar="NAME",
                    choices=("libvirtd", "virtqemud", "swtpm", "virtiofsd", "passt",
                             "dnsmasq"),
                    help="a program of the stack: the local/ file its installed profile "
                         "includes")


def register(sub: Any) -> None:
    """Add this family's verbs to the parser."""
    sp = verb(sub, "show", "the effective policy of a domain",
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
                    help="allow a rule that reaches a restricted path (/etc, /root, ...) "
                         "or another VM's files (recorded and flagged)")
    host_options(sp)
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_allow)

    sp = sub.add_parser("revoke", help="remove a per-VM rule",
                        description="Remove one per-VM rule, by its id (see `virt-aa rules`) "
                                    "or its exact text; applied live and recorded.")
    sp.add_argument("items", nargs="*", metavar="DOMAIN|RULE|ID")
    sp.add_argument("--xml", metavar="FILE", help="give the domain offline as an XML file")
    host_options(sp)
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_revoke)

    sp = verb(sub, "rules", "list a domain's per-VM rules",
              "List the per-VM rules of a domain with ids and provenance; broken "
              "hand edits are reported with their line.")
    host_options(sp)
    sp.set_defaults(func=cmd_rules)

    for mode, desc in (("complain", "log instead of blocking (debugging one VM)"),
                       ("enforce", "block what the profile does not allow (default)")):
        sp = verb(sub, mode, f"put a domain in {mode} mode",
                  f"Put one domain's profile in {mode} mode: {desc}.  Stored, applied "
                  f"live, kept across restarts.")
        sp.add_argument("--comment", help="why (recorded in the history)")
        sp.set_defaults(func=cmd_mode)

    sp = verb(sub, "reload", "regenerate and reload profiles",
              "Regenerate a domain's profile from its stored rules and mode and replace "
              "the loaded one (or, with --all, every running domain's).")
    sp.add_argument("--all", action="store_true", help="every running domain")
    sp.set_defaults(func=cmd_reload)

    sp = verb(sub, "history", "every change made to a domain's confinement",
              "Every change: when, who (SUDO_USER where set), what, why.")
    host_options(sp)
    sp.set_defaults(func=cmd_history)
