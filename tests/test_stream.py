"""Streaming loader: DDP splitting, equal batch counts, determinism, resume, corrupt data, I/O paths.

Tiny shards are built in tmp_path with TarSampleWriter. Frame ``i`` of every video has red = 10 + 6 i
(so a clip's temporal indices can be read back from its pixels), green rising left → right (flip shows as
falling green) and blue rising top → bottom; green and blue are the same in every frame, so a clip whose
frames all got the same crop has identical green/blue planes across time.
"""

from __future__ import annotations

import functools
import io
import json
import tarfile
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from shards.format import TarSampleWriter, encode_jpeg_rgb, pack_frames
from shards.reader import ShardFormatError, ShardReader, open_shard
from training.data import (
    ClipLoader,
    ClipStream,
    CorruptDataError,
    CorruptSampleWarning,
    LoaderConfig,
    ShardSpec,
    scan_shard_specs,
    shard_specs,
)
from training.data.sampling import center_clip, eval_window

H, W = 24, 32
SMALL = {"clip_len": 4, "size": 16, "batch_size": 3}


@functools.cache
def frame_jpeg(i: int) -> bytes:
    f = np.empty((H, W, 3), np.uint8)
    f[..., 0] = 10 + 6 * i
    f[..., 1] = np.linspace(30, 230, W, dtype=np.float32)[None, :]
    f[..., 2] = np.linspace(40, 200, H, dtype=np.float32)[:, None]
    return encode_jpeg_rgb(f, 95)


def video(key: str, n: int, label: int, *, stride: int = 1, dataset: str = "kinetics600",
          corrupt_jpeg: bool = False) -> tuple[dict, bytes]:
    frames = [frame_jpeg(i) for i in range(n)]
    if corrupt_jpeg:
        frames = [b"\x00" * len(f) for f in frames]
    blob, offsets = pack_frames(frames)
    meta = {
        "format_version": 1, "dataset": dataset, "key": key, "source": f"{key}.mp4", "label": f"c{label}",
        "label_index": label, "splits": ["train"], "num_frames": n, "source_frames": n * stride,
        "stride": stride, "fps": 25.0 / stride, "source_fps": 25.0, "vfr": False,
        "pts_ms": [round(40 * stride * i) for i in range(n)], "width": W, "height": H, "source_width": W,
        "source_height": H, "rotation": 0, "codec": "h264", "offsets": offsets,
    }
    return meta, blob


def write_shard(path, videos, **kw) -> ShardSpec:
    """videos: (key, num_frames, label); kw go to ``video``. Returns the spec with per-video entries."""
    with open(path, "wb") as f:
        w = TarSampleWriter(f)
        for key, n, label in videos:
            meta, blob = video(key, n, label, **kw)
            w.write(key, label, meta, blob)
        w.close()
    stride = kw.get("stride", 1)
    return ShardSpec(str(path), len(videos), tuple((k, n, stride) for k, n, _ in videos))


