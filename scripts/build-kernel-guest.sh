#!/bin/bash
# Build (or find in the cache) the kernel guest of tests/test_kernel_apparmor.py:
# Debian's distribution kernel (linux-image-amd64, AppArmor built in) and a
# small initramfs made of Debian packages only: busybox-static, apparmor_parser
# and aa-exec from the apparmor package, the libc6 they link against, and the
# static probe (tests/kernel/probe.c, compiled here with gcc -static).
# For the real-host guest (tests/realhost/) it also keeps, from the same kernel
# package, the modules that mount the host's / over virtio-9p under an overlay
# (modules.cpio.gz: /lib/modules/realhost/*.ko and their load order).
#
# The artefacts are cached under $VIRT_AA_KGUEST_CACHE (default
# /var/cache/virt-aa-kernel-guest)/<key>/, the key being a hash of the package
# versions, this script and the probe source; a cached build is reused as-is.
# Prints the cache directory (vmlinuz, base.cpio.gz, modules.cpio.gz,
# versions.txt) on stdout,
# progress on stderr.  Works on a fresh Debian 12 machine as root: the tools
# it needs (qemu-system-x86, gcc, libc6-dev, cpio) are apt-get installed.
#
#   scripts/build-kernel-guest.sh            build if needed, print the dir
#   scripts/build-kernel-guest.sh --key      print the key only (no build)
#   scripts/build-kernel-guest.sh --rebuild  ignore the cache
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
PROBE_SRC="$HERE/tests/kernel/probe.c"
CACHE="${VIRT_AA_KGUEST_CACHE:-/var/cache/virt-aa-kernel-guest}"
export DEBIAN_FRONTEND=noninteractive
log() { echo "build-kernel-guest: $*" >&2; }

mode=build
case "${1:-}" in
    --key) mode=key ;;
    --rebuild) mode=rebuild ;;
    "") ;;
    *) echo "usage: $0 [--key|--rebuild]" >&2; exit 64 ;;
esac

updated=0
apt_update() {
    if [ "$updated" = 0 ]; then
        log "apt-get update"
        apt-get -o DPkg::Lock::Timeout=900 update -qq >&2
        updated=1
    fi
}

candidate() {  # the version apt would fetch for $1 (empty if unknown)
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}' | sed 's/(none)//'
}

# The kernel package behind the metapackage (linux-image-6.1.0-N-amd64).
kernel_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}

if [ -z "$(candidate linux-image-amd64)" ] || [ -z "$(candidate busybox-static)" ]; then
    apt_update
fi
KPKG="$(kernel_pkg)"
[ -n "$KPKG" ] || { log "cannot resolve linux-image-amd64's kernel package"; exit 1; }
PKGS=("$KPKG" apparmor busybox-static libc6)
versions=""
for p in "${PKGS[@]}"; do
    v="$(candidate "$p")"
    [ -n "$v" ] || { log "no candidate version for $p"; exit 1; }
    versions+="$p=$v"$'\n'
done
key="$( { printf '%s' "$versions"; sha256sum "$0" "$PROBE_SRC" | awk '{print $1}'; } \
        | sha256sum | cut -c1-16)"
if [ "$mode" = key ]; then
    echo "$key"
    exit 0
fi
OUT="$CACHE/$key"
if [ "$mode" = build ] && [ -f "$OUT/versions.txt" ] && [ -f "$OUT/vmlinuz" ] \
        && [ -f "$OUT/base.cpio.gz" ] && [ -f "$OUT/modules.cpio.gz" ]; then
    log "cached: $OUT"
    echo "$OUT"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    log "building needs root (apt-get); run as root once to fill $CACHE"
    exit 1
fi

# Host tools: the probe compiler, cpio, and qemu for the test that boots it.
need=()
command -v gcc >/dev/null || need+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
command -v cpio >/dev/null || need+=(cpio)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
if [ "${#need[@]}" -gt 0 ]; then
    apt_update
    log "apt-get install ${need[*]}"
    apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${need[@]}" >&2
fi

mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/.build-$key.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
log "downloading ${PKGS[*]}"
if ! apt-get download -q "${PKGS[@]}" >&2; then
    apt_update
    apt-get download -q "${PKGS[@]}" >&2
