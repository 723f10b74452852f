"""Per-VM rule grammar, policy and file format (pure)."""

from __future__ import annotations

import pytest

from aadfa import literal_match
from virt_aa.generate.profile import set_mode
from virt_aa.policy.localrules import (
    LocalRule,
    RuleError,
    grants_restricted,
    parse_file,
    parse_rule,
    path_rule,
    render_file,
    rule_id,
)

GOOD = [
    "/srv/data/** rwk,",
    "/srv/data/** rwk",                   # the comma is added
    '"/srv/with space/x" r,',
    "owner /srv/home/** rw,",
    "deny /srv/secret/** w,",
    "audit /srv/x r,",
    "file /srv/y rw,",
    "rw /srv/z,",
    "/srv/{a,b}/x r,",
    "@{HOME}/vm/** r,",
    "/usr/bin/qemu-bridge-helper ix,",
    "/usr/lib/foo Px -> other,",
    "capability sys_rawio,",
    "network inet6 stream,",
    "unix (send, receive) type=stream peer=(label=libvirtd),",
    "signal (receive) peer=libvirtd,",
]
BAD = [
    ("/srv/x rwz,", "unknown permission"),
    ("/srv/x r, } profile evil { /** rwx,", "one rule"),
    ("/srv/x r }", "braces"),
    ("#include <abstractions/base>", "includes"),
    ("include <tunables/global>", "includes"),
    ("include if exists <local/x>", "includes"),
    ("profile evil /** ux,", "not allowed"),
    ("^hat { /** rwx, }", "braces"),
    ("change_profile -> unconfined,", "not allowed"),
    ("@{HOME}=/etc", "variable"),
    ("@{X} = /etc", "variable"),
    ("/usr/bin/sh ux,", "unconfined"),
    ("/usr/bin/sh Ux,", "unconfined"),
    ("/usr/bin/sh rux,", "exec"),
    ("/srv/x r,\n}", "one line"),
    ("/srv/x\x00 r,", "one line"),
    ("srv/x r,", "not a rule"),
    ("mount -> /mnt/,", "not allowed"),
    ('"/srv/unterminated r,', "quote"),
    ("capability {sys_admin},", "braces"),
    ("", "empty"),
]


@pytest.mark.parametrize("rule", GOOD)
def test_accepted(rule: str) -> None:
    assert parse_rule(rule).text.endswith(",")


@pytest.mark.parametrize("rule,why", BAD)
def test_refused(rule: str, why: str) -> None:
    with pytest.raises(RuleError) as exc:
        parse_rule(rule)
    assert why in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("rule,restricted", [
    ("/srv/data/** rwk,", False),
    ("/** r,", True),
    ("/e* r,", True),
    ("/etc/ssl/certs/x r,", True),
    ("/root/.ssh/id_rsa r,", True),
    ("@{HOME}/** r,", True),
    ("/dev/mem rw,", True),
    ("/var/lib/libvirt/images/*.qcow2 rwk,", False),
    ("deny /etc/** w,", False),           # deny rules never widen
    ("capability net_admin,", False),
])
def test_policy(rule: str, restricted: bool) -> None:
    assert grants_restricted(parse_rule(rule)) is restricted


@pytest.mark.parametrize("path", ["/srv/my*dir", "/srv/{a,b}", "/srv/@{HOME}", "/srv/a b"])
def test_path_rule_is_escaped(path: str) -> None:
    rule = path_rule(path, "rw", recursive=False)
    assert literal_match(rule[1:rule.rindex('"')], path.encode())
    rec = path_rule(path, "r", recursive=True)
    assert rec.endswith('/{,**}" r,')


def test_file_round_trip_keeps_provenance_and_ids() -> None:
    rules = [LocalRule(parse_rule("/srv/a rw,").text,
                       {"id": rule_id("/srv/a rw,"), "added": "2026-11-25T00:00:00Z",
                        "by": "alice", "comment": 'NFS "data" share'}),
             LocalRule(parse_rule("/srv/b r,").text, {"denial": "audit 123"})]
    text = render_file("web01", "u", rules)
    back, problems = parse_file(text)
    assert problems == []
    assert [r.text for r in back] == ["/srv/a rw,", "/srv/b r,"]
    assert back[0].fields["comment"] == 'NFS "data" share'
    assert back[0].fields["by"] == "alice"
    assert back[1].fields["denial"] == "audit 123"
    assert back[0].id == rule_id("/srv/a  rw")


def test_hand_edits_are_reported_with_lines() -> None:
    text = "# mine\n/srv/ok r,\n/srv/missing-comma r\n/srv/bad rwz,\n"
    rules, problems = parse_file(text)
    assert [r.text for r in rules] == ["/srv/ok r,"]
    assert [n for n, _ in problems] == [3, 4]


def test_set_mode_edits_only_the_profile_line() -> None:
    text = "#\nprofile libvirt-u flags=(attach_disconnected) {\n  /x r,\n}\n"
    c = set_mode(text, "libvirt-u", "complain")
    assert "profile libvirt-u flags=(attach_disconnected, complain) {" in c
    assert set_mode(c, "libvirt-u", "enforce") == text
    bare = "profile libvirt-u {\n}\n"
    assert set_mode(bare, "libvirt-u", "complain").startswith(
        "profile libvirt-u flags=(complain) {")
