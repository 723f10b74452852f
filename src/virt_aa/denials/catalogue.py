"""Known QEMU-guest denials and their proper fixes, each with its source.

Small on purpose: every entry is a denial seen in the wild (most are in
``tests/data/denials-real-samples.txt``) where the stock rules should
arguably have covered a legitimate access, or where the fix is not the
obvious "allow it".
"""

from __future__ import annotations


class Known:
    __slots__ = ("fix", "operation", "pattern", "source", "what")

    def __init__(self, pattern: str, what: str, fix: str, source: str,
                 operation: str | None = None) -> None:
        self.pattern = pattern      # AppArmor pattern matched against the denied resource
        self.what = what
        self.fix = fix
        self.source = source
        self.operation = operation


KNOWN = (
    Known("/sys/devices/**/block/*/queue/max_segments",
          "QEMU reads the queue limits of a passed-through block device (SCSI lun / "
          "virtio-scsi passthrough); older libvirt abstractions lack the rule",
          "per-VM: virt-aa allow DOMAIN '/sys/devices/**/block/*/queue/max_segments r,' "
          "(read-only sysfs attribute; newer libvirt abstractions include it)",
          "https://github.com/cockpit-project/cockpit/issues/8016"),
    Known("/{dev,run}/shm/lttng-ust-*",
          "a QEMU built with LTTng tracing probes for an LTTng session daemon",
          "harmless noise: silence it with a per-VM "
          "'deny /{dev,run}/shm/lttng-ust-* rw,' (suggest offers deny-quietly), or use a "
          "QEMU without LTTng",
          "https://github.com/bloomberg/chef-bcpc/issues/743"),
    Known("/proc/sys/dev/i915/perf_stream_paranoid",
          "Mesa's Intel driver reads it when the VM uses a GL display (virgl, "
          "egl-headless, SPICE GL)",
          "per-VM: virt-aa allow DOMAIN '/proc/sys/dev/i915/perf_stream_paranoid r,'",
          "https://github.com/bryansteiner/gpu-passthrough-tutorial/issues/28"),
    Known("/usr/local/bin/qemu-system-*",
          "a self-built QEMU outside the distribution's paths: abstractions/libvirt-qemu "
          "only lets the guest execute /usr/bin/qemu*",
          "per-VM: virt-aa allow DOMAIN '/usr/local/bin/qemu-system-x86_64 rmix,' (or "
          "install QEMU from the distribution)",
          "https://github.com/KVM-VMI/kvm-vmi/issues/69"),
    Known("/usr/libexec/qemu-kvm",
          "the RHEL/Fedora emulator path in a domain XML used on Debian/Ubuntu: not in "
          "libvirt's profiles there",
          "point <emulator> at /usr/bin/qemu-system-x86_64 on this host, rather than "
          "allowing another binary",
          "https://github.com/kubevirt/kubevirt/issues/7771"),
    Known("/var/lib/libvirt/swtpm/**",
          "swtpm's state directory: swtpm runs under its own profile; a denial in the "
          "guest profile means the TPM <backend> version in the XML does not match the "
          "state directory",
          "set the TPM version in the domain XML to the one its state was created with",
          "https://github.com/stefanberger/swtpm/issues/770"),
)
