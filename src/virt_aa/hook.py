"""``virt-aa-hook NAME OP SUB-OP EXTRA``: the libvirt qemu hook's logic.

At ``prepare begin`` libvirt has not yet created or replaced the VM's
profile, so a P written now (template + F include + per-VM include + mode)
is kept and loaded as-is by stock libvirt's ``virt-aa-helper -r``.  The hook
reads only the domain's identity and our metadata
(:mod:`virt_aa.generate.identity`): devices are the helper's business, and
an element the hook does not know must never block a start.  Broken
per-VM rules refuse the start here, with the file and line, so libvirt
shows the admin what to fix.  ``migrate``/``restore`` are XML filters: the
XML goes back unchanged.  Everything else exits 0 at once.  The hook never
calls back into libvirt (it would deadlock): all it needs is on stdin.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~8 ms
if TYPE_CHECKING:
    from virt_aa.host.store import Store

PROG = "virt-aa-hook"
FILTERS = ("migrate", "restore")
MAX_XML = 10 * 1024 * 1024


def _read_stdin() -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > MAX_XML:
            raise ValueError("domain XML larger than 10 MiB")
        chunks.append(chunk)


def _err(msg: str) -> int:
    os.write(2, f"{PROG}: error: {msg}\n".encode("utf-8", "surrogateescape"))
    return 1


def prepare(xml: bytes, name: str, root: str) -> int:
    """Write P for the VM about to start; refuse the start if its rules are broken."""
    from virt_aa.generate.identity import read_identity
    from virt_aa.generate.model import DomainError, valid_name
    from virt_aa.generate.profile import TemplateError
    from virt_aa.host import vmprofile
    from virt_aa.host.fsutil import read_text, write_atomic
    from virt_aa.host.store import Store, StoreError

    try:
        dom, confined = read_identity(xml)
    except DomainError as exc:
        return _err("cannot read the domain XML: " + "; ".join(m for _, m in exc.lines))
    if dom.name != name or not valid_name(dom.name):
        return _err(f"hook called for {name!r} with the XML of {dom.name!r}")
    if not dom.is_qemu or not confined:
        return 0
    store = Store(root)
    profile = dom.profile_name
    try:
        store.lock()
    except OSError as exc:
        return _err(f"cannot take the virt-aa lock: {exc.strerror or exc}")
    try:
        with_local = True
        problems = vmprofile.local_problems(store, profile)
        if not problems:
            problems = _compile_local(store, profile)
        if problems:
            if vmprofile.on_broken_rules(store) != "stock":
                for p in problems:
                    _err(p)
                return _err(f"refusing to start {dom.name}: its per-VM rules do not compile; "
                            f"fix the file or `virt-aa revoke {dom.name} ID`")
            with_local = False
            os.write(2, f"{PROG}: warning: starting {dom.name} with the stock profile, "
                        f"without its broken per-VM rules\n".encode())
        files, mode, refusals = vmprofile.policy_files(store, dom)
        if refusals:
            for p in refusals:
                _err(p)
            return _err(f"refusing to start {dom.name}: its named policies do not match "
                        f"this host (install them, or set on_policy_mismatch = \"warn\")")
        text = vmprofile.render(store, profile, dom.virt_type, with_local, mode,
                                tuple(files))
        vmprofile.ensure_local(store, profile)
        path = store.profile(profile)
        if read_text(path) != text:
            write_atomic(path, text.encode("utf-8", "surrogateescape"))
    except TemplateError as exc:
        return _err(f"{store.template(dom.virt_type)}: {exc}")
    except (StoreError, OSError) as exc:
        return _err(str(exc))
    finally:
        store.unlock()
    return 0


def _compile_local(store: Store, profile: str) -> list[str]:
    """The parser's verdict on the per-VM file alone (it names file and line).

    The wrapper profile lives under the state directory (we hold the lock),
    not in a tempfile: ``tempfile`` alone costs ~7 ms of imports.
    """
    local = store.local(profile)
    try:
        st = os.stat(local)
    except OSError:
        return []
    if st.st_size == 0:
        return []
    # unchanged since the parser last accepted it: no need to ask again
    stamp = store.path(f"var/lib/virt-aa/{profile}.checked")
    from virt_aa.host.apparmor import parser_path

    try:
        pst = os.stat(parser_path())
        parser_key = f"{pst.st_size} {pst.st_mtime_ns}"
    except OSError:
        parser_key = "?"
    key = f"{st.st_ino} {st.st_size} {st.st_mtime_ns} {parser_key}"
    try:
        with open(stamp, encoding="ascii") as f:
            if f.read() == key:
                return []
    except OSError:
        pass
    from virt_aa.host import apparmor

    check = store.path(f"var/lib/virt-aa/{profile}.check.tmp")
    text = (f"#include <tunables/global>\nprofile {profile}-check {{\n"
            f"  #include \"{os.path.realpath(local)}\"\n}}\n")
    with open(check, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)
    try:
        res = apparmor.compile_check(check, store.root)
    finally:
        os.unlink(check)
    if res.ok:
        with open(stamp, "w", encoding="ascii") as f:
            f.write(key)
        return []
    real = os.path.realpath(local)
    if " at line " not in (res.message or ""):
        located = _locate(store, profile, local, check)
        if located:
            return located
    return [parser_message(res.message, check, real)]


def _locate(store: Store, profile: str, local: str, check: str) -> list[str]:
    """The parser named no line: compile the rules one by one to find it."""
    from virt_aa.host import apparmor
    from virt_aa.policy.localrules import parse_file

    with open(local, encoding="utf-8", errors="surrogateescape") as f:
        rules, _ = parse_file(f.read())
    out = []
    for rule in rules:
        with open(check, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(f"#include <tunables/global>\nprofile {profile}-check {{\n"
                    f"  {rule.text}\n}}\n")
        try:
            res = apparmor.compile_check(check, store.root)
        finally:
            os.unlink(check)
        if not res.ok:
            reason = res.message.split(": ", 1)[-1] if res.message else "rejected"
            out.append(f"{os.path.realpath(local)}:{rule.line}: {reason}")
    return out


def parser_message(message: str, wrapper: str, local: str) -> str:
    """The parser's complaint as ``file:line: reason`` where it says where."""
    text = (message or "apparmor_parser failed").replace(wrapper, local)
    head = "AppArmor parser error for "
    if text.startswith(head) and " at line " in text:
        where, _, reason = text.partition(": ")
        path = where.split(" in profile ", 1)[-1].split(" at line ", 1)[0]
        line = where.rsplit(" at line ", 1)[1]
        return f"{path}:{line}: {reason}"
    return f"{local}: {text}"


