#!/bin/sh
# PID 1 of the real-host guest, on the host's own root filesystem (9p +
# overlay, see init.sh): mount what a booted Debian has (no systemd), run the
# scenario driver with the project's Python, keep the kernel log, power off.
# Arguments: PYTHON SCENARIO.  Results go to the 9p share tagged "out",
# mounted at /run/virt-aa-out.
PY=$1
SCENARIO=$2
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t securityfs securityfs /sys/kernel/security
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=000 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
# /tmp stays the overlay's (writes go to the tmpfs layer): a checkout or a
# virtualenv under the host's /tmp must stay visible
OUT=/run/virt-aa-out
mkdir -p "$OUT"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out "$OUT"
hostname virt-aa-realhost
# every AppArmor record reaches the kernel log (no auditd here): no printk limit
echo 0 >/proc/sys/kernel/printk_ratelimit
echo "virt-aa-realhost: scenario start" >/dev/kmsg
"$PY" "$SCENARIO" --out "$OUT" >"$OUT/scenario.log" 2>&1
echo "rc=$?" >"$OUT/scenario.rc"
dmesg >"$OUT/kern.log"
sync
# power off (no systemd here); if that fails, ending PID 1 panics and
# panic=-1 with qemu -no-reboot stops the guest as well
"$PY" -c 'import ctypes, os; os.sync(); ctypes.CDLL(None).reboot(0x4321FEDC)'
