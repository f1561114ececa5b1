"""Per-shard indexes (issue 13, item 1): written by preprocessing, listed in shards.parquet, checked by
``e3d verify``, built for old shards by ``e3d index``; the parser refuses hostile input (seeded fuzz)."""

from __future__ import annotations

import hashlib
import json
import random
import shutil

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main as cli
from shards import storage
from shards.index import ShardIndexError, build_index, parse_index
from shards.manifest import index_root, read_table, verify
from shards.reader import open_shard
from tests.helpers import jester_shards


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> str:
    return jester_shards(tmp_path_factory.mktemp("index-data"), num_classes=2, videos_per_class=3, seed=3,
                         shard_size=3)


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _copy(src: str, tmp_path) -> str:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return str(dst)


def test_preprocessing_writes_an_index_that_locates_every_frame(indexed):
    rows = read_table(indexed, "train", "shards").to_pylist()
    assert rows
    for row in rows:
        assert row["index_path"] == row["path"].replace(".tar", ".index.json")
        raw = _read(f"{indexed}/{row['index_path']}")
        assert hashlib.sha256(raw).hexdigest() == row["index_sha256"]
        index = parse_index(raw, row["index_path"], shard_bytes=row["bytes"], shard_sha256=row["sha256"])
        assert len(index.entries) == row["samples"]
        # the index is what walking the shard gives, byte for byte
        assert build_index(f"{indexed}/{row['path']}").to_bytes() == raw
        # and its ranges hold exactly the frames the tar walk finds
        shard = _read(f"{indexed}/{row['path']}")
        f, reader = open_shard(f"{indexed}/{row['path']}")
        with f:
            for entry, sample in zip(index.entries, reader.samples(), strict=True):
                meta = json.loads(sample.members["json"])
                assert entry.key == sample.key and entry.num_frames == meta["num_frames"]
                assert (entry.width, entry.height, entry.stride) == (meta["width"], meta["height"], meta["stride"])
                for i in (0, entry.num_frames - 1):
                    a, b = entry.frame_range(i, i)
                    start = sample.frames.offset + meta["offsets"][i]
                    assert shard[a:b] == shard[start:start + meta["offsets"][i + 1] - meta["offsets"][i]]
                    assert shard[a:a + 2] == b"\xff\xd8"  # a JPEG starts there
    assert verify(indexed).ok


def test_verify_reports_a_bad_or_missing_index(indexed, tmp_path):
    root = _copy(indexed, tmp_path)
    row = read_table(root, "train", "shards").to_pylist()[0]
    path = f"{root}/{row['index_path']}"
    raw = _read(path)
    doc = json.loads(raw)
    doc["samples"][0]["frames"][1] += 1  # well-formed, sha256 fixed up, but wrong
    bad = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    _write(path, bad)
    res = verify(root)
    assert not res.ok and any(row["index_path"] in p and "sha256" in p for p in res.problems)
    _write(path, b"{")
    assert any("sha256" in p for p in verify(root).problems)
    storage.resolve(path)[0].delete_file(path)
    assert any("missing" in p and row["index_path"] in p for p in verify(root).problems)


def test_e3d_index_builds_indexes_for_old_shards(indexed, tmp_path, capsys):
    root = _copy(indexed, tmp_path)
    fs, base = storage.resolve(root)
    # make it look like a dataset preprocessed before indexes existed
    for split in ("train", "validation", "test", "unlisted"):
        p = f"{base}/manifest/{split}/shards.parquet"
        t = pq.read_table(p)
        pq.write_table(t.drop_columns(["index_path", "index_sha256"]), p)
    for info in fs.get_file_info(pafs.FileSelector(f"{base}/shards", recursive=True)):
        if info.path.endswith(".index.json"):
            fs.delete_file(info.path)
    assert verify(root).ok  # old shards without an index keep working
    assert cli(["index", root]) == 0
    assert "indexed" in capsys.readouterr().out
    rows = read_table(root, "train", "shards").to_pylist()
    assert all(r["index_path"] and r["index_sha256"] for r in rows)
    assert verify(root).ok
    # byte-identical to the indexes preprocessing writes, and a rerun keeps them
    for r in rows:
        assert _read(f"{base}/{r['index_path']}") == _read(f"{indexed}/{r['index_path']}")
    again = index_root(root)
    assert again.written == 0 and again.present > 0
    # the task records name the index, so a preprocessing rerun keeps it in the manifests
    rec = json.loads(_read(f"{base}/records/{rows[0]['path'][len('shards/'):-4]}.json"))
    assert rec["index_path"] == rows[0]["index_path"]


def _mutate(rng: random.Random, raw: bytes) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:  # bit flips
        b = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == 1:  # truncation
        return raw[: rng.randrange(len(raw))]
    doc = json.loads(raw)
    s = rng.choice(doc["samples"])
    field = rng.choice(["label", "num_frames", "stride", "width", "height", "json", "cls", "jpgs", "frames", "key"])
    value = rng.choice([-1, -(1 << 40), 1 << 62, 0, True, None, "7", 3.5, [], [1 << 62, 5], [-5, 10], {"a": 1},
                        "../x", "k" * 200, [0] * 3])
    if kind == 2:
        s[field] = value
    else:  # an element of a list field
        target = s[rng.choice(["frames", "jpgs", "json"])]
        target[rng.randrange(len(target))] = value
    return json.dumps(doc).encode()


def test_index_parser_fuzz(indexed):
    row = read_table(indexed, "train", "shards").to_pylist()[0]
    raw = _read(f"{indexed}/{row['index_path']}")
    rng = random.Random(13)
    accepted = refused = 0
    for _ in range(400):
        data = _mutate(rng, raw)
        try:
            index = parse_index(data, "idx", shard_bytes=row["bytes"])
        except ShardIndexError as exc:
            assert str(exc).startswith("idx: ")
            refused += 1
            continue
        accepted += 1
        for e in index.entries:  # whatever is accepted points inside the shard, in order
            for off, size in (e.json, e.cls, e.jpgs):
                assert off >= 0 and off + size <= row["bytes"]
            assert e.frames[0] == 0 and e.frames[-1] == e.jpgs[1] and (e.frames[1:] >= e.frames[:-1]).all()
            assert e.num_frames == len(e.frames) - 1 and e.label >= -1
    assert refused > 300 and accepted >= 1  # bit flips inside e.g. a key's hex digits stay valid
    with pytest.raises(ShardIndexError, match="another version"):
        parse_index(raw, "idx", shard_sha256="0" * 64)
