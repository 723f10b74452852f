"""Named policies on a host, their attachment to VMs, and the host's whole state
as one document (export/import) -- the pieces fleets are managed with.

The library API here is what the CLI verbs and the Ansible modules call.
"""

from __future__ import annotations

import os
from typing import Any

from virt_aa.generate.domain import Domain
from virt_aa.host.fsutil import append_durable, read_text, unlink_quiet, write_atomic
from virt_aa.host.journal import Journal
from virt_aa.host.store import Store, StoreError
from virt_aa.ops.manage import (
    VM,
    ManageError,
    apply_live,
    check_whole,
    compile_rules,
    invoking_user,
    now,
    remember,
    repair,
)
from virt_aa.policy.isolation import Reach
from virt_aa.policy.localrules import grants_restricted, parse_file, parse_rule
from virt_aa.policy.named import Meta, Ref, digest, render_metadata, valid_name

HOST_HISTORY = "var/lib/virt-aa/history/host.jsonl"


def _record(store: Store, rec: dict[str, Any]) -> None:
    import json

    append_durable(store.path(HOST_HISTORY), (json.dumps(rec, sort_keys=True) + "\n").encode())


def _domains(domains: list[Domain] | None) -> list[Domain]:
    if domains is not None:
        return domains
    from virt_aa.ops.isolation import host_domains

    return host_domains(None)[0]


def _isolate_policy(text: str, dom: Domain | None, domains: list[Domain],
                    force: bool) -> list[Reach]:
    """A policy's rules that reach a VM's file: the attaching VM's others', or (no VM
    yet: ``policy add``) any VM's; refused without ``force``."""
    from virt_aa.ops.isolation import file_rules, files_of, with_vm
    from virt_aa.policy.isolation import breaches, reaches, refusal

    rules = file_rules([r.text for r in parse_file(text)[0]], "policy")
    for r in rules:
        if r.pattern is None and not r.deny and not force:
            raise ManageError(f"rule {r.text()!r}: cannot tell whether it reaches a VM's "
                              f"files ({r.error}); add --force if you mean it")
    files = files_of(with_vm(domains, dom) if dom is not None else domains)
    bad = breaches(reaches(rules, dom.uuid if dom is not None else "", files, "policy"))
    if bad and not force:
        raise ManageError(refusal(bad))
    return bad


def list_policies(store: Store) -> list[dict[str, Any]]:
    d = store.path("etc/virt-aa/policies")
    try:
        names = sorted(n for n in os.listdir(d) if valid_name(n))
    except OSError:
        return []
    out = []
    for n in names:
        text = read_text(os.path.join(d, n), 1 << 20) or ""
        rules, problems = parse_file(text)
        out.append({"name": n, "sha256": digest(text), "rules": len(rules),
                    "problems": len(problems), "path": os.path.join(d, n)})
    return out


def show_policy(store: Store, name: str) -> dict[str, Any]:
    if not valid_name(name):
        raise ManageError(f"invalid policy name {name!r} (a-z 0-9 . _ -)")
    text = read_text(store.policy(name), 1 << 20)
    if text is None:
        raise ManageError(f"no policy {name!r} on this host (see `virt-aa policy list`)")
    return {"name": name, "sha256": digest(text), "text": text, "path": store.policy(name)}


def check_policy_text(store: Store, text: str, force: bool = False) -> None:
    """A policy is checked like per-VM rules: grammar, policy, the real parser."""
    rules, problems = parse_file(text)
    if problems:
        line, why = problems[0]
        raise ManageError(f"line {line}: {why}")
    if not rules:
        raise ManageError("the policy has no rules")
    for r in rules:
        if grants_restricted(parse_rule(r.text)) and not force:
            raise ManageError(f"rule {r.text!r} grants a restricted path; add --force if you "
                              f"mean it")
    problem = compile_rules(store, [r.text for r in rules])
    if problem:
        raise ManageError(f"apparmor_parser refused the policy: {problem}")


