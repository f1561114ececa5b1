"""Byte surgery on encoded containers (ISO-BMFF/MP4 boxes, RIFF/AVI chunks) for the bad inputs.

Each function rewrites one file in place: a rotation display matrix, garbled video payloads, or an unknown
codec fourcc. Sizes and offsets come from the file's own box/chunk headers, checked before use.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def _mp4_boxes(data: bytes | bytearray, start: int, end: int) -> Iterator[tuple[bytes, int, int, int]]:
    """Yield (type, offset, header size, box size) of the ISO-BMFF boxes in data[start:end]."""
    i = start
    while i + 8 <= end:
        size, typ = struct.unpack(">I4s", data[i : i + 8])
        hdr = 8
        if size == 1:
            size = struct.unpack(">Q", data[i + 8 : i + 16])[0]
            hdr = 16
        elif size == 0:
            size = end - i
        if size < hdr:
            raise ValueError(f"bad box size {size} at {i}")
        yield typ, i, hdr, size
        i += size


def set_mp4_rotation(path: Path, rotation: int) -> None:
    """Write a display matrix into the video's ``tkhd``: players turn the frames ``rotation`` deg clockwise.

    Patching the box works with every ffmpeg version (how ffmpeg itself is told to write rotation changed
    between 5.x and 6.x). The matrix is the one phones write for portrait video: ffprobe reports it as a
    display-matrix side data ``rotation`` of ``-rotation``.
    """
    if rotation != 90:
        raise ValueError("only 90 degree rotation is implemented")
    data = bytearray(path.read_bytes())
    one, w = 1 << 16, 1 << 30  # 16.16 and 2.30 fixed point
    matrix = struct.pack(">9i", 0, one, 0, -one, 0, 0, 0, 0, w)
    patched = 0
    for typ, off, hdr, size in _mp4_boxes(data, 0, len(data)):
        if typ != b"moov":
            continue
        for ttyp, toff, thdr, tsize in _mp4_boxes(data, off + hdr, off + size):
            if ttyp != b"trak":
                continue
            for ktyp, koff, khdr, _ in _mp4_boxes(data, toff + thdr, toff + tsize):
                if ktyp != b"tkhd":
                    continue
                version = data[koff + khdr]
                # version/flags, times, track id, reserved, duration, reserved(8), layer, group, volume,
                # reserved
                body = 4 + (8 + 8 + 4 + 4 + 8 if version == 1 else 4 + 4 + 4 + 4 + 4) + 8 + 2 + 2 + 2 + 2
                mo = koff + khdr + body
                data[mo : mo + 36] = matrix
                patched += 1
    if patched != 1:
        raise RuntimeError(f"expected one track header in {path}, patched {patched}")
    path.write_bytes(bytes(data))


def garble_mp4_samples(path: Path, rng: np.random.Generator) -> None:
    """Overwrite the payload of every ``mdat`` box with random bytes: the container (sizes, fps, codec) stays
    valid, but no video packet decodes."""
    data = bytearray(path.read_bytes())
    found = False
    for typ, off, hdr, size in list(_mp4_boxes(data, 0, len(data))):
        if typ == b"mdat":
            data[off + hdr : off + size] = rng.integers(0, 256, size - hdr, dtype=np.uint8).tobytes()
            found = True
    if not found:
        raise RuntimeError(f"no mdat box in {path}")
    path.write_bytes(bytes(data))


def _riff_chunks(data: bytes | bytearray, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """Yield (fourcc, offset, payload size) of the RIFF chunks in data[start:end]."""
    i = start
    while i + 8 <= end:
        fourcc, size = struct.unpack("<4sI", data[i : i + 8])
        yield fourcc, i, size
        i += 8 + size + (size & 1)  # chunks are padded to even sizes


def _avi_lists(data: bytes | bytearray) -> dict[bytes, tuple[int, int]]:
    """Top-level LIST chunks of an AVI file: list type -> (payload start after the type, end)."""
    if data[:4] != b"RIFF" or data[8:12] != b"AVI ":
        raise ValueError("not an AVI file")
    out = {}
    for fourcc, off, size in _riff_chunks(data, 12, len(data)):
        if fourcc == b"LIST":
            out[bytes(data[off + 8 : off + 12])] = (off + 12, off + 8 + size)
    return out


def garble_avi_frames(path: Path, rng: np.random.Generator) -> None:
    """Overwrite every video chunk (``##dc``/``##db``) in the AVI's ``movi`` list with random bytes."""
    data = bytearray(path.read_bytes())
    start, end = _avi_lists(data)[b"movi"]
    n = 0
    for fourcc, off, size in _riff_chunks(data, start, end):
        if fourcc[2:] in (b"dc", b"db") and size:
            data[off + 8 : off + 8 + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            n += 1
    if not n:
        raise RuntimeError(f"no video chunks in {path}")
    path.write_bytes(bytes(data))


def set_avi_fourcc(path: Path, fourcc: bytes) -> None:
    """Replace the video codec fourcc in the AVI header (``strh`` handler and ``strf`` compression) so that no
    decoder is known for the stream."""
    data = bytearray(path.read_bytes())
    start, end = _avi_lists(data)[b"hdrl"]
    header = bytes(data[start:end])
    n = header.count(b"XVID")
    if n == 0:
        raise RuntimeError(f"no XVID fourcc in the header of {path}")
    data[start:end] = header.replace(b"XVID", fourcc)
    path.write_bytes(bytes(data))
