"""Path canonicalisation, the restricted/override lists and AARE escaping.

Pure: the filesystem is reached only through the ``exists``/``realpath``
callables the caller passes in.  Every path that ends up in a rule goes
through :func:`canonical` and :func:`escape`, so a disk named
``/var/lib/libvirt/images/*`` grants that one file, not the directory.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~8 ms

if TYPE_CHECKING:
    from collections.abc import Callable

# libvirt 9.0 (virt-aa-helper.c valid_path).  Entries ending in "/" are
# matched component-wise by us (so "/etc" itself is covered, which stock
# misses); the others keep stock's plain string-prefix test ("/lib" also
# covers "/lib64", "/library").
STOCK_RESTRICTED = (
    "/bin/", "/etc/", "/lib", "/lost+found/", "/proc/", "/sbin/", "/selinux/", "/sys/",
    "/usr/bin/", "/usr/lib", "/usr/sbin/", "/usr/share/", "/usr/local/bin/",
    "/usr/local/etc/", "/usr/local/lib", "/usr/local/sbin/",
)
STOCK_RESTRICTED_RW = (
    "/boot/", "/vmlinuz", "/initrd", "/initrd.img", "/usr/share/edk2/", "/usr/share/OVMF/",
    "/usr/share/ovmf/", "/usr/share/AAVMF/", "/usr/share/qemu-efi/",
    "/usr/share/qemu-efi-aarch64/", "/usr/lib/u-boot/", "/usr/lib/riscv64-linux-gnu/opensbi",
)
STOCK_OVERRIDE = ("/sys/devices/pci", "/sys/kernel/config/target/vhost",
                  "/etc/libvirt-sandbox/services/")
# Our additions (DESIGN §5): never granted, whatever the permission.
EXTRA_RESTRICTED = ("/root/", "/dev/mem/", "/dev/kmem/", "/dev/port/", "/dev/kmsg/",
                    "/proc/", "/sys/", "/etc/")

RESTRICTED = STOCK_RESTRICTED + tuple(e for e in EXTRA_RESTRICTED
                                      if e not in STOCK_RESTRICTED)

# Characters with a meaning in AppArmor path expressions (globs, alternation,
# variables, quoting).  Each is escaped with a backslash; apparmor_parser
# 3.0 then matches it literally (checked in tests against its DFA dump).
AARE_SPECIAL = frozenset('\\*?[]{}^,@"')


class PathError(ValueError):
    """A path that must not reach a rule (one-line reason)."""


def has_control(path: str) -> bool:
    # min() and `in` scan in C: this runs for every path of every VM start
    return bool(path) and (min(path) < " " or "\x7f" in path)


def escape(path: str) -> str:
    """Escape AppArmor pattern characters so the rule matches ``path`` only."""
    if AARE_SPECIAL.isdisjoint(path):
        return path
    return "".join("\\" + c if c in AARE_SPECIAL else c for c in path)


def normalize(path: str) -> str:
    """Lexical normalisation of an absolute path: no ``.``, ``..``, ``//``."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def dirname(path: str) -> str:
    """glib's g_path_get_dirname for absolute paths (no trailing-slash games)."""
    head = path.rstrip("/")
    cut = head.rfind("/")
    if cut <= 0:
        return "/"
    return head[:cut].rstrip("/") or "/"


def canonical(path: str, exists: Callable[[str], bool],
              realpath: Callable[[str], str]) -> tuple[str, bool]:
    """Resolve ``path`` as stock does, then normalise what is left.

    Stock resolves symlinks in the longest existing prefix and appends the
    rest verbatim; we also fold ``.``/``..``/``//`` in that rest, so that
    ``/tmp/x/../../etc/shadow`` is checked as ``/etc/shadow``.  Returns the
    path and whether it exists.
    """
    prefix = path
    found = exists(prefix)
    whole = found
    while not found:
        parent = dirname(prefix)
        if parent == prefix:
            break
        prefix = parent
        found = exists(prefix)
    if prefix == "/" or not prefix:
        result = normalize(path)
    else:
        rest = path[len(prefix):]
        result = normalize(realpath(prefix) + "/" + rest)
    return result, whole


class _Entries:
    """A list of entries as one C-speed test: ``/etc/`` covers ``/etc`` and below,
    ``/lib`` (no slash) every path starting with it, as stock tests."""

    __slots__ = ("exact", "prefixes")

    def __init__(self, entries: tuple[str, ...]) -> None:
        self.prefixes = entries
        self.exact = frozenset(e[:-1] for e in entries if e.endswith("/"))

    def covers(self, path: str) -> bool:
        return path.startswith(self.prefixes) or path in self.exact


_OVERRIDE = _Entries(STOCK_OVERRIDE)
_EXTRA = _Entries(EXTRA_RESTRICTED)
_RW = _Entries(STOCK_RESTRICTED_RW)
_NEVER = _Entries(STOCK_RESTRICTED + STOCK_RESTRICTED_RW)


def _contains(directory: str, entry: str) -> bool:
    """Whether a grant of everything below ``directory`` reaches ``entry``."""
    base = entry.rstrip("/")
    if directory == "/":
        return True
    return base.startswith(directory + "/")


_MORE_RW: dict[tuple[str, ...], _Entries] = {}


def restricted(path: str, readonly: bool, recursive: bool = False,
               more_rw: tuple[str, ...] = ()) -> bool:
    """Whether ``path`` (canonical) may not be granted with these permissions.

    Stock's order: overrides win, then read-only access to the restricted_rw
    list is allowed, then both lists are refused.  We add DESIGN §5's
    entries, match directory entries component-wise, and refuse a recursive
    grant whose subtree contains a restricted entry (a share of ``/``).
    """
    if path.startswith(_OVERRIDE.prefixes):
        return False
    if _EXTRA.covers(path):
        return True
    if readonly and _RW.covers(path):
        return False
    if readonly and more_rw:  # firmware directories newer libvirts allow read-only
        more = _MORE_RW.get(more_rw) or _MORE_RW.setdefault(more_rw, _Entries(more_rw))
        if more.covers(path):
            return False
    if _NEVER.covers(path):
        return True
    if recursive:
        entries = RESTRICTED if readonly else RESTRICTED + STOCK_RESTRICTED_RW
        return any(_contains(path, e) for e in entries)
    return False
