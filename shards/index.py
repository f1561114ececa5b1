"""Per-shard index: where every sample's members and frames are, so a reader needs no tar walk.

Preprocessing writes ``shards/<set>/shard-NNNNNN.index.json`` next to each shard (``e3d index ROOT`` writes
it for shards made before indexes existed); ``manifest/<split>/shards.parquet`` lists it (``index_path``,
``index_sha256``). With it, reading a training clip from object storage is one ranged read of exactly the
clip's frames: the label, frame count, stride and frame size of the video come from the index, not from the
sample's JSON member.

Format (UTF-8 JSON, sorted keys, no whitespace)::

    {"format": "e3d-shard-index", "version": 1,
     "shard_bytes": <int>, "shard_sha256": <hex>,
     "samples": [{"key": str, "label": int, "num_frames": int, "stride": int, "width": int, "height": int,
                  "json": [offset, size], "cls": [offset, size], "jpgs": [offset, size],
                  "frames": [0, ..., size of jpgs]}, ...]}

Member offsets are absolute byte offsets of the member's data in the shard file; ``frames`` are the frame
offsets inside the ``.jpgs`` member (``num_frames + 1`` ascending ints), the same table as the sample
metadata's ``offsets``. An index is hostile input like any file: :func:`parse_index` checks every type, range
and ordering before anything is trusted and raises :class:`ShardIndexError` naming the file and the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shards.format import CLS_EXT, FRAMES_EXT, MAX_KEY_LEN, META_EXT, SampleError, validate_sample

INDEX_FORMAT = "e3d-shard-index"
INDEX_VERSION = 1
INDEX_SUFFIX = ".index.json"
#: An index larger than this is refused without parsing (a 100-sample shard of 1-hour videos at 30 fps is
#: ~30 MB of offsets; nothing sane comes near).
MAX_INDEX_BYTES = 256 << 20

_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


class ShardIndexError(ValueError):
    """An index file is malformed or does not describe its shard (the message names the file)."""


@dataclass(frozen=True)
class IndexEntry:
    """One sample of a shard: member data ranges ``(offset, size)`` in the shard file and its frame table.

    ``frames`` is int64 ``(num_frames + 1,)``: frame ``i`` is bytes ``frames[i]:frames[i+1]`` of the ``.jpgs``
    member, i.e. shard bytes ``jpgs[0] + frames[i] : jpgs[0] + frames[i+1]``.
    """

    key: str
    label: int
    num_frames: int
    stride: int
    width: int
    height: int
    json: tuple[int, int]
    cls: tuple[int, int]
    jpgs: tuple[int, int]
    frames: np.ndarray

    def frame_range(self, lo: int, hi: int) -> tuple[int, int]:
        """Absolute shard byte range ``[start, stop)`` holding stored frames ``lo..hi`` (inclusive)."""
        if not 0 <= lo <= hi < self.num_frames:
            raise IndexError(f"{self.key}: frames {lo}..{hi} outside 0..{self.num_frames - 1}")
        base = self.jpgs[0]
        return base + int(self.frames[lo]), base + int(self.frames[hi + 1])

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "num_frames": self.num_frames, "stride": self.stride,
                "width": self.width, "height": self.height, "json": list(self.json), "cls": list(self.cls),
                "jpgs": list(self.jpgs), "frames": [int(x) for x in self.frames]}


@dataclass(frozen=True)
class ShardIndex:
    """The index of one shard: its size, sha256 and samples in stored order."""

    shard_bytes: int
    shard_sha256: str
    entries: tuple[IndexEntry, ...]

    def by_key(self) -> dict[str, IndexEntry]:
        return {e.key: e for e in self.entries}

    def to_bytes(self) -> bytes:
        doc = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "shard_bytes": self.shard_bytes,
               "shard_sha256": self.shard_sha256, "samples": [e.to_json() for e in self.entries]}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def index_path_for(shard_path: str) -> str:
    """``shards/train/shard-000001.tar`` → ``shards/train/shard-000001.index.json``."""
    stem = shard_path[:-4] if shard_path.endswith(".tar") else shard_path
    return stem + INDEX_SUFFIX


# -- parsing (hostile input) ------------------------------------------------------------------------------


def _int(v: Any, what: str, lo: int = 0, hi: int | None = None) -> int:
    # bool is an int subclass in Python; JSON true must not pass as 1.
    if type(v) is not int:
        raise ValueError(f"{what} is {type(v).__name__}, not an integer")
    if v < lo or (hi is not None and v > hi):
        raise ValueError(f"{what} {v} outside [{lo}, {hi if hi is not None else '∞'}]")
    return v


def _range(v: Any, what: str, shard_bytes: int) -> tuple[int, int]:
    if not isinstance(v, list) or len(v) != 2:
        raise ValueError(f"{what} is not an [offset, size] pair")
    off = _int(v[0], f"{what} offset", 0, shard_bytes)
    size = _int(v[1], f"{what} size", 0, shard_bytes - off)
    return off, size


def _entry(d: Any, i: int, shard_bytes: int) -> IndexEntry:
    if not isinstance(d, dict):
        raise ValueError(f"sample {i} is not an object")
    key = d.get("key")
    if not isinstance(key, str) or len(key) > MAX_KEY_LEN or not _KEY.fullmatch(key):
        raise ValueError(f"sample {i} has a bad key {key!r:.100}")
    label = _int(d.get("label"), f"{key}: label", -1)
    n = _int(d.get("num_frames"), f"{key}: num_frames", 1)
    stride = _int(d.get("stride"), f"{key}: stride", 1)
    width = _int(d.get("width"), f"{key}: width", 1, 1 << 16)
    height = _int(d.get("height"), f"{key}: height", 1, 1 << 16)
    ranges = {ext: _range(d.get(ext), f"{key}: {ext}", shard_bytes) for ext in (META_EXT, CLS_EXT, FRAMES_EXT)}
    frames = d.get("frames")
    if not isinstance(frames, list) or len(frames) != n + 1:
        raise ValueError(f"{key}: frame table does not have num_frames + 1 = {n + 1} entries")
    if not all(type(x) is int for x in frames):
        raise ValueError(f"{key}: frame table holds non-integers")
    table = np.asarray(frames, dtype=np.int64) if n < 1 << 24 else None
    if table is None or table[0] != 0 or table[-1] != ranges[FRAMES_EXT][1] or (np.diff(table) < 0).any():
        raise ValueError(f"{key}: frame table is not ascending from 0 to the .jpgs size")
    return IndexEntry(key, label, n, stride, width, height, ranges[META_EXT], ranges[CLS_EXT],
                      ranges[FRAMES_EXT], table)


def parse_index(data: bytes, source: str, *, shard_bytes: int | None = None,
                shard_sha256: str | None = None) -> ShardIndex:
    """Parse and check an index file's bytes; raise :class:`ShardIndexError` naming ``source`` if anything is off.

    ``shard_bytes`` / ``shard_sha256``: the shard's size and digest from the manifest; the index must name the
    same ones (an index of another version of the shard would point at the wrong bytes).
    """
    if len(data) > MAX_INDEX_BYTES:
        raise ShardIndexError(f"{source}: index of {len(data)} B exceeds {MAX_INDEX_BYTES} B")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ShardIndexError(f"{source}: index is not valid JSON ({str(exc)[:200]})") from None
    try:
        if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
            raise ValueError(f"not an {INDEX_FORMAT} file")
        if doc.get("version") != INDEX_VERSION:
            raise ValueError(f"unsupported index version {doc.get('version')!r:.40}")
        size = _int(doc.get("shard_bytes"), "shard_bytes", 0)
        digest = doc.get("shard_sha256")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError("shard_sha256 is not a sha256 hex digest")
        if shard_bytes is not None and size != shard_bytes:
            raise ValueError(f"describes a shard of {size} B, the shard has {shard_bytes} B")
        if shard_sha256 is not None and digest != shard_sha256:
            raise ValueError("describes another version of the shard (sha256 differs)")
        samples = doc.get("samples")
        if not isinstance(samples, list):
            raise ValueError("samples is not a list")
        entries = tuple(_entry(d, i, size) for i, d in enumerate(samples))
        end = 0
        seen: set[str] = set()
        for e in entries:
            if e.key in seen:
                raise ValueError(f"duplicate key {e.key!r}")
            seen.add(e.key)
            # Members of a sample are consecutive and in order; samples do not overlap.
            if not (end <= e.json[0] and e.json[0] + e.json[1] <= e.cls[0] and e.cls[0] + e.cls[1] <= e.jpgs[0]):
                raise ValueError(f"{e.key}: member ranges overlap or are out of order")
            end = e.jpgs[0] + e.jpgs[1]
    except ValueError as exc:
        raise ShardIndexError(f"{source}: {exc}") from None
    return ShardIndex(size, digest, entries)


# -- building -----------------------------------------------------------------------------------------------


def entry_from_sample(key: str, members: dict[str, bytes], ranges: dict[str, tuple[int, int]]) -> IndexEntry:
    """An entry from a sample's JSON and label members and the ``(offset, size)`` of its three members.

    Raises :class:`shards.format.SampleError` when the metadata does not pass :func:`validate_sample`.
    """
    meta, label = validate_sample(members.get(META_EXT), members.get(CLS_EXT), ranges[FRAMES_EXT][1])
    if meta.get("key", key) != key:
        raise SampleError(f"metadata key {meta.get('key')!r:.100} differs from the member name {key!r}")
    return IndexEntry(key, label, meta["num_frames"], meta["stride"], meta["width"], meta["height"],
                      ranges[META_EXT], ranges[CLS_EXT], ranges[FRAMES_EXT],
                      np.asarray(meta["offsets"], dtype=np.int64))


def make_index(entries: Iterable[IndexEntry], shard_bytes: int, shard_sha256: str) -> ShardIndex:
    return ShardIndex(shard_bytes, shard_sha256, tuple(entries))


def build_index(url: str, *, known: tuple[str, int] | None = None) -> ShardIndex:
    """Index an existing shard by walking its tar headers (reads the JSON and label members, seeks past frames).

    Raises ``ValueError`` (:class:`shards.reader.ShardFormatError` or :class:`shards.format.SampleError`) naming
    the shard when it is broken: an index must describe every sample exactly.
    """
    from shards import storage
    from shards.reader import open_shard

    fs, path = storage.resolve(url)
    # known: (sha256, size) the caller has just checked (``e3d verify``), saving a second pass over the bytes.
    digest, nbytes = known if known is not None else storage.sha256_file(fs, path)
    f, reader = open_shard(url, sequential=False, filesystem=(fs, path))
    entries = []
    try:
        for raw in reader.samples():
            missing = raw.missing()
            if missing:
                raise SampleError(f"{url}: sample {raw.key!r} lacks member(s) {missing}")
            assert raw.frames is not None
            ranges = {**raw.ranges, FRAMES_EXT: (raw.frames.offset, raw.frames.size)}
            try:
                entries.append(entry_from_sample(raw.key, raw.members, ranges))
            except SampleError as exc:
                raise SampleError(f"{url}: sample {raw.key!r}: {exc}") from None
    finally:
        f.close()
    return make_index(entries, nbytes, digest)


def check_index(index: ShardIndex, url: str, *, known: tuple[str, int] | None = None) -> list[str]:
    """Problems found comparing ``index`` with the shard at ``url`` (re-indexes the shard); empty when equal.

    ``known``: the shard's verified ``(sha256, size)``, when the caller has hashed it already."""
    try:
        actual = build_index(url, known=known)
    except (ValueError, OSError) as exc:
        return [f"cannot re-index the shard: {exc}"]
    if actual.to_bytes() == index.to_bytes():
        return []
    problems = []
    if (actual.shard_bytes, actual.shard_sha256) != (index.shard_bytes, index.shard_sha256):
        problems.append("index describes another version of the shard")
    a, b = actual.by_key(), index.by_key()
    if set(a) != set(b):
        problems.append(f"index keys differ from the shard's ({len(set(b) - set(a))} extra, "
                        f"{len(set(a) - set(b))} absent)")
    bad = [k for k in a.keys() & b.keys() if a[k].to_json() != b[k].to_json()]
    if bad:
        problems.append(f"{len(bad)} sample(s) indexed wrongly (e.g. {sorted(bad)[0]!r})")
    return problems or ["index differs from the shard's (sample order)"]


def entries_in_order(index: ShardIndex, keys: Sequence[str]) -> list[IndexEntry | None]:
    """The entries for ``keys`` (None for a key the index lacks)."""
    m = index.by_key()
    return [m.get(k) for k in keys]
