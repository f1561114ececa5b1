"""Synthetic datasets: real layouts and list formats, the messy inputs and what ffmpeg makes of them,
determinism, and the motion renderer (classes differ only in motion and its direction)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from preprocess.synth import (
    CLASSES,
    DATASETS,
    KINETICS_CSV_HEADER,
    UNKNOWN_LABEL,
    SynthConfig,
    SynthReport,
    count_decoded_frames,
    generate,
    ucf_group,
    ucf_test_groups,
)
from preprocess.synth.motion import (
    FLIP_SAFE_MOTIONS,
    MOTIONS,
    TIME_REVERSED,
    make_scene,
    render_clip,
)

SMALL = SynthConfig(num_classes=2, videos_per_class=2, seconds=1.0, seed=5)
# Kinetics has the most cases (~30 ffmpeg runs): one video per class and split and a 2-frame 4K video keep
# its fixture to a few seconds.
K_SMALL = dataclasses.replace(SMALL, videos_per_class=1, huge_seconds=0.08)
YT_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")


# ------------------------------------------------------------------------------------------------------------
# helpers


def _probe(path: Path) -> dict | None:
    """ffprobe's streams and format as a dict, or None when ffprobe cannot open the file."""
    r = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True,
    )
    return json.loads(r.stdout) if r.returncode == 0 else None


def _video_streams(path: Path) -> list[dict]:
    p = _probe(path)
    return [s for s in (p or {}).get("streams", []) if s["codec_type"] == "video"]


def _decode_rgb(path: Path, *pre_input: str) -> np.ndarray:
    """All frames as (T, H, W, 3) uint8, every frame kept (no constant-rate duplication)."""
    p = _probe(path)
    assert p is not None
    v = next(s for s in p["streams"] if s["codec_type"] == "video")
    w, h = v["width"], v["height"]
    rot = next((sd.get("rotation", 0) for sd in v.get("side_data_list", []) if "rotation" in sd), 0)
    if "-noautorotate" not in pre_input and abs(rot) == 90:
        w, h = h, w
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", *pre_input, "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough"]
        + ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file, and -> 'dir' for every directory."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _on_disk_entries(report: SynthReport) -> set[str]:
    """Video files / Jester frame folders that exist under the root."""
    root = report.root
    if report.dataset == "jester":
        return {p.relative_to(root).as_posix() for p in (root / "20bn-jester-v1").iterdir()}
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix in (".mp4", ".webm", ".mkv", ".avi")
    }


def _kinds(report: SynthReport) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for it in report.items:
        out.setdefault(it.kind, set()).add(it.expect)
    return out


def _track(motion: str, seed: int, *, h=64, w=80, t=24, reverse=False, flip=False):
    """Per-frame patch centroid y, x and area (pixels), found by subtracting the scene's static background."""
    scene = make_scene(motion, h, w, np.random.default_rng(seed))
    clip = render_clip(motion, t, h, w, np.random.default_rng(seed))
    bg = scene.background
    if reverse:
        clip = clip[::-1]
    if flip:
        clip, bg = clip[:, :, ::-1], bg[:, ::-1]
    mask = np.abs(clip.astype(np.int16) - bg.astype(np.int16)).sum(-1) > 45
    ys, xs = np.mgrid[:h, :w]
    area = mask.sum((1, 2))
    # Translations wrap around inside the centred square of side min(h, w), so positions are circular there:
    # circular mean per frame, unwrapped over time (for a patch that does not wrap it moves like the centroid).
    size = min(h, w)

    def circular(coord: np.ndarray, lo: float) -> np.ndarray:
        ang = 2 * np.pi * (coord + 0.5 - lo) / size
        s, c = (mask * np.sin(ang)).sum((1, 2)), (mask * np.cos(ang)).sum((1, 2))
        return lo + np.unwrap(np.arctan2(s, c)) * size / (2 * np.pi)

    return circular(ys, (h - size) / 2), circular(xs, (w - size) / 2), area


def _trend(motion: str, seed: int, **kw) -> tuple[float, float, float]:
    """Mean per-frame change of the (unwrapped) centroid y, x, and median per-frame change of log area over the
    frames where it changes (the median ignores the restart jumps of the sawtooth zooms; translations wrap
    around without jumps, and the mean is not fooled by whole-pixel steps)."""

    def med(d: np.ndarray) -> float:
        d = d[np.abs(d) > 1e-9]
        return float(np.median(d)) if d.size else 0.0

    cy, cx, area = _track(motion, seed, **kw)
    return float(np.mean(np.diff(cy))), float(np.mean(np.diff(cx))), med(np.diff(np.log(area + 1.0)))


