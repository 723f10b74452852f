"""Isolation checks on a host: the domains, their files, the rules that reach them.

The domains come from libvirt (every defined domain, ``listAllDomains``) or
are given (``--xml``: the domain itself, plus whatever libvirt knows).  Their
files come from the generator (image headers are read for backing chains)
and :mod:`virt_aa.policy.isolation` decides which rules reach another VM's.
"""

from __future__ import annotations

import os
from typing import Any

from virt_aa.generate.domain import Domain, DomainError, parse_domain
from virt_aa.policy.effective import FileRule, ParseStats, rules_from_text
from virt_aa.policy.isolation import Owned, Reach, owned_files, reaches

TYPE_CHECKING = False
if TYPE_CHECKING:
    from virt_aa.host.store import Store


def domains_of(conn: Any) -> list[Domain]:
    """Every domain libvirt defines on this connection (unparsable ones skipped)."""
    from virt_aa.host import libvirt as lv

    out = []
    try:
        listed = conn.listAllDomains(0)
    except Exception as exc:  # libvirt.libvirtError without importing it here
        raise lv.LibvirtError(f"cannot list domains: {exc}") from None
    for d in listed:
        try:
            out.append(parse_domain(lv.domain_xml(d)))
        except DomainError:
            continue
    return out


def host_domains(uri: str | None) -> tuple[list[Domain], str]:
    """(domains, "") from libvirt, or ([], why not) when it cannot be reached."""
    from virt_aa.host import libvirt as lv

    try:
        return domains_of(lv.connect(uri)), ""
    except lv.LibvirtError as exc:
        return [], str(exc)


def with_vm(domains: list[Domain], dom: Domain) -> list[Domain]:
    """The host's domains with ``dom`` in place of its stored definition."""
    return [d for d in domains if d.uuid != dom.uuid] + [dom]


def files_of(domains: list[Domain]) -> list[Owned]:
    """Every domain's own files (a domain the generator refuses keeps libvirt's files)."""
    from virt_aa.generate.accesses import GenerationError, generate
    from virt_aa.host.hostfacts import SystemHost

    host = SystemHost()
    out: list[Owned] = []
    for dom in domains:
        try:
            rules = generate(dom, host).rules
        except GenerationError:
            rules = []
        out.extend(owned_files(dom, rules))
    return out


_TUNABLES: dict[str, list[str]] | None = None


def _variables(texts: list[str]) -> dict[str, list[str]]:
    global _TUNABLES
    if not any("@{" in t for t in texts):
        return {}
    if _TUNABLES is None:
        from virt_aa.policy.aare import load_tunables

        _TUNABLES = load_tunables()
    return dict(_TUNABLES)


def file_rules(texts: list[str], source: str) -> list[FileRule]:
    """Rule statements (per-VM syntax, with or without the comma) as FileRules."""
    body = "".join(t if t.rstrip().endswith(",") else t + "," for t in texts)
    lines = "\n".join(t.strip() for t in body.split("\n"))
    return rules_from_text(lines, source, [], _variables(texts), ParseStats())


def check(texts: list[str], dom: Domain, domains: list[Domain], via: str) -> list[Reach]:
    """Which of these rules, given to ``dom``, reach another domain's file."""
    rules = file_rules([t if t.endswith(",") else t + "," for t in texts], via)
    if not rules:
        return []
    return reaches(rules, dom.uuid, files_of(with_vm(domains, dom)), via)


def forced_note(found: list[Reach]) -> str:
    """``reaches="db01:/path ..."`` value stored with a forced rule."""
    return " ".join(sorted({f"{r.owned.name}:{r.owned.path}" for r in found if not r.declared}))


# -- the host report ----------------------------------------------------------------------

def _profile_rules(store: Store, dom: Domain) -> list[tuple[str, list[FileRule]]]:
    """(via, rules) of one VM: generated, per-VM, each attached policy."""
    from virt_aa.generate.accesses import GenerationError, generate
    from virt_aa.generate.profile import render_rules
    from virt_aa.host.hostfacts import SystemHost
    from virt_aa.host.vmprofile import resolve

    out: list[tuple[str, list[FileRule]]] = []
    try:
        gen = render_rules(generate(dom, SystemHost()).rules)
        out.append(("generated rule", rules_from_text(gen, "generated", [], {},
                                                      ParseStats())))
    except GenerationError:
        pass
    local = store.read_local(dom.profile_name) or ""
    out.append(("per-VM rule", rules_from_text(local, store.local(dom.profile_name), [],
                                               _variables([local]), ParseStats())))
    for path in resolve(store, dom).files:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
        out.append((f"policy {os.path.basename(path)}",
                    rules_from_text(text, path, [], _variables([text]), ParseStats())))
    return out