def check_incoming(xml: bytes, root: str) -> str | None:
    """An incoming migration: refuse it if its named policies are not here."""
    from virt_aa.generate.identity import read_identity
    from virt_aa.generate.model import DomainError
    from virt_aa.host import vmprofile
    from virt_aa.host.store import Store

    try:
        dom, _confined = read_identity(xml)
    except DomainError as exc:
        return "cannot read the domain XML: " + "; ".join(m for _, m in exc.lines)
    _files, _mode, refusals = vmprofile.policy_files(Store(root), dom)
    if refusals:
        return "; ".join(refusals) + " -- refusing the incoming migration"
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = os.environ.get("VIRT_AA_ROOT") or "/"
    if len(args) >= 2 and args[0] == "--root":
        root, args = args[1], args[2:]
    if len(args) != 4:
        return _err("usage: virt-aa-hook [--root DIR] NAME OP SUB-OP EXTRA "
                    "(the domain XML on stdin)")
    name, op, sub, _extra = args
    try:
        data = _read_stdin()  # always drained: libvirt writes the XML to every hook
        if op == "migrate" and sub == "begin":
            refusal = check_incoming(data, root)
            if refusal:
                return _err(refusal)
        if op in FILTERS and sub == "begin":
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
            return 0
        if op == "prepare" and sub == "begin":
            return prepare(data, name, root)
    except (OSError, ValueError) as exc:
        return _err(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
