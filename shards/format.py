"""Shard format: one WebDataset sample per video, all of its JPEG frames in one tar member.

See ``shards/FORMAT.md`` for the full specification. A sample is three consecutive tar members:

* ``<key>.json``  UTF-8 JSON metadata (sorted keys), including ``offsets``: the byte offset of every
  frame inside the ``.jpgs`` member plus the end offset (``len == num_frames + 1``);
* ``<key>.cls``   the label index as ASCII decimal (``-1`` when the split is unlabelled);
* ``<key>.jpgs``  the JPEG frames concatenated in temporal order.

One member per video (instead of one per frame) makes reading a 16-frame clip cost the same for a
300-frame video as for a 30-frame one: the tar layer is walked once per video (~56 µs per member with
webdataset's parser) and only the 16 needed frames are sliced out and decoded.

Tar files are written deterministically (ustar, mtime 0, uid/gid 0, no user names, no PAX headers), so
the same input gives byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

FORMAT_VERSION = 1
FRAMES_EXT = "jpgs"
META_EXT = "json"
CLS_EXT = "cls"
MEMBER_ORDER = (META_EXT, CLS_EXT, FRAMES_EXT)
# ustar names are limited to 100 bytes; keep room for ".jpgs".
MAX_KEY_LEN = 80

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_key(source: str) -> str:
    """A tar/WebDataset-safe sample key for a source name (any unicode, dots, spaces, leading ``-``).

    WebDataset splits a member name at its first dot, so keys contain only ``[A-Za-z0-9_-]`` and never
    start with ``-``. A hash of the full source name keeps keys unique when two names slugify alike;
    the original name is kept in the metadata (``source``).
    """
    # The slug uses the file name without its extension (readable); the hash covers the whole path.
    stem = source.rstrip("/").rsplit("/", 1)[-1]
    if "." in stem[1:]:
        stem = stem.rsplit(".", 1)[0]
    ascii_name = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    slug = _UNSAFE.sub("_", ascii_name).strip("_-")
    digest = hashlib.sha1(source.encode("utf-8")).hexdigest()[:10]
    slug = slug[: MAX_KEY_LEN - len(digest) - 1].rstrip("_-")
    return f"{slug}-{digest}" if slug else digest


def pack_frames(frames: Sequence[bytes]) -> tuple[bytes, list[int]]:
    """Concatenate JPEG byte strings; return the blob and the offset table (``len(frames) + 1`` ints)."""
    offsets = [0]
    for f in frames:
        offsets.append(offsets[-1] + len(f))
    return b"".join(frames), offsets


def unpack_frames(blob: bytes | memoryview, offsets: Sequence[int], indices: Iterable[int] | None = None) -> list[
    memoryview
]:
    """Slice JPEG frames out of a ``.jpgs`` blob without copying.

    Args:
        blob: the ``.jpgs`` member bytes.
        offsets: the metadata's ``offsets`` (``num_frames + 1`` ascending byte offsets).
        indices: stored-frame indices to return (any order, repeats allowed); all frames when None.
    """
    view = memoryview(blob)
    n = len(offsets) - 1
    idx = range(n) if indices is None else indices
    out = []
    for i in idx:
        if not 0 <= i < n:
            raise IndexError(f"frame index {i} out of range for a video of {n} stored frames")
        out.append(view[offsets[i] : offsets[i + 1]])
    return out


def decode_jpegs(jpegs: Iterable[bytes | memoryview]) -> np.ndarray:
    """Decode JPEG frames to one RGB array of shape ``(T, H, W, 3)``, dtype uint8.

    Raises ``ValueError`` naming the frame index when a frame is corrupt or frame sizes differ.
    """
    import simplejpeg

    arrays = []
    for i, j in enumerate(jpegs):
        try:
            arrays.append(simplejpeg.decode_jpeg(bytes(j), colorspace="RGB"))
        except Exception as exc:  # simplejpeg raises plain ValueError/RuntimeError without context
            raise ValueError(f"frame {i}: corrupt JPEG ({exc})") from exc
    if not arrays:
        return np.zeros((0, 0, 0, 3), np.uint8)
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"frames have different sizes: {sorted(shapes)}")
    return np.stack(arrays)


def encode_jpeg_rgb(frame: np.ndarray, quality: int) -> bytes:
    """Encode one ``(H, W, 3)`` uint8 RGB frame as baseline JPEG (4:2:0)."""
    import simplejpeg

    return simplejpeg.encode_jpeg(np.ascontiguousarray(frame), quality=quality, colorspace="RGB",
                                  colorsubsampling="420")


@dataclass(frozen=True)
class Sample:
    """One video as stored in a shard.

    ``meta`` holds at least: key, source, label, label_index, fps, stride, width, height, num_frames,
    offsets. ``frames`` is the ``.jpgs`` blob.
    """

    key: str
    label_index: int
    meta: dict[str, Any]
    frames: bytes

    def jpegs(self, indices: Iterable[int] | None = None) -> list[memoryview]:
        return unpack_frames(self.frames, self.meta["offsets"], indices)

    def decode(self, indices: Iterable[int] | None = None) -> np.ndarray:
        """Decoded frames ``(T, H, W, 3)`` uint8 RGB, for the given stored-frame indices."""
        return decode_jpegs(self.jpegs(indices))


def meta_bytes(meta: dict[str, Any]) -> bytes:
    """Canonical JSON encoding of the metadata (sorted keys, no spaces) so shards are byte-stable."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o444
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti


