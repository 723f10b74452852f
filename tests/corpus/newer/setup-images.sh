#!/bin/sh
# Build /tmp/virt-aa-newer: the files the "newer" corpus domains point at
# (images, a qcow2 chain with external data files, ACPI tables, firmware and
# varstore files, pmem/pstore backing files, a share).  Wiped and rebuilt on
# every run.  Needs qemu-img (qemu-utils).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
N=/tmp/virt-aa-newer
rm -rf "$N"
mkdir -p "$N/images" "$N/chain" "$N/acpi" "$N/fw" "$N/nvram" "$N/share" "$N/mem" "$N/virtinst"
cd "$N"
q() { qemu-img "$@" >/dev/null; }
q create -f qcow2 images/vi.qcow2 16M
q create -f raw images/install.iso 1M
q create -f raw images/readonly.raw 1M
q create -f raw images/cdrom.iso 1M
# a chain whose layers each keep their data in an external data file
q create -f qcow2 -o data_file="$N/chain/base.data" chain/base.qcow2 16M
q create -f qcow2 -o data_file="$N/chain/top.data" -b "$N/chain/base.qcow2" -F qcow2 chain/top.qcow2
q create -f qcow2 -b "$N/chain/base.qcow2" -F qcow2 chain/ro-overlay.qcow2
for t in raw1 raw2 rawset slic msdm; do printf 'ACPI' > "acpi/$t.dat"; done
for f in code.fd vars.fd shim.efi; do : > "fw/$f"; done
: > nvram/varstore.json
: > mem/pmem.img
: > mem/pstore.img
cp "$HERE/virtinst/caps.xml" "$HERE/virtinst/domcaps.xml" virtinst/