fi
mkdir x
for deb in ./*.deb; do
    dpkg-deb -x "$deb" x
done

R="$WORK/root"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,usr/libexec,lib64,lib/x86_64-linux-gnu,etc/apparmor,proc,sys,dev,tmp,run,root,payload}
# kernel
cp x/boot/vmlinuz-* "$WORK/vmlinuz"
# busybox (applet links are made by /init at boot)
cp x/bin/busybox "$R/bin/busybox"
# apparmor_parser, aa-exec and the libc they link against (libc6's own files)
cp x/sbin/apparmor_parser "$R/sbin/"
cp x/usr/bin/aa-exec "$R/usr/bin/"
# parser.conf pins the policy features to Debian's feature file: ship both
cp x/etc/apparmor/parser.conf "$R/etc/apparmor/"
mkdir -p "$R/usr/share/apparmor-features"
cp x/usr/share/apparmor-features/features "$R/usr/share/apparmor-features/"
for lib in $(LD_LIBRARY_PATH="$WORK/x/lib/x86_64-linux-gnu" ldd x/sbin/apparmor_parser x/usr/bin/aa-exec \
             | awk '/=>/ {print $3}' | sort -u); do
    base="$(basename "$lib")"
    if [ -e "x/lib/x86_64-linux-gnu/$base" ]; then
        cp -L "x/lib/x86_64-linux-gnu/$base" "$R/lib/x86_64-linux-gnu/"
    else
        log "library $base not in the downloaded packages"; exit 1
    fi
done
cp -L x/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$R/lib/x86_64-linux-gnu/"
ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$R/lib64/ld-linux-x86-64.so.2"
# the probe
gcc -static -O2 -Wall -o "$R/usr/libexec/virt-aa-probe" "$PROBE_SRC"
# users for the canaries, and /init
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:$6$canary$canary:19000:0:99999:7:::\n' >"$R/etc/shadow"
chmod 640 "$R/etc/shadow"
printf 'root:x:0:\n' >"$R/etc/group"
cat >"$R/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t securityfs securityfs /sys/kernel/security
mount -t tmpfs tmpfs /run
if [ -f /payload/run.sh ]; then
    sh /payload/run.sh
else
    echo "virt-aa kernel guest: no /payload/run.sh"
fi
sync
poweroff -f
EOF
chmod 755 "$R/init"
(cd "$R" && find . -print0 | cpio --null -o -H newc --owner 0:0 --quiet) | gzip -6 >"$WORK/base.cpio.gz"

# The real-host guest's modules: 9p over virtio and overlayfs, with what they
# depend on (each module's own "depends=" in its .modinfo), dependencies first.
M="$WORK/mods/lib/modules/realhost"
mkdir -p "$M"
kmods="$(echo x/lib/modules/*/kernel)"
declare -A seen=()
order=()
add_module() {
    local name="$1" ko dep
    [ -n "${seen[$name]:-}" ] && return 0
    seen[$name]=1
    ko="$(find "$kmods" \( -name "$name.ko" -o -name "$name.ko.xz" -o -name "${name//_/-}.ko" \
           -o -name "${name//_/-}.ko.xz" \) -print -quit)"
    [ -n "$ko" ] || { log "kernel module $name not in $KPKG"; exit 1; }
    case "$ko" in
        *.xz) xz -dc "$ko" >"$M/$name.ko" ;;
        *) cp "$ko" "$M/$name.ko" ;;
    esac
    for dep in $(grep -a -o 'depends=[a-z0-9_,-]*' "$M/$name.ko" | head -n 1 | cut -d= -f2 | tr , ' '); do
        add_module "$dep"
    done
    order+=("$name")
}
for mod in virtio_pci 9pnet_virtio 9p overlay; do
    add_module "$mod"
done
printf '%s\n' "${order[@]}" >"$M/order"
log "realhost modules: ${order[*]}"
(cd "$WORK/mods" && find . -print0 | cpio --null -o -H newc --owner 0:0 --quiet) | gzip -6 >"$WORK/modules.cpio.gz"
printf '%s' "$versions" >"$WORK/versions.txt"
echo "probe.c=$(sha256sum "$PROBE_SRC" | cut -c1-16)" >>"$WORK/versions.txt"

STAGE="$CACHE/.stage-$key.$$"
mkdir "$STAGE"
mv "$WORK/vmlinuz" "$WORK/base.cpio.gz" "$WORK/modules.cpio.gz" "$WORK/versions.txt" "$STAGE/"
rm -rf "$OUT"
mv "$STAGE" "$OUT"
log "built $OUT ($(du -sh "$OUT" | cut -f1))"
echo "$OUT"
