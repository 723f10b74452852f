"""The simulated libvirt/QEMU host of ``gendenials``: guests, the libvirt stack
and unrelated programs, and the AppArmor records (events) they cause.

Each event is the record's fields as the kernel (or dbus-daemon) prints them
and the truth a parser must read back; ``gendenials`` renders them per log
format.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Any

Fields = list[tuple[str, str]]   # (key, value as printed); key "" = an extra space


def quoted(value: str) -> str:
    """An untrusted audit string: quoted, or upper-case hex when it holds a
    space, a quote, a control or a non-ASCII byte."""
    if any(c == '"' or not 0x20 < ord(c) < 0x7F for c in value):
        return value.encode("utf-8", "surrogateescape").hex().upper()
    return f'"{value}"'


def body_of(fields: Fields) -> str:
    return " ".join(f"{k}={v}" if k else "" for k, v in fields)


@dataclass
class Guest:
    uuid: str
    name: str
    domid: int
    pid: int
    complain: bool
    disks: list[str]

    @property
    def profile(self) -> str:
        return "libvirt-" + self.uuid


@dataclass
class Event:
    """One AppArmor record: what is printed and what a parser must read back."""

    fields: Fields
    truth: dict[str, Any]
    dbus: bool = False


@dataclass
class Options:
    format: str = "audit"
    lines: int = 1000
    seed: int = 0
    guests: int = 24
    complain_share: float = 0.2
    apparmor_share: float = 0.45
    guest_share: float = 0.75
    class_share: float = 0.5
    split_share: float = 0.01
    ratelimit_share: float = 0.01
    syscall_share: float = 0.6
    enriched: bool = True
    node_prefix: bool = False
    time_style: str = "rfc3339"
    mean_gap: float = 0.05
    start: float = 1700000000.0
    host: str = "kvmhost01"
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- the simulated host

GUEST_NAMES = ["web", "db", "build", "win11", "ubuntu24", "debian12", "k8s-worker", "runner",
               "mail", "vpn", "git", "desktop", "lab", "fedora", "fw", "nas"]
CAPS = [(1, "dac_override"), (2, "dac_read_search"), (3, "fowner"), (6, "setgid"),
        (7, "setuid"), (12, "net_admin"), (13, "net_raw"), (14, "ipc_lock"),
        (17, "sys_rawio"), (21, "sys_admin"), (23, "sys_nice"), (24, "sys_resource"),
        (38, "perfmon"), (39, "bpf")]
THREADS = ["qemu-system-x86"] * 10 + ["CPU 0/KVM", "CPU 1/KVM", "CPU 2/KVM", "worker",
                                      "IO mon_iothread", "vhost-{n}", "SPICE Worker",
                                      "live_migration", "call_rcu", "iou-wrk-{n}"]


def make_guests(rng: random.Random, n: int, complain_share: float) -> list[Guest]:
    out = []
    for i in range(n):
        base = GUEST_NAMES[i % len(GUEST_NAMES)]
        name = base if i < len(GUEST_NAMES) else f"{base}-{i // len(GUEST_NAMES)}"
        disks = [f"/var/lib/libvirt/images/{name}.qcow2"]
        extra = rng.choice([f"/var/lib/libvirt/images/{name} data.qcow2",      # space: hex
                            f"/srv/vm/{name}/scratch.raw", f"/dev/mapper/vg0-{name}--data",
                            f"/home/ops/Bilder/{name}-ü.iso", None, None])     # UTF-8: hex
        if extra:
            disks.append(extra)
        out.append(Guest(str(uuid.UUID(int=rng.getrandbits(128), version=4)), name, i + 1,
                         rng.randint(3000, 900000), rng.random() < complain_share, disks))
    return out


def archive_path(rng: random.Random) -> str:
    """A path long enough that, hex-encoded, it runs into the printk limit."""
    parts = ["/srv/backup"]
    while sum(map(len, parts)) < 430:
        parts.append(f"weekly set {rng.choice(['north', 'south', 'east'])} {rng.randint(1, 9999)}")
    return "/".join(parts) + "/disk.qcow2"


def guest_file_access(rng: random.Random, g: Guest) -> tuple[str, str, str]:
    """(operation, path, mask) of a file access a guest's QEMU makes."""
    d, n = g.domid, g.name
    kind = rng.random()
    if kind < 0.25:
        return "open", rng.choice(g.disks), rng.choice(["r", "wr", "w", "k"])
    if kind < 0.35:
        return "open", rng.choice([f"/run/udev/data/c189:{rng.randint(0, 255)}",
                                   "/run/udev/data/+usb:1-2:1.0", "/sys/bus/usb/devices/",
                                   "/sys/kernel/mm/transparent_hugepage/enabled",
                                   f"/sys/devices/system/cpu/cpu{rng.randint(0, 31)}/online",
                                   "/sys/devices/pci0000:00/0000:00:03.0/config"]), "r"
    if kind < 0.43:
        return "file_mmap", rng.choice([
            "/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so", "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/lib/x86_64-linux-gnu/qemu/ui-opengl.so",
            f"/dev/hugepages/libvirt/qemu/{d}-{n}/qemu_back_mem.pc.ram.{rng.randint(10, 99)}"]), \
            rng.choice(["m", "rm"])
    if kind < 0.49:
        return "mknod", rng.choice([
            f"/var/lib/libvirt/qemu/channel/target/domain-{d}-{n}/org.qemu.guest_agent.0",
            f"/run/libvirt/qemu/swtpm/{d}-{n}-swtpm.sock",
            f"/var/lib/libvirt/qemu/domain-{d}-{n}/monitor.sock"]), "c"
    if kind < 0.54:
        return "connect", rng.choice([f"/run/libvirt/qemu/swtpm/{d}-{n}-swtpm.sock",
                                      "/run/user/1000/pulse/native", f"/run/virtiofsd/{n}.sock",
                                      "/tmp/.X11-unix/X0"]), "wr"
    if kind < 0.59:
        return "file_lock", rng.choice([g.disks[0],
                                        f"/var/lib/libvirt/qemu/nvram/{n}_VARS.fd"]), "k"
    if kind < 0.63:
        return "exec", rng.choice(["/usr/lib/qemu/qemu-bridge-helper", "/etc/qemu-ifup",
                                   "/usr/libexec/virtiofsd", "/bin/sh"]), "x"
    if kind < 0.72:
        return "open", rng.choice([
            "/etc/ceph/ceph.conf", "/dev/vfio/17", "/dev/dri/renderD128", "/dev/sdb",
            "/var/lib/dbus/machine-id", "/dev/tpm0", "/home/ops/.config/pulse/cookie",
            f"/var/lib/libvirt/boot/{n}-vmlinuz", f"/dev/shm/spice.{rng.randint(100, 999)}",
            f"/var/lib/libvirt/images/{n}.qcow2.backing\"odd"]), rng.choice(["r", "wr", "w"])
    if kind < 0.76:
        op = rng.choice(["truncate", "chmod", "unlink", "mkdir", "getattr", "file_perm"])
        mask = {"truncate": "w", "chmod": "w", "unlink": "d", "mkdir": "c", "getattr": "r",
                "file_perm": "w"}[op]
        return op, rng.choice([g.disks[0], f"/var/log/libvirt/qemu/{n}.log",
                               f"/dev/pts/{rng.randint(0, 9)}"]), mask
    if kind < 0.78:
        return "open", archive_path(rng), "r"
    return "open", rng.choice([f"/proc/{g.pid}/task/{g.pid + rng.randint(1, 40)}/comm",
                               "/proc/sys/vm/max_map_count", "/dev/net/tun", "/dev/userfaultfd",
                               f"/sys/fs/cgroup/machine.slice/machine-qemu\\x2d{d}\\x2d{n}"
                               ".scope/cpu.max", "/dev/sev"]), rng.choice(["r", "w", "wr"])


