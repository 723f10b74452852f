"""virt-aa: manageable AppArmor confinement for libvirt/QEMU guests."""

__version__ = "0.1.0"
