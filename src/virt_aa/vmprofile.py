"""The profile P of one VM: template + F include + per-VM include + mode.

Shared by the helper (``-c``/``-r``), the hook and the ``virt-aa`` commands,
so every writer produces the same P.  The stored mode is the truth; P is
regenerated from it.
"""

from __future__ import annotations

import os

from .fsutil import read_text, write_atomic
from .localrules import parse_file
from .profile import TemplateError, create_profile, include_lines, set_mode
from .store import Store

_IF_EXISTS: bool | None = None


def supports_if_exists(store: Store | None = None) -> bool:
    """AppArmor >= 3 understands ``include if exists``; 2.x needs plain includes.

    Asking the parser costs a process start at every VM start, so the answer is
    cached in ``var/lib/virt-aa/parser-version`` next to the parser binary's
    identity (size and mtime) and asked again only when the parser changes.
    """
    global _IF_EXISTS
    if _IF_EXISTS is None:
        env = os.environ.get("VIRT_AA_APPARMOR_MAJOR")
        major = int(env) if env and env.isdigit() else _parser_major(store)
        _IF_EXISTS = major >= 3
    return _IF_EXISTS


def _parser_major(store: Store | None) -> int:
    from .apparmor import parser_path

    parser = parser_path()
    try:
        st = os.stat(parser)
        key = f"{parser} {st.st_size} {st.st_mtime_ns}"
    except OSError:
        key = ""
    cache = store.path("var/lib/virt-aa/parser-version") if store is not None else None
    if cache and key:
        try:
            with open(cache, encoding="utf-8") as f:
                cached_key, _, text = f.read().rpartition(" ")
            if cached_key == key and text.strip().isdigit():
                return int(text)
        except OSError:
            pass
    from .apparmor import parser_version

    version = parser_version(parser)
    major = version[0] if version else 3
    if cache and key and version:
        try:
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            write_atomic(cache, f"{key} {major}".encode())
        except OSError:
            pass
    return major


def render(store: Store, profile_name: str, virt_type: str, with_local: bool = True,
           mode: str | None = None) -> str:
    """The text P should have now; raises TemplateError."""
    template = read_text(store.template(virt_type))
    if template is None:
        raise TemplateError("template does not exist")
    if_exists = supports_if_exists(store)
    text = create_profile(template, profile_name,
                          include_lines(profile_name, virt_type, if_exists, with_local))
    uuid = profile_name[len("libvirt-"):]
    return set_mode(text, profile_name, mode or store.mode(uuid))


def ensure_local(store: Store, profile_name: str) -> None:
    """With AppArmor 2.x the plain include needs the file to exist."""
    path = store.local(profile_name)
    if not supports_if_exists(store) and not os.path.exists(path):
        store.write_local(profile_name, "")


def local_problems(store: Store, profile_name: str) -> list[str]:
    """``file:line: reason`` for every stored per-VM rule that is not a valid rule."""
    text = store.read_local(profile_name)
    if not text:
        return []
    path = os.path.realpath(store.local(profile_name))
    _, problems = parse_file(text)
    return [f"{path}:{line}: {reason}" for line, reason in problems]


def on_broken_rules(store: Store) -> str:
    """``refuse`` (default) or ``stock``: what a VM start does with broken rules."""
    from .config import load

    return load(store).on_broken_rules
