"""Where virt-aa keeps per-VM state under a root prefix, and the lock.

Layout (relative to ``--root``, default ``/``):

* ``etc/apparmor.d/libvirt/libvirt-<uuid>``        generated profile P
* ``etc/apparmor.d/libvirt/libvirt-<uuid>.files``  generated device rules F
* ``etc/apparmor.d/local/libvirt-<uuid>``          per-VM rules (AppArmor syntax)
* ``etc/virt-aa/domains/<uuid>.conf``              per-VM settings (``key = value``)
* ``etc/virt-aa/policies/<name>``                   named policies (per-VM rule syntax)
* ``var/lib/virt-aa/history/<uuid>.jsonl``         every change, one JSON object a line
* ``var/lib/virt-aa/lock``                         serialises commands and VM starts

Settings use a trivial ``key = value`` format so that the VM-start path
reads them without importing a parser.
"""

from __future__ import annotations

import os

from virt_aa.host.fsutil import append_durable, read_text, write_atomic

MODES = ("enforce", "complain")
JOURNAL = "var/lib/virt-aa/journal"   # a change in progress (see virt_aa.host.journal)


class StoreError(RuntimeError):
    """A state file cannot be read or written (one line for the admin)."""


class Store:
    def __init__(self, root: str = "/") -> None:
        self.root = root or "/"
        self._lock_fd: int | None = None

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def profile(self, name: str) -> str:
        return self.path(f"etc/apparmor.d/libvirt/{name}")

    def files(self, name: str) -> str:
        return self.profile(name) + ".files"

    def template(self, virt_type: str) -> str:
        tname = "qemu" if virt_type in ("qemu", "kqemu", "kvm") else virt_type
        return self.path(f"etc/apparmor.d/libvirt/TEMPLATE.{tname}")

    def local(self, name: str) -> str:
        return self.path(f"etc/apparmor.d/local/{name}")

    def settings_path(self, uuid: str) -> str:
        return self.path(f"etc/virt-aa/domains/{uuid}.conf")

    def history_path(self, uuid: str) -> str:
        return self.path(f"var/lib/virt-aa/history/{uuid}.jsonl")

    def policy(self, name: str) -> str:
        return self.path(f"etc/virt-aa/policies/{name}")

    def config_path(self) -> str:
        return self.path("etc/virt-aa/config.toml")

    # -- locking -------------------------------------------------------------
    def lock(self) -> None:
        """Take the exclusive lock (blocking), then clear what crashed runs left."""
        import fcntl

        lock = self.path("var/lib/virt-aa/lock")
        os.makedirs(os.path.dirname(lock), exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock_fd = fd
        self.clean_temp()
        if os.path.exists(self.path(JOURNAL)):
            from virt_aa.host.journal import recover

            recover(self)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Store:
        self.lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    def clean_temp(self) -> list[str]:
        """Remove temp files of writers that died (only ever called under the lock)."""
        removed = []
        for rel in ("etc/apparmor.d/libvirt", "etc/apparmor.d/local", "etc/virt-aa/domains",
                    "etc/virt-aa/policies", "var/lib/virt-aa", "var/lib/virt-aa/history",
                    "var/lib/virt-aa/checked"):
            d = self.path(rel)
            try:
                names = os.listdir(d)
            except OSError:
                continue
            for n in names:
                if n.endswith(".tmp") and (n.startswith("libvirt-") or rel.startswith(
                        ("etc/virt-aa", "var/lib"))):
                    try:
                        os.unlink(os.path.join(d, n))
                        removed.append(n)
                    except OSError:
                        pass
        return removed

    # -- settings --------------------------------------------------------------
    def settings(self, uuid: str) -> dict[str, str]:
        try:
            text = read_text(self.settings_path(uuid), 1 << 16)
        except OSError as exc:
            raise StoreError(f"cannot read {self.settings_path(uuid)}: {exc}") from None
        out: dict[str, str] = {}
        for line in (text or "").splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
        return out

    def mode(self, uuid: str) -> str:
        mode = self.settings(uuid).get("mode", "enforce")
        return mode if mode in MODES else "enforce"

    def write_settings(self, uuid: str, values: dict[str, str]) -> None:
        lines = [f"# virt-aa settings for libvirt domain {uuid}; see `virt-aa show`.\n"]
        for key, value in values.items():
            clean = " ".join(str(value).split())
            lines.append(f"{key} = {clean}\n")
        self._write(self.settings_path(uuid), "".join(lines))

    # -- per-VM rules and history ------------------------------------------------
    def read_local(self, name: str) -> str | None:
        try:
            return read_text(self.local(name))
        except OSError as exc:
            raise StoreError(f"cannot read {self.local(name)}: {exc}") from None

    def write_local(self, name: str, text: str) -> None:
        self._write(self.local(name), text)

    def append_history(self, uuid: str, record: dict[str, object]) -> None:
        import json

        path = self.history_path(uuid)
        line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
        try:
            append_durable(path, line.encode("utf-8", "surrogateescape"))
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None

    def history(self, uuid: str) -> list[dict[str, object]]:
        import json

        out = []
        text = read_text(self.history_path(uuid)) or ""
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn last line after a crash: skip it, keep the rest
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def _write(self, path: str, text: str) -> None:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomic(path, text.encode("utf-8", "surrogateescape"))
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
