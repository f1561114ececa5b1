"""Video and frame-folder decoding: sizes, rotation, both backends, stride, and per-file failures."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import simplejpeg

from preprocess.decode import (
    DecodeError,
    decode_av,
    decode_ffmpeg,
    decode_frame_folder,
    decode_video,
    probe_av,
    probe_ffmpeg,
    target_size,
)


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-nostdin", *args], check=True)


def make_video(path: Path, size="96x64", rate=25, seconds=1.0, codec=("-c:v", "libx264"), extra=()) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}", *codec,
           "-pix_fmt", "yuv420p", *extra, str(path))
    return path


def rgb(jpegs) -> np.ndarray:
    return np.stack([simplejpeg.decode_jpeg(bytes(j)) for j in jpegs]).astype(np.int16)


@pytest.mark.parametrize(
    ("w", "h", "short", "expected"),
    [
        (340, 256, 128, (170, 128)),
        (256, 340, 128, (128, 170)),  # portrait keeps orientation
        (341, 257, 128, (170, 128)),  # odd sizes round to even
        (3840, 2160, 128, (228, 128)),
        (96, 64, 128, (96, 64)),  # never upscaled
        (97, 65, 128, (98, 66)),  # ...but made even
        (320, 240, None, (320, 240)),
    ],
)
def test_target_size(w, h, short, expected):
    assert target_size(w, h, short) == expected


def test_backends_agree_and_keep_native_fps(tmp_path):
    v = make_video(tmp_path / "a.mp4", size="200x150", rate=24, seconds=1)
    a = decode_av(str(v), short_side=128, quality=90)
    b = decode_ffmpeg(str(v), short_side=128, quality=90)
    assert (a.width, a.height) == (b.width, b.height) == (170, 128)
    assert len(a.jpegs) == len(b.jpegs) == 24 == a.source_frames
    assert a.probe.fps == pytest.approx(24) and b.probe.fps == pytest.approx(24)
    assert np.abs(rgb(a.jpegs) - rgb(b.jpegs)).mean() < 3
    assert a.pts_ms[:3] == [0, 42, 83]


def test_decoded_colours_match_ffmpeg_rgb(tmp_path):
    v = make_video(tmp_path / "c.mp4", size="170x128", seconds=0.2)
    ref = subprocess.run(["ffmpeg", "-v", "error", "-i", str(v), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    ref = np.frombuffer(ref, np.uint8).reshape(-1, 128, 170, 3).astype(np.int16)
    got = rgb(decode_av(str(v), short_side=128, quality=95).jpegs)
    # full-range JPEG from limited-range video: a range mistake would shift means by ~10-20 levels
    assert abs(got.mean() - ref.mean()) < 2
    assert np.abs(got - ref).mean() < 6


@pytest.mark.parametrize("rotate", [90, 180, 270])
def test_rotation_metadata_is_honoured_like_ffmpeg(tmp_path, rotate):
    plain = make_video(tmp_path / "p.mp4", size="160x96", seconds=0.2)
    rot = tmp_path / f"r{rotate}.mp4"
    ffmpeg("-i", str(plain), "-c", "copy", "-metadata:s:v:0", f"rotate={rotate}", str(rot))
    assert probe_ffmpeg(str(rot)).rotation % 360 in (90, 180, 270)
    # ffmpeg's own autorotated output is the reference orientation
    ref = subprocess.run(["ffmpeg", "-v", "error", "-i", str(rot), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    a = decode_av(str(rot), short_side=None, quality=95)
    b = decode_ffmpeg(str(rot), short_side=None, quality=95)
    shape = (96, 160) if rotate == 180 else (160, 96)
    assert (a.height, a.width) == (b.height, b.width) == shape
    ref = np.frombuffer(ref, np.uint8).reshape(-1, *shape, 3).astype(np.int16)
    assert np.abs(rgb(a.jpegs) - ref).mean() < 6
    assert np.abs(rgb(b.jpegs) - ref).mean() < 6
    assert a.probe.rotation == b.probe.rotation


def test_stride_keeps_every_second_frame(tmp_path):
    v = make_video(tmp_path / "s.mp4", seconds=1, rate=10)
    full = decode_av(str(v), short_side=None, quality=90)
    half = decode_av(str(v), short_side=None, quality=90, stride=2)
    assert len(full.jpegs) == 10 and len(half.jpegs) == 5 and half.source_frames == 10
    assert [bytes(j) for j in half.jpegs] == [bytes(j) for j in full.jpegs[::2]]


def test_short_videos_are_kept(tmp_path):
    v = make_video(tmp_path / "short.mp4", extra=("-frames:v", "3"))
    assert len(decode_video(str(v), short_side=128, quality=90).jpegs) == 3


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty file"), (b"\x00\x01garbage" * 100, "unreadable container"), (b"hello\n", "unreadable container")],
)
def test_bad_files_give_clear_reasons(tmp_path, content, reason):
    p = tmp_path / "bad.mp4"
    p.write_bytes(content)
    with pytest.raises(DecodeError, match=reason):
        decode_video(str(p), short_side=128, quality=90)


def test_audio_only_file_has_no_video_stream(tmp_path):
    p = tmp_path / "audio.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=0.5", "-c:a", "aac", str(p))
    with pytest.raises(DecodeError, match="no video stream"):
        decode_video(str(p), short_side=128, quality=90)
    with pytest.raises(DecodeError, match="no video stream"):
        probe_av(str(p))


def test_truncated_file_keeps_decodable_frames_or_fails_clearly(tmp_path):
    v = make_video(tmp_path / "t.avi", seconds=2, codec=("-c:v", "mpeg4", "-vtag", "XVID"))
    data = v.read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])
    out = decode_video(str(tmp_path / "cut.avi"), short_side=128, quality=90)
    assert 0 < len(out.jpegs) < 50
    mp4 = make_video(tmp_path / "m.mp4", seconds=2)
    (tmp_path / "cut.mp4").write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 3])
    try:
        got = decode_video(str(tmp_path / "cut.mp4"), short_side=128, quality=90)
        assert 0 < len(got.jpegs) < 50
    except DecodeError as exc:
        assert str(exc)  # a reason, not a crash


def test_variable_frame_rate_is_recorded(tmp_path):
    v = tmp_path / "vfr.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=20:duration=1",
           "-vf", "setpts='if(lt(N,10),N*2,20+(N-10)*6)/TB/60'", "-fps_mode", "vfr", "-c:v", "libx264", str(v))
    out = decode_av(str(v), short_side=None, quality=90)
    assert out.vfr
    d = np.diff(out.pts_ms)
    assert d.min() <= d.max() / 2


def test_frame_folder_repacks_bytes_with_stride(tmp_path):
    d = tmp_path / "123"
    d.mkdir()
    rng = np.random.default_rng(0)
    files = []
    for i in range(1, 12):
        data = simplejpeg.encode_jpeg(rng.integers(0, 255, (100, 176, 3), dtype=np.uint8), quality=80)
        (d / f"{i:05d}.jpg").write_bytes(data)
        files.append(data)
    out = decode_frame_folder(str(d), short_side=128, quality=90, stride=2, fps=12)
    assert [bytes(j) for j in out.jpegs] == files[::2]  # 1,3,5,...: byte copies, no re-encode
    assert out.source_frames == 11 and (out.width, out.height) == (176, 100)
    resized = decode_frame_folder(str(d), short_side=64, quality=90, stride=2, fps=12)
    assert (resized.width, resized.height) == (112, 64)
    assert rgb(resized.jpegs).shape == (6, 64, 112, 3)


def test_frame_folder_errors_name_the_frame(tmp_path):
    d = tmp_path / "9"
    d.mkdir()
    with pytest.raises(DecodeError, match="empty frame folder"):
        decode_frame_folder(str(d), short_side=None, quality=90)
    good = simplejpeg.encode_jpeg(np.zeros((100, 176, 3), np.uint8))
    (d / "00001.jpg").write_bytes(good)
    (d / "00002.jpg").write_bytes(good)
    (d / "00003.jpg").write_bytes(good[:40])
    with pytest.raises(DecodeError, match="00003.jpg"):
        decode_frame_folder(str(d), short_side=None, quality=90, stride=2)