def _rotation_steps(motion: str, seed: int, *, size=96, t=10, reverse=False, flip=False) -> np.ndarray:
    """Per-frame rotation of the patch in degrees, counter-clockwise on screen positive (OpenCV's sign),
    found by trying rotations of the background-subtracted frame t onto frame t+1."""
    import cv2

    scene = make_scene(motion, size, size, np.random.default_rng(seed))
    clip = render_clip(motion, t, size, size, np.random.default_rng(seed)).astype(np.float32)
    bg = scene.background.astype(np.float32)
    if reverse:
        clip = clip[::-1]
    if flip:
        clip, bg = clip[:, :, ::-1], bg[:, ::-1]
    fg = clip - bg
    fg[np.abs(fg).sum(-1) < 45] = 0
    candidates = np.arange(-30, 31, 2)
    steps = []
    for a, b in zip(fg[:-1], fg[1:], strict=True):
        ys, xs = np.nonzero(np.abs(a).sum(-1))
        centre = (float(xs.mean()), float(ys.mean()))
        errs = [
            np.abs(
                cv2.warpAffine(np.ascontiguousarray(a), cv2.getRotationMatrix2D(centre, float(th), 1.0), (size, size))
                - b
            ).mean()
            for th in candidates
        ]
        steps.append(candidates[int(np.argmin(errs))])
    return np.array(steps)


# ------------------------------------------------------------------------------------------------------------
# generated datasets, once per module


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory) -> SynthReport:
    return generate("kinetics600", tmp_path_factory.mktemp("k") / "kinetics", K_SMALL)


@pytest.fixture(scope="module")
def jester(tmp_path_factory) -> SynthReport:
    return generate("jester", tmp_path_factory.mktemp("j") / "jester", SMALL)


@pytest.fixture(scope="module")
def ucf(tmp_path_factory) -> SynthReport:
    return generate("ucf101", tmp_path_factory.mktemp("u") / "ucf", SMALL)


# ------------------------------------------------------------------------------------------------------------
# the renderer


def test_render_clip_shape_dtype_and_determinism():
    a = render_clip("up", 7, 40, 52, np.random.default_rng(1), fps=30.0)
    b = render_clip("up", 7, 40, 52, np.random.default_rng(1), fps=30.0)
    c = render_clip("up", 7, 40, 52, np.random.default_rng(2), fps=30.0)
    assert a.shape == (7, 40, 52, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="unknown motion"):
        render_clip("wobble", 3, 16, 16, np.random.default_rng(0))


@pytest.mark.parametrize("motion", ["up", "zoom_in", "left", "rotate_cw"])
def test_reversing_a_clip_gives_the_opposite_class(motion):
    """A clip played backwards shows the time-reversed motion: the classes need frame order."""
    opposite = TIME_REVERSED[motion]
    assert TIME_REVERSED[opposite] == motion
    seeds = range(12)
    if motion.startswith("rotate"):
        for s in seeds:
            fwd = np.median(_rotation_steps(motion, s))
            rev = np.median(_rotation_steps(motion, s, reverse=True))
            opp = np.median(_rotation_steps(opposite, s))
            assert fwd < 0  # clockwise on screen
            assert rev == opp == -fwd, (s, fwd, rev, opp)
        return
    axis = {"up": 0, "left": 1, "zoom_in": 2}[motion]
    for s in seeds:
        fwd = _trend(motion, s)[axis]
        rev = _trend(motion, s, reverse=True)[axis]
        opp = _trend(opposite, s)[axis]
        assert fwd < 0 if motion in ("up", "left") else fwd > 0
        assert np.sign(rev) == np.sign(opp) == -np.sign(fwd), (s, fwd, rev, opp)
        if motion != "zoom_in":  # (area changes are too coarse for a speed comparison)
            # Same seed, same speed: the reversed clip moves as fast as the opposite class.
            assert abs(rev) == pytest.approx(abs(opp), rel=0.35, abs=0.02)


