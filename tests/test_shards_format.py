"""Shard format primitives: keys, deterministic tar writing, round trips through tarfile and WebDataset."""

from __future__ import annotations

import hashlib
import io
import tarfile

import numpy as np
import pytest
import webdataset as wds

from shards.format import (
    MAX_KEY_LEN,
    TarSampleWriter,
    decode_jpegs,
    encode_jpeg_rgb,
    iter_samples,
    pack_frames,
    safe_key,
    sample_from_wds,
    unpack_frames,
)

NAMES = [
    "train/abseiling/-abc_DEF123_000010_000020.mp4",
    "train/playing cello/a.b.c.d_000001_000011.webm",
    "UCF-101/Café/v_Café_g01_c01.avi",
    "20bn-jester-v1/12345",
    "val/x/   spaces   in name .mkv",
    "val/x/日本語のビデオ.mp4",
    "val/x/" + "long" * 60 + ".mp4",
    "-",
    "...",
]


@pytest.mark.parametrize("name", NAMES)
def test_safe_key_is_webdataset_safe(name):
    key = safe_key(name)
    assert key == safe_key(name)  # deterministic
    assert "." not in key and " " not in key and "/" not in key
    assert not key.startswith("-") and 0 < len(key) <= MAX_KEY_LEN
    assert key.isascii()
    base, _, ext = f"{key}.jpgs".partition(".")
    assert (base, ext) == (key, "jpgs")


def test_safe_key_unique_for_names_that_slug_alike():
    names = ["a/x y.mp4", "a/x_y.mp4", "a/x.y.mp4", "b/x y.mp4", "a/x y.webm"]
    keys = [safe_key(n) for n in names]
    assert len(set(keys)) == len(keys)


def _frames(n, h=24, w=32, seed=0):
    """Smooth frames, each with its own brightness so that frame order is checkable after JPEG."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 3, yy * 4, (xx + yy) * 2], axis=-1)
    return [np.clip(base + 20 * i + seed, 0, 255).astype(np.uint8) for i in range(n)]


def _write(samples) -> bytes:
    buf = io.BytesIO()
    w = TarSampleWriter(buf)
    for key, label, frames in samples:
        blob, offsets = pack_frames([encode_jpeg_rgb(f, 90) for f in frames])
        w.write(key, label, {"key": key, "offsets": offsets, "num_frames": len(frames)}, blob)
    w.close()
    return buf.getvalue()


def test_tar_is_deterministic_ustar_without_pax():
    data = [("k1", 0, _frames(3)), ("k2", 5, _frames(2, seed=1))]
    a, b = _write(data), _write(data)
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    with tarfile.open(fileobj=io.BytesIO(a)) as t:
        members = t.getmembers()
        assert [m.name for m in members] == ["k1.json", "k1.cls", "k1.jpgs", "k2.json", "k2.cls", "k2.jpgs"]
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)
        assert not any(m.pax_headers for m in members)
    # ustar members are 512-byte headers only: no PAX extended header blocks ('x' typeflag) in the stream
    assert a[156:157] == b"0"


def test_round_trip_frames_and_metadata():
    frames = _frames(7)
    data = _write([("vid-1", 3, frames)])
    (s,) = list(iter_samples(io.BytesIO(data)))
    assert s.key == "vid-1" and s.label_index == 3 and s.meta["num_frames"] == 7
    got = s.decode([0, 6, 6, 2])
    assert got.shape == (4, 24, 32, 3) and got.dtype == np.uint8
    ref = np.stack([frames[i] for i in [0, 6, 6, 2]]).astype(int)
    assert np.abs(got.astype(int) - ref).mean() < 3  # within JPEG tolerance, in the requested order


def test_webdataset_reads_our_shards(tmp_path):
    p = tmp_path / "s.tar"
    p.write_bytes(_write([("a", 0, _frames(2)), ("b", 1, _frames(3))]))
    got = [sample_from_wds(d) for d in wds.WebDataset(str(p), shardshuffle=False)]
    assert [(s.key, s.label_index, s.meta["num_frames"]) for s in got] == [("a", 0, 2), ("b", 1, 3)]
    assert got[1].decode().shape == (3, 24, 32, 3)


def test_unpack_only_slices_requested_frames():
    blob, offsets = pack_frames([b"aa", b"bbb", b"c"])
    assert [bytes(m) for m in unpack_frames(blob, offsets, [2, 0])] == [b"c", b"aa"]
    with pytest.raises(IndexError, match="out of range"):
        unpack_frames(blob, offsets, [3])


def test_writer_rejects_bad_keys_and_offsets():
    w = TarSampleWriter(io.BytesIO())
    blob, offsets = pack_frames([b"x"])
    with pytest.raises(ValueError, match="unsafe"):
        w.write("a.b", 0, {"offsets": offsets}, blob)
    with pytest.raises(ValueError, match="offsets"):
        w.write("ab", 0, {"offsets": [0, 5]}, blob)
    w.write("ab", 0, {"offsets": offsets}, blob)
    with pytest.raises(ValueError, match="duplicate"):
        w.write("ab", 0, {"offsets": offsets}, blob)


def test_reader_names_shard_and_key_on_damage():
    raw = bytearray(_write([("good", 0, _frames(2))]))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in [("bad.json", b"{not json"), ("bad.cls", b"1"), ("bad.jpgs", b"")]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    with pytest.raises(ValueError, match=r"shard-7\.tar: sample 'bad'"):
        list(iter_samples(io.BytesIO(buf.getvalue()), source="shard-7.tar"))
    assert len(list(iter_samples(io.BytesIO(bytes(raw))))) == 1


def test_decode_jpegs_reports_corrupt_frame_index():
    good = encode_jpeg_rgb(_frames(1)[0], 90)
    with pytest.raises(ValueError, match="frame 1: corrupt JPEG"):
        decode_jpegs([good, b"\xff\xd8garbage"])
