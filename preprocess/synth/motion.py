"""Frame renderer for the synthetic datasets: one textured patch moving over a noisy, textured background.

A class is defined only by the patch's motion (translation direction, zoom direction, oscillation, rotation).
Everything a model could use instead (background colours and texture, patch colours and texture, patch size,
start position, speed, noise level) is drawn from the same distribution for every motion, and the random draws
happen in the same order whatever the motion, so the same ``rng`` state gives the same appearance for every
motion. The background texture is static and temporal noise is added to every frame, so a model has to use
motion and frame order ("moving up" played backwards is "moving down").

The patch is large (:data:`SIDE`: 38-50 % of the short side) and moves only inside the centred square of side
``min(H, W)``: a training crop (a square of 1/2 to 1 of the short side) of a small, wide frame still sees most of
it. Translations wrap around inside that square (torus) instead of jumping back, so every frame pair shows the
class's direction.

Coordinates: ``x`` grows to the right, ``y`` grows downwards (image rows), so "up" means decreasing ``y``.
Speeds are in short sides per second, so a motion looks the same at any fps and resolution.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# Motions that are unchanged as classes by a horizontal flip (Kinetics-600 and UCF-101 clips are flipped
# during training): vertical motion, zoom, symmetric oscillations and no motion.
FLIP_SAFE_MOTIONS: tuple[str, ...] = (
    "up",
    "down",
    "zoom_in",
    "zoom_out",
    "bounce",  # up then down, repeatedly (vertical triangle wave)
    "sway",  # left then right, repeatedly (a flip turns it into right then left: the same class)
    "pulse",  # zoom in then out, repeatedly
    "still",
)
# Motions a horizontal flip turns into another class: only for datasets that are never flipped (Jester).
FLIP_SENSITIVE_MOTIONS: tuple[str, ...] = ("left", "right", "rotate_cw", "rotate_ccw")
MOTIONS: tuple[str, ...] = FLIP_SAFE_MOTIONS + FLIP_SENSITIVE_MOTIONS

# Motion that a time reversal turns each motion into (the oscillations and "still" are their own reverse).
TIME_REVERSED: dict[str, str] = {
    "up": "down",
    "down": "up",
    "left": "right",
    "right": "left",
    "zoom_in": "zoom_out",
    "zoom_out": "zoom_in",
    "rotate_cw": "rotate_ccw",
    "rotate_ccw": "rotate_cw",
    "bounce": "bounce",
    "sway": "sway",
    "pulse": "pulse",
    "still": "still",
}

#: Patch side as a fraction of the frame's short side (uniform in this range). Large enough that a training
#: crop of half the short side still sees most of the patch.
SIDE: tuple[float, float] = (0.38, 0.5)

_TEX = 32  # side of the patch texture in texels; the patch is drawn by nearest-neighbour sampling of it


def _luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of RGB colours, float, same leading shape as ``rgb[..., 0]``."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


@dataclass(frozen=True)
class Scene:
    """All random parameters of one clip; ``frame(i)`` renders frame ``i`` on its own (streaming-friendly).

    Build it with :func:`make_scene`. ``background`` is (H, W, 3) uint8 and static; ``texture`` is
    (_TEX, _TEX, 3) uint8, the patch's texture; lengths are in pixels, times in seconds, angles in radians.
    """

    motion: str
    height: int
    width: int
    fps: float
    background: np.ndarray
    texture: np.ndarray
    side: float  # patch side (pixels); for zooms the geometric mean of the side over a period
    cx: float  # centre, or oscillation centre (pixels); translations start from ``phase`` instead
    cy: float
    speed: float  # translation speed (short sides per second) or rotation rate (turns per second)
    period: float  # zoom / oscillation period (seconds)
    phase: float  # start phase of periodic motions, in [0, 1)
    zoom_ratio: float  # largest / smallest scale of zoom motions
    amplitude: float  # oscillation amplitude, peak to peak (pixels)
    noise: int  # temporal noise amplitude (uniform in [-noise, noise], grey levels)
    noise_seed: int

    def geometry(self, i: int) -> tuple[float, float, float, float]:
        """Patch centre x, centre y, side (pixels) and angle (radians, clockwise on screen) in frame ``i``."""
        t = i / self.fps
        h, w, m = self.height, self.width, self.motion
        cx, cy, side, angle = self.cx, self.cy, self.side, 0.0
        cyc = (self.phase + t / self.period) % 1.0  # position inside the current period
        tri = 1.0 - abs(2.0 * cyc - 1.0)  # triangle wave 0 -> 1 -> 0 over one period
        if m in ("up", "down", "left", "right"):
            # Steady motion across the centred square of side ``min(h, w)`` (see ``make_scene``), wrapping
            # around like a torus: what leaves at one edge of the square re-enters at the opposite edge
            # (``frame`` draws both parts). Every part of the patch always moves the same way (no restart
            # jump against the motion), the whole patch is always visible (every class shows the same amount
            # of patch) and a clip taken anywhere in a long video shows the motion.
            size = min(h, w)
            start = (h - size) / 2 if m in ("up", "down") else (w - size) / 2
            sign = 1.0 if m in ("down", "right") else -1.0
            pos = start + ((self.phase + sign * self.speed * t) % 1.0) * size
            if m in ("up", "down"):
                cy = pos
            else:
                cx = pos
        elif m in ("zoom_in", "zoom_out", "pulse"):
            # Log-scale sawtooth (steady zoom that restarts) or triangle (in then out), centred on ``side``
            # in log scale.
            f = {"zoom_in": cyc, "zoom_out": 1.0 - cyc, "pulse": tri}[m]
            side = self.side * self.zoom_ratio ** (f - 0.5)
        elif m == "bounce":
            cy = self.cy + self.amplitude * (tri - 0.5)
        elif m == "sway":
            cx = self.cx + self.amplitude * (tri - 0.5)
        elif m in ("rotate_cw", "rotate_ccw"):
            # y points down, so a positive angle turns clockwise on screen.
            angle = 2 * math.pi * self.speed * t * (1.0 if m == "rotate_cw" else -1.0)
        return cx, cy, side, angle

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` as (H, W, 3) uint8 RGB."""
        out = self.background.copy()
        cx, cy, side, angle = self.geometry(i)
        h, w = self.height, self.width
        if self.motion in ("up", "down", "left", "right"):
            # Torus wrap inside the centred square: the patch and its copy one square side back, each clipped
            # to the square along the motion axis.
            size = min(h, w)
            if self.motion in ("up", "down"):
                lo = (h - size) // 2
                for c in (cy, cy - size):
                    self._draw(out, cx, c, side, angle, (0, w), (lo, lo + size))
            else:
                lo = (w - size) // 2
                for c in (cx, cx - size):
                    self._draw(out, c, cy, side, angle, (lo, lo + size), (0, h))
        else:
            self._draw(out, cx, cy, side, angle, (0, w), (0, h))
        if self.noise > 0:
            # Temporal noise, seeded per frame so that any frame can be rendered on its own.
            nrng = np.random.default_rng((self.noise_seed, i))
            n = nrng.integers(-self.noise, self.noise + 1, size=(h, w, 1), dtype=np.int16)
            o16 = out.astype(np.int16)
            o16 += n
            np.clip(o16, 0, 255, out=o16)
            out = o16.astype(np.uint8)
        return out

    def _draw(self, out: np.ndarray, cx: float, cy: float, side: float, angle: float,
              xlim: tuple[int, int], ylim: tuple[int, int]) -> None:
        """Paint the patch centred at (cx, cy) into ``out``, only inside columns ``xlim`` and rows ``ylim``."""
        r = side * 0.7072  # half diagonal: bounding radius of the rotated square
        x0, x1 = max(xlim[0], int(math.floor(cx - r))), min(xlim[1], int(math.ceil(cx + r)) + 1)
        y0, y1 = max(ylim[0], int(math.floor(cy - r))), min(ylim[1], int(math.ceil(cy + r)) + 1)
        if x1 > x0 and y1 > y0 and side >= 1.0:
            xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
            ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
            c, s = math.cos(angle), math.sin(angle)
            # Inverse rotation maps screen offsets to patch coordinates in [0, 1).
            u = (xs * c + ys * s) / side + 0.5
            v = (-xs * s + ys * c) / side + 0.5
            inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
            ti = np.clip((v * _TEX).astype(np.int32), 0, _TEX - 1)
            tj = np.clip((u * _TEX).astype(np.int32), 0, _TEX - 1)
            region = out[y0:y1, x0:x1]
            region[inside] = self.texture[ti[inside], tj[inside]]

    def frames(self, num_frames: int) -> Iterator[np.ndarray]:
        """Yield frames 0..num_frames-1, each (H, W, 3) uint8."""
        for i in range(num_frames):
            yield self.frame(i)


