"""Driving the ``ffmpeg`` binary: encoding raw RGB frames, audio-only files and counting decoded frames.

Every encoder runs single-threaded with bit-exact muxing, so the same :class:`Video` gives byte-identical
files on the same ffmpeg build.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from preprocess.synth.containers import set_mp4_rotation
from preprocess.synth.motion import make_scene

# Encoder arguments per codec. Single-threaded so that the bytes do not depend on the machine's core count.
_CODEC_ARGS: dict[str, list[str]] = {
    "h264": ["-c:v", "libx264", "-preset", "veryfast", "-crf", "26", "-pix_fmt", "yuv420p", "-threads", "1"],
    "h264_fast": [
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-crf",
        "30",
        "-pix_fmt",
        "yuv420p",
        "-threads",
        "1",
    ],
    "vp9": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-crf", "40", "-b:v", "0"]
    + ["-pix_fmt", "yuv420p", "-threads", "1", "-row-mt", "0"],
    # VP8 in realtime mode with a positive -cpu-used picks its speed from how long frames take to encode, so
    # the bytes depend on the machine's load; a negative value fixes the speed.
    "vp8": ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "-8", "-crf", "20", "-b:v", "1M"]
    + ["-pix_fmt", "yuv420p", "-threads", "1"],
    # UCF-101 is Xvid MPEG-4 part 2 in AVI: ffmpeg's native encoder with the XVID fourcc is what the files
    # look like to a decoder, and it exists in every ffmpeg build (libxvid does not).
    "xvid": ["-c:v", "mpeg4", "-vtag", "XVID", "-q:v", "4", "-pix_fmt", "yuv420p", "-threads", "1"],
}
# ffprobe's codec_name for each of the above.
CODEC_NAMES = {"h264": "h264", "h264_fast": "h264", "vp9": "vp9", "vp8": "vp8", "xvid": "mpeg4"}
_AUDIO_ARGS = {
    "aac": ["-c:a", "aac", "-b:a", "64k"],
    "opus": ["-c:a", "libopus", "-b:a", "48k"],
    "pcm": ["-c:a", "pcm_s16le"],
}
# ffprobe's codec_name for each audio codec above.
AUDIO_CODEC_NAMES = {"aac": "aac", "opus": "opus", "pcm": "pcm_s16le"}
# Muxer/encoder flags that drop version strings, random UIDs and timestamps from the output.
_BITEXACT = ["-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact"]


def require_ffmpeg() -> None:
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found on PATH; install it (Debian: apt-get install ffmpeg)")


@functools.cache
def fps_mode_args() -> tuple[str, ...]:
    """Arguments that keep every frame and its timestamp (``-fps_mode`` since ffmpeg 5.1, else ``-vsync``)."""
    probe = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "nullsrc=s=16x16:d=0.04"]
        + ["-fps_mode", "passthrough", "-f", "null", "-"],
        capture_output=True,
    )
    return ("-fps_mode", "passthrough") if probe.returncode == 0 else ("-vsync", "passthrough")


def run_ffmpeg(args: list[str], stdin_frames: Iterable[np.ndarray] | None = None) -> None:
    """Run ``ffmpeg args``; stream ``stdin_frames`` (each (H, W, 3) uint8) to its stdin. Raises on failure."""
    cmd = ["ffmpeg", "-hide_banner", "-nostats", "-loglevel", "error", "-y", *args]
    # stderr goes to a file: a pipe nobody reads while we write stdin could fill up and deadlock.
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE if stdin_frames is not None else subprocess.DEVNULL, stderr=err
        )
        try:
            if stdin_frames is not None:
                assert proc.stdin is not None
                try:
                    for frame in stdin_frames:
                        proc.stdin.write(np.ascontiguousarray(frame).data)
                except BrokenPipeError:
                    pass  # ffmpeg died; its exit status and stderr below say why
                finally:
                    with contextlib.suppress(BrokenPipeError):
                        proc.stdin.close()
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if rc != 0:
            err.seek(0)
            msg = err.read().decode("utf-8", "replace")[-2000:]
            raise RuntimeError(f"ffmpeg failed (exit {rc}): {' '.join(cmd)}\n{msg}")


def count_decoded_frames(path: Path) -> tuple[int, int]:
    """Decode the first video stream of ``path`` with ffmpeg, every frame kept; return (exit status, frames).

    Frames are scaled to 16x16 grey so that counting is cheap; (non-zero, 0) when nothing decodes.
    """
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path), "-map", "0:v:0"]
    cmd += [*fps_mode_args(), "-vf", "scale=16:16", "-f", "rawvideo", "-pix_fmt", "gray", "-"]
    r = subprocess.run(cmd, capture_output=True)
    return r.returncode, len(r.stdout) // 256


@dataclass(frozen=True)
class Video:
    """One video to render and encode. ``width``/``height`` are the stored size, before rotation."""

    motion: str
    width: int
    height: int
    fps: Fraction
    frames: int
    codec: str
    seed: tuple[int, ...]
    audio: str | None = None  # add a sine audio track with this codec
    rotation: int = 0  # 0 or 90: stored frames are the display frames turned 90 deg counter-clockwise
    vfr: bool = False  # irregular timestamps: every third frame interval is doubled
    speed: tuple[float, float] = (0.5, 1.0)
    gop: int | None = None  # keyframe interval, when the encoder's default will not do

    def display_frames(self) -> Iterator[np.ndarray]:
        """Frames as a player shows them (rotation honoured), each (h, w, 3) uint8."""
        dw, dh = (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)
        scene = make_scene(self.motion, dh, dw, np.random.default_rng(self.seed), fps=float(self.fps), speed=self.speed)
        for i in range(self.frames):
            f = scene.frame(i)
            if self.rotation:
                # Asymmetric marker, a red square at the display's top-left corner, so that a test can tell
                # whether a decoder honoured the rotation.
                m = max(4, min(dh, dw) // 8)
                f[:m, :m] = (255, 0, 0)
            yield f

    def stored_frames(self) -> Iterator[np.ndarray]:
        """Frames as stored in the file, each (height, width, 3) uint8."""
        for f in self.display_frames():
            # A player turns the stored frames clockwise by ``rotation``; store them turned the other way.
            yield np.ascontiguousarray(np.rot90(f, k=self.rotation // 90)) if self.rotation else f


def fps_str(fps: Fraction) -> str:
    return f"{fps.numerator}/{fps.denominator}"


def encode(path: Path, v: Video) -> None:
    """Encode ``v`` into ``path`` (container from the suffix) by piping raw RGB frames into ffmpeg."""
    path.parent.mkdir(parents=True, exist_ok=True)
    args = [
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{v.width}x{v.height}",
        "-framerate",
        fps_str(v.fps),
    ]
    args += ["-i", "-"]
    if v.audio:
        dur = v.frames / v.fps
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={float(dur):.3f}"]
        args += ["-map", "0:v", "-map", "1:a", *_AUDIO_ARGS[v.audio]]
    if v.vfr:
        # Every third frame interval is doubled: a variable frame rate, as phones record.
        args += ["-vf", f"setpts='(N+floor(N/3))/({fps_str(v.fps)}*TB)'", *fps_mode_args()]
    args += _CODEC_ARGS[v.codec] + (["-g", str(v.gop)] if v.gop else [])
    args += [*_BITEXACT, str(path)]
    run_ffmpeg(args, v.stored_frames())
    if v.rotation:
        set_mp4_rotation(path, v.rotation)


def write_audio_only(path: Path, codec: str, seconds: float) -> None:
    """A 440 Hz sine of ``seconds`` in ``codec``, no video stream (a download that lost its video)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    src = f"sine=frequency=440:sample_rate=48000:duration={seconds:.3f}"
    run_ffmpeg(["-f", "lavfi", "-i", src, *_AUDIO_ARGS[codec], *_BITEXACT, str(path)])