def _host_wide(store: Store) -> list[FileRule]:
    """Rules every VM gets: libvirt's abstraction and its local/ additions."""
    from virt_aa.policy.aare import load_tunables

    search = [store.path("etc/apparmor.d"), "/etc/apparmor.d"]
    text = "#include <abstractions/libvirt-qemu>\n"
    return rules_from_text(text, "host-wide", search, load_tunables(), ParseStats())


def report(store: Store, domains: list[Domain]) -> dict[str, Any]:
    """Which VM can reach which other VM's file, and through what."""
    files = files_of(domains)
    host_wide = _host_wide(store)
    rows: list[dict[str, Any]] = []
    for dom in sorted(domains, key=lambda d: d.name):
        found: list[Reach] = []
        for via, rules in _profile_rules(store, dom):
            found += reaches(rules, dom.uuid, files, via)
        found += reaches(host_wide, dom.uuid, files, "host-wide rule")
        for r in found:
            rows.append({"domain": dom.name, "uuid": dom.uuid, **r.as_dict()})
    breaches = [r for r in rows if not r["declared"]]
    return {"domains": len(domains), "files": len(files), "reaches": rows,
            "breaches": len(breaches), "declared_sharing": len(rows) - len(breaches)}


def render_report(rep: dict[str, Any]) -> str:
    lines = [f"{rep['domains']} domains, {rep['files']} VM files: {rep['breaches']} "
             f"reach(es) into another VM's files, {rep['declared_sharing']} declared "
             f"sharing"]
    for r in rep["reaches"]:
        kind = "shares (declared)" if r["declared"] else "REACHES"
        lines.append(f"  {r['domain']} {kind} {r['other']}'s {r['what']} {r['file']} "
                     f"[{r['perms']}] via {r['via']}: {r['rule']}  ({r['source']})")
    return "\n".join(lines)


def check_each(texts: list[str], dom: Domain, files: list[Owned],
               via: str) -> dict[str, list[Reach]]:
    """For each rule text given to ``dom``: the other domains' files it reaches.

    ``files``: :func:`files_of` the host's domains (``dom`` included).
    """
    out: dict[str, list[Reach]] = {}
    for text in texts:
        rules = file_rules([text], via)
        for r in rules:
            if r.pattern is None and not r.deny:
                raise ValueError(f"rule {text!r}: cannot tell whether it reaches another "
                                 f"VM's files ({r.error})")
        out[text] = reaches(rules, dom.uuid, files, via) if rules else []
    return out


def isolate_proposals(items: list[dict[str, Any]], vm: Any) -> None:
    """Drop every proposal that would reach another VM's file; say why.

    The exact path stays (unless it is itself another VM's file: then
    nothing is proposed).  ``items``: ``suggest``'s denials with proposals.
    """
    files = files_of(with_vm(vm.host_domains(), vm.dom))
    for item in items:
        kept: list[tuple[dict[str, Any], list[Reach]]] = []
        dropped: list[tuple[dict[str, Any], list[Reach]]] = []
        for p in item["proposals"]:
            found = [r for r in reaches(file_rules([p["rule"]], "proposal"), vm.dom.uuid,
                                        files, "proposal") if not r.declared]
            (dropped if found else kept).append((p, found))
        if not dropped:
            continue
        item["proposals"] = [p for p, _ in kept]
        first: dict[str, Owned] = {}
        for _, found in dropped:
            for r in found:
                first.setdefault(r.owned.name, r.owned)
        whose = ", ".join(f"VM {o.name}'s {o.what} {o.path}" for o in first.values())
        item["isolation"] = (f"not proposed: {', '.join(d['kind'] for d, _ in dropped)} -- "
                             f"would reach {whose}" + ("; the exact path only" if kept else ""))