def test_kinetics_and_ucf_classes_survive_a_horizontal_flip():
    """Training flips these two datasets: a flipped clip must still show its own class's motion."""
    for ds in ("kinetics600", "ucf101"):
        assert len(CLASSES[ds]) >= 6
        assert {m for _, m in CLASSES[ds]} <= set(FLIP_SAFE_MOTIONS)
    for motion in ("up", "down", "zoom_in", "zoom_out"):
        for s in range(6):
            # What defines these classes (vertical motion, size change) is untouched by the flip.
            dy, _, da = _trend(motion, s)
            fdy, _, fda = _trend(motion, s, flip=True)
            assert (np.sign(dy), np.sign(da)) == (np.sign(fdy), np.sign(fda)), (motion, s)
    # Left/right and rotation direction are not flip-safe, so only Jester, never flipped, has them.
    for s in range(6):
        assert _trend("left", s)[1] < 0 < _trend("left", s, flip=True)[1]
        assert np.median(_rotation_steps("rotate_cw", s)) < 0 < np.median(_rotation_steps("rotate_cw", s, flip=True))
    jester_motions = {m for _, m in CLASSES["jester"]}
    assert {"left", "right", "rotate_cw", "rotate_ccw"} <= jester_motions
    assert len(CLASSES["jester"]) >= 6


