"""The IDX file format (MNIST's): a big-endian magic number, one uint32 per dimension, then the
bytes. Read defensively: the header is checked before any data is read, and a file is read only
up to the size its header promises, so a lying header or a gzip bomb costs no more memory than
an honest file of that size.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ..core.errors import NetdslError

MAGIC = {"images": 0x00000803, "labels": 0x00000801}
# IDX type codes (the magic's third byte); netdsl reads unsigned bytes only.
_TYPE_NAMES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32",
               0x0E: "float64"}
MAX_SIDE = 8192             # pixels per image side; MNIST has 28, scanned pages a few thousand
MAX_BYTES = 1 << 32         # 4 GiB of uint8 data: 16 GiB once converted to float32
_CHUNK = 1 << 20


def _describe(magic: int) -> str:
    kind = _TYPE_NAMES.get((magic >> 8) & 0xFF, f"unknown type 0x{(magic >> 8) & 0xFF:02x}")
    return f"0x{magic:08x} ({kind}, {magic & 0xFF} dimensions)"


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_at_most(path: Path, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``path`` (gunzipped for .gz), read in chunks: one big read()
    would allocate ``limit`` bytes up front, whatever the file holds."""
    out = bytearray()
    try:
        with _open(path) as f:
            while len(out) < limit:
                block = f.read(min(_CHUNK, limit - len(out)))
                if not block:
                    break
                out += block
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        # BadGzipFile is an OSError, so it must be caught before the generic read failure.
        raise NetdslError(f"{path}: corrupt gzip file ({e})",
                          hint="download it again, or check it with 'gzip -t'") from None
    except OSError as e:
        raise NetdslError(f"cannot read {path}: {e.strerror or e}") from None
    return bytes(out)


def parse_header(data: bytes, path: Path, kind: str) -> tuple[int, tuple[int, ...]]:
    """(header length, dims) of an IDX ``kind`` ('images' or 'labels') file from its first
    bytes, after checking the magic number and that the dims are sane."""
    expected = MAGIC[kind]
    ndim = expected & 0xFF
    header_len = 4 + 4 * ndim
    if len(data) < 4:
        raise NetdslError(f"{path}: file is truncated: {len(data)} bytes, too short for an "
                          f"IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected:
        other = "labels" if kind == "images" else "images"
        hint = (f"this is an IDX {other} file: are the file names swapped?"
                if magic == MAGIC[other] else "the file is gzip-compressed: name it *.gz"
                if data[:2] == b"\x1f\x8b" else None)
        raise NetdslError(f"{path}: bad IDX magic number: expected 0x{expected:08x} for "
                          f"{kind}, found 0x{magic:08x}",
                          detail=f"expected {_describe(expected)}, found {_describe(magic)}",
                          hint=hint)
    if len(data) < header_len:
        raise NetdslError(f"{path}: file is truncated: {len(data)} bytes, the IDX {kind} "
                          f"header alone needs {header_len}")
    dims = struct.unpack(">" + "I" * ndim, data[4:header_len])
    if dims[0] == 0:
        raise NetdslError(f"{path}: empty dataset: the header says it holds 0 {kind}")
    if kind == "images" and not all(1 <= d <= MAX_SIDE for d in dims[1:]):
        raise NetdslError(f"{path}: the header says each image is {dims[1]}×{dims[2]} pixels",
                          detail=f"sides must be between 1 and {MAX_SIDE}",
                          hint="the header is damaged: download the file again")
    size = math.prod(dims)
    if size > MAX_BYTES:
        raise NetdslError(f"{path}: the header promises {size:,} bytes of {kind} "
                          f"({' × '.join(map(str, dims))})",
                          detail=f"netdsl reads IDX files of at most {MAX_BYTES:,} bytes",
                          hint="the header is damaged: download the file again")
    return header_len, dims


def read_header(path: Path, kind: str) -> tuple[int, tuple[int, ...]]:
    """(header length, dims), reading only the header."""
    return parse_header(_read_at_most(path, 4 + 4 * (MAGIC[kind] & 0xFF)), path, kind)


def read_idx(path: Path, kind: str) -> np.ndarray:
    """The uint8 array of an IDX ``kind`` file, checked against its header; reads at most one
    byte more than the header promises (to tell a too-long file)."""
    header_len, dims = read_header(path, kind)
    want = math.prod(dims)
    if path.suffix != ".gz":
        # An uncompressed file's length is known without reading it.
        have = path.stat().st_size - header_len
        data = b"" if have != want else _read_at_most(path, header_len + want)[header_len:]
    else:
        data = _read_at_most(path, header_len + want + 1)[header_len:]
        have = len(data)
    if have != want:
        what = (f"{dims[0]} images of {dims[1]}×{dims[2]} = {want:,} bytes" if kind == "images"
                else f"{dims[0]} labels = {want:,} bytes")
        problem = "file is truncated" if have < want else "file is longer than its header says"
        shown = f"{have:,}" if have <= want or path.suffix != ".gz" else "more"
        raise NetdslError(f"{path}: {problem}: header says {what}, file has {shown} "
                          f"(after the {header_len}-byte header)",
                          hint="download it again" if have < want else None)
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)
