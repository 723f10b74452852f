"""libvirt's own test domains, fetched from Debian's source package at test time.

Nobody on this project wrote them, which is the point: ~1,100 domains per
version that libvirt's developers wrote to exercise their parser.  They are
not copied into the repository: ``fetch`` adds a ``deb-src`` line for the
suite in a private apt configuration (its own sources file and lists under
the cache; the system's apt is not touched), runs ``apt-get source
--print-uris libvirt=VERSION`` (pinned) and fetches the orig tarball it names,
checked against the signed index, and extracts only the input XMLs
of the upstream tarball:

* ``tests/qemuxml2argvdata/NAME.xml`` (libvirt < 10: every .xml is an input);
* ``tests/qemuxmlconfdata/NAME.xml`` minus ``NAME.ARCH-VERSION.xml`` outputs.

Cached in ``/var/cache/virt-aa-oracle/src/libvirt-VERSION/inputs``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("VIRT_AA_ORACLE_CACHE", "/var/cache/virt-aa-oracle")) / "src"
MIRROR = os.environ.get("VIRT_AA_DEBIAN_MIRROR", "http://deb.debian.org/debian")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# libvirt version -> (Debian suite, pinned source package version)
PINNED = {
    "9.0.0": ("bookworm", "9.0.0-4+deb12u2"),
    "11.3.0": ("trixie", "11.3.0-3+deb13u3"),
}
# 12.8.0 ("sid", "12.8.0-1"): its Sources entry is signed, but this machine's
# mirror does not serve the tarball (404); add it here once it does.
_INPUT_DIRS = ("tests/qemuxml2argvdata/", "tests/qemuxmlconfdata/")
# qemuxmlconfdata outputs: NAME.x86_64-latest.xml, NAME.x86_64-latest+amdsev.xml,
# NAME.aarch64-9.1.0.abi-update.xml ...
_OUTPUT = re.compile(r"\.[a-z0-9_]+-(latest|\d+\.\d+\.\d+)(\+[a-z0-9_]+)?(\.[a-z0-9_-]+)?\.xml$")


def _apt(suite: str) -> list[str]:
    base = CACHE / "apt" / suite
    return ["-o", f"Dir::Etc::SourceList={base}/sources.list",
            "-o", "Dir::Etc::SourceParts=/nonexistent",
            "-o", f"Dir::State::Lists={base}/lists",
            "-o", f"Dir::Cache={base}/cache",
            # the mirror may be frozen in time: do not refuse a Release for its age
            "-o", "Acquire::Check-Valid-Until=false"]


def _print_uris(suite: str, version: str) -> list[tuple[str, str, int, str]]:
    """(url, file name, size, sha256) of libvirt=VERSION's source files, from
    the signed Sources index of SUITE (apt-get update verifies the Release)."""
    base = CACHE / "apt" / suite
    (base / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (base / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (base / "sources.list").write_text(
        f"deb-src [signed-by={KEYRING}] {MIRROR} {suite} main\n")
    with tempfile.TemporaryDirectory() as empty:  # print-uris skips files already in cwd
        out = ""
        for argv in (["apt-get", "-qq", *_apt(suite), "update"],
                     ["apt-get", "-qq", *_apt(suite), "source", "--print-uris",
                      f"libvirt={version}"]):
            proc = subprocess.run(argv, cwd=empty, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(argv[:2])} {argv[-2]} {argv[-1]} failed: "
                                   f"{proc.stderr.strip()[-500:]}")
            out = proc.stdout
    files = []
    for line in out.splitlines():
        m = re.match(r"^'([^']+)' (\S+) (\d+) SHA256:([0-9a-f]{64})$", line)
        if m:
            files.append((m.group(1), m.group(2), int(m.group(3)), m.group(4)))
    return files


def download(suite: str, version: str) -> Path:
    """The upstream tarball of libvirt=VERSION from SUITE's deb-src (cached).

    Only the orig tarball is fetched, checked against the size and sha256 of
    the signed index (what ``apt-get source --download-only`` does, minus the
    .dsc and Debian patches, which the tests do not need and which this
    machine's mirror does not always hold)."""
    upstream = version.split("-")[0].split(":")[-1]
    dl = CACHE / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    done = dl / f"libvirt_{upstream}.verified"
    if done.exists():
        return dl / done.read_text().strip()
    tarballs = [f for f in _print_uris(suite, version)
                if ".orig.tar." in f[1] and not f[1].endswith(".asc")]
    if not tarballs:
        raise RuntimeError(f"libvirt={version} in {suite}: no orig tarball in the index")
    url, name, size, digest = tarballs[0]
    part = dl / (name + ".partial")
    import hashlib
    import urllib.request
    with urllib.request.urlopen(url, timeout=300) as resp, open(part, "wb") as f:
        shutil.copyfileobj(resp, f)
    data_hash = hashlib.sha256(part.read_bytes()).hexdigest()
    if part.stat().st_size != size or data_hash != digest:
        part.unlink()
        raise RuntimeError(f"{url}: size or sha256 differs from the signed index")
    os.replace(part, dl / name)
    done.write_text(name + "\n")
    return dl / name


def is_input(member: str) -> bool:
    """A test input XML (not an expected output) inside the source tree."""
    parts = member.split("/", 1)
    if len(parts) != 2 or not parts[1].startswith(_INPUT_DIRS):
        return False
    rel = parts[1]
    name = rel.rsplit("/", 1)[1]
    if rel.count("/") != 2 or not name.endswith(".xml"):
        return False
    return not (rel.startswith("tests/qemuxmlconfdata/") and _OUTPUT.search(name))


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def source_for(libvirt: str) -> str:
    """The pinned libvirt whose test inputs stand for ``libvirt``: its own, else
    the newest older one (12.8's source is not reachable here: 11.3's inputs)."""
    older = [v for v in PINNED if _key(v) <= _key(libvirt)]
    if not older:
        raise KeyError(f"no pinned Debian source for libvirt {libvirt} or older")
    return max(older, key=_key)


def inputs(libvirt: str) -> Path:
    """Directory of the test input XMLs for libvirt ``libvirt`` (fetched once)."""
    suite, version = PINNED[source_for(libvirt)]
    dest = CACHE / f"libvirt-{version}" / "inputs"
    if (dest / ".complete").exists():
        return dest
    tarball = download(suite, version)
    tmp = Path(tempfile.mkdtemp(prefix="inputs-", dir=CACHE))
    with tarfile.open(tarball) as tar:
        for member in tar:
            if member.isfile() and is_input(member.name):
                src = tar.extractfile(member)
                assert src is not None
                (tmp / member.name.rsplit("/", 1)[1]).write_bytes(src.read())
    (tmp / ".complete").write_text(f"{tarball.name}\n")
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    return dest


def main(argv: list[str]) -> int:
    """Fetch the inputs of the given libvirt versions (default: all pinned)."""
    for version in argv or sorted(PINNED):
        path = inputs(version)
        print(f"libvirt {version}: {len(list(path.glob('*.xml')))} inputs in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
