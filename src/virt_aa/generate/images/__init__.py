"""Backing-chain discovery from image headers, with libvirt 9.0 virt-aa-helper semantics.

Stock virt-aa-helper calls ``virStorageSourceGetMetadata(src, -1, -1, 200, false)``
(src/storage_file/storage_source.c) for a disk whose XML has a format and no
``<backingStore>``, then emits ``rk`` for every local image of the resulting chain.
This module reproduces which images end up in that chain:

* headers are parsed exactly as ``virStorageFileProbeGetMetadata``
  (src/storage_file/storage_file_probe.c) does, on at most ``VIR_STORAGE_MAX_HEADER``
  bytes, with the same bounds checks and quirks;
* a backing name is turned into a location as ``virStorageSourceNewFromChild`` does:
  relative names are joined to the *given* (not resolved) directory of the parent,
  ``protocol:``/URI/``json:`` names go through ports of libvirt's parsers
  (src/storage_file/storage_source_backingstore.c) because a name libvirt cannot
  parse makes it drop the image that carries the name;
* an error on an image drops that image and ends the chain (``report_broken`` is false).

Headers are guest-influenced: every read is bounded, nothing recurses on input
structure, and no input can raise anything but :class:`ChainError`.

Deliberate differences from stock (safer, and documented in the report):

* the same file reached twice (by canonical path) raises ``ChainError`` (stock
  recurses 200 levels, repeating rules), and so does a chain deeper than ``max_depth``
  (stock silently truncates at 200 levels);
* only regular files and block devices are read (``read_header``): stock also
  includes directories (``fat:`` names, a name starting with NUL, a name naming a
  directory) and character devices, and blocks forever on a FIFO;
* a ``json:`` name with a relative ``filename`` stops the chain (stock resolves it
  against its own working directory and emits no rule for it).
"""

from __future__ import annotations

import os
import stat
import struct

from virt_aa.generate.images.names import _BAD, _FILE, _STOP, _cstr
from virt_aa.generate.images.names import locate as _locate

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~8 ms
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "HEADER_BYTES",
    "BackingLink",
    "ChainError",
    "backing_chain",
    "backing_of",
    "probe_format",
    "read_header",
]

HEADER_BYTES = 0x8200
"""VIR_STORAGE_MAX_HEADER: libvirt never looks further into an image than this."""

DEFAULT_MAX_DEPTH = 64


class BackingLink:
    """One backing image: its path as libvirt computes it, and its format.

    A plain class: ``dataclasses`` costs ~10 ms to import on the VM-start path.
    """

    __slots__ = ("format", "path")

    def __init__(self, path: str, format: str | None) -> None:
        self.path = path
        self.format = format

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, BackingLink) and self.path == other.path
                and self.format == other.format)

    def __hash__(self) -> int:
        return hash((self.path, self.format))

    def __repr__(self) -> str:
        return f"BackingLink({self.path!r}, {self.format!r})"


class ChainError(Exception):
    """The backing chain loops or is deeper than allowed (never raised by stock)."""


# --------------------------------------------------------------------------- formats

# virStorageFileFormat, in enum order (the order matters for probing).
_FORMATS = (
    "none", "raw", "dir", "bochs", "cloop", "dmg", "iso", "vpc", "vdi",
    "fat", "vhd", "ploop", "cow", "qcow", "qcow2", "qed", "vmdk",
)
_FORMAT_SET = frozenset(_FORMATS)

# (name, magic offset, magic, big endian, version offset, versions); version
# offset -2 means "any version" (fileTypeInfo[] in storage_file_probe.c).
_MAGICS: tuple[tuple[str, int, bytes, bool, int, tuple[int, ...]], ...] = (
    ("iso", 32769, b"CD001", False, -2, ()),
    ("vpc", 0, b"conectix", True, 12, (0x10000,)),
    ("vdi", 64, b"\x7f\x10\xda\xbe", False, 68, (0x00010001,)),
    ("ploop", 0, b"WithouFreSpacExt", False, -2, ()),
    ("cow", 0, b"OOOM", True, 4, (2,)),
    ("qcow", 0, b"QFI", True, 4, (1,)),
    ("qcow2", 0, b"QFI", True, 4, (2, 3)),
    ("qed", 0, b"QED", False, -2, ()),
    ("vmdk", 0, b"KDMV", False, 4, (1, 2, 3)),
)