def test_appearance_carries_no_class_information():
    """Same seed -> same background, patch texture, size and noise level for every motion; pooled colour
    histograms of different classes are as alike as two halves of one class."""
    h, w = 48, 64
    ref = make_scene("up", h, w, np.random.default_rng(3))
    for m in MOTIONS:
        s = make_scene(m, h, w, np.random.default_rng(3))
        assert np.array_equal(s.background, ref.background), m
        assert np.array_equal(s.texture, ref.texture), m
        assert (s.noise, s.noise_seed, s.speed) == (ref.noise, ref.noise_seed, ref.speed), m

    def hist(motion: str, seeds) -> np.ndarray:
        acc = np.zeros((3, 16))
        for sd in seeds:
            clip = render_clip(motion, 12, h, w, np.random.default_rng(sd))
            for ch in range(3):
                acc[ch] += np.bincount(clip[..., ch].ravel() // 16, minlength=16)
        return acc / acc.sum(1, keepdims=True)

    def l1(a, b) -> float:
        return float(np.abs(a - b).sum(1).mean())

    seeds_a, seeds_b = range(100, 130), range(200, 230)
    base = hist("up", seeds_a)
    within = l1(base, hist("up", seeds_b))
    for m in ("down", "zoom_in", "zoom_out", "bounce", "still", "left", "rotate_cw"):
        # Same seeds: only where the patch is differs, and each class shows as much patch on average.
        assert l1(hist(m, seeds_a), base) < 0.03, m
        # Fresh seeds: another class is no further away than the same class with fresh seeds.
        assert l1(hist(m, seeds_b), base) < 1.3 * within, m


def test_background_is_textured_and_noisy_and_patch_is_textured():
    for s in range(8):
        scene = make_scene("still", 60, 80, np.random.default_rng(s))
        assert scene.background.astype(float).std(axis=(0, 1)).max() > 8  # static texture
        assert scene.texture.astype(float).std(axis=(0, 1)).max() > 4  # not a solid patch
        f0, f1 = scene.frame(0).astype(int), scene.frame(1).astype(int)
        d = np.abs(f0 - f1)
        assert 1 < d.mean() < 10  # temporal noise, small next to the motion


# ------------------------------------------------------------------------------------------------------------
# API


def test_generate_rejects_unknown_dataset_and_bad_config(tmp_path):
    with pytest.raises(ValueError, match=", ".join(DATASETS)):
        generate("hmdb51", tmp_path / "x", SMALL)
    with pytest.raises(ValueError, match="at most"):
        generate("ucf101", tmp_path / "x", SynthConfig(num_classes=99))
    with pytest.raises(ValueError):
        SynthConfig(videos_per_class=0)
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_generate_refuses_to_mix_into_an_existing_dataset(tmp_path):
    cfg = SynthConfig(num_classes=2, videos_per_class=1, bad_inputs=False, jester_frames=(4, 5))
    first = generate("jester", tmp_path, cfg)
    (tmp_path / "unrelated.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate("jester", tmp_path, cfg)
    again = generate("jester", tmp_path, cfg, overwrite=True)
    assert again.items == first.items
    assert (tmp_path / "unrelated.txt").read_text() == "keep me"


def test_report_json_round_trip_and_no_report_inside_the_root(jester):
    assert SynthReport.from_json(jester.to_json()) == jester
    assert not any("report" in p.name for p in jester.root.rglob("*"))
    doc = json.loads(jester.to_json())
    assert doc["dataset"] == "jester" and len(doc["items"]) == len(jester.items)


def test_no_bad_inputs_gives_only_clean_videos(tmp_path):
    cfg = SynthConfig(num_classes=3, videos_per_class=1, seconds=0.5, bad_inputs=False)
    r = generate("kinetics600", tmp_path, cfg)
    assert {(i.kind, i.expect) for i in r.items} == {("normal", "ok")}
    assert len(r.items) == 3 * 1 * 2
    assert all(i.relpath.endswith(".mp4") for i in r.items)
    assert _on_disk_entries(r) == {i.relpath for i in r.items}


# ------------------------------------------------------------------------------------------------------------
# Kinetics-600


def _read_kinetics_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
        f.seek(0)
        return header, list(csv.DictReader(f))


def test_kinetics_layout_and_csvs(kinetics):
    root = kinetics.root
    assert {p.name for p in root.iterdir()} == {
        "train",
        "val",
        "kinetics-600_train.csv",
        "kinetics-600_val.csv",
    }
    rows = {}
    for split in ("train", "val"):
        header, rs = _read_kinetics_csv(root / f"kinetics-600_{split}.csv")
        assert header == list(KINETICS_CSV_HEADER) == ["label", "youtube_id", "time_start", "time_end", "split"]
        assert (root / f"kinetics-600_{split}.csv").read_bytes().startswith(b"label,youtube_id,")
        for r in rs:
            assert r["split"] == split
            start, end = int(r["time_start"]), int(r["time_end"])
            assert 0 <= start < end
            rows[(split, r["label"], f"{r['youtube_id']}_{start:06d}_{end:06d}")] = r
    assert set(kinetics.classes) == {"moving up", "moving down"}
    assert list(kinetics.classes) == sorted(kinetics.classes)  # the usual index: sorted train labels
    train_labels = {k[1] for k in rows if k[0] == "train"}
    assert train_labels == set(kinetics.classes)
    assert all(" " in c for c in kinetics.classes)  # like most real labels

    listed_items = set()
    for it in kinetics.items:
        split, label, fname = it.relpath.split("/")
        stem, ext = fname.rsplit(".", 1)
        assert ext in ("mp4", "webm", "mkv")
        assert re.fullmatch(r".+_\d{6}_\d{6}", stem), fname
        key = (split, label, stem)
        if it.expect == "unlisted":
            assert key not in rows
        else:
            assert key in rows, it
            listed_items.add(key)
        assert split == it.split
        if it.label is not None:
            assert it.label == label
        exists = (root / it.relpath).exists()
        assert exists == (it.expect != "missing"), it
    assert listed_items == set(rows)  # every CSV row is a reported item
    assert _on_disk_entries(kinetics) == {i.relpath for i in kinetics.items if i.expect != "missing"}

    normal = [i for i in kinetics.items if i.kind == "normal"]
    for split in ("train", "val"):
        for c in kinetics.classes:
            assert sum(1 for i in normal if i.split == split and i.label == c) == K_SMALL.videos_per_class
    ids = [i.relpath.split("/")[2].rsplit("_", 2)[0] for i in normal]
    assert all(YT_ID.match(y) for y in ids)
    assert any(y.startswith("-") and "_" in y for y in ids)


def test_kinetics_normal_videos_have_the_recorded_codec_size_fps_and_frames(kinetics):
    normal = [i for i in kinetics.items if i.kind == "normal"]
    sizes, rates, with_audio = set(), set(), 0
    for it in normal:
        p = _probe(kinetics.root / it.relpath)
        v = [s for s in p["streams"] if s["codec_type"] == "video"]
        assert len(v) == 1
        v = v[0]
        assert (
            (v["codec_name"], v["width"], v["height"])
            == ("h264", it.width, it.height)
            == (
                it.codec,
                it.width,
                it.height,
            )
        )
        assert Fraction(v["r_frame_rate"]) == Fraction(it.fps)
        assert count_decoded_frames(kinetics.root / it.relpath) == (0, it.frames)
        assert it.frames == round(SMALL.seconds * Fraction(it.fps))
        sizes.add((it.width, it.height))
        rates.add(it.fps)
        with_audio += any(s["codec_type"] == "audio" for s in p["streams"])
    assert len(sizes) >= 3 and any(w < h for w, h in sizes)  # varied, one portrait
    assert {"25/1", "30/1", "30000/1001"} <= rates
    assert 0 < with_audio < len(normal)


def test_kinetics_bad_inputs_behave_as_recorded(kinetics):
    root = kinetics.root
    kinds = _kinds(kinetics)
    assert kinds == {
        "normal": {"ok"},
        "zero_byte": {"failed"},
        "garbage": {"failed"},
        "text": {"failed"},
        "truncated": {"failed", "ok"},  # mp4 cut before its moov atom / mkv that still yields frames
        "undecodable": {"failed"},
        "audio_only": {"failed"},
        "short": {"ok"},
        "huge": {"ok"},
        "rotated": {"ok"},
        "vfr": {"ok"},
        "odd_size": {"ok"},
        "webm": {"ok"},
        "mkv": {"ok"},
        "weird_name": {"ok"},
        "missing_file": {"missing"},
        "unlisted_file": {"unlisted"},
        "unknown_label": {"failed"},
    }
    for it in kinetics.items:
        path = root / it.relpath
        if it.expect == "missing":
            continue
        rc, n = count_decoded_frames(path)
        if it.expect in ("ok", "unlisted"):
            assert rc == 0 and n == it.frames, (it, rc, n)
        elif it.kind != "unknown_label":
            assert n == 0, it  # nothing decodes from any failed file
        if it.kind == "zero_byte":
            assert path.stat().st_size == 0
        elif it.kind in ("garbage", "text"):
            assert _probe(path) is None or not _video_streams(path)
        elif it.kind == "text":
            assert path.read_text().lstrip().startswith("<!DOCTYPE html>")
        elif it.kind == "truncated":
            assert path.stat().st_size > 0
            if it.relpath.endswith(".mp4"):
                assert it.expect == "failed" and _probe(path) is None  # no moov atom: does not even open
            else:
                assert it.expect == "ok" and 0 < it.frames < 30
        elif it.kind == "undecodable":
            v = _video_streams(path)
            assert len(v) == 1 and (v[0]["codec_name"], v[0]["width"]) == ("h264", it.width)
            assert rc != 0 and n == 0
        elif it.kind == "audio_only":
            p = _probe(path)
            assert p is not None and [s["codec_type"] for s in p["streams"]] == ["audio"]
        elif it.kind == "short":
            assert 1 <= it.frames <= 15
        elif it.kind == "huge":
            v = _video_streams(path)[0]
            assert (v["width"], v["height"]) == (3840, 2160) and it.frames == 2
        elif it.kind == "odd_size":
            v = _video_streams(path)[0]
            assert (v["codec_name"], v["width"], v["height"]) == ("vp9", 341, 257)
        elif it.kind in ("webm", "mkv"):
            p = _probe(path)
            assert "matroska" in p["format"]["format_name"] and path.suffix == f".{it.kind}"
            assert _video_streams(path)[0]["codec_name"] == it.codec
        elif it.kind == "unknown_label":
            assert it.label is None and it.split == "val"
            assert it.relpath.split("/")[1] == UNKNOWN_LABEL["kinetics600"]
            assert rc == 0 and n > 0  # the file itself is fine: the label is the problem
    weird = [i.relpath.split("/")[2] for i in kinetics.items if i.kind == "weird_name"]
    assert any(" " in w for w in weird)
    assert any(not w.isascii() for w in weird)
    assert any(w.startswith("-") and w.count(".") >= 3 for w in weird)
    assert {i.split for i in kinetics.items if i.kind == "missing_file"} == {"train", "val"}


def test_rotated_video_has_display_matrix_and_asymmetric_content(kinetics):
    it = kinetics.by_kind("rotated")[0]
    path = kinetics.root / it.relpath
    v = _video_streams(path)[0]
    assert (v["width"], v["height"], it.rotation) == (320, 240, 90)
    rotations = [sd["rotation"] for sd in v.get("side_data_list", []) if "rotation" in sd]
    assert rotations == [-90]  # ffprobe's display matrix: 90 degrees clockwise for display

    def red(frame: np.ndarray) -> np.ndarray:
        return (frame[..., 0] > 200) & (frame[..., 1] < 60) & (frame[..., 2] < 60)

    shown = _decode_rgb(path)  # ffmpeg autorotates
    assert shown.shape[1:3] == (320, 240)  # portrait
    corner = red(shown[0])
    assert corner[:20, :20].mean() > 0.9 and corner[-40:, :].mean() < 0.05 and corner[:, -40:].mean() < 0.05
    stored = _decode_rgb(path, "-noautorotate")
    assert stored.shape[1:3] == (240, 320)
    assert red(stored[0])[-20:, :20].mean() > 0.9  # the display's top-left is the stored bottom-left
    assert len(shown) == it.frames


def test_vfr_video_has_irregular_timestamps(kinetics):
    it = kinetics.by_kind("vfr")[0]
    path = kinetics.root / it.relpath
    v = _video_streams(path)[0]
    assert Fraction(v["avg_frame_rate"]) < Fraction(v["r_frame_rate"])
    pts = (
        subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "frame=pts_time",
                "-of",
                "csv=p=0",
            ]
            + [str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.replace(",", " ")
        .split()
    )
    steps = np.round(np.diff(sorted(float(p) for p in pts)), 4)
    assert len(pts) == it.frames
    assert len(set(steps)) >= 2  # not a constant frame rate
    # ffmpeg's default constant-rate output would invent frames; every frame kept gives the source frames.
    assert len(_decode_rgb(path)) == it.frames


# ------------------------------------------------------------------------------------------------------------
# Jester


def test_jester_layout_and_csvs(jester):
    root = jester.root
    assert {p.name for p in root.iterdir()} == {
        "20bn-jester-v1",
        "jester-v1-labels.csv",
        "jester-v1-train.csv",
        "jester-v1-validation.csv",
        "jester-v1-test.csv",
    }
    labels = (root / "jester-v1-labels.csv").read_text(encoding="utf-8").splitlines()
    assert labels == list(jester.classes) == ["Swiping Left", "Swiping Right"]
    listed: dict[str, tuple[str, str | None]] = {}
    for split in ("train", "validation"):
        for line in (root / f"jester-v1-{split}.csv").read_text(encoding="utf-8").splitlines():
            vid, label = line.split(";")
            assert vid.isdigit() and label
            listed[vid] = (split, label)
    for line in (root / "jester-v1-test.csv").read_text(encoding="utf-8").splitlines():
        assert line.isdigit()
        listed[line] = ("test", None)
    items = {it.relpath.split("/")[1]: it for it in jester.items}
    for vid, it in items.items():
        assert it.relpath == f"20bn-jester-v1/{vid}"
        if it.expect == "unlisted":
            assert vid not in listed
            continue
        assert listed[vid][0] == it.split
        if it.kind != "unknown_label":
            assert listed[vid][1] == it.label
    assert set(listed) == {v for v, it in items.items() if it.expect != "unlisted"}
    assert _on_disk_entries(jester) == {i.relpath for i in jester.items if i.expect != "missing"}

    import simplejpeg

    lo, hi = SMALL.jester_frames
    normal = [i for i in jester.items if i.kind == "normal"]
    for split in ("train", "validation", "test"):
        assert sum(1 for i in normal if i.split == split) == 2 * SMALL.videos_per_class
    for it in normal:
        files = sorted(p.name for p in (root / it.relpath).iterdir())
        assert files == [f"{k:05d}.jpg" for k in range(1, it.frames + 1)]
        assert lo <= it.frames <= hi
        img = simplejpeg.decode_jpeg((root / it.relpath / "00001.jpg").read_bytes())
        assert img.shape == (100, it.width, 3) and 120 <= it.width <= 180


def test_jester_bad_inputs_behave_as_recorded(jester):
    import simplejpeg

    root = jester.root
    assert _kinds(jester) == {
        "normal": {"ok"},
        "short": {"ok"},
        "empty_folder": {"failed"},
        "corrupt_jpeg": {"failed"},
        "missing_file": {"missing"},
        "unlisted_file": {"unlisted"},
        "unknown_label": {"failed"},
    }
    for it in jester.items:
        folder = root / it.relpath
        if it.kind == "missing_file":
            assert not folder.exists()
            continue
        files = sorted(folder.iterdir())
        bad = []
        for f in files:
            try:
                simplejpeg.decode_jpeg(f.read_bytes())
            except ValueError:
                bad.append(f.name)
        if it.kind == "corrupt_jpeg":
            assert len(bad) == 1 and len(files) > 2
            assert not (folder / bad[0]).read_bytes().endswith(b"\xff\xd9")  # no end-of-image marker
        else:
            assert bad == [], it
        if it.kind == "empty_folder":
            assert folder.is_dir() and files == []
        elif it.kind == "short":
            assert 1 <= len(files) == it.frames <= 15
        elif it.kind == "unknown_label":
            line = next(
                ln for ln in (root / "jester-v1-train.csv").read_text().splitlines() if ln.startswith(f"{folder.name};")
            )
            assert line.split(";")[1] == UNKNOWN_LABEL["jester"] not in jester.classes
        elif it.expect in ("ok", "unlisted"):
            assert len(files) == it.frames


def test_jester_supports_six_classes(tmp_path):
    cfg = SynthConfig(num_classes=6, videos_per_class=1, bad_inputs=False, jester_frames=(3, 4))
    r = generate("jester", tmp_path, cfg)
    assert len(r.classes) == 6 and len({r.motion_of(c) for c in r.classes}) == 6
    assert (tmp_path / "jester-v1-labels.csv").read_text().splitlines() == list(r.classes)


# ------------------------------------------------------------------------------------------------------------
# UCF-101


def test_ucf_layout_and_split_lists(ucf):
    root = ucf.root
    lists = root / "ucfTrainTestlist"
    assert {p.name for p in root.iterdir()} == {"UCF-101", "ucfTrainTestlist"}
    assert {p.name for p in lists.iterdir()} == {"classInd.txt"} | {
        f"{k}list0{i}.txt" for k in ("train", "test") for i in (1, 2, 3)
    }
    raw = (lists / "classInd.txt").read_bytes()
    assert raw == b"1 MovingUp\r\n2 MovingDown\r\n"  # CRLF like the real files
    index = {"MovingUp": 1, "MovingDown": 2}
    assert list(ucf.classes) == list(index)

    by_name = {it.relpath.removeprefix("UCF-101/"): it for it in ucf.items}
    listed_everywhere = None
    for k in (1, 2, 3):
        train = (lists / f"trainlist0{k}.txt").read_bytes().decode()
        test = (lists / f"testlist0{k}.txt").read_bytes().decode()
        assert train.endswith("\r\n") and test.endswith("\r\n")
        train_rows = [ln.rsplit(" ", 1) for ln in train.split("\r\n") if ln]
        test_rows = [ln for ln in test.split("\r\n") if ln]
        assert train_rows and test_rows
        names = {n for n, _ in train_rows} | set(test_rows)
        assert not ({n for n, _ in train_rows} & set(test_rows))
        listed_everywhere = names if listed_everywhere is None else listed_everywhere
        assert names == listed_everywhere  # every listed video is in each split, as train or test
        for name, idx in train_rows:
            assert ucf_group(name) not in ucf_test_groups(k)
            cls = name.split("/")[0]
            assert int(idx) == index.get(cls, len(index) + 1)
        for name in test_rows:
            assert ucf_group(name) in ucf_test_groups(k)
        normal = [n for n in names if by_name[n].kind == "normal"]
        assert any(n in test_rows for n in normal) and any(n not in test_rows for n in normal)
    assert listed_everywhere == {n for n, it in by_name.items() if it.expect != "unlisted"}
    for name, it in by_name.items():
        cls, fname = name.split("/")
        assert it.split is None
        if it.kind == "normal":
            assert re.fullmatch(rf"v_{cls}_g\d\d_c\d\d\.avi", fname)
            assert it.label == cls
    assert _on_disk_entries(ucf) == {i.relpath for i in ucf.items if i.expect != "missing"}
    assert sum(1 for it in ucf.items if it.kind == "normal") == 2 * SMALL.videos_per_class


def test_ucf_groups_give_every_class_test_videos_in_every_split(tmp_path):
    """With three or more videos per class, each class has train and test videos in each official split."""
    cfg = SynthConfig(num_classes=3, videos_per_class=3, seconds=0.2, bad_inputs=False)
    r = generate("ucf101", tmp_path, cfg)
    groups = {(it.label, ucf_group(it.relpath)) for it in r.items}
    for k in (1, 2, 3):
        for cls in r.classes:
            gs = [g for c, g in groups if c == cls]
            assert any(g in ucf_test_groups(k) for g in gs) and any(g not in ucf_test_groups(k) for g in gs)


def test_ucf_videos_are_xvid_320x240_25fps(ucf):
    for it in ucf.items:
        if it.kind not in ("normal", "weird_name", "short", "unlisted_file"):
            continue
        v = _video_streams(ucf.root / it.relpath)[0]
        assert (v["codec_name"], v["codec_tag_string"], v["width"], v["height"]) == (
            "mpeg4",
            "XVID",
            320,
            240,
        )
        assert v["r_frame_rate"] == "25/1" == it.fps
        assert count_decoded_frames(ucf.root / it.relpath) == (0, it.frames)


def test_ucf_bad_inputs_behave_as_recorded(ucf):
    kinds = _kinds(ucf)
    assert set(kinds) == {
        "normal",
        "zero_byte",
        "garbage",
        "text",
        "truncated",
        "undecodable",
        "unknown_codec",
        "audio_only",
        "short",
        "weird_name",
        "missing_file",
        "unlisted_file",
        "unknown_label",
    }
    for it in ucf.items:
        path = ucf.root / it.relpath
        if it.expect == "missing":
            assert not path.exists()
            continue
        rc, n = count_decoded_frames(path)
        if it.expect in ("ok", "unlisted"):
            assert rc == 0 and n == it.frames, it
        elif it.kind != "unknown_label":
            assert n == 0, it
        if it.kind == "truncated":
            # A cut AVI still yields its first frames: what ffmpeg decodes is what counts.
            assert it.expect == "ok" and 0 < it.frames < round(SMALL.seconds * 25)
        elif it.kind == "undecodable":
            v = _video_streams(path)
            assert len(v) == 1 and v[0]["codec_name"] == "mpeg4" and rc != 0
        elif it.kind == "unknown_codec":
            v = _video_streams(path)
            assert len(v) == 1 and v[0].get("codec_name") in (None, "none", "unknown")
            assert v[0]["codec_tag_string"] == "ZZ9Z" and rc != 0
        elif it.kind == "audio_only":
            assert [s["codec_type"] for s in _probe(path)["streams"]] == ["audio"]
        elif it.kind == "unknown_label":
            cls = it.relpath.split("/")[1]
            assert cls == UNKNOWN_LABEL["ucf101"] and it.label is None
            assert cls not in (ucf.root / "ucfTrainTestlist" / "classInd.txt").read_text()
    weird = [it.relpath.split("/")[2] for it in ucf.items if it.kind == "weird_name"]
    assert any(" " in w for w in weird) and any(not w.isascii() for w in weird)
    assert any(w.startswith("-") for w in weird) and any(w.count(".") >= 3 for w in weird)


# ------------------------------------------------------------------------------------------------------------
# determinism (last: the module's datasets exist by now)


# Kinetics regenerates ~30 videos including a 4K one: slow on a busy 2-core machine.
@pytest.mark.parametrize("dataset", [pytest.param("kinetics600", marks=pytest.mark.slow), "jester", "ucf101"])
def test_same_config_gives_identical_files(dataset, tmp_path, request):
    """Byte-identical trees for the same config and seed, whatever the order the files are made in (the
    fixtures ran one ffmpeg per core; this runs them one at a time)."""
    first = request.getfixturevalue({"kinetics600": "kinetics", "jester": "jester", "ucf101": "ucf"}[dataset])
    cfg = dataclasses.replace(K_SMALL if dataset == "kinetics600" else SMALL, workers=1)
    again = generate(dataset, tmp_path / "again", cfg)
    assert _tree(again.root) == _tree(first.root)
    assert again.to_json().replace(str(again.root), "ROOT") == first.to_json().replace(str(first.root), "ROOT")


def test_another_seed_gives_other_data(jester, tmp_path):
    other = generate("jester", tmp_path, SynthConfig(num_classes=2, videos_per_class=2, seconds=1.0, seed=6))
    assert _tree(other.root) != _tree(jester.root)
