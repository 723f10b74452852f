"""Where AppArmor records come from: files (plain, rotated, gzip), stdin, the
journal, kern.log/syslog, dmesg -- and which of those a host has."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import IO, cast

AUDIT_LOG = "/var/log/audit/audit.log"
KERN_LOGS = ("/var/log/kern.log", "/var/log/syslog", "/var/log/messages")
SOURCES = ("auto", "audit", "journal", "kern", "syslog", "dmesg")


class SourceError(RuntimeError):
    """A log that cannot be read (one line for the admin)."""


def open_lines(path: str) -> Iterator[str]:
    """Lines of a file (``.gz`` transparently; ``-`` is stdin), bytes kept raw."""
    if path == "-":
        for raw in sys.stdin.buffer:
            yield raw.decode("utf-8", "surrogateescape")
        return
    try:
        f = _open(path)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    with f:
        try:
            for raw in f:
                yield raw.decode("utf-8", "surrogateescape")
        except (OSError, EOFError) as exc:
            raise SourceError(f"{path}: {exc}") from None


def _open(path: str) -> IO[bytes]:
    if path.endswith(".gz"):
        import gzip

        return cast("IO[bytes]", gzip.open(path, "rb"))
    return open(path, "rb")


def rotated(path: str) -> list[str]:
    """The file and its rotations, oldest first: path.N.gz ... path.1, path."""
    out = []
    d, base = os.path.split(path)
    try:
        names = os.listdir(d or ".")
    except OSError:
        return [path] if os.path.exists(path) else []
    numbered = []
    for n in names:
        if not n.startswith(base + "."):
            continue
        rest = n[len(base) + 1:]
        num = rest[:-3] if rest.endswith(".gz") else rest
        if num.isdigit():
            numbered.append((int(num), os.path.join(d, n)))
    out = [p for _, p in sorted(numbered, reverse=True)]
    if os.path.exists(path):
        out.append(path)
    return out


def follow(path: str, poll: float = 0.5) -> Iterator[str]:
    """``tail -F``: new lines as they are written, across rotation.  An empty
    line after each burst tells the parser that no continuation is coming,
    so a kernel-ring record is reported without waiting for the next line."""
    f = None
    inode = None
    buf = b""
    fresh = False
    while True:
        if f is None:
            try:
                f = open(path, "rb")  # noqa: SIM115 - kept open across reads
                inode = os.fstat(f.fileno()).st_ino
                f.seek(0, os.SEEK_END)
            except OSError:
                time.sleep(poll)
                continue
        chunk = f.read(1 << 16)
        if chunk:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                yield raw.decode("utf-8", "surrogateescape")
            fresh = fresh or bool(lines)
            continue
        if fresh:
            fresh = False
            yield ""
        try:
            if os.stat(path).st_ino != inode:
                f.close()
                f = None
                continue
        except OSError:
            pass
        time.sleep(poll)


def journal_lines(since: str | None, until: str | None, follow_: bool) -> Iterator[str]:
    """``journalctl -o json`` for the kernel and the audit transports."""
    argv = ["journalctl", "-o", "json", "--no-pager", "_TRANSPORT=kernel", "+",
            "_TRANSPORT=audit", "+", "SYSLOG_IDENTIFIER=dbus-daemon"]
    if since:
        argv += ["--since", since]
    if until:
        argv += ["--until", until]
    if follow_:
        argv.append("-f")
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError as exc:
        raise SourceError(f"cannot run journalctl: {exc.strerror or exc}") from None
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            yield raw.decode("utf-8", "surrogateescape")
    finally:
        proc.kill()
        proc.wait()


def dmesg_lines() -> Iterator[str]:
    try:
        out = subprocess.run(["dmesg"], capture_output=True, check=False).stdout
    except OSError as exc:
        raise SourceError(f"cannot run dmesg: {exc.strerror or exc}") from None
    for raw in out.splitlines():
        yield raw.decode("utf-8", "surrogateescape")


def journal_has_data() -> bool:
    try:
        proc = subprocess.run(["journalctl", "-n", "1", "-q", "--no-pager"],
                              capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def pick(source: str) -> tuple[str, list[str]]:
    """``--source auto``: auditd's log if the host has one, else the journal,
    else kern.log/syslog, else dmesg.  Returns (kind, files)."""
    if source in ("audit", "auto") and os.path.exists(AUDIT_LOG):
        return "audit", rotated(AUDIT_LOG)
    if source == "audit":
        raise SourceError(f"{AUDIT_LOG} not found: is auditd installed?")
    if source in ("journal", "auto") and journal_has_data():
        return "journal", []
    if source == "journal":
        raise SourceError("the journal has no entries here (no systemd-journald?)")
    if source in ("kern", "syslog", "auto"):
        wanted = {"kern": KERN_LOGS[:1], "syslog": KERN_LOGS[1:]}.get(source, KERN_LOGS)
        for path in wanted:
            if os.path.exists(path):
                return "kern", rotated(path)
        if source != "auto":
            raise SourceError(f"none of {', '.join(wanted)} exists")
    return "dmesg", []


def parse_time(text: str | None, now: float | None = None) -> float | None:
    """``--since``/``--until``: epoch seconds, ISO date/time, or relative ``-2h``."""
    if not text:
        return None
    now = time.time() if now is None else now
    t = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    rel = t.lstrip("-")
    if rel and rel[-1] in units and rel[:-1].replace(".", "", 1).isdigit():
        return now - float(rel[:-1]) * units[rel[-1]]
    if t in ("today", "yesterday"):
        lt = time.localtime(now)
        midnight = time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, 0, 0, 0, 0, 0, -1))
        return midnight - (86400 if t == "yesterday" else 0)
    if t.replace(".", "", 1).isdigit():
        return float(t)
    from datetime import datetime

    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise SourceError(f"cannot read the time {text!r} (use e.g. 2026-11-25T10:00, "
                          f"-2h, today, or seconds since the epoch)") from None
    return dt.timestamp()