# Formats with a getBackingStore callback: offset of the 8-byte capacity field
# and its multiplier, both checked before the backing name is looked at.
_SIZE_FIELD = {
    "cow": (1036, 1), "qcow": (24, 1), "qcow2": (24, 1), "qed": (48, 1), "vmdk": (12, 512),
}
_BIG_ENDIAN = frozenset(("cow", "qcow", "qcow2"))

_QCOW2_EXT_BACKING_FORMAT = 0xE2792ACA
_QCOW2_EXT_DATA_FILE = 0x44415441
_QED_F_BACKING_FILE = 0x01
_QED_F_BACKING_FORMAT_NO_PROBE = 0x04
_U64_MAX = (1 << 64) - 1


def _field(data: bytes, off: int, size: int) -> bytes:
    """Bytes at a fixed offset; past the data they read as zero, as in libvirt's buffer."""
    return data[off:off + size].ljust(size, b"\0")


def _u32(data: bytes, off: int, big: bool = True) -> int:
    return int.from_bytes(_field(data, off, 4), "big" if big else "little")


def _u64(data: bytes, off: int, big: bool = True) -> int:
    return int.from_bytes(_field(data, off, 8), "big" if big else "little")



def probe_format(data: bytes) -> str | None:
    """Format libvirt guesses from header bytes (virStorageFileProbeFormatFromBuf).

    A known magic with an unknown version, or no known magic, is "raw".
    """
    data = data[:HEADER_BYTES]
    for name, moff, magic, big, voff, versions in _MAGICS:
        if data[moff:moff + len(magic)] != magic:
            continue
        if voff == -2:
            return name
        if voff + 4 > len(data):
            continue
        if struct.unpack_from(">i" if big else "<i", data, voff)[0] in versions:
            return name
    return "raw"


class _Backing:
    """A backing name as recorded in a header (a plain class: @dataclass costs import time)."""

    __slots__ = ("fmt", "raw", "strict")

    def __init__(self, raw: bytes, fmt: str | None, strict: bool) -> None:
        self.raw = raw  # C string, no NUL
        self.fmt = fmt  # recorded format name; None: probe it
        self.strict = strict  # a probed image may not have its own backing (AUTO, not AUTO_SAFE)


_NO_BACKING: tuple[bool, _Backing | None] = (True, None)
_UNUSABLE: tuple[bool, _Backing | None] = (False, None)


def _probe_backing(raw: bytes) -> _Backing:
    return _Backing(raw, None, True)


def _qcow2_backing_format(data: bytes, n: int, ext_end: int) -> tuple[bool, str | None]:
    """Walk qcow2 header extensions (qcow2GetExtensions); (ok, format or None to probe).

    Like libvirt, extension lengths are not rounded up to 8 bytes, a later backing
    format extension overrides an earlier one, and "none" or an unknown name fails.
    """
    version = struct.unpack(">i", _field(data, 4, 4))[0]
    if version < 2:
        return True, None
    off = 72 if version == 2 else _u32(data, 100)
    limit = (ext_end - 8) % (1 << 64)  # size_t arithmetic, as in C
    fmt: str | None = None
    while off < n - 8 and off < limit:
        magic, length = struct.unpack_from(">II", data, off)
        off += 8
        if off + length > n:
            break
        if magic == _QCOW2_EXT_BACKING_FORMAT:
            name = _cstr(data[off:off + length]).decode("latin-1")
            if name not in _FORMAT_SET or name == "none":
                return False, ("none" if name == "none" else None)
            fmt = name
        elif magic == 0:
            break
        off += length
    return True, fmt


