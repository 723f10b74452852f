"""Two private libvirtds on this machine, as two hosts a VM can migrate between.

Each is a :class:`e2e_daemon.PrivateLibvirtd` (its own mount namespace, its
own copies of libvirt's directories under its own sandbox root, its own
``/run``) plus what libvirt needs to tell two hosts apart and to migrate:

* ``host_uuid`` in its ``libvirtd.conf``: libvirt refuses a migration
  whose source and destination report the same host UUID ("Attempt to
  migrate guest to the same host"), and both would otherwise read the same
  SMBIOS UUID;
* its own ``migration_port_min``/``max`` in ``qemu.conf``, so incoming
  migrations of the two never compete for a port (and stay away from the
  ports a system libvirtd uses, 49152-49215).

The network namespace is shared, so the destination's QEMU listens on a TCP
port the source's QEMU reaches at 127.0.0.1 (``--migrateuri
tcp://127.0.0.1``).
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

from e2e_daemon import DaemonError, PrivateLibvirtd

HOST_CONF = """
# --- second host of tests/e2e_two_daemons.py
host_uuid = "{uuid}"
"""
MIGRATION_CONF = """
# --- second host of tests/e2e_two_daemons.py: incoming migrations on these ports
migration_port_min = {low}
migration_port_max = {high}
"""


class Host(PrivateLibvirtd):
    """A private libvirtd that can be told apart from its twin, for migrations."""

    def __init__(self, name: str, root: Path, state: Path, host_uuid: str,
                 ports: tuple[int, int]) -> None:
        super().__init__(root, state)
        self.name = name
        self.host_uuid = host_uuid
        self.ports = ports

    def prepare(self) -> None:
        super().prepare()
        with open(self.root / "etc/libvirt/libvirtd.conf", "a", encoding="utf-8") as f:
            f.write(HOST_CONF.format(uuid=self.host_uuid))
        with open(self.root / "etc/libvirt/qemu.conf", "a", encoding="utf-8") as f:
            f.write(MIGRATION_CONF.format(low=self.ports[0], high=self.ports[1]))

    def sysinfo_uuid(self) -> str:
        """The host UUID this daemon reports (``virsh sysinfo`` is SMBIOS; capabilities
        carry the configured one)."""
        caps = self.virsh("capabilities").stdout
        start = caps.find("<uuid>")
        return caps[start + 6:caps.find("</uuid>", start)] if start >= 0 else ""


def start_all(hosts: list[Host], timeout: float = 90) -> None:
    """Start the daemons in parallel (each probes QEMU on a cold cache: seconds)."""
    with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
        futures = [pool.submit(h.start, timeout) for h in hosts]
        errors = [f.exception() for f in futures]
    problems = [f"{h.name}: {e}" for h, e in zip(hosts, errors, strict=True) if e]
    if problems:
        raise DaemonError("; ".join(problems))
