"""Temporal samplers: exact index tables, loop padding, eval windows, the shuffle-buffer permutation."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.helpers import EdgeRng
from training.data.sampling import (
    CounterRng,
    buffered_shuffle_order,
    center_clip,
    clip_at,
    eval_window,
    eval_windows,
    held_at,
    last_start,
    num_windows,
    random_clip,
)


def rr(*parts):
    """Concatenated ranges, as a list."""
    out = []
    for p in parts:
        out += list(p)
    return out


# -- random training clip ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("n", "clip_len", "step", "lowest", "highest"),
    [
        (20, 16, 1, range(0, 16), range(4, 20)),  # last valid start 4 is drawn (released code: never)
        (17, 16, 1, range(0, 16), range(1, 17)),  # released code always starts a 17-frame video at 0
        (16, 16, 1, range(0, 16), range(0, 16)),
        (40, 16, 2, range(0, 31, 2), range(9, 40, 2)),  # clip spans 31 stored frames: starts 0..9
    ],
)
def test_random_clip_bounds_exact(n, clip_len, step, lowest, highest):
    assert random_clip(n, clip_len, step, EdgeRng(False)).tolist() == list(lowest)
    assert random_clip(n, clip_len, step, EdgeRng(True)).tolist() == list(highest)


def test_random_clip_reaches_every_start_uniformly():
    n, clip_len = 24, 16
    starts = [int(random_clip(n, clip_len, 1, CounterRng(7, i))[0]) for i in range(4000)]
    counts = np.bincount(starts, minlength=last_start(n, clip_len) + 1)
    assert len(counts) == 9 and counts.min() > 350  # 9 starts (0..8), ~444 each
    for i in range(200):  # every clip is consecutive frames
        c = random_clip(n, clip_len, 1, CounterRng(3, i))
        assert (np.diff(c) == 1).all()


@pytest.mark.parametrize(
    ("n", "clip_len", "step", "expected"),
    [
        (10, 16, 1, rr(range(10), range(6))),                    # 0..9, 0..5
        (1, 4, 1, [0, 0, 0, 0]),
        (3, 8, 1, [0, 1, 2, 0, 1, 2, 0, 1]),
        (20, 16, 2, rr(range(0, 20, 2), range(0, 12, 2))),       # released: [1,3..19,1,3..11] 1-based
        (21, 16, 2, rr(range(0, 21, 2), range(1, 10, 2))),       # cycle 0..20,0..: every 2nd → 1,3,5,7,9
    ],
)
def test_short_videos_are_loop_padded(n, clip_len, step, expected):
    # Any rng: a video shorter than the clip has a single start.
    assert random_clip(n, clip_len, step, EdgeRng(True)).tolist() == expected
    assert clip_at(0, n, clip_len, step).tolist() == expected


def test_clip_at_rejects_invalid_starts():
    with pytest.raises(ValueError):
        clip_at(5, 20, 16, 1)
    with pytest.raises(ValueError):
        clip_at(0, 0, 16, 1)


# -- validation: centre clip -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("n", "clip_len", "step", "expected"),
    [
        (37, 16, 2, list(range(2, 33, 2))),        # released TemporalCenterCrop: [3,5..33] 1-based
        (37, 16, 1, list(range(10, 26))),          # [11..26] 1-based
        (20, 16, 2, rr(range(0, 20, 2), range(0, 12, 2))),
        (10, 16, 1, rr(range(10), range(6))),
        (16, 16, 1, list(range(16))),
        (100, 16, 1, list(range(42, 58))),
        (18, 16, 1, list(range(1, 17))),           # Jester stored at stride 2: middle 32 source frames
        (31, 16, 2, list(range(0, 31, 2))),        # exactly one fitting start
    ],
)
def test_center_clip_exact(n, clip_len, step, expected):
    assert center_clip(n, clip_len, step).tolist() == expected


# -- evaluation windows -----------------------------------------------------------------------------

def test_eval_windows_300_frames():
    ws = eval_windows(300, 16)
    assert len(ws) == num_windows(300, 16) == 19
    for i, w in enumerate(ws[:-1]):
        assert w.tolist() == list(range(16 * i, 16 * i + 16))
    # the last window holds frames 288..299 and is loop padded within itself
    assert ws[-1].tolist() == rr(range(288, 300), range(288, 292))


@pytest.mark.parametrize(
    ("n", "clip_len", "step", "expected"),
    [
        (32, 16, 1, [list(range(16)), list(range(16, 32))]),
        (33, 16, 1, [list(range(16)), list(range(16, 32)), [32] * 16]),
        (5, 16, 1, [rr(range(5), range(5), range(5), [0])]),
        (40, 4, 2, [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18, 20, 22], [24, 26, 28, 30], [32, 34, 36, 38]]),
        (37, 4, 2, [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18, 20, 22], [24, 26, 28, 30], [32, 34, 36, 33]]),
    ],
)
def test_eval_windows_exact(n, clip_len, step, expected):
    assert [w.tolist() for w in eval_windows(n, clip_len, step)] == expected


@pytest.mark.parametrize("n", [1, 7, 16, 17, 47, 48, 300])
def test_eval_windows_cover_every_frame_once(n):
    ws = eval_windows(n, 16)
    distinct = [sorted(set(w.tolist())) for w in ws]
    assert sum(distinct, []) == list(range(n))
    with pytest.raises(ValueError):
        eval_window(len(ws), n, 16)


# -- counter-based rng ------------------------------------------------------------------------------

def test_counter_rng_is_a_function_of_its_key():
    a = [CounterRng(1, 2, 3).integers(0, 1000) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    r1, r2 = CounterRng(5, 0, 9), CounterRng(5, 0, 9)
    assert [r1.integers(10) for _ in range(20)] == [r2.integers(10) for _ in range(20)]
    assert len({CounterRng(5, 0, k).integers(0, 1 << 30) for k in range(100)}) == 100
    vals = [CounterRng(2, k).random() for k in range(2000)]
    assert min(vals) >= 0 and max(vals) < 1 and abs(np.mean(vals) - 0.5) < 0.03
    with pytest.raises(ValueError):
        CounterRng(1).integers(3, 3)


# -- shuffle buffer ---------------------------------------------------------------------------------

def physical_buffer(items, buffer_size, rng):
    """A shuffle buffer on real items, written independently, to check the index computation."""
    buf, out, it = [], [], iter(items)
    exhausted = False
    while True:
        while len(buf) < max(1, buffer_size) and not exhausted:
            try:
                buf.append(next(it))
            except StopIteration:
                exhausted = True
        if not buf:
            return out
        k = rng.randrange(len(buf)) if len(buf) > 1 else 0
        out.append(buf[k])
        buf[k] = buf[-1]
        buf.pop()


@pytest.mark.parametrize(("n", "size"), [(0, 4), (1, 4), (10, 0), (10, 1), (50, 7), (50, 100)])
def test_buffered_shuffle_order(n, size):
    order, reads = buffered_shuffle_order(n, size, random.Random(3))
    assert sorted(order.tolist()) == list(range(n))
    assert (order < reads).all() and (np.diff(reads) >= 0).all()
    assert ((reads - np.arange(n)) <= max(1, size)).all()
    if size <= 1:
        assert order.tolist() == list(range(n))
    items = [f"x{i}" for i in range(n)]
    assert [items[i] for i in order] == physical_buffer(items, size, random.Random(3))
    order2, _ = buffered_shuffle_order(n, size, random.Random(3))
    assert order.tolist() == order2.tolist()


def test_shuffle_mixes_and_held_at_is_the_buffer_content():
    order, reads = buffered_shuffle_order(200, 16, random.Random(0))
    assert order.tolist() != list(range(200))
    assert order.tolist() != buffered_shuffle_order(200, 16, random.Random(1))[0].tolist()
    for j in (0, 1, 50, 199):
        held = held_at(order, reads, j)
        assert len(held) == min(16, 200 - j) and order[j] in held
        assert set(held) == set(range(reads[j])) - set(order[:j].tolist())
    assert held_at(order, reads, 200) == []