def _qcow_backing(data: bytes, n: int) -> tuple[_Backing | None, bool]:
    """qcowXGetBackingStore; the flag says the result was OK rather than INVALID.

    An INVALID result can still carry a name (bad backing format extension).
    """
    if n < 20:
        return None, False
    off = _u64(data, 8)
    if off > n:
        return None, False
    size = _u32(data, 16)
    if off == 0 or size == 0:
        return None, True
    if size > 1023 or off + size > n:
        return None, False
    raw = _cstr(data[off:off + size])
    ok, fmt = _qcow2_backing_format(data, n, off)
    return _Backing(raw, fmt, True), ok


def _qed_backing(data: bytes, n: int) -> _Backing | None:
    """qedGetBackingStore: a raw backing is flagged, anything else is probed (AUTO_SAFE)."""
    if n < 24:
        return None
    flags = _u64(data, 16, big=False)
    if not flags & _QED_F_BACKING_FILE or n < 64:
        return None
    off, size = _u32(data, 56, big=False), _u32(data, 60, big=False)
    if off > n or size == 0 or off + size > n:
        return None
    raw = _cstr(data[off:off + size])
    if flags & _QED_F_BACKING_FORMAT_NO_PROBE:
        return _Backing(raw, "raw", False)
    return _Backing(raw, None, False)


def _vmdk_backing(data: bytes, n: int) -> _Backing | None:
    """vmdk4GetBackingStore: parentFileNameHint in the descriptor at byte 0x200."""
    if n <= 0x200:
        return None
    desc = _cstr(data[0x200:n])
    prefix = b'parentFileNameHint="'
    start = desc.find(prefix)
    if start < 0:
        return None
    start += len(prefix)
    end = desc.find(b'"', start)
    if end <= start:
        return None
    return _probe_backing(desc[start:end])


def _cow_backing(data: bytes, n: int) -> _Backing | None:
    """cowGetBackingStore: a 1024-byte name field at offset 8."""
    if n < 8 + 1024 or data[8] == 0:
        return None
    return _probe_backing(_cstr(data[8:8 + 1024]))


def _inspect(fmt: str, data: bytes) -> tuple[bool, _Backing | None]:
    """virStorageFileProbeGetMetadata for a known format: (usable, backing or None).

    Not usable means libvirt fails on this image, which drops it from the chain.
    """
    if fmt not in _FORMAT_SET or fmt == "none":
        return _UNUSABLE
    if fmt not in _SIZE_FIELD:
        return _NO_BACKING
    data = data[:HEADER_BYTES]
    n = len(data)
    size_off, mult = _SIZE_FIELD[fmt]
    if size_off + 8 > n or _u64(data, size_off, fmt in _BIG_ENDIAN) > _U64_MAX // mult:
        return _NO_BACKING
    if fmt == "qed":
        return True, _qed_backing(data, n)
    if fmt == "vmdk":
        return True, _vmdk_backing(data, n)
    if fmt == "cow":
        return True, _cow_backing(data, n)
    backing, ok = _qcow_backing(data, n)
    if ok and fmt == "qcow2" and struct.unpack(">i", _field(data, 4, 4))[0] != 2 and n < 100:
        return _UNUSABLE  # qcow2GetFeatures: a non-v2 header shorter than 100 bytes
    return True, backing


def qcow2_data_file(data: bytes) -> str | None:
    """The external data file a qcow2 v3 header names (extension "DATA"), if any.

    libvirt >= 10.10 reads it (qcow2GetExtensions) and grants it after its image.
    """
    n = min(len(data), HEADER_BYTES)
    if n < 104 or data[:4] != b"QFI\xfb" or _u32(data, 4) < 3:
        return None
    backing_off = _u64(data, 8)
    end = backing_off if 0 < backing_off <= n else n
    off = _u32(data, 100)
    while off < n - 8 and off < end - 8:
        magic, length = struct.unpack_from(">II", data, off)
        off += 8
        if magic == 0 or off + length > n:
            return None
        if magic == _QCOW2_EXT_DATA_FILE:
            name = _cstr(data[off:off + length])
            return os.fsdecode(name) if name else None
        off += (length + 7) & ~7
    return None


