"""Atomic file writes: a crash or a race never leaves a truncated profile.

Crash tests: with ``VIRT_AA_CRASH_AT=N`` in the environment, the process
dies (``os._exit(CRASH_EXIT)``) at the N-th durable step -- each write,
fsync, rename, unlink and parser call counts, see :func:`step` -- as SQLite's
crash tests do.  Unset, this costs one environment lookup at import.
"""

from __future__ import annotations

import os

CRASH_EXIT = 86
_CRASH_AT = os.environ.get("VIRT_AA_CRASH_AT")
_steps = 0


def step() -> bool:
    """Count one durable step; True when the crash test wants the process to die here."""
    global _steps
    if _CRASH_AT is None:
        return False
    _steps += 1
    return str(_steps) == _CRASH_AT


def die() -> None:
    os._exit(CRASH_EXIT)


def crash_point() -> None:
    """A durable step with nothing half-done to simulate (rename, unlink, parser call)."""
    if step():
        die()


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory + rename.

    The temp name starts with the target's name, so libvirt's helper profile
    (which may only write ``libvirt-<uuid>*``) allows it.
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, mode)
    except FileExistsError:
        os.unlink(tmp)  # left by a crashed process with our pid
        fd = os.open(tmp, flags, mode)
    try:
        try:
            view = memoryview(data)
            if step():
                os.write(fd, view[:len(view) // 2])   # a torn write, then the crash
                die()
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, mode)
            crash_point()
            os.fsync(fd)
        finally:
            os.close(fd)
        crash_point()
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(path) or ".")


def append_durable(path: str, data: bytes) -> None:
    """Append one record and fsync it (a crash leaves at most a torn last line)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        if step():
            os.write(fd, data[:len(data) // 2])
            die()
        os.write(fd, data)
        crash_point()
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    try:
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        crash_point()
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def read_text(path: str, limit: int = 10 * 1024 * 1024) -> str | None:
    """File content as text (bytes kept with surrogateescape), None if absent."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        return None
    if len(data) > limit:
        raise OSError(f"{path}: larger than {limit} bytes")
    return data.decode("utf-8", "surrogateescape")


def unlink_quiet(path: str) -> None:
    crash_point()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
