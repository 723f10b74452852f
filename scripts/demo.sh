#!/bin/bash
# The demo: virt-aa-helper on the example domains of libvirt's test:/// driver
# (examples/node.xml), into a --root sandbox; every profile compiled by the
# real apparmor_parser; the rules shown with the XML element each came from.
# Touches no host file: images under /tmp/virt-aa-demo, profiles in a sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
export PATH="$PWD/.venv/bin:$PATH"

D=/tmp/virt-aa-demo
rm -rf "$D"
mkdir -p "$D"/{images,share/www,logs,sockets,firmware,nvram}
qemu-img create -q -f qcow2 "$D/images/base.qcow2" 64M
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$D/images/web01.qcow2"
qemu-img create -q -f raw "$D/images/install.iso" 1M
qemu-img create -q -f raw "$D/images/db01-data.raw" 1M
qemu-img create -q -f raw "$D/images/other-vm.raw" 1M
truncate -s 2M "$D/firmware/OVMF_CODE.fd"
ROOT="$D/root"
virt-aa sandbox "$ROOT" >/dev/null
URI="test://$PWD/examples/node.xml"

echo "== domains of $URI"
virsh -c "$URI" list --all --name | sed '/^$/d; s/^/   /'
for name in web01 db01 crafted; do
    uuid=$(virsh -c "$URI" domuuid "$name" | sed -n 1p)
    echo
    echo "== $name: virt-aa-helper -c -u libvirt-$uuid --root $ROOT"
    virsh -c "$URI" dumpxml --inactive "$name" |
        virt-aa-helper --root "$ROOT" -c -u "libvirt-$uuid" 2>&1 | sed 's/^/   /'
    P="$ROOT/etc/apparmor.d/libvirt/libvirt-$uuid"
    apparmor_parser -Q -T -K -I "$ROOT/etc/apparmor.d" -I /etc/apparmor.d \
        --features-file /usr/share/apparmor-features/features "$P" \
        && echo "   apparmor_parser: $P compiles"
    echo "-- virt-aa show -c $URI $name"
    virt-aa -c "$URI" show "$name" | sed 's/^/   /'
done
echo
echo "== the crafted domain, stock libvirt 9.0 helper (dry run) for comparison:"
virsh -c "$URI" dumpxml --inactive crafted |
    /usr/lib/libvirt/virt-aa-helper -d -r -u libvirt-9b3e6a1f-7c2d-4e58-b0a9-4d6f8e1c2a77 2>&1 |
    grep 'images' | sed 's/^/   stock:   /'
grep images "$ROOT/etc/apparmor.d/libvirt/libvirt-9b3e6a1f-7c2d-4e58-b0a9-4d6f8e1c2a77.files" |
    sed 's/^/   virt-aa: /'
echo "   (stock's rule is a glob over every image, other-vm.raw included; ours is that one literal file)"
echo
echo "== per-VM rules and mode for web01 (stored by UUID, checked by apparmor_parser)"
virt-aa --root "$ROOT" -c "$URI" allow web01 '/srv/web-data/** rwk,' --comment "NFS data" | sed 's/^/   /'
virt-aa --root "$ROOT" -c "$URI" complain web01 --comment "debugging" | sed 's/^/   /'
P="$ROOT/etc/apparmor.d/libvirt/libvirt-6f1c2b8e-0d4a-4c39-9a57-3b1f0e2d4c11"
grep -E '^profile|include' "$P" | sed 's/^/   P: /'
echo "== virt-aa status"
virt-aa --root "$ROOT" -c "$URI" status | sed 's/^/   /'
echo "== virt-aa history web01"
virt-aa --root "$ROOT" -c "$URI" history web01 | sed 's/^/   /'
echo
echo "demo done: sandbox in $ROOT"
