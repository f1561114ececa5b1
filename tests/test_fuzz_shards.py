"""Hostile shards (issue 11, item 9): a seeded fuzz test mutates real preprocessed shards — bit flips,
truncations, tar header edits (negative, huge and base-256 sizes), JSON edits (wrong types, out-of-range offsets,
labels outside the class list), JPEG headers claiming another size (decompression bombs) — and asserts the
loader either yields valid uint8 clips of the right shape or reports corrupt samples, quickly, every time."""

from __future__ import annotations

import io
import json
import random
import tarfile
import time
import warnings

import numpy as np
import pytest

from shards.format import iter_samples
from shards.manifest import read_table
from tests.helpers import jester_shards
from training.data import ClipLoader, ClipStream, CorruptDataError, CorruptSampleWarning, LoaderConfig, shard_specs

CASES = 300
SMALL = {"clip_len": 4, "size": 16, "batch_size": 2}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """(shard bytes, its spec for eval, classes) of one real preprocessed Jester shard."""
    out = jester_shards(tmp_path_factory.mktemp("fuzz-data"), num_classes=3, videos_per_class=2, seed=9,
                        shard_size=8)
    spec = shard_specs(out, "train", videos=True)[0]
    row = read_table(out, "train", "shards").to_pylist()[0]
    with open(f"{out}/{row['path']}", "rb") as f:
        return f.read(), spec, 3


def _write_tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


BAD_VALUES = [-1, -(1 << 62), 1 << 62, 0, True, None, "3", 2.5, [], {}, [1, 2], "x" * 50, 10 ** 30]


def _json_edit(rng: random.Random, shard: bytes) -> bytes:
    samples = list(iter_samples(io.BytesIO(shard)))
    members = []
    victim = rng.randrange(len(samples))
    for k, s in enumerate(samples):
        meta, cls, frames = dict(s.meta), str(s.label_index).encode(), s.frames
        if k == victim:
            what = rng.choice(["offsets_item", "offsets", "num_frames", "label", "cls", "width", "stride", "raw",
                               "deep", "frames_short"])
            if what == "offsets_item":
                meta["offsets"] = list(meta["offsets"])
                meta["offsets"][rng.randrange(len(meta["offsets"]))] = rng.choice(BAD_VALUES)
            elif what == "label":
                meta["label_index"] = rng.choice([3, 600, -5, 1 << 40])  # 3 classes: 3 is outside
                cls = str(meta["label_index"]).encode()
            elif what == "cls":
                cls = rng.choice([b"", b"abc", b"1e9", b"99999999999999999999", b"\xff", b"-"])
            elif what == "raw":
                raw = json.dumps(meta).encode()
                cut = rng.randrange(len(raw))
                members += [(f"{s.key}.json", raw[:cut]), (f"{s.key}.cls", cls), (f"{s.key}.jpgs", frames)]
                continue
            elif what == "deep":
                members += [(f"{s.key}.json", b"[" * 100_000), (f"{s.key}.cls", cls), (f"{s.key}.jpgs", frames)]
                continue
            elif what == "frames_short":
                frames = frames[: rng.randrange(len(frames))]
            else:
                meta[what] = rng.choice(BAD_VALUES)
        members += [(f"{s.key}.json", json.dumps(meta).encode()), (f"{s.key}.cls", cls), (f"{s.key}.jpgs", frames)]
    return _write_tar(members)


def _jpeg_bomb(rng: random.Random, shard: bytes) -> bytes:
    """A frame's SOF0 header edited to claim another size (up to 65535 x 65535), all else intact."""
    b = bytearray(shard)
    sofs = [i for i in range(len(b) - 9) if b[i] == 0xFF and b[i + 1] == 0xC0]
    i = rng.choice(sofs)
    h, w = rng.choice([(65535, 65535), (8, 8), (31, 40), (65535, 32)])
    b[i + 5:i + 7] = h.to_bytes(2, "big")
    b[i + 7:i + 9] = w.to_bytes(2, "big")
    return bytes(b)


def _tar_header_edit(rng: random.Random, shard: bytes) -> bytes:
    b = bytearray(shard)
    headers = [i for i in range(0, len(b) - 512, 512) if b[i + 257:i + 262] == b"ustar"]
    h = rng.choice(headers)
    field = rng.choice([b"-0000000001\0", b"77777777777\0", b"\x80" + (1 << 60).to_bytes(11, "big"),
                        b"\xff" * 12, b"00000000zz7\0", b"00000000000\0"])
    b[h + 124:h + 136] = field
    if rng.random() < 0.7:  # usually with a valid checksum, so the size itself is what is tested
        b[h + 148:h + 156] = b" " * 8
        b[h + 148:h + 156] = f"{sum(b[h:h + 512]):06o}\0 ".encode()
    return bytes(b)


def _mutate(rng: random.Random, shard: bytes) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        b = bytearray(shard)
        for _ in range(rng.randint(1, 20)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == 1:
        return shard[: rng.randrange(len(shard))]
    if kind == 2:
        return _tar_header_edit(rng, shard)
    if kind == 3:
        return _json_edit(rng, shard)
    return _jpeg_bomb(rng, shard)


def test_fuzzed_shards_give_valid_clips_or_corrupt_samples(real, tmp_path):
    shard, spec, n_classes = real
    rng = random.Random(11)
    path = tmp_path / "shard-000000.tar"
    outcomes = {"clean": 0, "corrupt": 0, "epoch_failed": 0}
    t_all = time.monotonic()
    for case in range(CASES):
        path.write_bytes(_mutate(rng, shard))
        mode = ("train", "eval")[case % 2]
        cfg = LoaderConfig.for_dataset("jester", mode, seed=case, shuffle_buffer=3, num_classes=n_classes,
                                       max_corrupt=1000, **SMALL)
        specs = [type(spec)(url=str(path), samples=spec.samples, videos=spec.videos)]
        t0 = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                batches = list(ClipLoader(ClipStream(specs, cfg, rank=0, world_size=1)))
            except CorruptDataError:  # training found no readable sample left to stand in: a clear stop
                outcomes["epoch_failed"] += 1
                continue
        assert time.monotonic() - t0 < 10, f"case {case} took too long"
        corrupt = [w for w in caught if issubclass(w.category, CorruptSampleWarning)]
        for b in batches:
            clips = b["clips"]
            assert clips.dtype.is_floating_point is False and str(clips.dtype) == "torch.uint8"
            assert tuple(clips.shape[1:]) == (3, SMALL["clip_len"], SMALL["size"], SMALL["size"])
            labels = b["labels"].numpy()
            assert ((labels >= -1) & (labels < n_classes)).all()
        n_corrupt = sum(int(b["corrupt"].sum()) for b in batches)
        assert n_corrupt == len(corrupt) or mode == "train"  # train may also count donors' failures
        outcomes["corrupt" if corrupt else "clean"] += 1
    assert time.monotonic() - t_all < 240
    # the mutations mostly hit: most cases report corrupt samples, some leave the sampled clips intact
    assert outcomes["corrupt"] > CASES // 2, outcomes
    assert np.sum(list(outcomes.values())) == CASES
