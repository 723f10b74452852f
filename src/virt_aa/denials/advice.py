"""What to do about one denial group: one answer, consistent with `check`.

Pure: the facts (the program the profile confines, the current effective policy's
verdict, whether the path is restricted, the proposals, a known cause) in, one
piece of advice out, with the commands to run, built by the caller's `cmd` so
that they run exactly as printed.

* already allowed by the current policy: the log predates the policy, or the
  loaded profile is stale: ``reload`` (no new rule);
* restricted: no allow command, what to do instead;
* another program's profile (libvirtd, swtpm, ...): a per-VM rule cannot reach it;
* a known cause whose proper fix is not a rule: that fix, no command;
* else the known cause's per-VM rule, or the narrowest proposal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .catalogue import Known
from .programs import HEADING

Cmd = Callable[[list[str]], str]    # verb + arguments -> the command line to print


def advise(program: str, profile: str, verdict: dict[str, Any] | None, restricted: bool,
           proposals: list[dict[str, Any]], known: Known | None, cmd: Cmd | None,
           hint: str | None = None, program_cmd: Cmd | None = None) -> dict[str, Any]:
    """{"status", "text", "commands", "rule"}: status is allowed_now, denied_by_rule,
    restricted, other_profile, profile_rule (`program_cmd`: a rule for the program's own
    profile), fix_elsewhere, allow, no_rule or name_the_domain (no
    domain given: no command can be right).  `hint`: the rule the explanation found (a
    device the domain names)."""
    if program != "vm":
        what = HEADING.get(program, program)
        text = (f"denied by {profile} ({what}), not by a VM's profile: a per-VM rule "
                f"cannot fix it")
        if known is not None and known.fix:
            text += f"; {known.fix}"
        if restricted:
            text += "; a restricted path: no allow command"
        elif known is not None and not known.rule:
            pass                        # the proper fix is not a rule
        elif program_cmd is not None and proposals:
            rule = proposals[0]["rule"]
            return {"status": "profile_rule", "text": text + f"; a rule in its profile: {rule}",
                    "commands": [program_cmd(["allow", rule])], "rule": rule}
        return {"status": "other_profile", "text": text, "commands": []}
    if verdict is not None and verdict.get("allowed"):
        rules = "; ".join(verdict.get("allow_rules") or []) or "the current policy"
        return {"status": "allowed_now",
                "text": (f"already allowed by the current policy ({rules}): the log "
                         f"predates it, or the loaded profile is stale; reload fixes that, "
                         f"no new rule is needed"),
                "commands": [cmd(["reload"])] if cmd is not None else []}
    if verdict is not None and verdict.get("deny_rules"):
        rules = "; ".join(verdict["deny_rules"])
        return {"status": "denied_by_rule",
                "text": (f"refused on purpose by a deny rule ({rules}); revoke that rule "
                         f"first if the VM should have it"),
                "commands": []}
    if restricted:
        if known is not None and known.rule:
            instead = (f"the usual fix is the rule {known.rule}, which only `allow --force` "
                       f"stores, after review")
        elif known is not None and known.fix:
            instead = known.fix
        else:
            instead = ("find out why QEMU reaches it (a wrong path in the domain XML, a "
                       "device that should be passed another way) and fix that")
        return {"status": "restricted",
                "text": f"a restricted host path: no allow command; {instead}",
                "commands": []}
    if known is not None and not known.rule:     # the proper fix is not a per-VM rule
        return {"status": "fix_elsewhere", "text": known.fix, "commands": []}
    rule = known.rule if known is not None and known.rule else (
        hint or (proposals[0]["rule"] if proposals else None))
    text = known.fix if known is not None and known.fix else ""
    if rule is None:
        return {"status": "no_rule",
                "text": text or "no per-VM rule can name it (not a file, capability or "
                                "network access, or an unquotable path)",
                "commands": []}
    if cmd is None:
        return {"status": "name_the_domain",
                "text": (text + "; " if text else "") + f"rule {rule} (name the domain, "
                        "or give --xml, for the command)",
                "commands": []}
    return {"status": "allow", "text": text or f"allow it for this VM: {rule}",
            "commands": [cmd(["allow", rule])], "rule": rule}