class TarSampleWriter:
    """Writes samples to a binary file object as a deterministic ustar archive.

    The caller owns the file object (see ``shards.storage.AtomicOutput`` for atomic commit).
    """

    def __init__(self, fileobj: IO[bytes]):
        # Kept open across write() calls and closed by close(): a context manager cannot span them.
        self._tar = tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self.count = 0
        self._keys: set[str] = set()

    def write(self, key: str, label_index: int, meta: dict[str, Any], frames_blob: bytes) -> None:
        self.write_stream(key, label_index, meta, io.BytesIO(frames_blob), len(frames_blob))

    def write_stream(self, key: str, label_index: int, meta: dict[str, Any], frames: IO[bytes], nbytes: int) -> None:
        """Like :meth:`write`, with the ``.jpgs`` member read from ``frames`` (``nbytes`` bytes, copied in
        chunks: a long video never has to be in memory)."""
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r}")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", key) or len(key) > MAX_KEY_LEN:
            raise ValueError(f"unsafe sample key {key!r}")
        offsets = meta.get("offsets")
        if offsets is None or offsets[-1] != nbytes:
            raise ValueError(f"{key}: metadata offsets do not match the frames blob ({nbytes} B)")
        self._keys.add(key)
        for ext, data in ((META_EXT, meta_bytes(meta)), (CLS_EXT, str(int(label_index)).encode("ascii"))):
            self._tar.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))
        self._tar.addfile(_tarinfo(f"{key}.{FRAMES_EXT}", nbytes), frames)
        self.count += 1

    def close(self) -> None:
        self._tar.close()


def iter_samples(fileobj: IO[bytes], *, source: str = "<stream>") -> Iterator[Sample]:
    """Stream samples from a shard file object, in stored order.

    Raises ``ValueError`` naming ``source`` and the member when the archive does not follow the format.
    """
    group: dict[str, bytes] = {}
    key: str | None = None
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base, _, ext = member.name.partition(".")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if key is not None and base != key:
                yield _make_sample(key, group, source)
                group = {}
            key = base
            group[ext] = data
        if key is not None:
            yield _make_sample(key, group, source)


def _make_sample(key: str, group: dict[str, bytes], source: str) -> Sample:
    missing = [e for e in MEMBER_ORDER if e not in group]
    if missing:
        raise ValueError(f"{source}: sample {key!r} lacks member(s) {missing}")
    try:
        meta = json.loads(group[META_EXT])
        label_index = int(group[CLS_EXT])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{source}: sample {key!r} has unreadable metadata: {exc}") from exc
    offsets = meta.get("offsets")
    if not offsets or offsets[-1] != len(group[FRAMES_EXT]):
        raise ValueError(f"{source}: sample {key!r} offsets do not match its .{FRAMES_EXT} member")
    return Sample(key=key, label_index=label_index, meta=meta, frames=group[FRAMES_EXT])


def sample_from_wds(sample: dict[str, Any]) -> Sample:
    """Convert a raw WebDataset sample dict (``__key__``, ``json``, ``cls``, ``jpgs`` as bytes)."""
    key = sample["__key__"]
    src = sample.get("__url__", "<webdataset>")
    return _make_sample(key.rsplit("/", 1)[-1], {e: sample[e] for e in MEMBER_ORDER if e in sample}, src)
