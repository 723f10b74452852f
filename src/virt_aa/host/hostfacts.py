"""The real host behind :class:`virt_aa.generate.accesses.Host`: filesystem and sysfs."""

from __future__ import annotations

import os

from virt_aa.generate import images
from virt_aa.generate.domain import Hostdev

PCI_FILES = ("config", "rom", "vendor", "device", "reset")


class SystemHost:
    """Reads the facts the generator needs from this machine."""

    def __init__(self, sysfs: str = "/sys", dev: str = "/dev") -> None:
        self.sysfs = sysfs
        self.dev = dev
        self._dirs: dict[str, str] = {}

    def exists(self, path: str) -> bool:
        try:
            os.stat(path)
        except (OSError, ValueError):
            return False
        return True

    def realpath(self, path: str) -> str:
        """os.path.realpath, with each directory resolved once per run.

        A domain's images usually share a directory; resolving it once and
        then checking only the last component for a symlink saves an lstat
        per path component per disk.
        """
        head, _, tail = path.rpartition("/")
        if tail in ("", ".", "..") or "/." in head or not head:
            return os.path.realpath(path)
        rdir = self._dirs.get(head)
        if rdir is None:
            rdir = self._dirs[head] = os.path.realpath(head)
        candidate = f"{rdir}/{tail}" if rdir != "/" else f"/{tail}"
        if os.path.islink(candidate):
            return os.path.realpath(candidate)
        return candidate

    def read_header(self, path: str) -> bytes | None:
        return images.read_header(path)

    def pci_files(self, address: str) -> list[str] | None:
        """libvirt's virPCIDeviceFileIterate: files named for device assignment."""
        base = f"{self.sysfs}/bus/pci/devices/{address}"
        try:
            names = os.listdir(base)
        except OSError:
            return None
        return [f"{base}/{n}" for n in names
                if n in PCI_FILES or n.startswith("resource")]

    def usb_files(self, hostdev: Hostdev) -> list[str] | None:
        """libvirt's virHostdevFindUSBDevice: match by vendor/product and/or bus/device."""
        base = f"{self.sysfs}/bus/usb/devices"
        try:
            names = sorted(os.listdir(base))
        except OSError:
            return None
        for name in names:
            if ":" in name:
                continue
            attrs = {}
            for key in ("idVendor", "idProduct", "busnum", "devnum"):
                try:
                    with open(f"{base}/{name}/{key}", encoding="ascii") as f:
                        attrs[key] = int(f.read().strip(), 16 if key.startswith("id")
                                         else 10)
                except (OSError, ValueError):
                    break
            else:
                if hostdev.usb_vendor is not None and (
                        attrs["idVendor"] != hostdev.usb_vendor
                        or attrs["idProduct"] != hostdev.usb_product):
                    continue
                if hostdev.usb_bus is not None and (
                        attrs["busnum"] != hostdev.usb_bus
                        or attrs["devnum"] != hostdev.usb_device):
                    continue
                if hostdev.usb_vendor is None and hostdev.usb_bus is None:
                    continue
                return [f"{self.dev}/bus/usb/{attrs['busnum']:03d}/{attrs['devnum']:03d}"]
        return None

    def render_node(self) -> str | None:
        """libvirt's virHostGetDRMRenderNode: the first renderD* in /dev/dri."""
        try:
            with os.scandir(f"{self.dev}/dri") as it:
                for entry in it:
                    if entry.name.startswith("renderD"):
                        return f"{self.dev}/dri/{entry.name}"
        except OSError:
            return None
        return None
