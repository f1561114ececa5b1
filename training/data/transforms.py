"""Pure spatial transforms for clips, on uint8 numpy arrays.

Layouts (all ``uint8``, RGB):

* decoded frames: ``(T, H, W, 3)`` — what :func:`decode_frames` returns;
* loader output:  ``(3, T, S, S)`` — channels first, as the 3D CNNs take it (``(C, T, H, W)``).

One :class:`CropBox` is drawn per clip and applied to every frame of it, so the clip stays spatially
consistent. The crop is cut from the decoded frames *before* resizing (only the crop is resampled), with
OpenCV's ``INTER_LINEAR``; flipping is folded into the final layout copy and costs nothing extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from training.data.config import MULTISCALE

CORNERS = ("c", "tl", "tr", "bl", "br")


@dataclass(frozen=True)
class CropBox:
    """A square crop: rows ``y .. y+side-1``, columns ``x .. x+side-1`` of a frame (pixels)."""

    y: int
    x: int
    side: int

    def slices(self) -> tuple[slice, slice]:
        return slice(self.y, self.y + self.side), slice(self.x, self.x + self.side)


def crop_side(height: int, width: int, scale: float) -> int:
    """Side of a crop of ``scale`` times the short side (at least 1 pixel)."""
    return max(1, int(min(height, width) * scale))


def corner_box(height: int, width: int, side: int, position: str) -> CropBox:
    """The crop of ``side`` at one of the released code's positions: c (centre), tl, tr, bl, br.

    The centre box starts at ``(H//2 - side//2, W//2 - side//2)``, as ``MultiScaleCornerCrop`` does.
    """
    if position == "c":
        return CropBox(height // 2 - side // 2, width // 2 - side // 2, side)
    if position not in CORNERS:
        raise ValueError(f"position must be one of {CORNERS}, got {position!r}")
    y = 0 if position[0] == "t" else height - side
    x = 0 if position[1] == "l" else width - side
    return CropBox(y, x, side)


def multiscale_crop_box(height: int, width: int, rng, scales: Sequence[float] = MULTISCALE,
                        position: str = "random") -> CropBox:
    """Training crop: a square of side ``int(scale * short_side)``, scale drawn uniformly from ``scales``.

    ``position="random"``: the top-left corner is uniform over **every** integer position that keeps the
    square inside the frame (``y`` in ``[0, H - side]``, ``x`` in ``[0, W - side]``).
    ``position="corner"``: one of c/tl/tr/bl/br, uniformly.

    Draw order (fixed, for reproducibility): scale, then y, then x (or the corner).
    """
    side = crop_side(height, width, scales[int(rng.integers(0, len(scales)))])
    if position == "corner":
        return corner_box(height, width, side, CORNERS[int(rng.integers(0, len(CORNERS)))])
    if position != "random":
        raise ValueError(f"position must be 'random' or 'corner', got {position!r}")
    y = int(rng.integers(0, height - side + 1))
    x = int(rng.integers(0, width - side + 1))
    return CropBox(y, x, side)


def center_box(height: int, width: int) -> CropBox:
    """Validation/evaluation crop: the centred square of the short side.

    Resized to S, it equals "resize the short side to S, then centre-crop S×S" up to sub-pixel alignment,
    while resampling only the pixels that are kept.
    """
    side = min(height, width)
    return CropBox(round((height - side) / 2), round((width - side) / 2), side)


def decode_frames(jpegs: Sequence[bytes | memoryview], *, fast: bool = False,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Decode JPEG frames of one video to ``(T, H, W, 3)`` uint8 RGB.

    ``out``: an array of exactly that shape to decode into (saves an allocation and a copy per frame).
    Raises ``ValueError`` naming the frame when a frame is corrupt or its size differs from the first.
    """
    import simplejpeg

    if not jpegs:
        raise ValueError("no frames to decode")
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(jpegs[0])
    except ValueError as exc:
        raise ValueError(f"frame 0: corrupt JPEG ({exc})") from exc
    shape = (len(jpegs), h, w, 3)
    if out is None or out.shape != shape:
        out = np.empty(shape, np.uint8)
    for i, j in enumerate(jpegs):
        try:
            frame = simplejpeg.decode_jpeg(j, colorspace="RGB", fastdct=fast, fastupsample=fast,
                                           buffer=out[i])
        except ValueError as exc:  # simplejpeg also raises ValueError when the frame is larger
            raise ValueError(f"frame {i}: corrupt JPEG ({exc})") from exc
        if frame.shape != (h, w, 3):
            raise ValueError(f"frame {i}: size {frame.shape[1]}x{frame.shape[0]} differs from frame 0 "
                             f"({w}x{h})")
    return out


def crop_resize(frames: np.ndarray, box: CropBox, size: int, *, flip: bool = False,
                gather: np.ndarray | None = None, out: np.ndarray | None = None,
                scratch: np.ndarray | None = None) -> np.ndarray:
    """Crop ``box`` from every frame, resize it to ``size × size`` and lay the clip out channels first.

    Args:
        frames: ``(U, H, W, 3)`` uint8 decoded frames.
        box: the crop, shared by all frames.
        size: output side S.
        flip: mirror left-right.
        gather: ``(T,)`` indices into ``frames`` giving the clip's frame order (loop padding repeats a
            decoded frame without decoding or resizing it twice); None means ``range(U)``, the usual
            case, and saves a copy.
        out: optional ``(3, T, S, S)`` uint8 destination (e.g. a slot of a batch tensor).
        scratch: optional ``(U, S, S, 3)`` uint8 work buffer.
    Returns:
        ``(3, T, S, S)`` uint8.
    """
    u = frames.shape[0]
    ys, xs = box.slices()
    if box.y < 0 or box.x < 0 or box.y + box.side > frames.shape[1] or box.x + box.side > frames.shape[2]:
        raise ValueError(f"crop {box} outside {frames.shape[2]}x{frames.shape[1]} frames")
    if scratch is None or scratch.shape != (u, size, size, 3):
        scratch = np.empty((u, size, size, 3), np.uint8)
    for i in range(u):
        if box.side == size:
            scratch[i] = frames[i, ys, xs]
        else:
            cv2.resize(frames[i, ys, xs], (size, size), dst=scratch[i], interpolation=cv2.INTER_LINEAR)
    clip = scratch if gather is None else scratch[gather]
    t = clip.shape[0]
    if out is None:
        out = np.empty((3, t, size, size), np.uint8)
    elif out.shape != (3, t, size, size):
        raise ValueError(f"out has shape {out.shape}, expected {(3, t, size, size)}")
    to_channels_first(clip, out, flip=flip)
    return out


def to_channels_first(clip: np.ndarray, out: np.ndarray, *, flip: bool = False) -> None:
    """``(T, S, S, 3)`` → ``(3, T, S', S')`` (optionally mirrored left-right), written into ``out``.

    Seen as one tall ``(T*S, S)`` image, every row of the clip is a row of a frame, so OpenCV's SIMD
    ``split`` (and ``flip`` around the vertical axis) does the layout change: ~4x faster than numpy's
    strided copy, which matters at ~2 ms per clip.
    """
    t, h, w, _ = clip.shape
    if out.flags.c_contiguous and clip.flags.c_contiguous:
        tall = clip.reshape(t * h, w, 3)
        if flip:
            tall = cv2.flip(tall, 1)
        cv2.split(tall, [out[c].reshape(t * h, w) for c in range(3)])
        return
    view = clip.transpose(3, 0, 1, 2)
    out[...] = view[..., ::-1] if flip else view