def add_policy(store: Store, name: str, text: str, force: bool = False,
               domains: list[Domain] | None = None) -> dict[str, Any]:
    """Install or replace a policy; ``changed`` is False when the content is the same.

    A rule that reaches any VM's file is refused unless ``force`` (a policy
    can be attached to any VM); ``domains``: the host's (None: ask libvirt).
    """
    if not valid_name(name):
        raise ManageError(f"invalid policy name {name!r} (a-z 0-9 . _ -, at most 64)")
    if text and not text.endswith("\n"):
        text += "\n"
    hosts = _domains(domains)
    with store:
        if read_text(store.policy(name), 1 << 20) == text:
            return {"name": name, "sha256": digest(text), "changed": False}
        with Journal(store, [store.policy(name)], [store.path(HOST_HISTORY)]):
            return _install_policy(store, name, text, force, hosts)


def _install_policy(store: Store, name: str, text: str, force: bool,
                    domains: list[Domain]) -> dict[str, Any]:
    """Check and write one policy and its record (the caller holds lock and journal)."""
    old = read_text(store.policy(name), 1 << 20)
    if old == text:
        return {"name": name, "sha256": digest(text), "changed": False}
    check_policy_text(store, text, force)
    bad = _isolate_policy(text, None, domains, force)
    path = store.policy(name)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, text.encode("utf-8", "surrogateescape"))
        _record(store, {"time": now(), "user": invoking_user(),
                        "action": "policy-add" if old is None else "policy-update",
                        "policy": name, "sha256": digest(text),
                        **({"force": True, "reaches": _note(bad)} if bad else {})})
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror}") from None
    out = {"name": name, "sha256": digest(text), "changed": True, "previous": old}
    if bad:
        out["reaches"] = [r.as_dict() for r in bad]
    return out


def _note(bad: list[Reach]) -> str:
    from virt_aa.ops.isolation import forced_note

    return forced_note(bad)


def remove_policy(store: Store, name: str) -> dict[str, Any]:
    if not valid_name(name):
        raise ManageError(f"invalid policy name {name!r}")
    with store:
        path = store.policy(name)
        if not os.path.exists(path):
            return {"name": name, "changed": False}
        with Journal(store, [path], [store.path(HOST_HISTORY)]):
            unlink_quiet(path)
            _record(store, {"time": now(), "user": invoking_user(), "action": "policy-remove",
                            "policy": name})
    return {"name": name, "changed": True}


def attached(vm: VM) -> Meta:
    return vm.dom.meta or Meta()


def with_policy(meta: Meta, ref: Ref | None, drop: str | None = None) -> Meta:
    refs = [r for r in meta.refs if r.name not in (drop, ref.name if ref else None)]
    if ref is not None:
        refs.append(ref)
    return Meta(tuple(refs), meta.mode)


def metadata_xml(meta: Meta) -> str | None:
    return render_metadata(meta) if meta.refs or meta.mode else None


def set_offline(xml_path: str, element: str | None) -> None:
    """Replace virt-aa's element in an XML file's <metadata> (offline domains)."""
    import xml.etree.ElementTree as ET

    from virt_aa.generate.xmlsafe import parse
    from virt_aa.policy.named import NS

    with open(xml_path, "rb") as f:
        data = f.read()
    parse(data)                                   # refuses DTDs/entities first
    ET.register_namespace("virtaa", NS)
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))  # keep admin comments
    parser.feed(data)
    root = parser.close()
    meta = root.find("metadata")
    if meta is None:
        meta = ET.SubElement(root, "metadata")
    for child in list(meta):
        if child.tag.startswith("{" + NS + "}"):
            meta.remove(child)
    if element is not None:
        meta.append(ET.fromstring(element))
    if not len(meta):
        root.remove(meta)
    write_atomic(xml_path, ET.tostring(root, encoding="unicode").encode() + b"\n",
                 os.stat(xml_path).st_mode & 0o777)


