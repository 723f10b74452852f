#!/bin/bash
# Build (once, cached) a Debian SUITE chroot holding that release's real libvirt
# virt-aa-helper, the oracle the generator is compared with for that libvirt
# version.  Result: /var/cache/virt-aa-oracle/SUITE/{root,ready,version}.
# Idempotent: a ready chroot is only refreshed with --refresh.  Run as root.
set -euo pipefail
SUITE=${1:?usage: oracle-chroot.sh SUITE [--refresh]}
CACHE=${VIRT_AA_ORACLE_CACHE:-/var/cache/virt-aa-oracle}
DIR=$CACHE/$SUITE
ROOT=$DIR/root
HERE=$(cd "$(dirname "$0")" && pwd)
PKGS=(libvirt-daemon libvirt-daemon-system qemu-utils virtinst)

mirror() {  # the host's Debian mirror (deb822 or one-line sources)
    local m
    m=$(grep -rhoE '(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
        /etc/apt/sources.list.d/ 2>/dev/null | awk '{print $2}' | head -1)
    echo "${m:-http://deb.debian.org/debian}"
}

in_root() {  # run a command in the chroot with /proc /sys /dev, in a private mount ns
    unshare -m --propagation private sh -c '
        r=$1; shift
        mount --rbind /proc "$r/proc" && mount --rbind /sys "$r/sys" && mount --rbind /dev "$r/dev"
        exec chroot "$r" "$@"' in_root "$ROOT" "$@"
}

if [ -e "$DIR/ready" ] && [ "${2:-}" != --refresh ]; then
    install -m 755 "$HERE/oracle-run-helper" "$CACHE/run-helper"
    exit 0
fi
mkdir -p "$DIR"
t0=$(date +%s)
if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
    rm -rf "$ROOT"
    debootstrap --variant=minbase "$SUITE" "$ROOT" "$(mirror)" > "$DIR/debootstrap.log" 2>&1 \
        || { echo "oracle-chroot: debootstrap $SUITE failed, see $DIR/debootstrap.log" >&2; exit 1; }
fi
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"
# the archive may be a mirror frozen in time: do not refuse a Release file for its age
APT=(apt-get -o DPkg::Lock::Timeout=900 -o Acquire::Check-Valid-Until=false)
in_root env DEBIAN_FRONTEND=noninteractive "${APT[@]}" -qq update > "$DIR/apt.log" 2>&1 \
    || { echo "oracle-chroot: apt-get update in $SUITE failed, see $DIR/apt.log" >&2; exit 1; }
in_root env DEBIAN_FRONTEND=noninteractive "${APT[@]}" -y -qq \
    install --no-install-recommends "${PKGS[@]}" >> "$DIR/apt.log" 2>&1 \
    || { echo "oracle-chroot: apt-get install in $SUITE failed, see $DIR/apt.log" >&2; exit 1; }
in_root apt-get clean
test -x "$ROOT/usr/lib/libvirt/virt-aa-helper"
in_root dpkg-query -W -f='${Version}\n' libvirt-daemon > "$DIR/package-version"
sed -E 's/^([0-9]+:)?([0-9]+\.[0-9]+\.[0-9]+).*/\2/' "$DIR/package-version" > "$DIR/version"
install -m 755 "$HERE/oracle-run-helper" "$CACHE/run-helper"
touch "$DIR/ready"
echo "oracle-chroot: $SUITE ready, libvirt $(cat "$DIR/version") ($(( $(date +%s) - t0 ))s)"