class Host:
    """Produces events (AppArmor records of guests and of the stack)."""

    def __init__(self, rng: random.Random, o: Options) -> None:
        self.rng, self.o = rng, o
        self.guests = make_guests(rng, o.guests, o.complain_share)

    def thread(self, g: Guest) -> tuple[int, str]:
        comm = self.rng.choice(THREADS).replace("{n}", str(self.rng.randint(100, 99999)))
        return (g.pid if comm == "qemu-system-x86" else g.pid + self.rng.randint(1, 80)), comm

    def guest_event(self) -> Event:
        rng = self.rng
        g = rng.choice(self.guests)
        mode = "AUDIT" if rng.random() < 0.01 else ("ALLOWED" if g.complain else "DENIED")
        prof = g.profile + ("//qemu_bridge_helper" if rng.random() < 0.03 else "")
        pid, comm = self.thread(g)
        new = rng.random() < self.o.class_share
        head: Fields = [("apparmor", f'"{mode}"')]
        t: dict[str, Any] = {"apparmor": mode, "profile": prof, "vm_uuid": g.uuid, "pid": pid,
                             "comm": comm}
        who: Fields = [("pid", str(pid)), ("comm", quoted(comm))]
        kind = rng.random()
        if kind < 0.62:
            return self._file(g, head, t, prof, who, new)
        if kind < 0.70:
            num, cap = rng.choice(CAPS)
            f = head + [("operation", '"capable"')] + ([("class", '"cap"')] if new else []) + [
                ("profile", quoted(prof))] + who + [("capability", f"{num} "),
                                                    ("capname", f'"{cap}"')]
            t.update(operation="capable", capability=num, capname=cap)
            return Event(f, t)
        if kind < 0.76:
            return self._inet(head, t, prof, who, new)
        if kind < 0.82:
            sig = rng.choice(["term", "kill", "hup", "cont", "usr1", "exists"])
            peer = rng.choice(["libvirtd", "virtqemud", "unconfined",
                               rng.choice(self.guests).profile])
            mask = rng.choice(["receive", "receive", "send"])
            f = head + [("operation", '"signal"')] + ([("class", '"signal"')] if new else []) + [
                ("profile", quoted(prof))] + who + [("requested_mask", f'"{mask}"'),
                                                    ("denied_mask", f'"{mask}"'),
                                                    ("signal", sig), ("peer", quoted(peer))]
            t.update(operation="signal", requested_mask=mask, denied_mask=mask, signal=sig,
                     peer=peer)
            return Event(f, t)
        if kind < 0.87:
            mask, peer = rng.choice([("read", "libvirtd"), ("readby", "virtqemud"),
                                     ("trace", "unconfined"), ("tracedby", "/usr/sbin/libvirtd")])
            f = head + [("operation", '"ptrace"')] + ([("class", '"ptrace"')] if new else []) + [
                ("profile", quoted(prof))] + who + [("requested_mask", f'"{mask}"'),
                                                    ("denied_mask", f'"{mask}"'),
                                                    ("peer", quoted(peer))]
            t.update(operation="ptrace", requested_mask=mask, denied_mask=mask, peer=peer)
            return Event(f, t)
        if kind < 0.95:
            return self._unix(g, head, t, prof, who, new)
        return self.dbus_event(g)

    def _file(self, g: Guest, head: Fields, t: dict[str, Any], prof: str, who: Fields,
              new: bool) -> Event:
        rng = self.rng
        op, path, mask = guest_file_access(rng, g)
        denied = mask[-1] if len(mask) > 1 and rng.random() < 0.1 else mask
        f = head + [("operation", f'"{op}"')]
        if rng.random() < 0.05:
            f.append(("parent", str(rng.randint(1, 4000))))
        if new:
            f.append(("class", '"file"'))
        if rng.random() < 0.02:                     # a path outside the namespace
            f += [("info", '"Failed name lookup - disconnected path"'), ("error", "-13")]
            path = path.lstrip("/")
            t["info"] = "Failed name lookup - disconnected path"
        fsuid = rng.choice([64055, 64055, 0, 107])
        ouid = rng.choice([0, fsuid, 1000])
        f += [("profile", quoted(prof)), ("name", quoted(path))] + who + [
            ("requested_mask", f'"{mask}"'), ("denied_mask", f'"{denied}"'),
            ("fsuid", str(fsuid)), ("ouid", str(ouid))]
        t.update(operation=op, name=path, requested_mask=mask, denied_mask=denied,
                 fsuid=fsuid, ouid=ouid)
        if op == "exec" and t["apparmor"] == "ALLOWED":
            t["target"] = f"{prof}//null-{path}"
            f.append(("target", quoted(t["target"])))
        return Event(f, t)

    def _inet(self, head: Fields, t: dict[str, Any], prof: str, who: Fields,
              new: bool) -> Event:
        rng = self.rng
        fam, st, proto = rng.choice([("inet", "raw", 1), ("inet6", "raw", 58),
                                     ("inet", "dgram", 0), ("netlink", "raw", 0),
                                     ("packet", "raw", 768), ("inet", "stream", 6),
                                     ("vsock", "stream", 0)])
        op = rng.choice(["create", "create", "bind", "setsockopt", "sendmsg"])
        f = head + [("operation", f'"{op}"')]
        if new:
            f.append(("class", '"net"'))
            if rng.random() < 0.3:
                f += [("info", '"failed protocol match"'), ("error", "-13")]
                t["info"] = "failed protocol match"
        req = "requested" if new and rng.random() < 0.5 else "requested_mask"
        f += [("profile", quoted(prof))] + who + [
            ("family", f'"{fam}"'), ("sock_type", f'"{st}"'), ("protocol", str(proto)),
            (req, f'"{op}"'), ("denied" if req == "requested" else "denied_mask", f'"{op}"')]
        t.update(operation=op, family=fam, sock_type=st, protocol=proto, requested_mask=op,
                 denied_mask=op)
        return Event(f, t)

    def _unix(self, g: Guest, head: Fields, t: dict[str, Any], prof: str, who: Fields,
              new: bool) -> Event:
        rng = self.rng
        op, req, den, addr, paddr, peer = rng.choice([
            ("connect", "send receive connect", "send receive connect", "none",
             "@/tmp/.X11-unix/X0", "unconfined"),
            ("connect", "send receive connect", "connect", "none",
             f"/run/libvirt/qemu/swtpm/{g.domid}-{g.name}-swtpm.sock", "swtpm"),
            ("sendmsg", "send", "send", "none", "none", "libvirtd"),
            ("recvmsg", "receive", "receive", "none", "none", "virtqemud"),
            ("bind", "bind", "bind", f"@qemu-{g.name[:6]}-vnc", None, None),
        ])
        f = head + [("operation", f'"{op}"')] + ([("class", '"net"')] if new else []) + [
            ("profile", quoted(prof))] + who + [
            ("family", '"unix"'), ("sock_type", f'"{rng.choice(["stream", "dgram"])}"'),
            ("protocol", "0")]
        if new and rng.random() < 0.6:
            f += [("requested", f'"{req}"'), ("denied", f'"{den}"')]
        else:
            f += [("requested_mask", f'"{req}"'), ("denied_mask", f'"{den}"')]
        f.append(("addr", addr if addr == "none" else quoted(addr)))
        t.update(operation=op, family="unix", requested_mask=req, denied_mask=den, addr=addr)
        if paddr is not None:
            f.append(("peer_addr", paddr if paddr == "none" else quoted(paddr)))
            t["peer_addr"] = paddr
        if peer is not None:
            f.append(("peer", quoted(peer)))
            t["peer"] = peer
        return Event(f, t)

    def dbus_event(self, g: Guest) -> Event:
        """A dbus-daemon mediation record (userspace, USER_AVC)."""
        rng = self.rng
        mode = "ALLOWED" if g.complain else "DENIED"
        path, iface, member, name, op, mask = rng.choice([
            ("/org/freedesktop/login1", "org.freedesktop.login1.Manager", "Inhibit",
             "org.freedesktop.login1", "dbus_method_call", "send"),
            ("/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello", "org.freedesktop.DBus",
             "dbus_method_call", "send"),
            ("/org/qemu/Display1/VM", "org.freedesktop.DBus.Properties", "GetAll",
             f":1.{rng.randint(10, 400)}", "dbus_method_call", "send"),
            ("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "JobRemoved",
             ":1.1", "dbus_signal", "receive"),
            (None, None, None, f"org.qemu.dbus-vmstate.{g.name}", "dbus_bind", "bind"),
        ])
        f: Fields = [("apparmor", f'"{mode}"'), ("operation", f'"{op}"'), ("", ""),
                     ("bus", '"system"')]
        t: dict[str, Any] = {"apparmor": mode, "operation": op, "profile": g.profile,
                             "vm_uuid": g.uuid, "bus": "system", "mask": mask, "name": name}
        if path:
            f += [("path", f'"{path}"'), ("interface", f'"{iface}"'), ("member", f'"{member}"')]
            t.update(path=path, interface=iface, member=member)
        f += [("mask", f'"{mask}"'), ("name", f'"{name}"'), ("pid", str(g.pid)),
              ("label", f'"{g.profile}"')]
        if op != "dbus_bind":
            f += [("peer_pid", str(rng.randint(1, 5000))), ("peer_label", '"unconfined"')]
        return Event(f, t, dbus=True)

    def stack_event(self) -> Event:
        """The libvirt stack's own profiles and unrelated programs."""
        rng = self.rng
        g = rng.choice(self.guests)
        prof, comm, op, path, mask = rng.choice([
            ("libvirtd", "rpc-worker", "open", "/sys/kernel/security/apparmor/profiles", "r"),
            ("/usr/sbin/libvirtd", "libvirtd", "exec", "/usr/local/bin/qemu-system-x86_64", "x"),
            ("virt-aa-helper", "virt-aa-helper", "open", g.disks[-1], "r"),
            ("/usr/lib/libvirt/virt-aa-helper", "virt-aa-helper", "open",
             f"/etc/apparmor.d/libvirt/{g.profile}.files", "w"),
            ("swtpm", "swtpm", "open", f"/var/lib/libvirt/swtpm/{g.uuid}/tpm2/.lock", "wk"),
            ("swtpm", "swtpm", "file_lock", f"/var/lib/libvirt/swtpm/{g.uuid}/tpm2/.lock", "k"),
            ("/usr/sbin/dnsmasq", "dnsmasq", "open",
             "/var/lib/libvirt/dnsmasq/default.hostsfile", "r"),
            ("libvirtd//qemu_bridge_helper", "qemu-bridge-hel", "open", "/etc/qemu/bridge.conf",
             "r"),
            ("/usr/sbin/cupsd", "cupsd", "open", "/etc/ssh/ssh_config", "r"),
            ("lsb_release", "lsb_release", "open", "/proc/sys/kernel/osrelease", "r"),
            ("snap.lxd.daemon", "lxd", "open", "/run/systemd/notify", "w"),
            ("libvirt-7b2b0a4e", "qemu-system-x86", "open", "/dev/kvm", "wr"),   # not a uuid
            ("libvirt-qemu", "qemu-system-x86", "open", "/dev/net/tun", "wr"),  # abstraction
        ])
        mode = rng.choice(["DENIED", "DENIED", "DENIED", "ALLOWED"])
        pid = rng.randint(300, 400000)
        t: dict[str, Any] = {"apparmor": mode, "profile": prof, "vm_uuid": None, "pid": pid,
                             "comm": comm}
        who: Fields = [("pid", str(pid)), ("comm", quoted(comm))]
        kind = rng.random()
        if kind < 0.75:
            f = [("apparmor", f'"{mode}"'), ("operation", f'"{op}"'), ("profile", quoted(prof)),
                 ("name", quoted(path))] + who + [("requested_mask", f'"{mask}"'),
                                                 ("denied_mask", f'"{mask}"'),
                                                 ("fsuid", "0"), ("ouid", "0")]
            t.update(operation=op, name=path, requested_mask=mask, denied_mask=mask)
        elif kind < 0.88:
            num, cap = rng.choice(CAPS)
            f = [("apparmor", f'"{mode}"'), ("operation", '"capable"'),
                 ("profile", quoted(prof))] + who + [("capability", f"{num} "),
                                                     ("capname", f'"{cap}"')]
            t.update(operation="capable", capability=num, capname=cap)
        else:
            peer = rng.choice(["unconfined", g.profile])
            f = [("apparmor", f'"{mode}"'), ("operation", '"ptrace"'),
                 ("profile", quoted(prof))] + who + [("requested_mask", '"read"'),
                                                     ("denied_mask", '"read"'),
                                                     ("peer", quoted(peer))]
            t.update(operation="ptrace", requested_mask="read", denied_mask="read", peer=peer)
        return Event(f, t)

    def status_event(self) -> Event:
        rng = self.rng
        g = rng.choice(self.guests)
        op = rng.choice(["profile_load", "profile_replace", "profile_remove"])
        f: Fields = [("apparmor", '"STATUS"'), ("operation", f'"{op}"')]
        t: dict[str, Any] = {"apparmor": "STATUS", "operation": op, "profile": "unconfined",
                             "name": g.profile, "vm_uuid": None}
        if op == "profile_replace" and rng.random() < 0.3:
            f.append(("info", '"same as current profile, skipping"'))
            t["info"] = "same as current profile, skipping"
        pid = rng.randint(2000, 400000)
        f += [("profile", '"unconfined"'), ("name", quoted(g.profile)), ("pid", str(pid)),
              ("comm", '"apparmor_parser"')]
        t.update(pid=pid, comm="apparmor_parser")
        return Event(f, t)
