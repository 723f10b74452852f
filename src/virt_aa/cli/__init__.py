"""``virt-aa``: manage the AppArmor confinement of libvirt guests.

One ``main(argv) -> int``; each verb computes a plain result (a dict) and
renders it as text for people or JSON (``--json``) for scripts.  Domains are
named as virsh names them (name, UUID or id), or given offline with
``--xml FILE``.
"""

from __future__ import annotations

import argparse
import sys

from virt_aa import __version__
from virt_aa.cli import denials, fleet, integrate, persist
from virt_aa.cli.common import CliError
from virt_aa.host.store import StoreError
from virt_aa.ops.errors import ManageError

FAMILIES = (persist, integrate, fleet, denials)


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
    for family in FAMILIES:
        family.register(sub)
    return p


def _relative_times(argv: list[str]) -> list[str]:
    """``--since -2h`` as documented: argparse would take ``-2h`` for an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--since", "--until") and i + 1 < len(argv) and argv[i + 1][:1] == "-" \
                and argv[i + 1][1:2].isdigit():
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_relative_times(sys.argv[1:] if argv is None else argv))
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

