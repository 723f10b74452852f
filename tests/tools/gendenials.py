#!/usr/bin/env python3
"""gendenials: deterministic AppArmor logs of a libvirt/QEMU host, with ground truth.

The project's own generator of test input for the denial parser (standard
library only; importable as ``gendenials`` and runnable as a script).  A
simulated host runs guests (profiles ``libvirt-<uuid>``, some in complain
mode) beside the libvirt stack (libvirtd, virt-aa-helper, swtpm, dnsmasq) and
unrelated confined programs; every moment is one AppArmor record or some
noise (the host and its events are in ``denialhost.py``), rendered the way
the host's logger writes it:

  audit          auditd's audit.log: AVC (+ SYSCALL, PROCTITLE), dbus USER_AVC,
                 ENRICHED ``\\x1d`` suffixes, optional ``node=HOST`` prefixes
  kern, syslog   rsyslog files, RFC 3339 or BSD stamps, printk times or not;
                 syslog adds journald's ``audit[PID]: AVC`` copies and dbus-daemon
  dmesg, dmesg-T the kernel ring, uptime or wall-clock stamps
  journal-short  ``journalctl -o short``: kernel and/or audit transport
  journal-json   ``journalctl -o json``: the same, with journald's ``_AUDIT_*`` fields

Kernel-ring records are split around rate-limit notices (the rest sometimes
lost) and cut at the printk limit; names with spaces, quotes or non-ASCII
bytes are hex-encoded as the kernel does.  ``--truth FILE`` writes one JSON
object per AppArmor record emitted: its line, its ``text`` as printed
(before any cut), the decoded fields, ``source``
(kernel, audit, dbus, dbus-audit, dbus-kernel), ``event_id``, and whether it
is ``complete``, ``split``, ``truncated`` or a ``duplicate`` (the second
transport's copy of the same event).

    gendenials.py --format kern --lines 5000 --seed 7 -o kern.log --truth kern.truth
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from denialhost import Event, Guest, Host, Options, body_of, quoted

FORMATS = ("audit", "kern", "syslog", "dmesg", "dmesg-T", "journal-short", "journal-json")
PRINTK_LIMIT = 1000          # the kernel ring keeps about this much of one record
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

# ---------------------------------------------------------------- time and stamps


class Clock:
    """Wall time in integer microseconds (so every stamp of one moment agrees)."""

    def __init__(self, rng: random.Random, o: Options) -> None:
        self.rng, self.o = rng, o
        self.us = int(o.start * 1e6)
        self.boot_us = self.us - int(rng.uniform(3600, 20 * 86400) * 1e6)
        self.serial = rng.randint(100, 60000)

    def tick(self) -> None:
        self.us += max(1, int(self.rng.expovariate(1.0 / self.o.mean_gap) * 1e6))
        self.serial += 1

    @property
    def stamp(self) -> str:
        """auditd's ``SECONDS.MILLIS:SERIAL``."""
        return f"{self.us // 1000000}.{self.us % 1000000 // 1000:03d}:{self.serial}"

    def uptime(self) -> str:
        up = self.us - self.boot_us
        return f"[{up // 1000000:5d}.{up % 1000000:06d}]"

    def bsd(self) -> str:
        tm = time.gmtime(self.us // 1000000)
        return f"{MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} {tm.tm_hour:02d}:{tm.tm_min:02d}:" \
               f"{tm.tm_sec:02d}"

    def rfc3339(self) -> str:
        tm = time.gmtime(self.us // 1000000)
        return time.strftime("%Y-%m-%dT%H:%M:%S", tm) + f".{self.us % 1000000:06d}+00:00"

    def ctime(self) -> str:
        tm = time.gmtime(self.us // 1000000)
        return f"[{DAYS[tm.tm_wday]} {MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} " \
               f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {tm.tm_year}]"


# ---------------------------------------------------------------- noise

def kernel_chatter(rng: random.Random, clock: Clock, g: Guest) -> str:
    n = rng.randint(0, 30)
    return rng.choice([
        f"virbr0: port {rng.randint(1, 9)}(vnet{n}) entered "
        f"{rng.choice(['blocking', 'forwarding', 'disabled'])} state",
        f"device vnet{n} entered promiscuous mode",
        f"kvm [{g.pid}]: ignored rdmsr: 0x{rng.choice([0x3a, 0x1a0, 0x64e]):x} data 0x0",
        f"EXT4-fs (dm-{rng.randint(0, 4)}): mounted filesystem with ordered data mode.",
        f"IPv6: ADDRCONF(NETDEV_CHANGE): vnet{n}: link becomes ready",
        f"audit: type=1130 audit({clock.stamp}): pid=1 uid=0 auid=4294967295 ses=4294967295 "
        f"msg='unit=machine-qemu\\x2d{g.domid}\\x2d{g.name} comm=\"systemd\" "
        f"exe=\"/usr/lib/systemd/systemd\" hostname=? addr=? terminal=? res=success'",
        f"audit: type=1300 audit({clock.stamp}): arch=c000003e syscall=257 success=no "
        f"exit=-13 pid={g.pid} comm=\"qemu-system-x86\" exe=\"/usr/bin/qemu-system-x86_64\" "
        f"subj={g.profile} (enforce) key=(null)",
        f"audit: type=1327 audit({clock.stamp}): proctitle=2F7573722F62696E2F71656D75",
        "tun: Universal TUN/TAP device driver, 1.6",
        f"usb 1-{rng.randint(1, 6)}: new high-speed USB device number {n} using xhci_hcd",
    ])


def daemon_chatter(rng: random.Random, g: Guest, libvirtd_pid: int) -> tuple[str, str]:
    """(identifier, message) of a syslog/journal line that is not AppArmor's."""
    return rng.choice([
        ("systemd[1]", f"Started machine-qemu\\x2d{g.domid}\\x2d{g.name}.scope - Virtual "
                       f"Machine qemu-{g.domid}-{g.name}."),
        (f"libvirtd[{libvirtd_pid}]", f"internal error: qemu unexpectedly closed the monitor:"
                                      f" Could not open '{g.disks[0]}': Permission denied"),
        (f"dnsmasq-dhcp[{rng.randint(1000, 3000)}]",
         f"DHCPACK(virbr0) 192.168.122.{rng.randint(2, 254)} 52:54:00:12:34:{n2(rng)} {g.name}"),
        (f"CRON[{rng.randint(1000, 99999)}]", "(root) CMD (command -v debian-sa1 > /dev/null)"),
        (f"virtlogd[{rng.randint(900, 1800)}]", "End of file while reading data"),
        (f"systemd-machined[{rng.randint(600, 900)}]", f"New machine qemu-{g.domid}-{g.name}."),
        (f"libvirtd[{libvirtd_pid}]", "Failed to open file "
                                      "'/sys/kernel/security/apparmor/profiles': Denied"),
    ])


def n2(rng: random.Random) -> str:
    return f"{rng.getrandbits(8):02x}"


def auditd_chatter(rng: random.Random, clock: Clock, g: Guest, libvirtd_pid: int) -> str:
    st = clock.stamp
    return rng.choice([
        f"USER_ACCT msg=audit({st}): pid={rng.randint(1000, 99999)} uid=0 auid=4294967295 "
        f"ses=4294967295 subj=unconfined msg='op=PAM:accounting grantors=pam_permit "
        f"acct=\"root\" exe=\"/usr/sbin/cron\" hostname=? addr=? terminal=cron res=success'"
        f"\x1dUID=\"root\" AUID=\"unset\"",
        f"SERVICE_START msg=audit({st}): pid=1 uid=0 auid=4294967295 ses=4294967295 "
        f"subj=unconfined msg='unit=machine-qemu\\x2d{g.domid}\\x2d{g.name} comm=\"systemd\" "
        f"exe=\"/usr/lib/systemd/systemd\" hostname=? addr=? terminal=? res=success'",
        f"VIRT_MACHINE_ID msg=audit({st}): pid={libvirtd_pid} uid=0 auid=4294967295 "
        f"ses=4294967295 subj=unconfined msg='virt=kvm vm=\"{g.name}\" uuid={g.uuid} "
        f"vm-ctx={g.profile} img-ctx={g.profile} model=apparmor exe=\"/usr/sbin/libvirtd\" "
        f"hostname=? addr=? terminal=? res=success'\x1dUID=\"root\" AUID=\"unset\"",
        f"VIRT_RESOURCE msg=audit({st}): pid={libvirtd_pid} uid=0 auid=4294967295 "
        f"ses=4294967295 subj=unconfined msg='virt=kvm resrc=disk reason=start vm=\"{g.name}\" "
        f"uuid={g.uuid} old-disk=\"?\" new-disk=\"{g.disks[0]}\" exe=\"/usr/sbin/libvirtd\" "
        f"hostname=? addr=? terminal=? res=success'",
        f"NETFILTER_CFG msg=audit({st}): table=filter:{rng.randint(1, 90)} family=2 "
        f"entries={rng.randint(1, 300)} op=nft_register_rule pid={rng.randint(1000, 9999)} "
        f"subj=unconfined comm=\"iptables\"",
        f"BPF msg=audit({st}): prog-id={rng.randint(10, 9000)} op=LOAD",
    ])


def ratelimit_notice(rng: random.Random) -> str:
    return rng.choice([
        f"kauditd_printk_skb: {rng.randint(2, 400)} callbacks suppressed",
        "audit: rate limit exceeded",
        f"audit: audit_lost={rng.randint(1, 9000)} audit_rate_limit=0 audit_backlog_limit=64",
        f"audit_printk_skb: {rng.randint(2, 400)} callbacks suppressed",
    ])


# ---------------------------------------------------------------- rendering


class Moment:
    """The lines of one moment and the truth of the records among them."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.lines: list[str] = []
        self.truth: list[dict[str, Any]] = []

    def record(self, t: dict[str, Any], source: str, complete: bool = True,
               **flags: bool) -> None:
        """The record whose text starts on the next line."""
        d = dict(t, at=len(self.lines), event_id=self.clock.stamp, source=source,
                 complete=complete)
        d.update({k: v for k, v in flags.items() if v})
        self.truth.append(d)


class Generator:
    def __init__(self, o: Options) -> None:
        if o.format not in FORMATS:
            raise ValueError(f"unknown format {o.format!r}")
        self.o = o
        self.rng = random.Random(o.seed)
        self.host = Host(self.rng, o)
        self.clock = Clock(self.rng, o)
        self.printk_times = self.rng.random() < 0.6     # per file, like rsyslog configs
        self.libvirtd_pid = self.rng.randint(900, 1800)
        self.dbus_pid = self.rng.randint(500, 899)
        self.journald_pid = self.rng.randint(200, 499)
        self.boot_id = f"{self.rng.getrandbits(128):032x}"
        self.machine_id = f"{self.rng.getrandbits(128):032x}"
        self.seqnum = self.rng.randint(1, 10 ** 6)

    # -- prefixes
    def syslog(self, ident: str) -> str:
        ts = self.clock.rfc3339() if self.o.time_style == "rfc3339" else self.clock.bsd()
        return f"{ts} {self.o.host} {ident}: "

    def ring_prefix(self, legacy: bool = False) -> str:
        fmt, c = self.o.format, self.clock
        if fmt in ("kern", "syslog"):
            up = c.uptime() + " " if self.printk_times or legacy else ""
            return self.syslog("kernel") + up
        if fmt == "dmesg":
            return c.uptime() + " "
        if fmt == "dmesg-T":
            return c.ctime() + " "
        return f"{c.bsd()} {self.o.host} kernel: "          # journal-short

    def node(self) -> str:
        return f"node={self.o.host} " if self.o.node_prefix else ""

    # -- one moment
    def moment(self) -> Moment:
        self.clock.tick()
        m = Moment(self.clock)
        rng, o = self.rng, self.o
        if rng.random() < o.apparmor_share:
            r = rng.random()
            if r < o.guest_share:
                ev = self.host.guest_event()
            elif r < o.guest_share + (1 - o.guest_share) * 0.85:
                ev = self.host.stack_event()
            else:
                ev = self.host.status_event()
            (self.dbus if ev.dbus else self.avc)(m, ev)
        elif rng.random() < o.ratelimit_share:
            self.ratelimit(m)
        else:
            self.noise(m)
        return m

    def avc(self, m: Moment, ev: Event) -> None:
        fmt, rng, c = self.o.format, self.rng, self.clock
        body = body_of(ev.fields)
        t = dict(ev.truth, text=body)      # the record as printed, before any cut
        if fmt == "audit":
            m.record(t, "kernel")
            enriched = ""
            if self.o.enriched and "fsuid" in t:
                names = {0: "root", 64055: "libvirt-qemu", 107: "qemu", 1000: "ops"}
                enriched = f'\x1dFSUID="{names[t["fsuid"]]}" OUID="{names[t["ouid"]]}"'
            m.lines.append(f"{self.node()}type=AVC msg=audit({c.stamp}): {body}{enriched}")
            if rng.random() < self.o.syscall_share:
                self.syscall(m, t)
            return
        legacy = fmt in ("kern", "syslog", "dmesg") and rng.random() < 0.03
        kbody = ("type=1400 audit({}): {}" if legacy else "audit: type=1400 audit({}): {}"
                 ).format(c.stamp, body)
        if fmt in ("journal-json", "journal-short"):
            which = rng.random()
            if which < 0.35 or which >= 0.7:
                self.ring(m, kbody, t, "kernel", legacy)
            if which >= 0.35:
                m.record(t, "audit", duplicate=which >= 0.7)
                if fmt == "journal-json":
                    m.lines.append(self.json_audit(ev, body))
                else:
                    m.lines.append(f"{c.bsd()} {self.o.host} audit[{t.get('pid', 1)}]: AVC {body}")
            return
        if fmt == "syslog" and rng.random() < 0.4:       # journald's audit copy via rsyslog
            m.record(t, "audit")
            m.lines.append(self.syslog(f"audit[{t.get('pid', 1)}]") + "AVC " + body)
            return
        self.ring(m, kbody, t, "kernel", legacy)

    def ring(self, m: Moment, kbody: str, t: dict[str, Any], source: str,
             legacy: bool = False) -> None:
        """A record through the kernel ring: maybe cut at the printk limit, maybe
        split around a rate-limit notice (the rest sometimes lost)."""
        rng = self.rng
        truncated = len(kbody) > PRINTK_LIMIT
        kbody = kbody[:PRINTK_LIMIT]
        if self.o.format == "journal-json":
            m.record(t, source, complete=not truncated, truncated=truncated)
            m.lines.append(self.json_entry("kernel", "kernel", None, kbody))
            return
        if len(kbody) > 60 and rng.random() < self.o.split_share:
            cut = rng.randint(40, len(kbody) - 10)
            m.record(t, source, complete=False, split=True, truncated=truncated)
            m.lines.append(self.ring_prefix(legacy) + kbody[:cut])
            m.lines.append(self.ring_prefix() + ratelimit_notice(rng))
            if rng.random() < 0.7:
                m.lines.append(self.ring_prefix(legacy) + kbody[cut:])
            return
        m.record(t, source, complete=not truncated, truncated=truncated)
        m.lines.append(self.ring_prefix(legacy) + kbody)

    def syscall(self, m: Moment, t: dict[str, Any]) -> None:
        rng, c = self.rng, self.clock
        denied = t["apparmor"] == "DENIED"
        exe = "/usr/bin/qemu-system-x86_64" if t.get("vm_uuid") else "/usr/sbin/" + t["comm"]
        m.lines.append(
            f"{self.node()}type=SYSCALL msg=audit({c.stamp}): arch=c000003e "
            f"syscall={rng.choice([257, 9, 42, 59])} success={'no' if denied else 'yes'} "
            f"exit={-13 if denied else 3} a0=ffffff9c a1=7f{rng.getrandbits(40):010x} "
            f"a2=80000 a3=0 items=0 ppid={self.libvirtd_pid} pid={t.get('pid', 1)} "
            f"auid=4294967295 uid=64055 gid=107 euid=64055 suid=64055 fsuid=64055 egid=107 "
            f"sgid=107 fsgid=107 tty=(none) ses=4294967295 comm={quoted(t['comm'])} "
            f"exe=\"{exe}\" subj={t['profile']} ({'complain' if not denied else 'enforce'}) "
            f"key=(null)")
        m.lines.append(f"{self.node()}type=PROCTITLE msg=audit({c.stamp}): "
                       f"proctitle=2F7573722F62696E2F71656D752D73797374656D2D7838365F3634")

    def dbus(self, m: Moment, ev: Event) -> None:
        fmt, c = self.o.format, self.clock
        body = body_of(ev.fields)
        t = dict(ev.truth, text=body)      # the record as printed, before any cut
        user_avc = (f"pid={self.dbus_pid} uid=101 auid=4294967295 ses=4294967295 "
                    f"subj=unconfined msg='{body}  exe=\"/usr/bin/dbus-daemon\" sauid=101 "
                    f"hostname=? addr=? terminal=?'")
        if fmt == "audit":
            m.record(t, "dbus")
            m.lines.append(f"{self.node()}type=USER_AVC msg=audit({c.stamp}): {user_avc}"
                           "\x1dUID=\"messagebus\" AUID=\"unset\" SAUID=\"messagebus\"")
        elif fmt == "syslog":
            m.record(t, "dbus")
            m.lines.append(self.syslog(f"dbus-daemon[{self.dbus_pid}]") + body)
        elif fmt == "journal-short":
            if self.rng.random() < 0.5:
                m.record(t, "dbus")
                m.lines.append(f"{c.bsd()} {self.o.host} dbus-daemon[{self.dbus_pid}]: {body}")
            else:
                m.record(t, "dbus-audit")
                m.lines.append(f"{c.bsd()} {self.o.host} audit[{self.dbus_pid}]: USER_AVC "
                               f"{user_avc}")
        elif fmt == "journal-json":
            m.record(t, "dbus")
            m.lines.append(self.json_entry(
                "journal", "dbus-daemon", self.dbus_pid, body, facility="4",
                extra=[("_COMM", "dbus-daemon"), ("_EXE", "/usr/bin/dbus-daemon"),
                       ("_SYSTEMD_UNIT", "dbus.service"), ("_UID", "101")]))
        else:       # no auditd: kauditd printk()s the userspace record as type=1107
            self.ring(m, f"audit: type=1107 audit({c.stamp}): {user_avc}", t, "dbus-kernel")

    # -- journal entries
    def json_entry(self, transport: str, ident: str, pid: int | None, message: str,
                   facility: str = "0", prio: str = "5",
                   extra: list[tuple[str, str]] | tuple[()] = ()) -> str:
        self.seqnum += 1
        c = self.clock
        mono = c.us - c.boot_us
        d = {"__CURSOR": f"s={self.machine_id};i={self.seqnum:x};b={self.boot_id};"
                         f"m={mono:x};t={c.us:x};x={self.seqnum * 2654435761 % (1 << 64):016x}",
             "__REALTIME_TIMESTAMP": str(c.us), "__MONOTONIC_TIMESTAMP": str(mono),
             "_BOOT_ID": self.boot_id, "_TRANSPORT": transport, "PRIORITY": prio,
             "SYSLOG_FACILITY": facility, "SYSLOG_IDENTIFIER": ident}
        if pid is not None:
            d["_PID"] = str(pid)
        d.update(extra)
        d.update({"_MACHINE_ID": self.machine_id, "_HOSTNAME": self.o.host, "MESSAGE": message})
        if transport == "kernel":
            d["_SOURCE_MONOTONIC_TIMESTAMP"] = str(mono - 40)
        return json.dumps(d, ensure_ascii=False, separators=(",", ":"))

    def json_audit(self, ev: Event, body: str) -> str:
        """journald's audit transport: the message plus ``_AUDIT_*`` fields mapped
        as journald maps them (values keep their quotes and stop at a space;
        name= and comm= decoded)."""
        c, t = self.clock, ev.truth
        extra = [("_AUDIT_TYPE", "1400"), ("_AUDIT_TYPE_NAME", "AVC"),
                 ("_AUDIT_ID", str(c.serial)),
                 ("_SOURCE_REALTIME_TIMESTAMP", str(c.us // 1000 * 1000))]
        for k, v in ev.fields:
            if not k or k == "pid" or len(k) >= 16:
                continue
            if k == "comm":
                extra.append(("_COMM", t["comm"]))
            elif k == "name":
                extra.append(("_AUDIT_FIELD_NAME", t["name"]))
            elif k == "fsuid":
                extra.append(("_FSUID", v))
            else:
                extra.append(("_AUDIT_FIELD_" + k.upper(), v.split(" ")[0]))
        return self.json_entry("audit", "audit", t.get("pid"), "AVC " + body, facility="4",
                               extra=extra)

    # -- noise
    def ratelimit(self, m: Moment) -> None:
        fmt, rng, c = self.o.format, self.rng, self.clock
        note = ratelimit_notice(rng)
        missed = f"Missed {rng.randint(1, 500)} kernel messages"
        if fmt == "audit":
            m.lines.append(rng.choice([
                f"{self.node()}type=DAEMON_ERR msg=audit({c.stamp}): op=queue-full auid=0 "
                f"pid={rng.randint(300, 900)} uid=0 ses=4294967295 subj=unconfined res=failed",
                f"{self.node()}type=KERNEL msg=audit({c.stamp}): state=initialized "
                f"audit_enabled=1 res=1"]))
        elif fmt == "journal-json":
            m.lines.append(rng.choice([
                self.json_entry("kernel", "kernel", None, note),
                self.json_entry("driver", "systemd-journald", self.journald_pid, missed,
                                facility="3", prio="6")]))
        elif fmt == "syslog":
            m.lines.append(rng.choice([
                self.ring_prefix() + note,
                self.syslog(f"systemd-journald[{self.journald_pid}]") + missed,
                self.syslog("rsyslogd") + f"imjournal: {rng.randint(10, 9000)} messages lost "
                                          "due to rate-limiting (20000 allowed within 600 "
                                          "seconds)"]))
        elif fmt == "journal-short":
            m.lines.append(rng.choice([
                self.ring_prefix() + note,
                f"{c.bsd()} {self.o.host} systemd-journald[{self.journald_pid}]: {missed}"]))
        else:
            m.lines.append(self.ring_prefix() + note)

    def noise(self, m: Moment) -> None:
        fmt, rng = self.o.format, self.rng
        g = rng.choice(self.host.guests)
        if fmt == "audit":
            m.lines.append(self.node() + "type="
                           + auditd_chatter(rng, self.clock, g, self.libvirtd_pid))
        elif fmt in ("kern", "dmesg", "dmesg-T"):
            m.lines.append(self.ring_prefix() + kernel_chatter(rng, self.clock, g))
        elif rng.random() < 0.1:
            msg = kernel_chatter(rng, self.clock, g)
            if fmt == "journal-json":
                m.lines.append(self.json_entry("kernel", "kernel", None, msg))
            else:
                m.lines.append(self.ring_prefix() + msg)
        else:
            ident, msg = daemon_chatter(rng, g, self.libvirtd_pid)
            if fmt == "syslog":
                m.lines.append(self.syslog(ident) + msg)
            elif fmt == "journal-short":
                m.lines.append(f"{self.clock.bsd()} {self.o.host} {ident}: {msg}")
            else:
                name, _, pid = ident.partition("[")
                m.lines.append(self.json_entry("syslog", name, int(pid.rstrip("]")) if pid
                                               else None, msg, facility="3", prio="6",
                                               extra=[("_COMM", name[:15])]))


def generate(o: Options) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Exactly ``o.lines`` lines, each with the truth of the records starting on it."""
    gen = Generator(o)
    n = 0
    while n < o.lines:
        m = gen.moment()
        for i, line in enumerate(m.lines):
            if n >= o.lines:
                return
            n += 1
            ts = []
            for d in m.truth:
                if d["at"] == i:
                    d = dict(d, line=n)
                    del d["at"]
                    ts.append(d)
            yield line, ts


def generate_lists(**kw: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """(lines, truth records) -- for tests that want them in memory."""
    lines, truth = [], []
    for line, ts in generate(Options(**kw)):
        lines.append(line)
        truth.extend(ts)
    return lines, truth


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    d = Options()
    ap.add_argument("--format", "-F", choices=FORMATS, default=d.format)
    ap.add_argument("--lines", "-n", type=int, default=d.lines, help="exact number of lines")
    ap.add_argument("--seed", "-s", type=int, default=d.seed)
    ap.add_argument("--guests", type=int, default=d.guests, help="guests (libvirt-<uuid>)")
    ap.add_argument("--complain-share", type=float, default=d.complain_share)
    ap.add_argument("--apparmor-share", type=float, default=d.apparmor_share,
                    help="share of moments that are AppArmor records")
    ap.add_argument("--guest-share", type=float, default=d.guest_share,
                    help="share of AppArmor records that are guests'")
    ap.add_argument("--class-share", type=float, default=d.class_share,
                    help="share of guest records in the newer kernels' spelling (class=, "
                         "requested=/denied=)")
    ap.add_argument("--split-share", type=float, default=d.split_share,
                    help="share of kernel-ring records split around a rate-limit notice")
    ap.add_argument("--ratelimit-share", type=float, default=d.ratelimit_share)
    ap.add_argument("--syscall-share", type=float, default=d.syscall_share)
    ap.add_argument("--no-enriched", dest="enriched", action="store_false")
    ap.add_argument("--node-prefix", action="store_true", help="audit: node=HOST prefixes")
    ap.add_argument("--time-style", choices=("rfc3339", "bsd"), default=d.time_style)
    ap.add_argument("--mean-gap", type=float, default=d.mean_gap)
    ap.add_argument("--start", type=float, default=d.start, help="epoch of the first moment")
    ap.add_argument("--host", default=d.host)
    ap.add_argument("--truth", help="write one JSON object per AppArmor record here")
    ap.add_argument("-o", "--output", help="output file (default stdout)")
    a = vars(ap.parse_args(argv))
    out_path, truth_path = a.pop("output"), a.pop("truth")
    o = Options(**a)
    out = open(out_path, "w", encoding="utf-8", errors="surrogateescape",  # noqa: SIM115
               newline="\n") if out_path else sys.stdout
    truth = open(truth_path, "w", encoding="utf-8") if truth_path else None  # noqa: SIM115
    try:
        buf: list[str] = []
        for line, ts in generate(o):
            buf.append(line + "\n")
            if truth is not None:
                for t in ts:
                    truth.write(json.dumps(t, ensure_ascii=False, sort_keys=True) + "\n")
            if len(buf) >= 4096:
                out.write("".join(buf))
                buf.clear()
        out.write("".join(buf))
        out.flush()
    except BrokenPipeError:
        pass
    finally:
        if out is not sys.stdout:
            out.close()
        if truth is not None:
            truth.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
