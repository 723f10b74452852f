"""``virt-aa status``: every domain's confinement at a glance; ``prune``."""

from __future__ import annotations

import os
from typing import Any

from virt_aa.generate.domain import DomainError, parse_domain
from virt_aa.host import apparmor, vmprofile
from virt_aa.host.fsutil import read_text, unlink_quiet
from virt_aa.host.libvirtversion import host_libvirt
from virt_aa.host.store import Store
from virt_aa.policy.localrules import parse_file

STATES = {0: "no state", 1: "running", 2: "blocked", 3: "paused", 4: "shutting down",
          5: "shut off", 6: "crashed", 7: "suspended"}


def _kernel_profiles(store: Store) -> set[str] | None:
    if os.path.normpath(store.root) != "/" and not os.environ.get("VIRT_AA_SECURITYFS"):
        return None
    return apparmor.loaded_profiles()


def collect(store: Store, uri: str | None) -> dict[str, Any]:
    """One row per defined domain, plus the stale profiles."""
    from virt_aa.host import libvirt as lv

    try:
        conn = lv.connect(uri)
        domains = conn.listAllDomains(0)
    except lv.LibvirtError:
        raise
    except Exception as exc:  # libvirt.libvirtError without importing it here
        raise lv.LibvirtError(f"cannot list domains: {exc}") from None
    loaded = _kernel_profiles(store)
    rows = []
    uuids = set()
    for d in domains:
        uuid = d.UUIDString().lower()
        uuids.add(uuid)
        profile = f"libvirt-{uuid}"
        state = STATES.get(d.state()[0], "unknown")
        row: dict[str, Any] = {
            "name": d.name(), "uuid": uuid, "state": state, "profile": profile,
            "loaded": None if loaded is None else profile in loaded,
            "mode": store.mode(uuid), "vm_rules": 0, "broken_rules": 0, "forced_reach": 0,
            "profile_on_disk": False, "current": None}
        text = store.read_local(profile)
        if text:
            rules, problems = parse_file(text)
            row["vm_rules"], row["broken_rules"] = len(rules), len(problems)
            row["forced_reach"] = sum(1 for r in rules if r.fields.get("reaches"))
        on_disk = read_text(store.profile(profile))
        row["profile_on_disk"] = on_disk is not None
        try:
            dom = parse_domain(d.XMLDesc(0).encode(), host_libvirt())
        except DomainError:
            dom = None
        if on_disk is not None:
            row["current"] = dom is not None and on_disk == vmprofile.expected(store, dom)
        row["policies"] = _policy_drift(store, dom) if dom is not None else []
        rows.append(row)
    rows.sort(key=lambda r: r["name"])
    stale = []
    libvirt_dir = store.path("etc/apparmor.d/libvirt")
    try:
        names = sorted(os.listdir(libvirt_dir))
    except OSError:
        names = []
    for n in names:
        if n.startswith("libvirt-") and len(n) == 44 and n[8:] not in uuids:
            stale.append({"profile": n, "path": os.path.join(libvirt_dir, n),
                          "loaded": None if loaded is None else n in loaded})
    return {"uri": conn.getURI(), "root": store.root,
            "kernel": "AppArmor" if loaded is not None else "no AppArmor in this kernel",
            "domains": rows, "stale_profiles": stale}


def _policy_drift(store: Store, dom: Any) -> list[dict[str, str]]:
    """Each named policy the domain's metadata references: ok, missing, or different."""
    from virt_aa.policy.named import digest

    if dom.meta_error:
        return [{"name": "?", "status": f"invalid metadata: {dom.meta_error}"}]
    out = []
    for ref in dom.meta.refs if dom.meta else ():
        text = read_text(store.policy(ref.name), 1 << 20)
        status = ("missing" if text is None else
                  "ok" if digest(text) == ref.sha256 else "different")
        out.append({"name": ref.name, "status": status})
    return out


def drift(result: dict[str, Any]) -> dict[str, Any]:
    """Only what differs: policies missing/different here, profiles not current."""
    rows = []
    for r in result["domains"]:
        bad = [p for p in r["policies"] if p["status"] != "ok"]
        stale = r["profile_on_disk"] and r["current"] is False
        if bad or stale:
            rows.append({"name": r["name"], "uuid": r["uuid"], "policies": bad,
                         "profile_not_current": bool(stale)})
    return {"uri": result["uri"], "drift": rows}


def render_drift(result: dict[str, Any]) -> str:
    lines = []
    for r in result["drift"]:
        for p in r["policies"]:
            lines.append(f"{r['name']}: policy {p['name']} {p['status']} on this host")
        if r["profile_not_current"]:
            lines.append(f"{r['name']}: the profile on disk differs from what virt-aa would "
                         f"generate now (`virt-aa reload {r['name']}`)")
    return "\n".join(lines) or "no drift"


def render(result: dict[str, Any]) -> str:
    rows = result["domains"]
    out = []
    if result["kernel"] != "AppArmor":
        out.append(f"note: {result['kernel']} (or a --root sandbox): 'loaded' is n/a")
    head = ("NAME", "STATE", "PROFILE", "LOADED", "MODE", "RULES", "CURRENT")
    table = [head]
    for r in rows:
        loaded = "n/a" if r["loaded"] is None else ("yes" if r["loaded"] else "no")
        current = "-" if r["current"] is None else ("yes" if r["current"] else "NO")
        rules = str(r["vm_rules"]) + (f" ({r['broken_rules']} BROKEN)" if r["broken_rules"]
                                      else "") + (
            f" ({r['forced_reach']} REACH OTHER VMs)" if r.get("forced_reach") else "")
        table.append((r["name"], r["state"], "on disk" if r["profile_on_disk"] else "none",
                      loaded, r["mode"], rules, current))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if result["stale_profiles"]:
        out.append("")
        out.append(f"stale profiles (no such domain; `virt-aa prune` removes them): "
                   f"{len(result['stale_profiles'])}")
        out.extend(f"  {s['path']}" for s in result["stale_profiles"])
    return "\n".join(out)


def prune(store: Store, stale: list[dict[str, Any]]) -> list[str]:
    """Unload (where loaded) and delete the stale P and F; per-VM rules are kept."""
    removed = []
    with store:
        for s in stale:
            path = s["path"]
            if s.get("loaded"):
                apparmor.run("-R", path, store.root, "virt-aa")
            for p in (path, path + ".files"):
                if os.path.exists(p):
                    unlink_quiet(p)
                    removed.append(p)
    return removed
