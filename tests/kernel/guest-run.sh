#!/bin/sh
# Runs inside the kernel guest (busybox sh, started by the initramfs /init).
# Reads /payload/plan, one tab-separated step a line:
#   file PATH            create a regular file (and its directories), unconfined
#   dir PATH             create a directory
#   sock PATH            a unix socket with a listener behind it (probe L)
#   load VARIANT FILE    apparmor_parser -r the profile /payload/v/VARIANT/etc/apparmor.d/libvirt/FILE
#   probe ID PROFILE OP PATH   aa-exec -p PROFILE -- probe OP PATH
# and writes the results to the second serial port (/dev/ttyS1):
#   "L VARIANT FILE RC SECONDS MESSAGE", "P ID RC OUTPUT", then dmesg between markers.
# Before each probe a "virt-aa-probe ID" line goes to the kernel log, so the
# AppArmor records that follow it belong to that probe.
OUT=/dev/ttyS1
PROBE=/usr/libexec/virt-aa-probe
exec 3>"$OUT"
echo 0 >/proc/sys/kernel/printk_ratelimit
echo "== BEGIN kernel=$(uname -r) apparmor=$(cat /sys/module/apparmor/parameters/enabled 2>&1)" \
     "lsm=$(cat /sys/kernel/security/lsm 2>&1)" >&3
echo "== PARSER $(apparmor_parser --version 2>&1 | head -n 1)" >&3
TAB=$(printf '\t')
while IFS="$TAB" read -r cmd a b c d; do
    case "$cmd" in
    file)
        mkdir -p "$(dirname "$a")"
        printf 'canary\n' >"$a" ;;
    dir)
        mkdir -p "$a" ;;
    sock)
        mkdir -p "$(dirname "$a")"
        "$PROBE" L "$a" >/dev/null 3>&- </dev/null ;;
    load)
        t0=$(cut -d' ' -f1 /proc/uptime)
        msg=$(apparmor_parser -r -I "/payload/v/$a/etc/apparmor.d" -I /etc/apparmor.d \
              "/payload/v/$a/etc/apparmor.d/libvirt/$b" 2>&1 3>&- </dev/null)
        rc=$?
        t1=$(cut -d' ' -f1 /proc/uptime)
        echo "L $a $b $rc $t0 $t1 $(echo "$msg" | tr '\n' ' ')" >&3 ;;
    probe)
        echo "virt-aa-probe $a" >/dev/kmsg
        msg=$(aa-exec -p "$b" -- "$PROBE" "$c" "$d" 2>&1 3>&- </dev/null)
        rc=$?
        echo "P $a $rc $msg" >&3 ;;
    '' | '#'*) ;;
    *)
        echo "X unknown step $cmd" >&3 ;;
    esac
done </payload/plan
echo "virt-aa-probe end" >/dev/kmsg
echo "== LOADED" >&3
cat /sys/kernel/security/apparmor/profiles >&3
echo "== DMESG" >&3
dmesg >&3
echo "== END" >&3
