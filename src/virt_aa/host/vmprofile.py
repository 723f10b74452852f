"""The profile P of one VM: template + F include + per-VM include + mode.

Shared by the helper (``-c``/``-r``), the hook and the ``virt-aa`` commands,
so every writer produces the same P.  The stored mode is the truth; P is
regenerated from it.
"""

from __future__ import annotations

import os

from virt_aa.generate.profile import TemplateError, create_profile, include_lines, set_mode
from virt_aa.host.fsutil import read_text, write_atomic
from virt_aa.host.store import Store

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~8 ms
if TYPE_CHECKING:
    from virt_aa.generate.domain import Domain

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
    from virt_aa.host.apparmor import parser_path

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
    from virt_aa.host.apparmor import parser_version

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
           mode: str | None = None, policies: tuple[str, ...] = ()) -> str:
    """The text P should have now; raises TemplateError.

    ``policies``: resolved named-policy files to include (see :func:`resolve`).
    """
    template = read_text(store.template(virt_type))
    if template is None:
        raise TemplateError("template does not exist")
    if_exists = supports_if_exists(store)
    includes = include_lines(profile_name, virt_type, if_exists, with_local)
    includes += "".join(f'  #include "{p}"\n' for p in policies)
    text = create_profile(template, profile_name, includes)
    uuid = profile_name[len("libvirt-"):]
    return set_mode(text, profile_name, mode or store.mode(uuid))


class Resolved:
    """A domain's metadata resolved on this host: policy files to include, mode, problems."""

    __slots__ = ("files", "mode", "problems")

    def __init__(self) -> None:
        self.files: list[str] = []
        self.mode: str | None = None
        self.problems: list[str] = []


def resolve(store: Store, dom: Domain) -> Resolved:
    """Check the named policies a domain references against this host's files."""
    out = Resolved()
    if dom.meta_error:
        out.problems.append(f"{dom.name}: {dom.meta_error}")
        return out
    if dom.meta is None:
        return out
    from virt_aa.policy.named import digest

    host = os.uname().nodename
    for ref in dom.meta.refs:
        path = store.policy(ref.name)
        text = read_text(path, 1 << 20)
        if text is None:
            out.problems.append(f"policy {ref.name!r} named by domain {dom.name!r} is not "
                                f"installed on host {host} ({path})")
        elif digest(text) != ref.sha256:
            out.problems.append(f"policy {ref.name!r} on host {host} differs from the one "
                                f"domain {dom.name!r} references (sha256 {digest(text)[:12]} "
                                f"here, {ref.sha256[:12]} in the domain)")
        else:
            out.files.append(os.path.realpath(path))
    if dom.meta.mode == "complain":
        from virt_aa.host.config import load

        # complain asked for by whoever writes the XML: only where the host allows it;
        # otherwise the VM keeps its stored mode (never a more permissive one)
        if load(store).metadata_complain:
            out.mode = "complain"
    return out


def policy_files(store: Store, dom: Domain) -> tuple[list[str], str | None, list[str]]:
    """(files to include, mode override, refusals) under the host's configuration.

    With ``on_policy_mismatch = "warn"`` the problems come back as warnings
    and the VM starts without those policies; otherwise they refuse.
    """
    res = resolve(store, dom)
    if not res.problems:
        return res.files, res.mode, []
    from virt_aa.host.config import load

    if load(store).on_policy_mismatch == "warn":
        for p in res.problems:
            os.write(2, f"virt-aa: warning: {p}; starting without it\n".encode(
                "utf-8", "surrogateescape"))
        return res.files, res.mode, []
    return res.files, res.mode, res.problems


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
    from virt_aa.policy.localrules import parse_file

    path = os.path.realpath(store.local(profile_name))
    _, problems = parse_file(text)
    return [f"{path}:{line}: {reason}" for line, reason in problems]


def on_broken_rules(store: Store) -> str:
    """``refuse`` (default) or ``stock``: what a VM start does with broken rules."""
    from virt_aa.host.config import load

    return load(store).on_broken_rules


def expected(store: Store, dom: Domain) -> str | None:
    """The P virt-aa would write now for this domain (None if it cannot)."""
    files, mode, refusals = policy_files(store, dom)
    if refusals:
        return None
    try:
        return render(store, dom.profile_name, dom.virt_type, mode=mode, policies=tuple(files))
    except (TemplateError, OSError):
        return None