def write_raw_tar(path, members) -> None:
    """Members (name, bytes) written by hand with tarfile (ustar), for malformed samples."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))


def make_dataset(tmp_path, sizes, *, seed=0, min_frames=2, max_frames=14, **kw) -> list[ShardSpec]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    specs, k = [], 0
    for s, count in enumerate(sizes):
        vids = []
        for _ in range(count):
            vids.append((f"v{k:04d}", int(rng.integers(min_frames, max_frames + 1)), k % 7))
            k += 1
        specs.append(write_shard(tmp_path / f"shard-{s:06d}.tar", vids, **kw))
    return specs


def run_rank(specs, cfg, rank=0, world=1, **loader_kw):
    loader = ClipLoader(ClipStream(specs, cfg, rank=rank, world_size=world), **loader_kw)
    planned = len(loader)
    return planned, list(loader)


def frame_indices(clip: torch.Tensor) -> list[int]:
    """Temporal indices of a (3, T, S, S) clip from its red channel."""
    red = clip[0].float().mean(dim=(1, 2))
    return [round((float(v) - 10) / 6) for v in red]


# -- equal batch counts, coverage -----------------------------------------------------------------------

UNEVEN = [1, 9, 3, 14, 2]  # 29 videos in 5 shards of very different sizes


@pytest.mark.parametrize("mode", ["train", "val", "eval"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_rank_yields_the_same_number_of_batches(tmp_path, mode, num_workers):
    specs = make_dataset(tmp_path, UNEVEN)
    all_windows = {(k, w) for s in specs for k, n, _ in s.videos
                   for w in range(1 if mode == "val" else -(-n // SMALL["clip_len"]))}
    for world in (1, 2, 3, 4):
        cfg = LoaderConfig("kinetics600", mode, num_workers=num_workers, shuffle_buffer=5, **SMALL)
        counts, seen, n_items = [], [], 0
        for rank in range(world):
            planned, batches = run_rank(specs, cfg, rank, world)
            assert len(batches) == planned
            counts.append(planned)
            for b in batches:
                n_items += len(b["keys"])
                assert b["clips"].dtype == torch.uint8 and b["clips"].shape[1:] == (3, 4, 16, 16)
                for i in range(len(b["keys"])):
                    if b["valid"][i]:
                        seen.append((b["keys"][i], int(b["window"][i]) if mode == "eval" else 0)
                                    if mode != "train" else int(b["index"][i]))
        assert len(set(counts)) == 1, (world, counts)
        assert len(seen) == len(set(seen)), "a sample was yielded twice"
        if mode == "train":
            streams = world * max(1, num_workers)
            assert len(seen) == n_items and 29 - len(seen) < streams * SMALL["batch_size"]
            assert all(len(b["keys"]) == SMALL["batch_size"] for b in batches)  # drop_last in training
        else:
            assert set(seen) == all_windows  # every video/window exactly once; the rest is padding


def test_train_without_drop_last_keeps_all_but_the_remainder(tmp_path):
    specs = make_dataset(tmp_path, UNEVEN)
    cfg = LoaderConfig("ucf101", drop_last=False, shuffle_buffer=4, **SMALL)
    seen = []
    counts = []
    for rank in range(3):
        planned, batches = run_rank(specs, cfg, rank, 3)
        counts.append(planned)
        seen += [int(i) for b in batches for i in b["index"]]
    assert len(set(counts)) == 1 and sorted(seen) == sorted(set(seen)) and len(seen) == 27  # 29 // 3 * 3


def test_fewer_shards_than_streams(tmp_path):
    specs = make_dataset(tmp_path, [10])  # one shard, 4 ranks x 2 workers = 8 streams
    cfg = LoaderConfig("kinetics600", num_workers=2, drop_last=False, **{**SMALL, "batch_size": 1})
    seen = []
    for rank in range(4):
        planned, batches = run_rank(specs, cfg, rank, 4)
        assert planned == len(batches) == 2
        seen += [b["keys"][0] for b in batches]
    assert len(seen) == len(set(seen)) == 8
    with pytest.raises(ValueError, match="fewer DataLoader workers"):
        len(ClipStream(make_dataset(tmp_path / "x", [3]), cfg, rank=0, world_size=4))


def test_dataloader_worker_count_must_match_config(tmp_path):
    specs = make_dataset(tmp_path, [4])
    ds = ClipStream(specs, LoaderConfig("kinetics600", num_workers=2, **SMALL))
    with pytest.raises(ValueError, match="num_workers=2"):
        next(iter(DataLoader(ds, batch_size=None, num_workers=0)))


def test_default_rank_without_distributed(tmp_path):
    ds = ClipStream(make_dataset(tmp_path, [4]), LoaderConfig("kinetics600", **SMALL))
    assert (ds.rank, ds.world_size) == (0, 1)
    with pytest.raises(ValueError):
        ClipStream(make_dataset(tmp_path, [4]), LoaderConfig("kinetics600"), rank=2, world_size=2)


# -- determinism, shuffling -------------------------------------------------------------------------------

def sequence(batches):
    return [(int(i), k) for b in batches for i, k in zip(b["index"], b["keys"], strict=True)]


def test_shuffling_is_deterministic_per_seed_and_epoch(tmp_path):
    specs = make_dataset(tmp_path, [6, 6, 6, 6])
    cfg = LoaderConfig("kinetics600", shuffle_buffer=6, **SMALL)

    def epoch(c, e):
        ds = ClipStream(specs, c)
        ds.set_epoch(e)
        return list(ds)

    a, b = epoch(cfg, 0), epoch(cfg, 0)
    assert sequence(a) == sequence(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["clips"], y["clips"])  # same temporal starts, crops and flips
    assert sequence(epoch(cfg, 1)) != sequence(a)
    assert sequence(epoch(cfg.replace(seed=1), 0)) != sequence(a)
    # the buffer mixes shards: within the first 6 outputs there are samples of several shards
    first = [i for i, _ in sequence(a)[:6]]
    assert len({i // 6 for i in first}) >= 2


def test_every_clip_shares_one_crop_and_flip_follows_the_dataset(tmp_path):
    specs = make_dataset(tmp_path, [12, 12], min_frames=4)
    flips = {}
    for dataset in ("kinetics600", "ucf101", "jester"):
        cfg = LoaderConfig(dataset, shuffle_buffer=4, **{**SMALL, "batch_size": 4})
        n_flipped = n_clips = 0
        for e in range(2):
            ds = ClipStream(specs, cfg)
            ds.set_epoch(e)
            for b in ds:
                for clip in b["clips"].float():
                    gb = clip[1:]  # green/blue planes are identical in every source frame
                    assert (gb - gb[:, :1]).abs().max() <= 4, "frames of a clip got different crops"
                    green_cols = clip[1].mean(dim=(0, 1))
                    n_flipped += int(green_cols[0] > green_cols[-1])
                    n_clips += 1
        flips[dataset] = (n_flipped, n_clips)
    for dataset in ("kinetics600", "ucf101"):
        n_flipped, n_clips = flips[dataset]
        assert 0.2 * n_clips < n_flipped < 0.8 * n_clips, flips
    assert flips["jester"][0] == 0  # never flipped: left/right gestures


def test_crops_vary_in_scale_and_position(tmp_path):
    specs = make_dataset(tmp_path, [24], min_frames=4)
    ds = ClipStream(specs, LoaderConfig("jester", shuffle_buffer=0, **{**SMALL, "batch_size": 8}))
    greens = {round(float(c[1].mean()), 0) for b in ds for c in b["clips"].float()}
    assert len(greens) > 5  # different scales/positions give different mean greens


# -- temporal indices through the whole pipeline -----------------------------------------------------------

def test_eval_and_val_clips_hold_the_planned_frames(tmp_path):
    specs = make_dataset(tmp_path, [5, 4], min_frames=1, max_frames=13)
    frames = {k: n for s in specs for k, n, _ in s.videos}
    cfg = LoaderConfig("kinetics600", "eval", num_workers=0, **SMALL)
    got = {}
    for b in ClipStream(specs, cfg, rank=0, world_size=1):
        for i in range(len(b["keys"])):
            if b["valid"][i]:
                got[(b["keys"][i], int(b["window"][i]))] = frame_indices(b["clips"][i])
    assert len(got) == sum(-(-n // 4) for n in frames.values())
    for (key, w), idx in got.items():
        assert idx == eval_window(w, frames[key], 4).tolist()
    for b in ClipStream(specs, cfg.replace(mode="val")):
        for key, clip, ok in zip(b["keys"], b["clips"], b["valid"], strict=True):
            if ok:
                assert frame_indices(clip) == center_clip(frames[key], 4).tolist()


def test_training_clips_are_consecutive_or_loop_padded(tmp_path):
    specs = make_dataset(tmp_path, [20], min_frames=1, max_frames=9)
    frames = {k: n for s in specs for k, n, _ in s.videos}
    starts = set()
    for e in range(3):
        ds = ClipStream(specs, LoaderConfig("kinetics600", shuffle_buffer=4, **SMALL))
        ds.set_epoch(e)
        for b in ds:
            for key, clip in zip(b["keys"], b["clips"], strict=True):
                idx, n = frame_indices(clip), frames[key]
                if n >= 4:
                    assert idx == list(range(idx[0], idx[0] + 4)) and 0 <= idx[0] <= n - 4
                    starts.add((n, idx[0]))
                else:
                    assert idx == [k % n for k in range(4)]
    assert any(s == n - 4 and n > 4 for n, s in starts)  # the last valid start does occur


def test_stored_stride_sets_the_step(tmp_path):
    stored2 = [write_shard(tmp_path / "a.tar", [("j1", 12, 0)], stride=2, dataset="jester")]
    stored1 = [write_shard(tmp_path / "b.tar", [("j2", 24, 0)], stride=1, dataset="jester")]
    cfg = LoaderConfig.for_dataset("jester", "val", **SMALL)
    (b2,) = list(ClipStream(stored2, cfg))
    (b1,) = list(ClipStream(stored1, cfg))
    assert frame_indices(b2["clips"][0]) == center_clip(12, 4, 1).tolist() == [4, 5, 6, 7]
    assert frame_indices(b1["clips"][0]) == center_clip(24, 4, 2).tolist() == [8, 10, 12, 14]


# -- mid-epoch resume ---------------------------------------------------------------------------------------

def consume(loader, n=None):
    out = []
    for b in loader:
        out.append(b)
        if n is not None and len(out) == n:
            break
    return out


def assert_same_batches(a, b):
    assert sequence(a) == sequence(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["clips"], y["clips"]) and torch.equal(x["labels"], y["labels"])


@pytest.mark.parametrize(("mode", "num_workers", "world"), [("train", 0, 1), ("train", 2, 2), ("eval", 2, 1)])
def test_resume_continues_the_uninterrupted_sequence(tmp_path, mode, num_workers, world):
    specs = make_dataset(tmp_path, [7, 11, 5, 9])
    cfg = LoaderConfig("kinetics600", mode, num_workers=num_workers, shuffle_buffer=6, seed=3, **SMALL)
    rank = world - 1

    def fresh():
        loader = ClipLoader(ClipStream(specs, cfg, rank=rank, world_size=world))
        loader.set_epoch(1)
        return loader

    reference = consume(fresh())
    assert len(reference) >= 4
    for cut in (1, 3, len(reference) - 1):
        first = fresh()
        head = consume(first, cut)
        state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint round trip
        assert state["epoch"] == 1 and state["batches_done"] == cut
        resumed = fresh()
        resumed.load_state_dict(state)
        resumed.set_epoch(1)  # the trainer's usual call keeps the position
        tail = consume(resumed)
        assert_same_batches(head + tail, reference)
        assert resumed.epoch == 2 and resumed.batches_done == 0  # next epoch starts from its beginning


def test_resume_refuses_a_different_topology(tmp_path):
    specs = make_dataset(tmp_path, [8, 8])
    cfg = LoaderConfig("kinetics600", **SMALL)
    loader = ClipLoader(ClipStream(specs, cfg, rank=0, world_size=2))
    consume(loader, 1)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="world_size 2"):
        ClipLoader(ClipStream(specs, cfg, rank=0, world_size=1)).load_state_dict(state)
    with pytest.raises(ValueError, match="shard list or sampling config"):
        ClipLoader(ClipStream(specs, cfg.replace(seed=9), rank=0, world_size=2)).load_state_dict(state)


# -- corrupt data --------------------------------------------------------------------------------------

def corrupt_dataset(tmp_path) -> list[ShardSpec]:
    good = [(f"g{i:02d}", 5 + i % 4, i % 3) for i in range(10)]
    spec_a = write_shard(tmp_path / "a.tar", good)
    # b.tar: two good videos, one with corrupt JPEGs, one with unparsable JSON (written by hand)
    members = []
    for key, n, label, broken in [("ok1", 6, 1, None), ("badjpeg", 6, 2, "jpeg"), ("badjson", 6, 0, "json"),
                                  ("ok2", 7, 2, None)]:
        meta, blob = video(key, n, label, corrupt_jpeg=broken == "jpeg")
        text = json.dumps(meta).encode() if broken != "json" else b'{"num_frames": 6, "offsets": [0,'
        members += [(f"{key}.json", text), (f"{key}.cls", str(label).encode()), (f"{key}.jpgs", blob)]
    write_raw_tar(tmp_path / "b.tar", members)
    videos = (("ok1", 6, 1), ("badjpeg", 6, 1), ("badjson", 6, 1), ("ok2", 7, 1))
    return [spec_a, ShardSpec(str(tmp_path / "b.tar"), 4, videos)]


def test_corrupt_samples_are_skipped_counted_and_named(tmp_path):
    specs = corrupt_dataset(tmp_path)
    cfg = LoaderConfig("kinetics600", drop_last=False, shuffle_buffer=4, **SMALL)
    loader = ClipLoader(ClipStream(specs, cfg))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = consume(loader)
    msgs = [str(w.message) for w in caught if issubclass(w.category, CorruptSampleWarning)]
    assert len(msgs) == 2
    assert any("'badjpeg'" in m and "b.tar" in m and "corrupt JPEG" in m for m in msgs)
    assert any("'badjson'" in m and "b.tar" in m and "metadata" in m for m in msgs)
    assert len(batches) == len(loader) == 5  # 14 samples: the batch count does not change
    keys = [k for b in batches for k in b["keys"]]
    assert len(keys) == 14 and not {"badjpeg", "badjson"} & set(keys)  # replaced by readable clips
    assert sum(int(b["corrupt"].sum()) for b in batches) == 2
    assert all(b["valid"].all() for b in batches)
    # validation: placeholders marked invalid instead of substitutes
    with pytest.warns(CorruptSampleWarning):
        val = list(ClipStream(specs, cfg.replace(mode="val")))
    invalid = {k for b in val for k, v in zip(b["keys"], b["valid"], strict=True) if not v}
    assert invalid == {"badjpeg", "badjson"}


def test_corrupt_sample_without_buffer_is_replaced_from_the_stream_start(tmp_path):
    specs = corrupt_dataset(tmp_path)[1:]  # b.tar only: ok1, badjpeg, badjson, ok2
    cfg = LoaderConfig("kinetics600", drop_last=False, shuffle_buffer=0, **{**SMALL, "batch_size": 4})
    with pytest.warns(CorruptSampleWarning):
        (batch,) = list(ClipStream(specs, cfg))
    # Without a shuffle buffer nothing is held back, so the stream is scanned from its start for a donor.
    # (The epoch rotates the shard: the stream starts at a random sample; output order = read order.)
    names = ["ok1", "badjpeg", "badjson", "ok2"]
    planned = [names[i] for i in batch["index"].tolist()]
    assert sorted(planned) == sorted(names)
    first_good = next(k for k in planned if k.startswith("ok"))
    expected = [k if k.startswith("ok") else first_good for k in planned]
    assert batch["keys"] == expected
    assert batch["corrupt"].tolist() == [not k.startswith("ok") for k in planned]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_too_many_corrupt_samples_fail_the_epoch(tmp_path, num_workers):
    specs = corrupt_dataset(tmp_path)
    cfg = LoaderConfig("kinetics600", drop_last=False, num_workers=num_workers, max_corrupt=0,
                       max_corrupt_fraction=0.0, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptSampleWarning)
        with pytest.raises(CorruptDataError, match=r"exceed the limit of 0.*b\.tar"):
            for rank in range(1 if num_workers else 1):
                consume(ClipLoader(ClipStream(specs, cfg, rank=rank, world_size=1)))


def test_missing_and_short_shards_count_as_corrupt(tmp_path):
    specs = make_dataset(tmp_path, [6])
    short = ShardSpec(specs[0].url, 8)  # the manifest promises 2 samples the shard does not hold
    cfg = LoaderConfig("kinetics600", drop_last=False, shuffle_buffer=0, **{**SMALL, "batch_size": 4})
    with pytest.warns(CorruptSampleWarning, match="shard ended after 6 samples"):
        batches = list(ClipStream([short], cfg))
    assert len(batches) == 2 and sum(int(b["corrupt"].sum()) for b in batches) == 2
    missing = ShardSpec(str(tmp_path / "gone.tar"), 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptSampleWarning)
        with pytest.raises(CorruptDataError, match="gone.tar"):
            list(ClipStream([missing, *specs], cfg))


# -- I/O paths and shard lists -----------------------------------------------------------------------------

def test_sequential_stream_and_uri_give_the_same_batches(tmp_path):
    specs = make_dataset(tmp_path, [5, 6])
    cfg = LoaderConfig("ucf101", shuffle_buffer=3, **SMALL)
    ref = list(ClipStream(specs, cfg))
    uri_specs = [ShardSpec("file://" + s.url, s.samples, s.videos) for s in specs]
    assert_same_batches(list(ClipStream(uri_specs, cfg)), ref)
    assert_same_batches(list(ClipStream(specs, cfg.replace(sequential_io=True))), ref)


def test_shard_specs_from_manifest_and_scan(tmp_path):
    from shards.manifest import Manifest, ShardRow, VideoRow, write_split

    specs = make_dataset(tmp_path / "shards", [3, 2])
    rows, vids = [], []
    for s in specs:
        rel = "shards/" + s.url.rsplit("/", 1)[1]
        rows.append(ShardRow(rel, "train", s.samples, 0, 0, ""))
        vids += [VideoRow(k, k, "c", 0, "train", "train", "ok", num_frames=n, stride=1, shard=rel)
                 for k, n, _ in s.videos]
    vids.append(VideoRow("broken", "broken", "c", 0, "train", "train", "failed", reason="unreadable"))
    write_split(str(tmp_path), "train", Manifest(videos=vids, shards=rows))
    got = shard_specs(str(tmp_path), "train")
    assert [(g.url, g.samples) for g in got] == [(s.url, s.samples) for s in specs]
    assert [sorted(g.videos) for g in got] == [sorted(s.videos) for s in specs]
    scanned = scan_shard_specs([s.url for s in specs])
    assert [tuple(g.videos) for g in scanned] == [s.videos for s in specs]  # stored order
    cfg = LoaderConfig("kinetics600", "eval", **SMALL)
    def windows(specs_):
        return sorted((k, int(w)) for b in ClipStream(specs_, cfg) for k, w, ok in
                      zip(b["keys"], b["window"], b["valid"], strict=True) if ok)

    assert windows(got) == windows(scanned) and len(windows(got)) > 5
    with pytest.raises(ValueError, match="ShardSpec.videos"):
        len(ClipStream(shard_specs(str(tmp_path), "train", videos=False), cfg))


def test_shard_reader_ranges_and_foreign_tars(tmp_path):
    meta, blob = video("x", 3, 1)
    # tarfile's default (PAX) format with a long member name; the reader understands it
    long_key = "k" * 120
    path = tmp_path / "pax.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((f"{long_key}.json", json.dumps(meta).encode()), (f"{long_key}.cls", b"1"),
                           (f"{long_key}.jpgs", blob)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    f, reader = open_shard(str(path))
    with f:
        (raw,) = list(reader.samples())
        assert raw.key == long_key and raw.missing() == [] and raw.members["cls"] == b"1"
    f, reader = open_shard(str(path))
    with f:
        for raw in reader.samples():
            o = meta["offsets"]
            assert reader.read_range(raw.frames, o[1], o[2]) == frame_jpeg(1)
    spec = write_shard(tmp_path / "plain.tar", [("a", 3, 0), ("b", 4, 1)])
    with open(spec.url, "rb") as fh:
        data = bytearray(fh.read())
    data[100] ^= 0x01  # the mode field of the first header: its checksum no longer matches
    with pytest.raises(ShardFormatError, match="checksum"):
        list(ShardReader(io.BytesIO(bytes(data)), "broken.tar", seekable=True).samples())
