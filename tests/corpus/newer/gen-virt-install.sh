#!/bin/bash
# Regenerate tests/corpus/newer/vi-SUITE-*.xml: the verbatim `virt-install
# --print-xml` output of each Debian suite's own virtinst (bookworm 4.1,
# trixie 5.0, sid 5.1), run inside that suite's oracle chroot
# (scripts/oracle-chroot.sh) against libvirt's test driver.  virtinst's test
# URI stands in the capabilities of a QEMU/KVM x86_64 host (virtinst/caps.xml,
# virtinst/domcaps.xml: libvirt 9.0's embedded QEMU driver on this host's QEMU
# 7.2, with OVMF firmware and an swtpm emulator advertised) and the suite's
# libvirt version, so each virtinst writes what it writes for a real host.
# UUIDs are fixed (uuid5 of the name); MACs are virtinst's "predictable" ones.
# Run as root:  bash tests/corpus/newer/gen-virt-install.sh [SUITE...]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${VIRT_AA_ORACLE_CACHE:-/var/cache/virt-aa-oracle}
N=/tmp/virt-aa-newer
sh "$HERE/setup-images.sh"

declare -A LIBVER=([bookworm]=9000000 [trixie]=11003000 [sid]=12008000)

# gen SUITE NAME virt-install-options...
gen() {
    local suite=$1 name=$2; shift 2
    local u out
    u=$(python3 -c 'import sys,uuid; print(uuid.uuid5(uuid.NAMESPACE_URL, "virt-aa-newer/" + sys.argv[1]))' "$name")
    out="$HERE/$name.xml"
    local uri="__virtinst_test__test:///default,predictable,fakeuri=qemu:///system"
    uri+=",caps=$N/virtinst/caps.xml,domcaps=$N/virtinst/domcaps.xml,libver=${LIBVER[$suite]}"
    if unshare --mount --propagation private sh -c '
            r=$1; shift
            for d in proc sys dev; do mount --rbind /$d "$r/$d"; done
            mkdir -p "$r/tmp/virt-aa-newer" && mount --rbind /tmp/virt-aa-newer "$r/tmp/virt-aa-newer"
            exec chroot "$r" "$@"' gen "$CACHE/$suite/root" \
            virt-install --connect "$uri" --print-xml --import --noautoconsole \
            --name "$name" --metadata uuid="$u" --memory 2048 --vcpus 2 "$@" > "$out.tmp" \
            2> "$out.err"; then
        mv "$out.tmp" "$out"; rm -f "$out.err"
        echo "ok   $name"
    else
        echo "FAIL $name: $(tail -n 1 "$out.err")" >&2
        rm -f "$out.tmp" "$out.err"
    fi
}

for suite in "${@:-bookworm trixie sid}"; do
    for s in $suite; do
        D="--disk path=$N/images/vi.qcow2,bus=virtio,format=qcow2"
        gen "$s" "vi-$s-q35-uefi" --osinfo linux2022 --machine q35 --boot uefi $D --network none
        gen "$s" "vi-$s-q35-uefi-secure-tpm2" --osinfo linux2022 --machine q35 \
            --boot uefi,firmware.feature0.name=secure-boot,firmware.feature0.enabled=yes \
            --tpm emulator,model=tpm-crb,version=2.0 $D --network none
        gen "$s" "vi-$s-virtiofs" --osinfo linux2022 $D --network none \
            --memorybacking source.type=memfd,access.mode=shared \
            --filesystem source.dir=$N/share,target.dir=share,driver.type=virtiofs
        gen "$s" "vi-$s-passt" --osinfo linux2022 $D --network user,backend.type=passt,model=virtio
        gen "$s" "vi-$s-passt-portforward" --osinfo linux2022 $D \
            --network "user,backend.type=passt,portForward0.proto=tcp,portForward0.range0.start=2222,portForward0.range0.to=22"
        gen "$s" "vi-$s-default-linux" --osinfo linux2022 $D --network none --graphics spice
        gen "$s" "vi-$s-cdrom-install" --osinfo linux2022 $D --network none \
            --disk $N/images/install.iso,device=cdrom
        gen "$s" "vi-$s-watchdog-itco" --osinfo linux2022 --machine q35 $D --network none \
            --watchdog itco,action=reset
        gen "$s" "vi-$s-windows-uefi" --osinfo win11 $D --network none
    done
done
