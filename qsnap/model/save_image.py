"""libvirt's save-image header (qemu_saveimage.h, version 2): pure encoding and decoding.

Layout, native byte order (x86-64: little-endian), 92 bytes::

    magic[16]      "LibvirtQemudSave", or "LibvirtQemudPart" while the image is being written
    version        2
    data_len       bytes of domain XML + cookie + padding that follow the header
    was_running    1 when the guest should run after restore
    format         0 raw, 1 gzip, 2 bzip2, 3 xz, 4 lzop, 5 zstd (the stream through that
                   compressor), 6 sparse (QEMU's mapped-ram stream: RAM at fixed offsets)
    cookieOffset   offset of the cookie inside the data area, 0 without one
    unused[14]     zero

Then the domain XML (NUL-terminated), the cookie XML (NUL-terminated) and zero padding, then the
QEMU migration stream at offset ``92 + data_len``. Using libvirt's layout means ``virsh restore``
and ``virsh save-image-dumpxml`` read qsnap's images, and qsnap reads libvirt's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from qsnap.errors import SaveImageError

MAGIC = b"LibvirtQemudSave"
PARTIAL_MAGIC = b"LibvirtQemudPart"
VERSION = 2
HEADER = struct.Struct("=16s5I56s")
assert HEADER.size == 92
#: Room left after the XML so it can be edited in place later, as libvirt leaves.
PADDING = 64 * 1024
#: libvirt's virQEMUSaveFormat: the on-disk numbers, never to change.
FORMATS = {"raw": 0, "gzip": 1, "bzip2": 2, "xz": 3, "lzop": 4, "zstd": 5, "sparse": 6}
FORMAT_NAMES = {code: name for name, code in FORMATS.items()}
#: The formats qsnap writes (libvirt 11 writes them all; these are the fast or small ones).
WRITTEN_FORMATS = ("raw", "sparse", "zstd")




@dataclass(frozen=True)
class SaveImage:
    """The header and XML of a save image; the migration stream starts at ``stream_offset``."""

    domain_xml: str
    cookie: str | None
    was_running: bool
    compressed: int = 0  # the header's format field: see FORMATS
    data_len: int = 0

    @property
    def format(self) -> str:
        return FORMAT_NAMES.get(self.compressed, f"unknown format {self.compressed}")

    @property
    def stream_offset(self) -> int:
        return HEADER.size + self.data_len


def encode(domain_xml: str, cookie: str | None, was_running: bool,
           partial: bool, align: int = 1, image_format: str = "raw") -> bytes:
    """Header plus data area for a new image (*partial*: the still-being-written magic). The
    zero padding after the XML (room for a later, longer XML, as libvirt leaves) is grown so
    that the whole is a multiple of *align*: the stream after it can then be written with
    direct I/O."""
    xml = domain_xml.encode("utf-8") + b"\0"
    cookie_bytes = cookie.encode("utf-8") + b"\0" if cookie else b""
    data = xml + cookie_bytes
    padding = PADDING + (-(HEADER.size + len(data) + PADDING) % align)
    header = HEADER.pack(PARTIAL_MAGIC if partial else MAGIC, VERSION, len(data) + padding,
                         int(was_running), FORMATS[image_format], len(xml) if cookie else 0,
                         bytes(56))
    return header + data + bytes(padding)


def final_magic() -> bytes:
    return MAGIC


def decode_header(raw: bytes, what: str) -> tuple[int, int, int, int]:
    """(data_len, was_running, compressed, cookie_offset) of a header, or a clear error."""
    if len(raw) < HEADER.size:
        raise SaveImageError(f"failed to read qemu header of {what}: the file is too short")
    magic, version, data_len, was_running, compressed, cookie_offset, _ = HEADER.unpack(
        raw[:HEADER.size])
    if magic == PARTIAL_MAGIC:
        raise SaveImageError(f"save image is incomplete: {what} was still being written")
    if magic != MAGIC:
        raise SaveImageError(f"image magic is incorrect: {what} is not a save image")
    if version > VERSION:
        swapped = struct.unpack(">5I", struct.pack("<5I", version, data_len, was_running,
                                                   compressed, cookie_offset))
        version, data_len, was_running, compressed, cookie_offset = swapped
        if version > VERSION:
            raise SaveImageError(f"image version is not supported ({version} > {VERSION}) "
                                 f"in {what}")
    if data_len <= 0:
        raise SaveImageError(f"invalid header data length in {what}")
    return data_len, was_running, compressed, cookie_offset


def decode(header: bytes, data: bytes, what: str) -> SaveImage:
    """The image described by *header* and its *data* area."""
    data_len, was_running, compressed, cookie_offset = decode_header(header, what)
    if len(data) < data_len:
        raise SaveImageError(f"failed to read domain XML of {what}: the file is truncated")
    xml_end = data.find(b"\0")
    if xml_end <= 0:
        raise SaveImageError(f"failed to read domain XML of {what}")
    cookie = None
    if cookie_offset:
        cookie_end = data.find(b"\0", cookie_offset)
        if cookie_end < 0:
            raise SaveImageError(f"failed to read cookie of {what}")
        cookie = data[cookie_offset:cookie_end].decode("utf-8", errors="replace") or None
    return SaveImage(data[:xml_end].decode("utf-8"), cookie, bool(was_running), compressed,
                     data_len)


#: How much of a raw stream's end :func:`stream_end_problem` needs: QEMU's device description
#: (the JSON after the stream's end marker) is 100-200 KiB for the guests seen here.
STREAM_TAIL = 4 << 20
#: QEMU's migration stream: its magic, the end-of-stream byte, the section footer byte, and
#: the device description's section (savevm.c: QEMU_VM_EOF, QEMU_VM_SECTION_FOOTER,
#: QEMU_VM_VMDESCRIPTION).
_STREAM_MAGIC = b"QEVM"
_EOF = 0x00
_FOOTER = 0x7E
_VMDESC = 0x06


def stream_end_problem(head: bytes, tail: bytes, length: int) -> str | None:
    """What is wrong with a raw migration stream of *length* bytes, from its first bytes
    *head* and its last *tail*; None when it is whole. A stream ends with the last section's
    footer (0x7e and a 4-byte section id), the end byte (0x00), and usually the device
    description: 0x06, its length in 4 bytes, that much JSON, to the end of the file. A
    stream cut short (a truncated file) ends anywhere else. JSON holds no NUL byte, so the
    description's start is the last ``00 06`` in the file."""
    if not head.startswith(_STREAM_MAGIC):
        return "it does not start with QEMU's migration stream"
    marker = tail.rfind(bytes([_EOF, _VMDESC]))
    if marker >= 5 and tail[marker - 5] == _FOOTER:
        described = int.from_bytes(tail[marker + 2:marker + 6], "big")
        if described == len(tail) - marker - 6:
            return None
    if len(tail) >= 6 and tail[-1] == _EOF and tail[-6] == _FOOTER:
        return None  # a stream without the device description
    return f"its migration stream ({length} bytes) stops before its end"
