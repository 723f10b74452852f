#!/bin/bash
# Record what a libvirt version's real virt-aa-helper prints over the project's
# corpora, into tests/oracle/<libvirt version>/<corpus>.json (committed).
#
#   scripts/record-oracle.sh SUITE [CORPUS...]   bookworm (9.0), trixie (11.3), sid (12.x):
#                                                builds that suite's chroot once (cached in
#                                                /var/cache/virt-aa-oracle), then records
#   scripts/record-oracle.sh host [CORPUS...]    this machine's /usr/lib/libvirt/virt-aa-helper
#
# CORPUS: domains, newer, libvirt-tests (default: all three).  Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCE=${1:?usage: scripts/record-oracle.sh SUITE|host [CORPUS...]}
shift
t0=$(date +%s)
if [ "$SOURCE" != host ]; then
    bash scripts/oracle-chroot.sh "$SOURCE"
fi
python3 tests/oracle.py record "$SOURCE" "$@"
echo "record-oracle: $SOURCE done in $(( $(date +%s) - t0 ))s"
