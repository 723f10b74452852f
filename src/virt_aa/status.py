"""``virt-aa status``: every domain's confinement at a glance; ``prune``."""

from __future__ import annotations

import os
from typing import Any

from . import apparmor, vmprofile
from .domain import DomainError, parse_domain
from .fsutil import read_text, unlink_quiet
from .localrules import parse_file
from .store import Store

STATES = {0: "no state", 1: "running", 2: "blocked", 3: "paused", 4: "shutting down",
          5: "shut off", 6: "crashed", 7: "suspended"}


def _kernel_profiles(store: Store) -> set[str] | None:
    if os.path.normpath(store.root) != "/" and not os.environ.get("VIRT_AA_SECURITYFS"):
        return None
    return apparmor.loaded_profiles()


def collect(store: Store, uri: str | None) -> dict[str, Any]:
    """One row per defined domain, plus the stale profiles."""
    from . import libvirt as lv

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
            "mode": store.mode(uuid), "vm_rules": 0, "broken_rules": 0,
            "profile_on_disk": False, "current": None}
        text = store.read_local(profile)
        if text:
            rules, problems = parse_file(text)
            row["vm_rules"], row["broken_rules"] = len(rules), len(problems)
        on_disk = read_text(store.profile(profile))
        row["profile_on_disk"] = on_disk is not None
        if on_disk is not None:
            try:
                dom = parse_domain(d.XMLDesc(0).encode())
                row["current"] = on_disk == vmprofile.expected(store, dom)
            except DomainError:
                row["current"] = False
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
                                      else "")
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