def _noise_texture(rng: np.random.Generator, h: int, w: int, grain: int) -> np.ndarray:
    """(h, w) float32 in [0, 1]: coarse blobs (``grain`` px) mixed with per-pixel noise."""
    ch, cw = max(1, -(-h // grain)), max(1, -(-w // grain))
    coarse = rng.random((ch, cw), dtype=np.float32)
    coarse = np.repeat(np.repeat(coarse * np.float32(0.6), grain, axis=0), grain, axis=1)[:h, :w]
    fine = rng.random((h, w), dtype=np.float32)
    fine *= np.float32(0.4)
    fine += coarse
    return fine


def _appearance(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw the textured background ((height, width, 3) uint8) and the patch texture ((_TEX, _TEX, 3) uint8)."""
    bg_a = rng.integers(0, 256, 3)
    # Second colour 40-120 grey levels away per channel, so the texture is always visible.
    bg_b = np.clip(bg_a + rng.choice([-1, 1], 3) * rng.integers(40, 121, 3), 0, 255)
    grain = int(rng.integers(2, 9))
    mix = (_noise_texture(rng, height, width, grain) * 255).astype(np.uint8)
    # A 256-entry colour table indexed by the texture: one gather instead of float maths on every pixel (the
    # 4K "huge" video has 25 M of them).
    a32, b32 = bg_a.astype(np.float32), bg_b.astype(np.float32)
    lut = (a32 + (b32 - a32) * (np.arange(256, dtype=np.float32)[:, None] / 255)).astype(np.uint8)
    background = lut[mix]
    # The patch must stand out from the background: pick its colours on the opposite side of mid-grey in luma.
    bg_luma = float(_luma(a32 + (b32 - a32) * float(mix.mean()) / 255))
    fg = rng.integers(0, 256, (2, 3)).astype(np.float64)
    target = (np.array([225.0, 175.0]) if bg_luma < 128 else np.array([80.0, 30.0]))[:, None]
    fg = np.clip(fg + target - _luma(fg)[:, None], 0, 255)
    tmix = _noise_texture(rng, _TEX, _TEX, int(rng.integers(2, 7)))[..., None]
    texture = (fg[0] * (1 - tmix) + fg[1] * tmix).astype(np.uint8)
    return background, texture


def make_scene(
    motion: str,
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    fps: float = 25.0,
    speed: tuple[float, float] = (0.5, 1.0),
) -> Scene:
    """Draw one clip's appearance and motion parameters.

    ``speed`` is the range of translation speeds in short sides per second (zoom and oscillation periods and
    rotation rates scale with it: a period is ``0.5 / speed`` to ``1 / speed`` s). The default moves a patch
    by 1/3 to 2/3 of the short side in a 16-frame clip at 25 fps; Jester (12 fps, 32-frame window) uses slower.
    """
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; valid: {', '.join(MOTIONS)}")
    if height < 2 or width < 2:
        raise ValueError(f"frame too small: {width}x{height}")
    # Every draw below happens whatever the motion, in the same order (see the module docstring).
    background, texture = _appearance(rng, height, width)
    short = min(height, width)
    side = float(rng.uniform(SIDE[0], SIDE[1])) * short
    zoom_ratio = float(rng.uniform(2.2, 3.0))
    ux, uy = (float(v) for v in rng.random(2))
    amp_frac = float(rng.uniform(0.6, 1.0))
    spd = float(rng.uniform(*speed))
    period = float(rng.uniform(0.5, 1.0)) / max(spd, 1e-6)
    phase = float(rng.random())
    noise = int(rng.integers(4, 11))
    noise_seed = int(rng.integers(0, 2**63))

    amplitude = 0.0
    half = side / 2  # largest half extent of the patch during the clip
    if motion in ("zoom_in", "zoom_out", "pulse"):
        # Scale runs over [side / sqrt(r), side * sqrt(r)] uniformly in log scale; dividing by the root of the
        # mean area factor (r - 1/r) / (2 ln r) gives zooms the same mean patch area as the other motions.
        side /= math.sqrt((zoom_ratio - 1 / zoom_ratio) / (2 * math.log(zoom_ratio)))
        half = side * math.sqrt(zoom_ratio) / 2
    elif motion in ("rotate_cw", "rotate_ccw"):
        half = side * 0.7072

    # Everything happens inside the centred square of side ``short`` (where a centre crop looks, and which a
    # full-height training crop of a wide frame mostly covers); the rest of the frame is background.
    x0, y0 = (width - short) / 2, (height - short) / 2

    def place(u: float, start: float) -> float:
        return start + (half + u * (short - 2 * half) if short > 2 * half else short / 2)

    cx, cy = place(ux, x0), place(uy, y0)
    amplitude_max = max(short - side, 0.0)
    if motion == "bounce":
        amplitude = amp_frac * amplitude_max
        cy = y0 + side / 2 + amplitude / 2 + uy * (amplitude_max - amplitude)
    elif motion == "sway":
        amplitude = amp_frac * amplitude_max
        cx = x0 + side / 2 + amplitude / 2 + ux * (amplitude_max - amplitude)
    return Scene(
        motion=motion,
        height=height,
        width=width,
        fps=float(fps),
        background=background,
        texture=texture,
        side=side,
        cx=cx,
        cy=cy,
        speed=spd,
        period=period,
        phase=phase,
        zoom_ratio=zoom_ratio,
        amplitude=amplitude,
        noise=noise,
        noise_seed=noise_seed,
    )


def render_clip(
    motion: str,
    num_frames: int,
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    fps: float = 25.0,
    speed: tuple[float, float] = (0.5, 1.0),
) -> np.ndarray:
    """Render a whole clip: (num_frames, height, width, 3) uint8 RGB, frame i at time i / fps seconds.

    ``motion`` is one of :data:`MOTIONS`; see :func:`make_scene` for ``speed``. Deterministic in ``rng``'s
    state.
    """
    if num_frames < 0:
        raise ValueError("num_frames must be >= 0")
    scene = make_scene(motion, height, width, rng, fps=fps, speed=speed)
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        out[i] = scene.frame(i)
    return out
