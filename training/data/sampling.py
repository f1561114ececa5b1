"""Pure temporal samplers: which stored frames make up a clip.

Every function returns stored-frame indices as an ``int64`` array of shape ``(clip_len,)``. Units are
*stored* frames (a Jester shard stored at stride 2 holds every second source frame); ``step`` is the
distance between consecutive clip frames in stored frames (``downsample`` in the released code).

Loop padding: a video too short for the clip is read as if it repeated, ``0, 1, …, n−1, 0, 1, …``, and the
clip takes every ``step``-th frame of that endless sequence. With ``step == 1`` a 10-frame video gives
``0..9, 0..5``; with ``step == 2`` a 20-frame video gives ``0, 2, …, 18, 0, 2, …, 10``.

Also here: :class:`CounterRng`, a tiny counter-based generator that makes each sample's random choices
a function of ``(seed, epoch, sample)`` only, and :func:`buffered_shuffle_order`, the shuffle buffer
expressed as a permutation that can be recomputed (and fast-forwarded) without touching data.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


class CounterRng:
    """Deterministic random numbers for one sample, keyed by a tuple of integers.

    Seeding a numpy ``Generator`` costs tens of µs; this costs ~1 µs and gives the same stream on every
    platform and numpy version. The interface is the subset of ``numpy.random.Generator`` the samplers
    use (``integers(low, high)``, ``random()``), so tests may pass a numpy generator instead.
    """

    __slots__ = ("_state",)

    def __init__(self, *key: int):
        h = 0x2545F4914F6CDD1D
        for k in key:
            h = _splitmix64(h ^ (int(k) & _M64))
        self._state = h

    def _next(self) -> int:
        self._state = _splitmix64(self._state)
        return self._state

    def integers(self, low: int, high: int | None = None) -> int:
        """A uniform integer in ``[low, high)`` (or ``[0, low)`` with one argument)."""
        if high is None:
            low, high = 0, low
        if high <= low:
            raise ValueError(f"empty range [{low}, {high})")
        return low + self._next() % (high - low)  # modulo bias < 2^-40 for any range used here

    def random(self) -> float:
        """A uniform float in ``[0, 1)``."""
        return (self._next() >> 11) * (1.0 / (1 << 53))


def _looped(begin: int, count: int, clip_len: int, step: int) -> np.ndarray:
    """Frames ``begin + (k*step mod count)``, k < clip_len: every step-th frame of ``[begin, begin+count)``
    repeated end to end."""
    if count < 1:
        raise ValueError(f"cannot sample a clip from {count} frames")
    k = np.arange(clip_len, dtype=np.int64) * step
    return begin + k % count


def clip_span(clip_len: int, step: int = 1) -> int:
    """Stored frames a clip covers from its first to its last frame: ``(clip_len - 1) * step + 1``."""
    return (clip_len - 1) * step + 1


def last_start(num_frames: int, clip_len: int, step: int = 1) -> int:
    """The last start whose clip fits in the video without looping (0 when none fits)."""
    return max(0, num_frames - clip_span(clip_len, step))


def clip_at(start: int, num_frames: int, clip_len: int, step: int = 1) -> np.ndarray:
    """The clip starting at ``start``, loop padded when the video is shorter than the clip.

    Args:
        start: first stored frame, ``0 <= start <= last_start(...)``.
        num_frames: stored frames in the video (n >= 1).
    Returns:
        ``(clip_len,)`` int64 stored-frame indices.
    """
    if not 0 <= start <= last_start(num_frames, clip_len, step):
        raise ValueError(f"start {start} outside [0, {last_start(num_frames, clip_len, step)}] "
                         f"for {num_frames} frames")
    return _looped(start, num_frames - start, clip_len, step)


def random_clip(num_frames: int, clip_len: int, step: int, rng) -> np.ndarray:
    """Training clip: a uniformly random start among **all** valid starts, the last one included.

    Valid starts are ``0 .. num_frames - clip_span`` (the released code never picks the last one). A video
    shorter than the clip span starts at 0 and is loop padded.

    Args:
        rng: anything with ``integers(low, high)`` (:class:`CounterRng` or ``numpy.random.Generator``).
    Returns:
        ``(clip_len,)`` int64 stored-frame indices.
    """
    start = int(rng.integers(0, last_start(num_frames, clip_len, step) + 1))
    return clip_at(start, num_frames, clip_len, step)


def center_clip(num_frames: int, clip_len: int, step: int = 1) -> np.ndarray:
    """Validation clip: the clip centred on the video's middle frame.

    The start is ``num_frames // 2 - (clip_len * step) // 2`` clamped to the valid starts, as the released
    ``TemporalCenterCrop`` (37 frames, 16 at step 2 → frames 2, 4, …, 32; 37 frames, 16 at step 1 →
    10..25). For Jester stored at stride 2 this is the middle 32 source frames.
    """
    start = num_frames // 2 - (clip_len * step) // 2
    start = min(max(0, start), last_start(num_frames, clip_len, step))
    return clip_at(start, num_frames, clip_len, step)


def num_windows(num_frames: int, clip_len: int, step: int = 1) -> int:
    """Non-overlapping evaluation windows of ``clip_len * step`` stored frames covering the whole video."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    width = clip_len * step
    return -(-num_frames // width)


def eval_window(index: int, num_frames: int, clip_len: int, step: int = 1) -> np.ndarray:
    """Evaluation clip ``index``: window ``[index*clip_len*step, (index+1)*clip_len*step)``.

    Every frame of the video belongs to exactly one window. The last window, when short, is loop padded
    within itself (its own frames repeat; frames of the previous window are not borrowed), as the released
    test loader does. Returns ``(clip_len,)`` int64 stored-frame indices.
    """
    n = num_windows(num_frames, clip_len, step)
    if not 0 <= index < n:
        raise ValueError(f"window {index} outside [0, {n}) for {num_frames} frames")
    begin = index * clip_len * step
    return _looped(begin, min(clip_len * step, num_frames - begin), clip_len, step)


def eval_windows(num_frames: int, clip_len: int, step: int = 1) -> list[np.ndarray]:
    """All evaluation windows of a video, in temporal order (see :func:`eval_window`)."""
    n = num_windows(num_frames, clip_len, step)
    return [eval_window(i, num_frames, clip_len, step) for i in range(n)]


def buffered_shuffle_order(n: int, buffer_size: int, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """The order in which a shuffle buffer of ``buffer_size`` emits ``n`` streamed items.

    The buffer is filled to ``buffer_size`` from the stream; each output takes a uniformly random buffered
    item and the next streamed item refills the buffer. Computing it on indices, before any data is read,
    makes the order reproducible per (seed, epoch) and lets a resumed epoch know exactly which items were
    still buffered at the resume point.

    Returns:
        ``order``: ``(n,)`` int64, ``order[j]`` is the stream index of the j-th output;
        ``reads``: ``(n,)`` int64, items ``0 .. reads[j]-1`` have been streamed when output j is produced
        (``order[j] < reads[j]`` and ``reads[j] - j <= max(buffer_size, 1)``).
    """
    order = np.empty(n, np.int64)
    reads = np.empty(n, np.int64)
    buf: list[int] = []
    nxt = 0
    cap = max(1, buffer_size)
    for j in range(n):
        while len(buf) < cap and nxt < n:
            buf.append(nxt)
            nxt += 1
        k = rng.randrange(len(buf)) if len(buf) > 1 else 0
        order[j] = buf[k]
        reads[j] = nxt
        buf[k] = buf[-1]
        buf.pop()
    return order, reads


def held_at(order: Sequence[int], reads: Sequence[int], j: int) -> list[int]:
    """Stream indices sitting in the buffer just before output ``j`` (what a resume must re-read)."""
    if j >= len(order):
        return []
    r = int(reads[j])
    return sorted(int(i) for i in order[j:] if i < r)
