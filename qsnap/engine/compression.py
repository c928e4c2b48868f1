"""The compressors behind libvirt's compressed save-image formats, run as filters between
QEMU's stream and the file, as libvirt runs them (``qemuSaveImageGetCompressionProgram``):
the stream is the program's input, the file its output, and the other way round to restore."""

from __future__ import annotations

import shutil

from qsnap.errors import NotSupportedError

#: format -> (program, compress arguments, decompress arguments). zstd uses every CPU and
#: its fastest level: a save's point is to end the guest's pause soon.
_PROGRAMS = {
    "gzip": ("gzip", ("-c",), ("-dc",)),
    "bzip2": ("bzip2", ("-c",), ("-dc",)),
    "xz": ("xz", ("-c",), ("-dc",)),
    "lzop": ("lzop", ("-c",), ("-dc",)),
    "zstd": ("zstd", ("-q", "-c", "-1", "-T0"), ("-q", "-dc")),
}


def is_compressed(image_format: str) -> bool:
    return image_format in _PROGRAMS


def _program(image_format: str) -> str:
    name = _PROGRAMS[image_format][0]
    path = shutil.which(name)
    if path is None:
        raise NotSupportedError(f"the {image_format} save-image format needs the '{name}' "
                                f"program, which is not installed (Debian's '{name}' package)")
    return path


def compressor(image_format: str) -> list[str]:
    return [_program(image_format), *_PROGRAMS[image_format][1]]


def decompressor(image_format: str) -> list[str]:
    return [_program(image_format), *_PROGRAMS[image_format][2]]
