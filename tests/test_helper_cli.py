"""The command line is a drop-in for libvirt's: checked against the real helper."""

from __future__ import annotations

import pytest

from conftest import PROFILE, domain_xml, rules_of, run_helper

XML = domain_xml("<serial type='file'><source path='/tmp/virt-aa-cli.log'/></serial>")
P = PROFILE

CASES = [
    [],
    ["-z"],
    ["-c"],
    ["-p"],
    ["-p", "0", "-r", "-d", "-u", P],
    ["-H", "x", "-r", "-u", P],
    ["-b", "64", "-r", "-u", P],
    ["-c", "-n", "foo", "-u", P],
    ["-u", P],
    ["-u"],
    ["-d", "-r", "-u", P],
    ["-d", "-c", "-u", P],
    ["-dr", "-u", P],
    ["-d", "-r", "-u" + P],
    ["-d", "-r", "--uuid", P],
    ["-d", "-r", "--uuid=" + P],
    ["-d", "-r", "-u", P, "--add-file", "/tmp/x"],
    ["-d", "-r", "-u", P, "--append-file=/tmp/x"],
    ["-d", "-c", "-r", "-u", P],
    ["-d", "-r", "-u", P.upper().replace("LIBVIRT", "libvirt")],
    ["-d", "-r", "-u", P, "stray-argument"],
    ["-d", "--cre", "-u", P],
    ["-d", "--dry", "--rep", "-u", P],
    ["-d", "-r", "-u", P + "0"],
    ["-d", "-r", "-u", "libvirt-" + "0" * 36],
    ["-d", "-r", "-u", P, "-f", "/tmp/virt-aa-cli-extra.img"],
    ["-d", "-r", "-u", P, "-F", "/tmp/virt-aa-cli-extra.img"],
    ["-d", "-r", "-u", P, "-F", "/tmp/a", "-f", "/tmp/b"],
    ["-d", "-r", "-u", P, "-f", "/etc/passwd"],
    ["-R", "-u", "libvirt-00000000-0000-0000-0000-00000000dead"],
    ["-a", "-u", "libvirt-00000000-0000-0000-0000-00000000dead"],
]


@pytest.mark.parametrize("args", CASES, ids=lambda a: " ".join(a) or "(none)")
def test_same_exit_status_and_rules_as_stock(args: list[str]) -> None:
    stock = run_helper(args, XML, stock=True)
    ours = run_helper(args, XML)
    assert b"Traceback" not in ours.stderr
    assert ours.returncode == stock.returncode, (stock.stderr, ours.stderr)
    assert rules_of(ours.stderr) == rules_of(stock.stderr)


def test_help_goes_to_stdout() -> None:
    stock = run_helper(["-h"], stock=True)
    ours = run_helper(["-h"])
    assert ours.returncode == stock.returncode == 0
    assert ours.stdout.split(b"\n")[1] == stock.stdout.split(b"\n")[1]
    assert b"-F | --append-file <file>" in ours.stdout


def test_usage_when_no_mode() -> None:
    ours = run_helper(["-u", P])
    assert ours.returncode == 1
    assert b"Modes:" in ours.stdout