def attach(store: Store, vm: VM, name: str, setter: Any,
           force: bool = False) -> dict[str, Any]:
    """Reference the host's policy ``name`` (by hash) from the VM's metadata, apply live.

    ``setter(element_xml | None)`` stores the metadata (libvirt, or the XML
    file: then ``setter.path`` names it, and the journal covers it).  Refused
    when the policy reaches another VM's file (unless ``force``) or when the
    whole profile with it would not compile.
    """
    info = show_policy(store, name)
    meta = attached(vm)
    ref = Ref(name, info["sha256"])
    if ref in meta.refs:
        with store:
            fixed = repair(store, vm)
        return {"domain": vm.dom.name, "policy": name, "changed": False,
                "status": "already attached" + fixed}
    bad = _isolate_policy(info["text"], vm.dom, vm.host_domains(), force)
    new = with_policy(meta, ref)
    before = vm.dom.meta
    vm.dom.meta = new
    files = [store.profile(vm.profile)] + ([setter.path] if hasattr(setter, "path") else [])
    with store:
        local = store.read_local(vm.profile) or ""
        try:
            key = check_whole(store, vm, local, local, [])
        except ManageError:
            vm.dom.meta = before
            raise
        with Journal(store, files, [store.history_path(vm.uuid)], store.profile(vm.profile)):
            setter(metadata_xml(new))
            status = apply_live(store, vm)
            store.append_history(vm.uuid, {"time": now(), "user": invoking_user(),
                                           "action": "attach", "policy": name,
                                           "sha256": info["sha256"], "domain": vm.dom.name,
                                           **({"force": True, "reaches": _note(bad)}
                                              if bad else {})})
            remember(store, vm.uuid, key)
    return {"domain": vm.dom.name, "policy": name, "sha256": info["sha256"],
            "changed": True, "status": status}


def detach(store: Store, vm: VM, name: str, setter: Any) -> dict[str, Any]:
    meta = attached(vm)
    if name not in {r.name for r in meta.refs}:
        return {"domain": vm.dom.name, "policy": name, "changed": False,
                "status": "not attached"}
    new = with_policy(meta, None, drop=name)
    vm.dom.meta = new
    files = [store.profile(vm.profile)] + ([setter.path] if hasattr(setter, "path") else [])
    with store, Journal(store, files, [store.history_path(vm.uuid)],
                        store.profile(vm.profile)):
        setter(metadata_xml(new))
        status = apply_live(store, vm)
        store.append_history(vm.uuid, {"time": now(), "user": invoking_user(),
                                       "action": "detach", "policy": name,
                                       "domain": vm.dom.name})
    return {"domain": vm.dom.name, "policy": name, "changed": True, "status": status}


# -- export / import -------------------------------------------------------------------------

def export_state(store: Store) -> dict[str, Any]:
    """Policies, per-VM rules, modes and history as one JSON-able document."""
    doc: dict[str, Any] = {"format": "virt-aa-state", "version": 1,
                           "host": os.uname().nodename, "exported": now(),
                           "policies": {p["name"]: show_policy(store, p["name"])["text"]
                                        for p in list_policies(store)},
                           "domains": {}}
    uuids = set()
    for rel in ("etc/virt-aa/domains", "etc/apparmor.d/local"):
        try:
            names = os.listdir(store.path(rel))
        except OSError:
            continue
        for n in names:
            u = n[:-5] if n.endswith(".conf") else n[8:] if n.startswith("libvirt-") else ""
            if len(u) == 36:
                uuids.add(u)
    for u in sorted(uuids):
        settings = store.settings(u)
        doc["domains"][u] = {"name": settings.get("name", ""),
                             "mode": settings.get("mode", "enforce"),
                             "rules": store.read_local(f"libvirt-{u}") or "",
                             "history": store.history(u)}
    return doc


