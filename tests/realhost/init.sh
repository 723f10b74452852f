#!/bin/busybox sh
# /init of the real-host guest's initramfs (tests/realhost/rhguest.py puts it
# there as /realhost-init, booted with rdinit=/realhost-init): load the 9p and
# overlay modules from Debian's kernel package, mount the host's / (virtio-9p,
# read-only) under an overlay with a tmpfs upper layer, and switch_root to it,
# handing over to guest-init.sh on the host's own filesystem.
/bin/busybox --install -s /bin
export PATH=/bin
fail() {
    echo "realhost-init: $*" >/dev/console
    poweroff -f
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
. /realhost.env
for m in $(cat /lib/modules/realhost/order); do
    insmod "/lib/modules/realhost/$m.ko" || fail "insmod $m failed"
done
mkdir -p /lower /upper /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower \
    || fail "cannot mount the host's / (9p tag hostroot)"
mount -t tmpfs -o mode=0755 tmpfs /upper
mkdir -p /upper/data /upper/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /newroot \
    || fail "cannot mount the overlay"
[ -f "/newroot$RH_INIT" ] || fail "$RH_INIT is not on the host's /"
# the kernel proof's static probe (tests/kernel/probe.c), for aa-exec -p
cp /usr/libexec/virt-aa-probe /newroot/usr/libexec/virt-aa-probe || fail "no probe"
mount --move /dev /newroot/dev
umount /sys
umount /proc
exec switch_root /newroot /bin/sh "$RH_INIT" "$RH_PYTHON" "$RH_SCENARIO"
