"""Files of the Debian package that virt-aa generates itself (``debian/rules``).

``python3 -m virt_aa.host.packaging DESTDIR`` writes, into the package tree:
the lean helper and hook launchers (``/usr/libexec/virt-aa``), the man page,
the bash completion, and the hook's AppArmor profile as ``virt-aa install``
would write it for the installed package (under ``/usr/share``, never in
``/etc/apparmor.d``: installing the package must not change libvirt's
behaviour, so nothing is loaded until the admin runs ``virt-aa install``).
"""

from __future__ import annotations

import os
import sys

from virt_aa.host import installer, launcher

PYTHON = "/usr/bin/python3"
SITE = "/usr/lib/python3/dist-packages"        # where dh-python puts virt_aa
LIBEXEC = "usr/libexec/virt-aa"
MAN = "usr/share/man/man8/virt-aa.8"       # dh_compress compresses it
COMPLETION = "usr/share/bash-completion/completions/virt-aa"
PROFILE = "usr/share/virt-aa/apparmor/usr.sbin.virt-aa-hook"


def files() -> dict[str, tuple[bytes, int]]:
    """Package-relative path -> (content, mode) of every generated file."""
    from virt_aa.cli import build_parser
    from virt_aa.cli.docgen import bash_completion, man_page

    parser = build_parser()
    out: dict[str, tuple[bytes, int]] = {}
    for entry in launcher.ENTRY_POINTS:
        text = launcher.render(entry, PYTHON, SITE)
        out[f"{LIBEXEC}/{entry}"] = (text.encode(), 0o755)
    out[MAN] = (man_page(parser).encode(), 0o644)
    out[COMPLETION] = (bash_completion(parser).encode(), 0o644)
    out[PROFILE] = (installer.entry_profile("/", SITE).encode(), 0o644)
    return out


def write(dest: str) -> list[str]:
    written = []
    for rel, (data, mode) in files().items():
        path = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python3 -m virt_aa.host.packaging DESTDIR", file=sys.stderr)
        return 2
    for path in write(args[0]):
        print(f"packaging: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