def plan_import(store: Store, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """What importing ``doc`` would change here: one entry per item, with a diff."""
    import difflib

    if doc.get("format") != "virt-aa-state" or doc.get("version") != 1:
        raise ManageError("not a virt-aa state document (format virt-aa-state, version 1)")
    changes = []

    def diff(old: str, new: str, label: str) -> str:
        return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                            f"{label} (here)", f"{label} (document)"))

    for name, text in sorted(doc.get("policies", {}).items()):
        if not isinstance(text, str) or not valid_name(name):
            raise ManageError(f"policy {name!r}: invalid entry")
        old = read_text(store.policy(name), 1 << 20)
        if old != text:
            changes.append({"kind": "policy", "name": name, "diff": diff(old or "", text,
                                                                         f"policy {name}")})
    for uuid, d in sorted(doc.get("domains", {}).items()):
        if len(uuid) != 36 or not isinstance(d, dict):
            raise ManageError(f"domain {uuid!r}: invalid entry")
        old_rules = store.read_local(f"libvirt-{uuid}") or ""
        if d.get("rules", "") != old_rules:
            changes.append({"kind": "rules", "uuid": uuid, "name": d.get("name"),
                            "diff": diff(old_rules, d.get("rules", ""), f"rules {uuid}")})
        if d.get("mode", "enforce") != store.mode(uuid):
            changes.append({"kind": "mode", "uuid": uuid, "name": d.get("name"),
                            "diff": f"mode {store.mode(uuid)} -> {d.get('mode')}"})
    return changes


def apply_import(store: Store, doc: dict[str, Any], force: bool = False,
                 domains: list[Domain] | None = None) -> list[dict[str, Any]]:
    """Make this host's state match ``doc`` (checked like every change); idempotent.

    Per-VM rules are checked like ``allow``: isolation against the host's
    domains, and the whole profile of every domain defined here.
    """
    hosts = _domains(domains)
    with store:
        changes = plan_import(store, doc)
        files, keys = [], {}
        for c in changes:
            if c["kind"] == "policy":
                files.append(store.policy(c["name"]))
            else:
                files += [store.local(f"libvirt-{c['uuid']}"), store.settings_path(c["uuid"])]
            if c["kind"] == "rules":
                keys[c["uuid"]] = _check_import_rules(store, c["uuid"],
                                                      doc["domains"][c["uuid"]]["rules"],
                                                      hosts, force)
        if not changes:
            return changes
        with Journal(store, files, [store.path(HOST_HISTORY)]):  # all of it, or none
            for c in changes:
                if c["kind"] == "policy":
                    _install_policy(store, c["name"], doc["policies"][c["name"]], force,
                                    hosts)
                elif c["kind"] == "rules":
                    store.write_local(f"libvirt-{c['uuid']}", doc["domains"][c["uuid"]]["rules"])
                elif c["kind"] == "mode":
                    d = doc["domains"][c["uuid"]]
                    settings = store.settings(c["uuid"])
                    store.write_settings(c["uuid"], {**settings, "name": d.get("name", ""),
                                                     "mode": d["mode"]})
            _record(store, {"time": now(), "user": invoking_user(), "action": "import",
                            "changes": len(changes), "from": doc.get("host")})
            for uuid, key in keys.items():
                if key:
                    remember(store, uuid, key)
    return changes


def _check_import_rules(store: Store, uuid: str, text: str, domains: list[Domain],
                        force: bool) -> str:
    """Grammar, isolation and the whole profile (the rules alone for a domain not
    defined here); the profile's digest or ""."""
    from virt_aa.ops.isolation import check_each, files_of, with_vm

    rules, problems = parse_file(text)
    if problems:
        raise ManageError(f"rules of {uuid}: line {problems[0][0]}: {problems[0][1]}")
    dom = next((d for d in domains if d.uuid == uuid), None)
    if dom is None:
        problem = compile_rules(store, [r.text for r in rules]) if rules else None
        if problem:
            raise ManageError(f"rules of {uuid}: {problem}")
        return ""
    from virt_aa.policy.isolation import breaches, refusal

    files = files_of(with_vm(domains, dom))
    try:
        checked = check_each([r.text for r in rules], dom, files, "per-VM rule")
    except ValueError as exc:
        if force:
            checked = {}
        else:
            raise ManageError(f"rules of {dom.name}: {exc}") from None
    for found in checked.values():
        if breaches(found) and not force:
            raise ManageError(f"rules of {dom.name}: {refusal(found)}")
    vm = VM(dom, None)
    old = store.read_local(dom.profile_name) or ""
    return check_whole(store, vm, old, text, [])
