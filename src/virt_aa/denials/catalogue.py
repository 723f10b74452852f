"""Known denials of the libvirt stack and their proper fixes, each with its public source.

Small on purpose: every entry is a denial seen in the wild (tests/data holds the real
records the tests use) where the stock rules should arguably have covered a legitimate
access, or where the fix is not the obvious "allow it".  `fix` is prose (never a
command: the caller prints commands that run as printed); `rule` is the per-VM rule to
propose when allowing is the fix.  `program` is the program whose profile denies
(programs.py); `NOT_APPARMOR` lists failures that look like denials but are not.
"""

from __future__ import annotations


class Known:
    __slots__ = ("fix", "operation", "pattern", "program", "rule", "source", "what")

    def __init__(self, pattern: str, what: str, fix: str, source: str,
                 operation: str | None = None, program: str = "vm",
                 rule: str | None = None) -> None:
        self.pattern = pattern      # AppArmor pattern matched against the denied resource
        self.what = what
        self.fix = fix
        self.source = source
        self.operation = operation
        self.program = program
        self.rule = rule


KNOWN = (
    Known("/sys/devices/**/block/*/queue/max_segments",
          "QEMU reads the queue limits of a passed-through block device (SCSI lun / "
          "virtio-scsi passthrough); older libvirt abstractions lack the rule",
          "a read-only sysfs attribute, safe to allow for this VM (newer libvirt "
          "abstractions include it)",
          "https://github.com/cockpit-project/cockpit/issues/8016",
          rule='"/sys/devices/**/block/*/queue/max_segments" r,'),
    Known("/{dev,run}/shm/lttng-ust-*",
          "a QEMU built with LTTng tracing probes for an LTTng session daemon",
          "harmless noise: silence it with a quiet deny rule (suggest offers deny-quietly), "
          "or use a QEMU without LTTng",
          "https://github.com/bloomberg/chef-bcpc/issues/743",
          rule='deny "/{dev,run}/shm/lttng-ust-*" rw,'),
    Known("/proc/sys/dev/i915/perf_stream_paranoid",
          "Mesa's Intel driver reads it when the VM uses a GL display (virgl, "
          "egl-headless, SPICE GL)",
          "a read-only sysctl, safe to allow for this VM",
          "https://github.com/bryansteiner/gpu-passthrough-tutorial/issues/28",
          rule='"/proc/sys/dev/i915/perf_stream_paranoid" r,'),
    Known("/usr/local/bin/qemu-system-*",
          "a self-built QEMU outside the distribution's paths: abstractions/libvirt-qemu "
          "only lets the guest execute /usr/bin/qemu*",
          "install QEMU from the distribution, or point <emulator> at it (a binary in "
          "/usr/local is on the restricted list: only `allow --force`, after review, adds "
          "it)",
          "https://github.com/KVM-VMI/kvm-vmi/issues/69", operation="exec"),
    Known("/usr/libexec/qemu-kvm",
          "the RHEL/Fedora emulator path in a domain XML used on Debian/Ubuntu: not in "
          "libvirt's profiles there",
          "point <emulator> at /usr/bin/qemu-system-x86_64 on this host rather than "
          "allowing another binary",
          "https://github.com/kubevirt/kubevirt/issues/7771"),
    Known("/usr/libexec/qemu-kvm",
          "libvirtd (rpc-worker) starts the RHEL/Fedora emulator path, which its profile "
          "on Debian/Ubuntu does not name",
          "point <emulator> at /usr/bin/qemu-system-x86_64 on this host",
          "https://github.com/kubevirt/kubevirt/issues/7463", program="daemon"),
    Known("/var/lib/libvirt/swtpm/**",
          "swtpm's state directory reached under the VM's profile: swtpm ran without a "
          "profile of its own (built from source), or the TPM <backend> version in the XML "
          "does not match the state directory",
          "install swtpm from the distribution (it brings its own profile) and set the TPM "
          "version in the domain XML to the one its state was created with",
          "https://github.com/stefanberger/swtpm/issues/484"),
    Known("/var/lib/libvirt/swtpm/**",
          "swtpm's own profile refuses its lock or pid file in the state directory "
          "(files not owned by the swtpm user)",
          "update swtpm (its profile allows these since the fix below), or add the rule "
          "to swtpm's profile",
          "https://github.com/stefanberger/swtpm/pull/868", program="swtpm"),
    Known("/run/libvirt/qemu/swtpm/*",
          "swtpm's own profile refuses the pid file or socket libvirt asks it to write",
          "update swtpm's AppArmor profile (Ubuntu bug 1989100), or add the rule to "
          "swtpm's profile",
          "https://github.com/cockpit-project/bots/issues/3845", program="swtpm"),
    Known("sys_admin",
          "swtpm asks for CAP_SYS_ADMIN (vtpm_proxy); its first profile lacked it",
          "update swtpm, whose profile grants it since the fix below",
          "https://github.com/stefanberger/swtpm/pull/868", operation="capable",
          program="swtpm"),
    Known("/dev/tpm[0-9]*",
          "a host TPM: only a domain with <tpm><backend type='passthrough'> may use it, "
          "and its generated rules name the device (and its cancel file)",
          "give the VM the TPM through <backend type='passthrough'><device path=.../> "
          "(or an emulated TPM), not a hand-written rule",
          "https://gitlab.com/libvirt/libvirt/-/blob/master/src/security/virt-aa-helper.c"),
    Known("/run/libvirt/qemu/passt/*",
          "passt's own profile refuses the socket or pid file libvirt names for it "
          "(ID-NAME-netN.socket)",
          "update passt (newer profiles allow libvirt's directory), or add the rule to "
          "passt's profile",
          "https://github.com/bootc-dev/bink/issues/118", program="passt"),
    Known("/proc/sys/net/ipv4/ip_local_port_range",
          "passt reads the local port range; its profile in some releases lacks it",
          "update passt, or add the read rule to passt's profile",
          "https://github.com/bootc-dev/bink/issues/118", program="passt"),
    Known("/run/libvirt/qemu/*virtiofsd*",
          "virtiofsd reaching the socket or pid file libvirt made for it under a profile "
          "that does not name it",
          "check that the <filesystem> uses <driver type='virtiofs'> and that virtiofsd is "
          "the distribution's; a shared directory belongs in the domain XML",
          "https://github.com/kubevirt/kubevirt/issues/4290", program="virtiofsd"),
)

# failures that look like denials in a VM's start log but are not AppArmor at all
NOT_APPARMOR = (
    ("unable to map backing store for guest RAM: Cannot allocate memory",
     "QEMU could not get the guest's memory: with <memoryBacking><hugepages/>, the host's "
     "hugepage pool is too small (or on the wrong NUMA node); not an AppArmor denial",
     "reserve enough hugepages (vm.nr_hugepages, or hugepages= at boot) for the guest's "
     "memory, or drop <hugepages/>",
     "https://github.com/bryansteiner/gpu-passthrough-tutorial/issues/33"),
)
