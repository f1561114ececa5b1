"""Spatial transforms, flip policy and device normalisation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from shards.format import encode_jpeg_rgb
from tests.helpers import EdgeRng
from training.data.config import MULTISCALE, LoaderConfig
from training.data.normalize import ACTIVITYNET_MEAN, ClipNormalizer, InputConvention, normalization_for
from training.data.transforms import (
    CropBox,
    center_box,
    corner_box,
    crop_resize,
    decode_frames,
    multiscale_crop_box,
)


class ScriptedRng:
    """Draws a scripted sequence of values (each must be inside the requested range)."""

    def __init__(self, values):
        self.values = list(values)

    def integers(self, low, high=None):
        if high is None:
            low, high = 0, low
        v = self.values.pop(0)
        assert low <= v < high
        return v


def test_scales_are_powers_of_two():
    assert pytest.approx((1, 2 ** -0.25, 2 ** -0.5, 2 ** -0.75, 0.5)) == MULTISCALE


@pytest.mark.parametrize(
    ("h", "w", "sides"),
    [
        (128, 170, [128, 107, 90, 76, 64]),
        (240, 320, [240, 201, 169, 142, 120]),  # the released code gets 119 for the last (0.49999...)
        (100, 176, [100, 84, 70, 59, 50]),
    ],
)
def test_multiscale_crop_bounds_exact(h, w, sides):
    for s, side in enumerate(sides):
        lo = multiscale_crop_box(h, w, ScriptedRng([s, 0, 0]))
        hi = multiscale_crop_box(h, w, ScriptedRng([s, h - side, w - side]))
        assert lo == CropBox(0, 0, side)
        assert hi == CropBox(h - side, w - side, side)  # last position included
    # The scale is drawn first and the position ranges are exactly [0, H-side] x [0, W-side].
    assert multiscale_crop_box(h, w, EdgeRng(True)) == CropBox(h - sides[-1], w - sides[-1], sides[-1])
    assert multiscale_crop_box(h, w, EdgeRng(False)) == CropBox(0, 0, sides[0])


def test_multiscale_crop_random_stays_inside():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(3000):
        b = multiscale_crop_box(128, 170, rng)
        assert 0 <= b.y <= 128 - b.side and 0 <= b.x <= 170 - b.side
        seen.add(b.side)
    assert seen == {128, 107, 90, 76, 64}


def test_corner_positions_exact():
    assert corner_box(128, 170, 64, "c") == CropBox(32, 53, 64)
    assert corner_box(128, 170, 64, "tl") == CropBox(0, 0, 64)
    assert corner_box(128, 170, 64, "tr") == CropBox(0, 106, 64)
    assert corner_box(128, 170, 64, "bl") == CropBox(64, 0, 64)
    assert corner_box(128, 170, 64, "br") == CropBox(64, 106, 64)
    boxes = {multiscale_crop_box(128, 170, ScriptedRng([4, k]), position="corner") for k in range(5)}
    assert boxes == {corner_box(128, 170, 64, p) for p in ("c", "tl", "tr", "bl", "br")}
    with pytest.raises(ValueError):
        corner_box(128, 170, 64, "middle")


def test_center_box():
    assert center_box(128, 170) == CropBox(0, 21, 128)
    assert center_box(100, 176) == CropBox(0, 38, 100)
    assert center_box(240, 180) == CropBox(30, 0, 180)


def pattern(t=5, h=40, w=60, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_crop_resize_applies_one_crop_to_every_frame():
    frames = pattern()
    box = CropBox(3, 11, 29)
    out = crop_resize(frames, box, 16)
    assert out.shape == (3, 5, 16, 16) and out.dtype == np.uint8
    for t in range(5):
        ref = cv2.resize(frames[t, 3:32, 11:40], (16, 16), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(out[:, t], ref.transpose(2, 0, 1))


def test_crop_resize_flip_gather_and_out():
    frames = pattern()
    box = CropBox(0, 0, 40)
    plain = crop_resize(frames, box, 20)
    flipped = crop_resize(frames, box, 20, flip=True)
    np.testing.assert_array_equal(flipped, plain[..., ::-1])
    gather = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    looped = crop_resize(frames, box, 20, gather=gather)
    np.testing.assert_array_equal(looped, plain[:, gather])
    dest = np.zeros((3, 8, 20, 20), np.uint8)
    assert crop_resize(frames, box, 20, gather=gather, out=dest) is dest
    np.testing.assert_array_equal(dest, looped)
    same = crop_resize(frames, CropBox(2, 2, 20), 20)  # no resampling when the crop has the output size
    np.testing.assert_array_equal(same, frames[:, 2:22, 2:22].transpose(3, 0, 1, 2))
    with pytest.raises(ValueError):
        crop_resize(frames, CropBox(30, 0, 20), 20)


def test_decode_frames_and_corrupt_frames():
    frames = [np.full((24, 32, 3), v, np.uint8) for v in (10, 200)]
    jpegs = [encode_jpeg_rgb(f, 95) for f in frames]
    out = decode_frames(jpegs)
    assert out.shape == (2, 24, 32, 3) and out.dtype == np.uint8
    assert abs(int(out[0].mean()) - 10) <= 2 and abs(int(out[1].mean()) - 200) <= 2
    buf = np.empty((2, 24, 32, 3), np.uint8)
    assert decode_frames(jpegs, out=buf) is buf
    with pytest.raises(ValueError, match="frame 1: corrupt JPEG"):
        decode_frames([jpegs[0], b"\xff\xd8 not a jpeg"])
    with pytest.raises(ValueError, match="frame 1"):
        decode_frames([jpegs[0], encode_jpeg_rgb(np.zeros((24, 48, 3), np.uint8), 90)])


# -- flip policy -------------------------------------------------------------------------------------

def test_flip_policy_per_dataset():
    assert LoaderConfig("kinetics600").flip and LoaderConfig("ucf101").flip
    assert not LoaderConfig("jester").flip
    assert not LoaderConfig("jester", hflip=None).flip
    assert not LoaderConfig("kinetics600", mode="val").flip and not LoaderConfig("ucf101", mode="eval").flip
    assert not LoaderConfig("kinetics600", hflip=False).flip
    with pytest.raises(ValueError, match="left/right"):
        LoaderConfig("jester", hflip=True)


def test_config_units_and_validation():
    jester = LoaderConfig.for_dataset("jester")
    assert jester.step_for(2) == 1 and jester.step_for(1) == 2  # stride-2 shards vs full-rate shards
    with pytest.raises(ValueError):
        jester.step_for(3)
    assert LoaderConfig("kinetics600", downsample=3).step_for(7) == 3
    assert LoaderConfig("kinetics600").drops_last and not LoaderConfig("kinetics600", mode="eval").drops_last
    for bad in ({"dataset": "hmdb"}, {"mode": "test"}, {"clip_len": 0}, {"scales": (1.5,)},
                {"crop_position": "middle"}):
        with pytest.raises(ValueError):
            LoaderConfig(**{"dataset": "ucf101", **bad})


# -- normalisation on the device ------------------------------------------------------------------------

def test_normalizer_presets():
    x = torch.randint(0, 256, (2, 3, 4, 5, 5), dtype=torch.uint8)
    xf = x.float()
    mean = torch.tensor(ACTIVITYNET_MEAN).view(1, 3, 1, 1, 1)
    y = ClipNormalizer(normalization_for("kinetics600"))(x)
    assert y.dtype == torch.float32 and torch.allclose(y, xf - mean, atol=1e-4)
    # released Kinetics models: BGR input, 0-255, mean subtracted from B, G, R in that order, no std
    y = ClipNormalizer(normalization_for("ucf101", checkpoint="released-kinetics600"))(x)
    assert torch.allclose(y, xf.flip(1) - mean, atol=1e-4)
    y = ClipNormalizer(normalization_for(checkpoint="imagenet"), dtype=torch.bfloat16, channels_last=True)(x)
    ref = (xf / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(y.float(), ref, atol=0.05)
    with pytest.raises(ValueError):
        normalization_for(checkpoint="nope")
    with pytest.raises(ValueError):
        InputConvention(channel_order="GBR")
    with pytest.raises(ValueError):
        ClipNormalizer(InputConvention())(x[0])


def test_each_dataset_evaluates_with_its_papers_windows():
    """``DatasetSpec.eval_windows`` names windows the loader reads: every window for Kinetics-600 and UCF-101,
    Jester's middle window (the released code's ``n_val_samples 1``, the accuracy the paper reports)."""
    from shards.datasets import DATASETS, EVAL_WINDOWS
    from training.data.config import WINDOW_MODES, evaluation_mode

    assert set(WINDOW_MODES) == set(EVAL_WINDOWS)
    assert {d: evaluation_mode(d) for d in DATASETS} == {"kinetics600": "eval", "jester": "val", "ucf101": "eval"}
