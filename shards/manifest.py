"""Parquet manifests: one row per video and one row per shard, for each split of a dataset.

Layout below a dataset's output root (see ``shards/FORMAT.md``)::

    dataset.json                         dataset metadata, classes, splits → shard sets, config used
    shards/<set>/shard-NNNNNN.tar        WebDataset shards (a *set* is the group of splits a video is in)
    records/<set>/shard-NNNNNN.json      the task record that produced each shard (resume bookkeeping)
    manifest/<split>/videos.parquet      one row per video of the split (ok, failed, missing)
    manifest/<split>/shards.parquet      one row per shard holding videos of the split
    manifest/unlisted/videos.parquet     files found on disk that no list names
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shards import storage
from shards.reader import check_sample, open_shard

STATUSES = ("ok", "failed", "missing", "unlisted")

VIDEO_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("label", pa.string()),
        ("label_index", pa.int32()),
        ("split", pa.string()),
        ("shard_set", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("num_frames", pa.int32()),
        ("source_frames", pa.int32()),
        ("stride", pa.int32()),
        ("fps", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("shard", pa.string()),
    ]
)

SHARD_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("shard_set", pa.string()),
        ("samples", pa.int32()),
        ("frames", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
    ]
)


@dataclass(frozen=True)
class VideoRow:
    key: str
    source: str
    label: str | None
    label_index: int
    split: str
    shard_set: str
    status: str
    reason: str = ""
    num_frames: int = 0
    source_frames: int = 0
    stride: int = 1
    fps: float = 0.0
    width: int = 0
    height: int = 0
    shard: str | None = None

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")


@dataclass(frozen=True)
class ShardRow:
    path: str
    shard_set: str
    samples: int
    frames: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    videos: list[VideoRow] = field(default_factory=list)
    shards: list[ShardRow] = field(default_factory=list)


def _table(rows: Iterable[Any], schema: pa.Schema) -> pa.Table:
    cols: dict[str, list] = {f.name: [] for f in schema}
    for r in rows:
        for name in cols:
            cols[name].append(getattr(r, name))
    return pa.table(cols, schema=schema)


def _write_table(fs, path: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    # Fixed writer settings (no created_by timestamp exists in Parquet) keep manifests byte-stable.
    pq.write_table(table, buf, compression="zstd", write_statistics=False)
    storage.write_bytes_atomic(fs, path, buf.getvalue())


def write_split(root: str, split: str, manifest: Manifest) -> None:
    """Atomically write ``manifest/<split>/{videos,shards}.parquet`` below ``root``."""
    fs, base = storage.resolve(root)
    d = storage.join(base, "manifest", split)
    videos = sorted(manifest.videos, key=lambda r: (r.status != "ok", r.source))
    _write_table(fs, storage.join(d, "shards.parquet"), _table(sorted(manifest.shards, key=lambda s: s.path),
                                                                  SHARD_SCHEMA))
    _write_table(fs, storage.join(d, "videos.parquet"), _table(videos, VIDEO_SCHEMA))


def read_table(root: str, split: str, which: str) -> pa.Table:
    """Read ``manifest/<split>/<which>.parquet`` (``which`` is ``videos`` or ``shards``)."""
    fs, base = storage.resolve(root)
    path = storage.join(base, "manifest", split, f"{which}.parquet")
    if not storage.exists(fs, path):
        raise FileNotFoundError(f"{path}: no manifest for split {split!r} (was the dataset preprocessed?)")
    with fs.open_input_file(path) as f:
        return pq.read_table(f)


def read_dataset_info(root: str) -> dict[str, Any]:
    fs, base = storage.resolve(root)
    path = storage.join(base, "dataset.json")
    if not storage.exists(fs, path):
        raise FileNotFoundError(f"{path}: not a preprocessed dataset (dataset.json missing)")
    return json.loads(storage.read_bytes(fs, path))


def shard_urls(root: str, split: str) -> list[str]:
    """Absolute paths/URIs of the shards holding ``split``, in manifest order."""
    prefix = storage.canonical(root)
    return [storage.join(prefix, p) for p in read_table(root, split, "shards").column("path").to_pylist()]


@dataclass(frozen=True)
class VerifyResult:
    shards_checked: int
    samples_checked: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_shard_samples(fs, path: str, rel: str, problems: list[str]) -> list[str]:
    """Read every sample of a shard the way the training loader does (:class:`ShardReader`,
    :func:`check_sample`, the frame blob by byte range, the first frame's JPEG header); append a problem per
    bad sample and return the keys. Raises ``ValueError``/``OSError`` when the tar itself is unreadable."""
    import simplejpeg

    f, reader = open_shard(rel, sequential=True, filesystem=(fs, path))
    keys = []
    try:
        for raw in reader.samples():
            keys.append(raw.key)
            try:
                meta, _ = check_sample(raw)
                assert raw.frames is not None  # check_sample refuses a sample without frames
                offsets = meta["offsets"]
                first = reader.read_range(raw.frames, 0, offsets[1])
                simplejpeg.decode_jpeg_header(first)
            except ValueError as exc:  # ShardFormatError is a ValueError too
                problems.append(f"{rel}: sample {raw.key!r}: {exc}")
    finally:
        f.close()
    return keys


def verify(root: str, *, check_samples: bool = True) -> VerifyResult:
    """Re-check every shard of every split against the manifests.

    Checks size and sha256 of each shard, and (``check_samples``) that the tar holds exactly the keys the
    manifest lists as ok for it, reading every sample through the training loader's reader and metadata
    check (:func:`shards.reader.check_sample`), so a shard verify passes is one training can read.
    Returns the problems found; never raises on a mismatch.
    """
    fs, base = storage.resolve(root)
    info = read_dataset_info(root)
    problems: list[str] = []
    seen: dict[str, ShardRow] = {}
    expected_keys: dict[str, set[str]] = {}
    for split in info["splits"]:
        try:
            shards = read_table(root, split, "shards").to_pylist()
            videos = read_table(root, split, "videos").to_pylist()
        except FileNotFoundError as exc:
            problems.append(str(exc))
            continue
        for s in shards:
            seen[s["path"]] = ShardRow(**s)
        for v in videos:
            if v["status"] == "ok":
                expected_keys.setdefault(v["shard"], set()).add(v["key"])
    n_samples = 0
    for rel, row in sorted(seen.items()):
        path = storage.join(base, rel)
        if not storage.exists(fs, path):
            problems.append(f"{rel}: missing")
            continue
        digest, nbytes = storage.sha256_file(fs, path)
        if nbytes != row.bytes:
            problems.append(f"{rel}: size {nbytes} B, manifest says {row.bytes} B")
        if digest != row.sha256:
            problems.append(f"{rel}: sha256 {digest[:12]}…, manifest says {row.sha256[:12]}…")
            continue
        if check_samples:
            try:
                keys = _check_shard_samples(fs, path, rel, problems)
            except (ValueError, OSError) as exc:
                problems.append(f"{rel}: unreadable: {exc}")
                continue
            n_samples += len(keys)
            if len(keys) != row.samples:
                problems.append(f"{rel}: {len(keys)} samples, manifest says {row.samples}")
            want = expected_keys.get(rel, set())
            if set(keys) != want:
                problems.append(f"{rel}: keys differ from the manifest's ok videos "
                                f"({len(set(keys) - want)} extra, {len(want - set(keys))} absent)")
    return VerifyResult(len(seen), n_samples, tuple(problems))
