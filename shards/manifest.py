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

import hashlib
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
        # The shard's index (shards/index.py) relative to the root, and its sha256; null for shards made
        # before indexes existed (`e3d index ROOT` adds them).
        ("index_path", pa.string()),
        ("index_sha256", pa.string()),
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
    index_path: str | None = None
    index_sha256: str | None = None


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
        problems.extend(_verify_index(fs, base, rel, row, check_samples))
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


def _verify_index(fs, base: str, rel: str, row: ShardRow, deep: bool) -> list[str]:
    """Problems with a shard's index: missing, sha256 mismatch, malformed, or (``deep``) not describing the shard."""
    if not row.index_path:
        return []
    from shards.index import ShardIndexError, check_index, parse_index

    ipath = storage.join(base, row.index_path)
    if not storage.exists(fs, ipath):
        return [f"{row.index_path}: missing (index of {rel})"]
    data = storage.read_bytes(fs, ipath)
    if hashlib.sha256(data).hexdigest() != row.index_sha256:
        return [f"{row.index_path}: sha256 differs from the manifest's"]
    try:
        index = parse_index(data, row.index_path, shard_bytes=row.bytes, shard_sha256=row.sha256)
    except ShardIndexError as exc:
        return [str(exc)]
    if len(index.entries) != row.samples:
        return [f"{row.index_path}: {len(index.entries)} samples, manifest says {row.samples}"]
    if deep:
        shard = storage.join(storage.to_uri(fs, base), rel)
        return [f"{row.index_path}: {p}" for p in check_index(index, shard, known=(row.sha256, row.bytes))]
    return []


@dataclass(frozen=True)
class IndexResult:
    written: int
    present: int
    problems: tuple[str, ...]


def index_root(root: str, *, force: bool = False) -> IndexResult:
    """Write the index of every shard of ``root`` that has none (all with ``force``); list them in the manifests.

    For shards made before indexes existed. Each index is built by walking the shard (which must match its
    manifest sha256), written atomically next to it, added to its task record (so a preprocessing rerun keeps
    it) and to every split's ``shards.parquet``. A shard that does not match its manifest is reported, not
    indexed. Rerunnable: indexes already listed are kept unless ``force``.
    """
    from shards.index import build_index, index_path_for

    fs, base = storage.resolve(root)
    info = read_dataset_info(root)
    uri = storage.to_uri(fs, base)
    tables: dict[str, list[dict[str, Any]]] = {}
    for split in [*info["splits"], "unlisted"]:
        try:
            tables[split] = read_table(root, split, "shards").to_pylist()
        except FileNotFoundError:
            continue
    done: dict[str, tuple[str, str] | None] = {}
    problems: list[str] = []
    written = present = 0
    for rows in tables.values():
        for r in rows:
            rel = r["path"]
            if rel in done:
                continue
            if r.get("index_path") and not force:
                done[rel] = (r["index_path"], r["index_sha256"])
                present += 1
                continue
            try:
                index = build_index(storage.join(uri, rel))
            except (ValueError, OSError) as exc:
                problems.append(f"{rel}: not indexed: {exc}")
                done[rel] = None
                continue
            if (index.shard_sha256, index.shard_bytes) != (r["sha256"], r["bytes"]):
                problems.append(f"{rel}: not indexed: the shard differs from its manifest (run e3d verify)")
                done[rel] = None
                continue
            irel = index_path_for(rel)
            digest = storage.write_bytes_atomic(fs, storage.join(base, irel), index.to_bytes())
            done[rel] = (irel, digest)
            written += 1
            _record_index(fs, base, rel, irel, digest)
    for split, rows in tables.items():
        for r in rows:
            got = done.get(r["path"])
            r["index_path"], r["index_sha256"] = got if got else (None, None)
        table = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)
        _write_table(fs, storage.join(base, "manifest", split, "shards.parquet"), table)
    return IndexResult(written, present, tuple(problems))


def _record_index(fs, base: str, shard_rel: str, index_rel: str, digest: str) -> None:
    # shards/<set>/shard-N.tar -> records/<set>/shard-N.json (FORMAT.md layout)
    if not shard_rel.startswith("shards/") or not shard_rel.endswith(".tar"):
        return
    rpath = storage.join(base, "records", shard_rel[len("shards/"):-len(".tar")] + ".json")
    if not storage.exists(fs, rpath):
        return
    try:
        rec = json.loads(storage.read_bytes(fs, rpath))
    except ValueError:
        return
    if rec.get("shard") != shard_rel:
        return
    rec["index_path"], rec["index_sha256"] = index_rel, digest
    storage.write_bytes_atomic(fs, rpath, json.dumps(rec, sort_keys=True, indent=1).encode())
