#!/bin/bash
# Set up a fresh Debian 12 / Ubuntu host for virt-aa: the system packages it
# drives (apparmor_parser, libvirt and its real virt-aa-helper as the oracle,
# qemu-img), then a virtualenv from the system Python that sees the
# Debian-only bindings (python3-libvirt, python3-apparmor), with virt-aa in it.
# Idempotent: packages already installed are not fetched again.  Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc and python3-dev build the one C piece (the denial scanner's counter, setup.py)
PKGS=(apparmor apparmor-utils libvirt-daemon-system libvirt-clients qemu-utils qemu-system-x86
      python3-venv python3-libvirt python3-apparmor python3-libapparmor gcc python3-dev
      systemd)
# the Debian package (debian/, tests/test_package.py): its Build-Depends, the
# build driver and checks (dpkg-buildpackage, dch, lintian)
PKGS+=(build-essential dpkg-dev devscripts lintian fakeroot debhelper dh-python pybuild-plugin-pyproject
       python3-all-dev python3-setuptools)

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing packages ${missing[*]}; run as root" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # no recommends: they would add OVMF firmware, which changes what the
    # real helper resolves (the corpus was recorded without it)
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# debian/control is the reference for the build dependencies: the Debian way
# (apt-get build-dep ./) if anything in it is still missing
if ! dpkg-checkbuilddeps >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 build-dep -y -qq ./ \
        >/dev/null
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import libvirt' 2>/dev/null; then
    rm -rf .venv
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
# bytecode once (an editable install writes none, nor does PYTHONDONTWRITEBYTECODE=1):
# every CLI run would compile its modules again, as an installed package never does
.venv/bin/python -m compileall -q src >/dev/null
echo "setup: ready (.venv/bin/virt-aa, .venv/bin/virt-aa-helper)"