def data_file_path(image: str, name: str) -> str:
    """A data file name as recorded in ``image``: relative names sit beside it."""
    if name.startswith("/"):
        return name
    return os.path.join(os.path.dirname(image), name)


def backing_of(fmt: str, data: bytes) -> tuple[str, str | None] | None:
    """Backing name and recorded backing format from a header of format ``fmt``.

    The format is None when libvirt would probe it, and "none" when the header
    records that (libvirt then fails on the backing image). None: no backing.
    """
    usable, backing = _inspect(fmt, data)
    if not usable or backing is None:
        return None
    return os.fsdecode(backing.raw), backing.fmt


# -------------------------------------------------------------- backing locations


def _describe(backing: _Backing, data: bytes) -> tuple[str | None, bool, _Backing | None]:
    """Format, usability and own backing of a backing image, given its parent's record."""
    fmt_used = backing.fmt if backing.fmt is not None else probe_format(data)
    if fmt_used is None:
        return None, False, None
    usable, own = _inspect(fmt_used, data)
    if usable and backing.fmt is None and backing.strict and own is not None:
        usable = False  # a probed image may not bring a backing of its own
    return fmt_used, usable, own


def backing_chain(
    path: str,
    fmt: str | None,
    read_header: Callable[[str], bytes | None],
    canonical: Callable[[str], str],
    max_depth: int = DEFAULT_MAX_DEPTH,
    data_files: list[str | None] | None = None,
) -> list[BackingLink]:
    """Backing images of ``path`` (excluding ``path`` itself), nearest first, stock semantics.

    ``read_header(p)`` returns up to HEADER_BYTES bytes or None if ``p`` cannot be
    opened/read as a regular file or block device. ``canonical(p)`` gives the realpath
    used for loop detection. Raises ChainError on a loop or a chain deeper than
    ``max_depth`` backing images.
    """
    if fmt is None or fmt not in _SIZE_FIELD:
        return []
    data = read_header(path)
    if data is None:
        return []
    if data_files is not None:  # the top image's, then one per link (same I/O)
        data_files.append(_data_file(path, fmt, data))
    usable, backing = _inspect(fmt, data)
    if not usable or backing is None:
        return []
    where = _locate(path, backing.raw)
    if where[0] == _BAD:
        return []
    links: list[BackingLink] = []
    seen = {canonical(path)}
    while where[0] == _FILE:
        child = where[1]
        data = read_header(child)
        if data is None:
            break
        child_fmt, usable, own = _describe(backing, data)
        if not usable:
            break
        where = _locate(child, own.raw) if own is not None else (_STOP, "")
        if where[0] == _BAD:
            break
        key = canonical(child)
        if key in seen:
            raise ChainError(f"backing chain of {path!r} loops: {child!r} is already in it")
        if len(links) >= max_depth:
            raise ChainError(f"backing chain of {path!r} is deeper than {max_depth} images")
        seen.add(key)
        links.append(BackingLink(child, child_fmt))
        if data_files is not None:
            data_files.append(_data_file(child, child_fmt, data))
        if own is None:
            break
        backing = own
    return links


def _data_file(path: str, fmt: str | None, data: bytes) -> str | None:
    name = qcow2_data_file(data) if fmt == "qcow2" else None
    return data_file_path(path, name) if name else None


# ---------------------------------------------------------------------------- I/O


def read_header(path: str) -> bytes | None:
    """First HEADER_BYTES of a regular file or block device, else None.

    The type is checked before opening (opening some character devices has side
    effects), the open never blocks (O_NONBLOCK) and the type is checked again on
    the descriptor, so a file swapped for a FIFO in between is refused too.
    """
    try:
        if not _readable_type(os.stat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        if not _readable_type(os.fstat(fd).st_mode):
            return None
        chunks: list[bytes] = []
        left = HEADER_BYTES
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _readable_type(mode: int) -> bool:
    return stat.S_ISREG(mode) or stat.S_ISBLK(mode)
