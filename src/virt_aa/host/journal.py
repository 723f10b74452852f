"""A rollback journal: a change to several files is all there or not at all.

Before a change, :func:`begin` records (durably) what every file it may
touch holds now, and how long every append-only history is.  :func:`commit`
removes the record once everything is written.  If the process dies in
between, the next command to take the store lock finds the record and
:func:`recover` puts every file back as it was (absent if it was absent),
cuts the histories back to their length, and gets the restored profile into
the kernel again -- as SQLite's rollback journal does for its pages.
"""

from __future__ import annotations

import json
import os

from virt_aa.host.fsutil import fsync_dir, read_text, unlink_quiet, write_atomic
from virt_aa.host.store import JOURNAL, Store


class Journal:
    """One change in progress; use as ``with Journal(store, files, appends):``."""

    def __init__(self, store: Store, files: list[str], appends: list[str],
                 profile: str | None = None) -> None:
        self.store = store
        self.files = files
        self.appends = appends
        self.profile = profile   # P, to reload after a rollback

    def __enter__(self) -> Journal:
        begin(self.store, self.files, self.appends, self.profile)
        return self

    def __exit__(self, *exc: object) -> None:
        # on an exception the caller has already put the files back (or recovery will)
        if exc[0] is None or isinstance(exc[1], Exception):
            commit(self.store)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return -1


def begin(store: Store, files: list[str], appends: list[str],
          profile: str | None = None) -> None:
    record = {"files": {p: read_text(p) for p in files},
              "appends": {p: _size(p) for p in appends}, "profile": profile}
    path = store.path(JOURNAL)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, json.dumps(record, ensure_ascii=True).encode(), 0o600)


def commit(store: Store) -> None:
    path = store.path(JOURNAL)
    unlink_quiet(path)
    fsync_dir(os.path.dirname(path))


def _truncate(path: str, size: int) -> None:
    if size < 0:
        unlink_quiet(path)
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def recover(store: Store) -> list[str]:
    """Undo a change a dead process left half done; the paths put back."""
    path = store.path(JOURNAL)
    try:
        record = json.loads(read_text(path) or "")
    except ValueError:
        record = None     # torn journal: its change had not started writing
    restored: list[str] = []
    if isinstance(record, dict):
        for target, old in record.get("files", {}).items():
            _clear_temp(target)     # files outside the store's directories (an offline XML)
            if read_text(target) == old:
                continue
            if old is None:
                unlink_quiet(target)
            else:
                write_atomic(target, old.encode("utf-8", "surrogateescape"))
            restored.append(target)
        for target, size in record.get("appends", {}).items():
            if _size(target) != size:
                _truncate(target, size)
                restored.append(target)
        profile = record.get("profile")
        if profile and profile in restored and os.path.exists(profile):
            _reload(store, profile)
    commit(store)
    return restored


def _clear_temp(path: str) -> None:
    """Remove what :func:`write_atomic` leaves when it dies: ``path.<pid>.tmp``."""
    import glob

    for tmp in glob.glob(glob.escape(path) + ".*.tmp"):
        if tmp[len(path) + 1:-4].isdigit():
            unlink_quiet(tmp)


def _reload(store: Store, profile: str) -> None:
    """Get the restored P into the kernel where it is loaded (a compile check elsewhere)."""
    from virt_aa.host import apparmor

    loaded = apparmor.loaded_profiles() if (os.path.normpath(store.root) == "/" or
                                            os.environ.get("VIRT_AA_SECURITYFS")) else None
    if loaded is not None and os.path.basename(profile) in loaded:
        apparmor.run("-r", profile, store.root, "virt-aa")
