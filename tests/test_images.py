"""Backing-chain discovery (virt_aa.generate.images) against real images and the real helper.

Images come from qemu-img where it can make them; headers it refuses to write
(hostile names, odd extensions) are built by ``qcow2_header``/``qed_header``.
Where /usr/lib/libvirt/virt-aa-helper is installed, chains are also compared with
the ``rk`` rules it prints, which is the definition of "stock semantics" here.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest

from virt_aa.generate import images
from virt_aa.generate.images import (
    HEADER_BYTES,
    BackingLink,
    ChainError,
    backing_chain,
    backing_of,
    probe_format,
    read_header,
)

HELPER = "/usr/lib/libvirt/virt-aa-helper"
QEMU_IMG = shutil.which("qemu-img")

# CI installs both (scripts/setup.sh): a missing one fails the tests, never skips them.


# ----------------------------------------------------------------------------- helpers


def qemu_img(*args: str | Path) -> None:
    assert QEMU_IMG is not None
    subprocess.run([QEMU_IMG, *map(str, args)], check=True, capture_output=True)


def make(path: Path, fmt: str = "qcow2", backing: str | None = None,
         backing_fmt: str | None = "qcow2", *opts: str) -> Path:
    """qemu-img create; -u so that missing or looping backings are accepted."""
    args: list[str | Path] = ["create", "-q", "-f", fmt, *opts]
    if backing is not None:
        args += ["-u", "-b", backing]
        if backing_fmt is not None:
            args += ["-F", backing_fmt]
    qemu_img(*args, path, "1M")
    return path


def qcow2_header(backing: bytes = b"", fmt: bytes | None = None, version: int = 3,
                 extensions: bytes = b"", pad: int = 4096) -> bytes:
    """A qcow2 header as qemu writes it (extensions padded to 8, then the name)."""
    hdr_len = 72 if version == 2 else 104
    ext = extensions
    if fmt is not None:
        ext += struct.pack(">II", 0xE2792ACA, len(fmt)) + fmt + b"\0" * (-len(fmt) % 8)
    if ext:
        ext += struct.pack(">II", 0, 0)
    off = hdr_len + len(ext) if backing else 0
    head = b"QFI\xfb" + struct.pack(">IQIIQIIQQIIQ", version, off, len(backing), 16, 1 << 20,
                                    0, 0, 0, 0, 0, 0, 0)
    if version == 3:
        head += struct.pack(">QQQII", 0, 0, 0, 4, hdr_len)
    return (head + ext + backing).ljust(pad, b"\0")


def qed_header(backing: bytes, raw: bool = False) -> bytes:
    """A QED header; its backing name may be far longer than qcow2 allows."""
    features = (1 if backing else 0) | (4 if raw else 0)
    head = b"QED\0" + struct.pack("<IIIQQQQQII", 65536, 4, 1, features, 0, 0, 0, 1 << 20,
                                  64 if backing else 0, len(backing))
    return (head + backing).ljust(4096, b"\0")


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def chain(path: Path | str, fmt: str | None = "qcow2", max_depth: int = 64) -> list[BackingLink]:
    return backing_chain(str(path), fmt, read_header, os.path.realpath, max_depth)


def paths(links: list[BackingLink]) -> list[str]:
    return [link.path for link in links]


def memory(files: dict[str, bytes]) -> Callable[[str], bytes | None]:
    """An in-memory read_header: fast enough for fuzzing, and no I/O."""
    return lambda p: files.get(p)


def stock_backing(path: Path | str, fmt: str = "qcow2") -> list[str]:
    """Backing paths the real virt-aa-helper grants ``rk`` for, in its order."""
    vm = str(uuid.uuid4())
    xml = (
        f"<domain type='kvm'><name>t</name><uuid>{vm}</uuid><memory>65536</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
        f"<disk type='file' device='disk'><driver name='qemu' type={quoteattr(fmt)}/>"
        f"<source file={quoteattr(str(path))}/><target dev='vda' bus='virtio'/></disk>"
        "</devices></domain>"
    )
    proc = subprocess.run([HELPER, "-d", "-r", "-u", f"libvirt-{vm}"], input=xml.encode(),
                          capture_output=True, timeout=60, cwd="/")
    lines = [line.strip() for line in proc.stderr.decode("utf-8", "replace").splitlines()]
    assert f'"{os.path.realpath(path)}" rwk,' in lines, proc.stderr[-300:]
    return [line[1:-len('" rk,')] for line in lines if line.startswith('"')
            and line.endswith('" rk,')]


def assert_matches_stock(top: Path | str, fmt: str = "qcow2") -> list[BackingLink]:
    """Our chain, realpath'd as the helper prints it, equals the helper's."""
    links = chain(top, fmt)
    assert [os.path.realpath(p) for p in paths(links)] == stock_backing(top, fmt)
    return links


@pytest.fixture
def d(tmp_path: Path) -> Path:
    return tmp_path


# ------------------------------------------------------------------------ format probing


@pytest.mark.parametrize(("fmt", "opts", "expected"), [
    ("qcow2", (), "qcow2"),
    ("qcow2", ("-o", "compat=0.10"), "qcow2"),
    ("qcow", (), "qcow"),
    ("qed", (), "qed"),
    ("vmdk", (), "vmdk"),
    ("vpc", (), "vpc"),
    ("vdi", (), "vdi"),
    ("raw", (), "raw"),
])
def test_probe_format_of_real_images(d: Path, fmt: str, opts: tuple[str, ...],
                                     expected: str) -> None:
    img = make(d / f"x.{fmt}", fmt, None, None, *opts)
    assert probe_format(img.read_bytes()[:HEADER_BYTES]) == expected


def test_probe_format_magic_with_unknown_version_is_raw() -> None:
    assert probe_format(b"QFI\xfb" + struct.pack(">I", 4) + bytes(100)) == "raw"
    assert probe_format(b"QFI\xfb" + struct.pack(">I", 1) + bytes(100)) == "qcow"
    assert probe_format(b"KDMV" + struct.pack("<I", 9) + bytes(100)) == "raw"


def test_probe_format_table_edges() -> None:
    assert probe_format(b"") == "raw"
    assert probe_format(b"QF") == "raw"
    assert probe_format(b"QFI") == "raw"  # magic matches, version unreadable
    assert probe_format(b"QED") == "qed"  # versionless formats need only the magic
    assert probe_format(bytes(32769) + b"CD001") == "iso"
    assert probe_format(b"WithouFreSpacExt") == "ploop"
    assert probe_format(b"OOOM" + struct.pack(">I", 2)) == "cow"
    assert probe_format(bytes(64) + b"\x7f\x10\xda\xbe" + struct.pack("<I", 0x10001)) == "vdi"


# ------------------------------------------------------------------- header parsing


def test_backing_of_qcow2_v2_and_v3(d: Path) -> None:
    for compat in ("0.10", "1.1"):
        img = make(d / f"t{compat}.qcow2", "qcow2", "base.qcow2", "qcow2", "-o", f"compat={compat}")
        assert backing_of("qcow2", img.read_bytes()) == ("base.qcow2", "qcow2")
    raw = make(d / "r.qcow2", "qcow2", "/srv/disk.img", "raw")
    assert backing_of("qcow2", raw.read_bytes()) == ("/srv/disk.img", "raw")
    assert backing_of("qcow2", make(d / "none.qcow2").read_bytes()) is None


def test_backing_of_other_formats(d: Path) -> None:
    qed_raw = make(d / "a.qed", "qed", "base.img", "raw")
    assert backing_of("qed", qed_raw.read_bytes()) == ("base.img", "raw")
    qed_other = make(d / "b.qed", "qed", "base.qcow2", "qcow2")
    assert backing_of("qed", qed_other.read_bytes()) == ("base.qcow2", None)  # probed
    make(d / "base.vmdk", "vmdk")  # qemu-img insists on an existing vmdk backing
    vmdk = make(d / "c.vmdk", "vmdk", "base.vmdk", "vmdk")
    assert backing_of("vmdk", vmdk.read_bytes()) == ("base.vmdk", None)
    qcow1 = make(d / "e.qcow", "qcow", "base.qcow2", "qcow2")
    assert backing_of("qcow", qcow1.read_bytes()) == ("base.qcow2", None)
    assert backing_of("raw", qcow1.read_bytes()) is None
    assert backing_of("no-such-format", qcow1.read_bytes()) is None


def test_backing_of_cow() -> None:
    header = b"OOOM" + struct.pack(">I", 2) + b"base.img".ljust(1024, b"\0") + bytes(100)
    assert backing_of("cow", header) == ("base.img", None)
    assert backing_of("cow", header[:1040]) is None  # capacity field cut off
    assert backing_of("cow", header[:8] + bytes(1100)) is None  # empty name field


def test_backing_format_extension_quirks() -> None:
    assert backing_of("qcow2", qcow2_header(b"b", b"bogus")) == ("b", None)  # probed
    assert backing_of("qcow2", qcow2_header(b"b", b"none")) == ("b", "none")
    assert backing_of("qcow2", qcow2_header(b"b", b"raw\0junk")) == ("b", "raw")
    # libvirt does not round extension lengths up to 8 bytes: after a 5-byte
    # unknown extension it reads the next one 3 bytes early and misses it.
    odd = struct.pack(">II", 0x12345678, 5) + b"abcde\0\0\0"
    assert backing_of("qcow2", qcow2_header(b"b", b"raw", extensions=odd)) == ("b", None)
    # a later backing format extension overrides an earlier one
    first = struct.pack(">II", 0xE2792ACA, 8) + b"qcow2\0\0\0"
    assert backing_of("qcow2", qcow2_header(b"b", b"raw", extensions=first)) == ("b", "raw")
    # qcow v1 never has extensions
    v1 = bytearray(qcow2_header(b"b", b"raw"))
    v1[4:8] = struct.pack(">I", 1)
    assert backing_of("qcow", bytes(v1)) == ("b", None)


def test_hostile_qcow2_backing_fields() -> None:
    good = qcow2_header(b"base.qcow2", b"qcow2")
    off = struct.unpack_from(">Q", good, 8)[0]

    def patched(at: int, value: bytes) -> bytes:
        return good[:at] + value + good[at + len(value):]

    assert backing_of("qcow2", patched(8, struct.pack(">Q", 1 << 63))) is None
    assert backing_of("qcow2", patched(8, struct.pack(">Q", len(good) + 1))) is None
    assert backing_of("qcow2", patched(16, struct.pack(">I", 1024))) is None  # > 1023
    assert backing_of("qcow2", patched(16, struct.pack(">I", 0xFFFFFFFF))) is None
    assert backing_of("qcow2", patched(off, b"a\0b")) == ("a", "qcow2")
    assert backing_of("qcow2", patched(off, b"\xff\xfe\x00")) == ("\udcff\udcfe", "qcow2")
    assert backing_of("qcow2", good[:31]) is None  # capacity cut off
    assert backing_of("qcow2", good[:off + 3]) is None  # name cut off


def test_truncated_v3_header_is_unusable() -> None:
    """qcow2GetFeatures fails on a non-v2 header shorter than 100 bytes."""
    top = qcow2_header(b"/m", b"qcow2")
    short_v3 = qcow2_header(version=3)[:64]
    short_v2 = qcow2_header(version=2)[:64]
    files = {"/t": top, "/m": short_v3}
    assert backing_chain("/t", "qcow2", memory(files), str) == []
    files["/m"] = short_v2
    assert backing_chain("/t", "qcow2", memory(files), str) == [BackingLink("/m", "qcow2")]


def test_vmdk_descriptor_file_has_no_backing_for_libvirt(d: Path) -> None:
    """libvirt reads a text descriptor as a binary VMDK header: its "capacity" is
    ASCII and overflows, so parentFileNameHint is never looked at."""
    make(d / "base.vmdk", "vmdk")
    desc = d / "desc.vmdk"
    desc.write_text("# Disk DescriptorFile\n" + "#" * 600 + '\nversion=1\nCID=12345678\n'
                    'parentCID=fe934bc3\ncreateType="monolithicFlat"\n'
                    'parentFileNameHint="base.vmdk"\n\n'
                    '# Extent description\nRW 2048 FLAT "base-flat.vmdk" 0\n')
    assert backing_of("vmdk", desc.read_bytes()) is None
    assert chain(desc, "vmdk") == []
    padded = b"KDMV" + struct.pack("<I", 1) + bytes(504) + b'parentFileNameHint="base.vmdk"'
    assert backing_of("vmdk", padded) == ("base.vmdk", None)


# ------------------------------------------------------------------------- real chains


def test_three_level_relative_chain(d: Path) -> None:
    make(d / "base.qcow2")
    make(d / "mid.qcow2", "qcow2", "base.qcow2")
    (d / "sub").mkdir()
    make(d / "sub" / "top.qcow2", "qcow2", "../mid.qcow2")
    links = chain(d / "sub" / "top.qcow2")
    assert links == [BackingLink(f"{d}/sub/../mid.qcow2", "qcow2"),
                     BackingLink(f"{d}/sub/../base.qcow2", "qcow2")]


def test_absolute_backing_v2_and_raw_base(d: Path) -> None:
    make(d / "base.raw", "raw")
    make(d / "top.qcow2", "qcow2", str(d / "base.raw"), "raw", "-o", "compat=0.10")
    assert chain(d / "top.qcow2") == [BackingLink(str(d / "base.raw"), "raw")]


def test_relative_name_resolves_against_given_path_not_realpath(d: Path) -> None:
    (d / "real").mkdir()
    (d / "view").mkdir()
    make(d / "real" / "base.qcow2")
    make(d / "view" / "base.qcow2")
    make(d / "real" / "top.qcow2", "qcow2", "base.qcow2")
    (d / "view" / "top.qcow2").symlink_to(d / "real" / "top.qcow2")
    assert paths(chain(d / "view" / "top.qcow2")) == [f"{d}/view/base.qcow2"]


def test_relative_names_follow_g_path_get_dirname() -> None:
    files = {"/t": qcow2_header(b"b", b"raw"), "/b": b"", "//x/b": b"", "/x/b": b""}
    for top, expected in (("//t", "/b"), ("/x//t", "/x/b"), ("/t", "/b")):
        files[top] = files["/t"]
        assert paths(backing_chain(top, "qcow2", memory(files), str)) == [expected]


def test_missing_backing_is_left_out(d: Path) -> None:
    make(d / "top.qcow2", "qcow2", "missing.qcow2")
    assert chain(d / "top.qcow2") == []
    make(d / "mid.qcow2", "qcow2", "missing.qcow2")
    make(d / "top2.qcow2", "qcow2", "mid.qcow2")
    assert paths(chain(d / "top2.qcow2")) == [str(d / "mid.qcow2")]


def test_network_backing_stops_the_chain(d: Path) -> None:
    make(d / "mid.qcow2", "qcow2", "nbd://localhost:10809/x", "raw")
    make(d / "top.qcow2", "qcow2", "mid.qcow2")
    assert paths(chain(d / "top.qcow2")) == [str(d / "mid.qcow2")]
    assert chain(d / "mid.qcow2") == []


def test_unparsable_protocol_name_drops_the_image_carrying_it() -> None:
    files = {"/t": qcow2_header(b"/m", b"qcow2"), "/m": qcow2_header(b"foo:bar", b"raw")}
    assert backing_chain("/t", "qcow2", memory(files), str) == []
    files["/m"] = qcow2_header(b"nbd:host:10809", b"raw")
    assert paths(backing_chain("/t", "qcow2", memory(files), str)) == ["/m"]


def test_json_backing_names() -> None:
    base = qcow2_header()
    for name, expected in (
        (b'json:{"file.driver":"file","file.filename":"/b"}', ["/m", "/b"]),
        (b'json:{"driver":"raw","file":{"driver":"file","filename":"/b"}}', ["/m", "/b"]),
        (b'json:{"driver":"file","filename":"/b\\u0000junk"}', ["/m", "/b"]),
        (b'json:{"driver":"qcow2","file":{"driver":"file","filename":"/b"}}', []),
        (b'json:{"driver":"file","filename":"/b"}trailing', []),
        (b'json:{"driver":"file","filename":"/b","driver":"file"}', []),
        (b'json:{"driver":"nbd","server":{"type":"unix","path":"/s"}}', ["/m"]),
        (b'json:{"driver":"nbd","host":"h","port":"70000"}', []),
        (b'json:{"driver":"file","filename":"relative"}', ["/m"]),  # deviation: stop
    ):
        files = {"/t": qcow2_header(b"/m", b"qcow2"), "/m": qcow2_header(name, b"qcow2"),
                 "/b": base}
        assert paths(backing_chain("/t", "qcow2", memory(files), str)) == expected, name


def test_directories_and_fat_are_not_followed() -> None:
    """Deviation: stock grants rk on directories (fat:, a name naming a dir, an
    empty name); read_header refuses them and fat: stops the chain."""
    files = {"/d/t": qcow2_header(b"fat:/d", b"raw")}
    assert backing_chain("/d/t", "qcow2", memory(files), str) == []
    files["/d/t"] = qcow2_header(b"\0x", b"raw")
    seen: list[str] = []

    def reader(p: str) -> bytes | None:
        seen.append(p)
        return files.get(p)

    assert backing_chain("/d/t", "qcow2", reader, str) == []
    assert seen == ["/d/t", "/d/"]


def test_unrecorded_format_is_probed(d: Path) -> None:
    make(d / "base.qcow2")
    make(d / "top.qcow", "qcow", "base.qcow2")  # qcow v1 cannot record a format
    assert chain(d / "top.qcow", "qcow") == [BackingLink(str(d / "base.qcow2"), "qcow2")]


def test_probed_image_with_its_own_backing_is_refused(d: Path) -> None:
    make(d / "base.qcow2")
    make(d / "mid.qcow2", "qcow2", "base.qcow2")
    make(d / "top.qcow", "qcow", "mid.qcow2")
    assert chain(d / "top.qcow", "qcow") == []
    make(d / "top.qcow2", "qcow2", "mid.qcow2")
    data = (d / "top.qcow2").read_bytes()
    (d / "top.qcow2").write_bytes(data.replace(b"\xe2\x79\x2a\xca", b"\x00\x00\x00\x07", 1))
    assert backing_of("qcow2", (d / "top.qcow2").read_bytes()) == ("mid.qcow2", None)
    assert chain(d / "top.qcow2") == []


def test_qed_probes_safely_and_keeps_following(d: Path) -> None:
    """QED without the raw flag is AUTO_SAFE: the probed image may have a backing."""
    make(d / "base.qcow2")
    make(d / "mid.qcow2", "qcow2", "base.qcow2")
    make(d / "top.qed", "qed", "mid.qcow2", "qcow2")
    assert chain(d / "top.qed", "qed") == [BackingLink(str(d / "mid.qcow2"), "qcow2"),
                                           BackingLink(str(d / "base.qcow2"), "qcow2")]
    make(d / "raw.qed", "qed", "mid.qcow2", "raw")
    assert chain(d / "raw.qed", "qed") == [BackingLink(str(d / "mid.qcow2"), "raw")]


def test_vmdk_sparse_chain(d: Path) -> None:
    make(d / "base.vmdk", "vmdk")
    make(d / "top.vmdk", "vmdk", "base.vmdk", "vmdk")
    assert chain(d / "top.vmdk", "vmdk") == [BackingLink(str(d / "base.vmdk"), "vmdk")]


def test_no_format_or_raw_means_no_probing() -> None:
    calls: list[str] = []

    def reader(p: str) -> bytes | None:
        calls.append(p)
        return qcow2_header(b"/b", b"qcow2")

    for fmt in (None, "raw", "iso", "none", "bogus"):
        assert backing_chain("/t", fmt, reader, str) == []
    assert calls == []


def test_backing_format_none_drops_the_backing() -> None:
    files = {"/t": qcow2_header(b"/b", b"none"), "/b": qcow2_header()}
    assert backing_chain("/t", "qcow2", memory(files), str) == []


# ------------------------------------------------------------------- loops and depth


def test_loop_is_an_error(d: Path) -> None:
    make(d / "a.qcow2", "qcow2", "b.qcow2")
    make(d / "b.qcow2", "qcow2", "a.qcow2")
    with pytest.raises(ChainError, match="loops") as err:
        chain(d / "a.qcow2")
    assert "\n" not in str(err.value)
    make(d / "self.qcow2", "qcow2", "self.qcow2")
    with pytest.raises(ChainError, match="loops"):
        chain(d / "self.qcow2")
    (d / "alias.qcow2").symlink_to(d / "c.qcow2")
    make(d / "c.qcow2", "qcow2", "alias.qcow2")
    with pytest.raises(ChainError, match="loops"):
        chain(d / "c.qcow2")


def test_repeated_file_that_stock_would_refuse_is_not_a_loop() -> None:
    """A probed image with a backing is dropped before it could repeat."""
    files = {"/a": qcow2_header(b"/b", b"qcow2"), "/b": qcow2_header(b"/a")}
    assert paths(backing_chain("/a", "qcow2", memory(files), str)) == ["/b"]


def test_deep_chain_is_an_error(d: Path) -> None:
    make(d / "tmpl.qcow2", "qcow2", "l000.qcow2")
    header = (d / "tmpl.qcow2").read_bytes()[:4096]
    for i in range(300):
        write(d / f"l{i:03d}.qcow2", header.replace(b"l000.qcow2", f"l{i + 1:03d}.qcow2".encode()))
    make(d / "l300.qcow2")
    with pytest.raises(ChainError, match="deeper than 64"):
        chain(d / "l000.qcow2")
    assert len(chain(d / "l236.qcow2")) == 64
    with pytest.raises(ChainError, match="deeper than 10"):
        chain(d / "l236.qcow2", max_depth=10)
    assert len(chain(d / "l000.qcow2", max_depth=300)) == 300
    assert images.DEFAULT_MAX_DEPTH == 64


# ------------------------------------------------------------------------ read_header


def test_read_header_bounds_and_file_types(d: Path) -> None:
    big = write(d / "big", os.urandom(HEADER_BYTES + 5000))
    assert read_header(str(big)) == big.read_bytes()[:HEADER_BYTES]
    assert read_header(str(write(d / "small", b"abc"))) == b"abc"
    assert read_header(str(d)) is None
    assert read_header("/dev/null") is None
    assert read_header(str(d / "missing")) is None
    assert read_header("") is None
    assert HEADER_BYTES == 0x8200


def test_names_past_header_bytes_are_not_seen(d: Path) -> None:
    """libvirt reads VIR_STORAGE_MAX_HEADER bytes; a name ending past them is ignored."""
    make_qed = bytearray(qed_header(b"x"))
    for end, expected in ((HEADER_BYTES, [str(d / "base")]), (HEADER_BYTES + 1, [])):
        name = b"base"
        make_qed[56:64] = struct.pack("<II", end - len(name), len(name))
        data = bytes(make_qed).ljust(HEADER_BYTES + 100, b"\0")
        data = data[:end - len(name)] + name + data[end:]
        write(d / "top.qed", data)
        write(d / "base", b"")
        assert paths(chain(d / "top.qed", "qed")) == expected


def test_fifo_and_socket_do_not_block(d: Path) -> None:
    os.mkfifo(d / "fifo")
    write(d / "top.qcow2", qcow2_header(b"fifo", b"raw"))
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(chain(d / "top.qcow2")), daemon=True)
    worker.start()
    worker.join(10)
    assert result == [[]], "reading a FIFO backing file blocked"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(d / "sock"))
        assert read_header(str(d / "sock")) is None


# ---------------------------------------------------------------------- hostile input


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        if not buf:
            buf.append(0)
        pos = rng.randrange(len(buf)) if rng.random() < 0.3 else rng.randrange(min(len(buf), 128))
        roll = rng.random()
        if roll < 0.5:
            buf[pos] = rng.randrange(256)
        elif roll < 0.7:
            word = rng.choice((0, 1, 2, 3, 72, 100, 104, len(buf), 0x7FFFFFFF, 0xFFFFFFFF))
            at = pos - pos % 4
            buf[at:at + 4] = struct.pack(">I", word)
        elif roll < 0.8:
            del buf[rng.randrange(len(buf) + 1):]
        else:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))
    return bytes(buf)


def test_fuzzed_real_headers_never_crash(d: Path) -> None:
    make(d / "base.qcow2")
    make(d / "base.vmdk", "vmdk")
    v2 = ("-o", "compat=0.10")
    seeds = [
        make(d / "a.qcow2", "qcow2", "base.qcow2").read_bytes()[:1024],
        make(d / "b.qcow2", "qcow2", "/x/base.qcow2", "raw", *v2).read_bytes()[:1024],
        make(d / "c.qed", "qed", "base.qcow2", "raw").read_bytes()[:1024],
        make(d / "e.vmdk", "vmdk", "base.vmdk", "vmdk").read_bytes()[:2048],
    ]
    rng = random.Random(20240611)
    formats = ("qcow2", "qcow", "qed", "vmdk", "cow", "raw")
    started = time.monotonic()
    for _ in range(3000):
        top = _mutate(rng, rng.choice(seeds))
        files = {"/d/top": top, "/d/base.qcow2": _mutate(rng, rng.choice(seeds)),
                 "/x/base.qcow2": top}
        fmt = rng.choice(formats)
        assert isinstance(probe_format(top), str)
        result = backing_of(fmt, top)
        assert result is None or isinstance(result[0], str)
        try:
            links = backing_chain("/d/top", fmt, memory(files), str, max_depth=5)
        except ChainError:
            continue
        assert all(link.path.startswith("/") for link in links)
    assert time.monotonic() - started < 30


def test_random_bytes_never_crash() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        data = rng.randbytes(rng.choice((0, 7, 33, 100, 600, 1100)))
        for fmt in ("qcow2", "qcow", "qed", "vmdk", "cow"):
            backing_of(fmt, data)
            backing_of(fmt, b"QFI\xfb" + data)
        probe_format(data)


@pytest.mark.parametrize("name", [
    b"json:" + b"[" * 16000 + b"]" * 16000,
    b'json:{"file":' * 3500 + b"1" + b"}" * 3500,
    b'json:{"' + b"a." * 15000 + b'b":1}',
    b'json:{"driver":"file","filename":"' + b"\\u0041" * 5000 + b'"}',
    b'json:{"x":"' + b"\\\\" * 15000 + b'"}',
    b"nbd://" + b"%41" * 10000,
    b"rbd:p/i:mon_host=" + b"h\\;" * 10000,
    b"nbd:h:" + b"0" * 30000 + b"80",
    b'json:{"driver":"nbd","host":"h","port":"' + b"9" * 30000 + b'"}',
    b'json:{"driver":"nvme","device":"' + b"f" * 30000 + b'","namespace":1}',
])
def test_pathological_names_are_fast(name: bytes) -> None:
    files = {"/t": qcow2_header(b"/m", b"qcow2"), "/m": qed_header(name)}
    started = time.monotonic()
    result = backing_chain("/t", "qcow2", memory(files), str)
    assert time.monotonic() - started < 2
    assert paths(result) in ([], ["/m"])


# ------------------------------------------------------------ differential vs stock


def test_real_chains_match_stock(d: Path) -> None:
    make(d / "base.qcow2")
    make(d / "base.raw", "raw")
    make(d / "mid.qcow2", "qcow2", "base.qcow2")
    (d / "sub").mkdir()
    make(d / "sub" / "top.qcow2", "qcow2", "../mid.qcow2")
    make(d / "v2.qcow2", "qcow2", str(d / "base.raw"), "raw", "-o", "compat=0.10")
    make(d / "broken.qcow2", "qcow2", "missing.qcow2")
    make(d / "netmid.qcow2", "qcow2", "nbd://localhost:10809/x", "raw")
    make(d / "net.qcow2", "qcow2", "netmid.qcow2")
    make(d / "probe.qcow", "qcow", "base.qcow2")
    make(d / "refused.qcow", "qcow", "mid.qcow2")
    make(d / "top.qed", "qed", "mid.qcow2", "qcow2")
    make(d / "base.vmdk", "vmdk")
    make(d / "top.vmdk", "vmdk", "base.vmdk", "vmdk")
    (d / "view" / "deeper").mkdir(parents=True)
    (d / "view" / "deeper" / "top.qcow2").symlink_to(d / "sub" / "top.qcow2")
    expected = {
        "sub/top.qcow2": 2, "v2.qcow2": 1, "broken.qcow2": 0, "net.qcow2": 1,
        "probe.qcow": 1, "refused.qcow": 0, "top.qed": 2, "top.vmdk": 1,
        "view/deeper/top.qcow2": 0,  # ../mid.qcow2 is looked up beside the link
    }
    for name, length in expected.items():
        fmt = name.rsplit(".", 1)[1]
        links = assert_matches_stock(d / name, fmt)
        assert len(links) == length, name


# Backing names of a middle image: each either resolves, stops the chain, or is
# refused by libvirt's parsers (which drops the middle image too). {d} is the
# test directory, holding base.qcow2.
NAMES = [
    "base.qcow2", "{d}/base.qcow2", "./base.qcow2", "../{n}/base.qcow2", "nope.qcow2",
    "foo:bar", "nbd:localhost:10809", "nbd:localhost:10809:exportname=x", "nbd:unix:/s",
    "nbd:unix:", "nbd::10809", "nbd:[::1]:10809", "nbd:[]:10809", "nbd:host: +80",
    "nbd:host:-1", "nbd:host:65536", "nbd:exportname=x", "rbd:pool/img",
    "rbd:p/i:mon_host=h1\\:6789\\;h2\\:99999", "rbd:p/i:id=a:id=b", "sheepdog:foo", "none:foo",
    "nbd://localhost:10809/x", "nbd://host:/x", "nbd://host:2147483648/x",
    "nbd://1.2.3.4x/exp", "nbd://ho st/x", "nbd://user@host/x", "nbd://[::1/x",
    "nbd+unix:///x?socket=/tmp/s", "nbd+foo://h/x", "gluster://host/vol",
    "gluster://host/vol/img", "none://h/x", "NBD://h/x", "nbd:x/a://b", "nbd://h/%zz",
    'json:{{"driver":"file","filename":"{d}/base.qcow2"}}',
    'json: {{"driver":"file","filename":"{d}/base.qcow2"}}  ',
    'json:{{"file.driver":"file","file.filename":"{d}/base.qcow2"}}',
    'json:{{"driver":"file","filename":"{d}/base.qcow2","x":01}}',
    'json:{{"driver":"file","filename":"{d}/base.qcow2","x":"\\ud800"}}',
    'json:{{"driver":"file","filename":"{d}/base.qcow2","a\\u0000":1,"a":2}}',
    'json:{{"file":{{"x":1}},"file.driver":"file","file.filename":"{d}/base.qcow2"}}',
    'json:{{"driver":"raw","file":{{"driver":"file","filename":"{d}/base.qcow2"}},"offset":-1}}',
    'json:{{"driver":"raw","file":{{"driver":"file","filename":"{d}/base.qcow2"}},"size":1.0}}',
    'json:{{"driver":"gluster","volume":"v","path":"p","server.0.type":"unix","server.0.path":"/s"}}',
    'json:{{"driver":"gluster","volume":"v","path":"p","server.1.type":"unix","server.1.path":"/s"}}',
    'json:{{"driver":"iscsi","transport":"tcp","portal":"h:99999","target":"t"}}',
    'json:{{"driver":"https","url":"https://h/x","sslverify":"on"}}',
    'json:{{"driver":"http","url":"http://h/x","cookie":"a=1;"}}',
    'json:{{"driver":"nfs","server":{{"host":"h"}},"user":0,"group":0,"path":"/x"}}',
    'json:{{"driver":"nvme","device":"0000:01:00.0","namespace":0}}',
]


def test_backing_names_match_stock(d: Path) -> None:
    write(d / "base.qcow2", qcow2_header())
    mismatches = []
    for template in NAMES:
        name = template.format(d=d, n=d.name).encode()
        for fmt in (b"qcow2", None):
            write(d / "mid.qcow2", qcow2_header(name, fmt))
            write(d / "top.qcow2", qcow2_header(b"mid.qcow2", b"qcow2"))
            ours = [os.path.realpath(p) for p in paths(chain(d / "top.qcow2"))]
            stock = stock_backing(d / "top.qcow2")
            if ours != stock:
                mismatches.append((name, fmt, ours, stock))
    assert mismatches == []


def test_fuzzed_headers_match_stock(d: Path) -> None:
    """A small differential fuzz (the full one ran 11000 cases with no difference)."""
    write(d / "base.qcow2", qcow2_header())
    write(d / "chained.qcow2", qcow2_header(b"base.qcow2", b"qcow2"))
    seeds = [qcow2_header(b"chained.qcow2", b"qcow2", version=2),
             qcow2_header(b"base.qcow2", None), qcow2_header(b"chained.qcow2", b"raw"),
             qed_header(b"chained.qcow2"), qed_header(b"base.qcow2", raw=True)]
    rng = random.Random(99)
    mismatches = []
    for _ in range(150):
        mid = _mutate(rng, rng.choice(seeds))
        write(d / "mid.img", mid)
        top_fmt = rng.choice(("qcow2", None, "qed", "raw"))
        write(d / "top.img", qcow2_header(b"mid.img", top_fmt.encode() if top_fmt else None))
        ours = [os.path.realpath(p) for p in paths(chain(d / "top.img"))]
        stock = [p for p in stock_backing(d / "top.img") if not os.path.isdir(p)]
        if ours != stock:
            mismatches.append((mid[:128], top_fmt, ours, stock))
    assert mismatches == []

