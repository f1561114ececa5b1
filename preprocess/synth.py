"""Synthetic Kinetics-600, Jester and UCF-101 datasets in their real on-disk layouts, messy inputs included.

No real dataset can be downloaded here, so every dataset adapter is tested on data made by :func:`generate`.
Each dataset is written exactly as it ships (directory layout, file names, CSV / list formats, containers and
codecs), with classes that can be told apart only by motion and its direction (see
:mod:`preprocess.synth_motion`): a model succeeds only if the pipeline keeps the motion and the frame order.
Kinetics-600 and UCF-101 clips are flipped horizontally during training, so their classes survive a flip
(up/down, zoom in/out, ...); Jester is never flipped and also has left/right and clockwise/counter-clockwise.

With ``SynthConfig.bad_inputs`` the messy cases real data has are added (zero-byte, truncated, garbage and
text files, audio-only files, undecodable video streams, 1-15 frame videos, huge frames, rotation metadata,
variable frame rate, odd sizes, .webm/.mkv, files listed but missing, files present but unlisted, unknown
labels, names with spaces, unicode, a leading ``-`` or several dots, empty or corrupt Jester frame folders).
Every file or folder is described by a :class:`SynthItem` whose ``expect`` says what a correct preprocessor
must record for it; where the outcome depends on ffmpeg's behaviour (truncated files) it is measured with the
installed ffmpeg while generating.

Videos are made by piping raw RGB frames into the ``ffmpeg`` binary, one process per video, single-threaded
encoders and bit-exact muxing, so the same config and seed give byte-identical files on the same ffmpeg build.
The real datasets carry no report file; :meth:`SynthReport.to_json` returns the report and the caller decides
where to keep it (never inside the dataset root, or it would show up as an unlisted file).

Layouts written under ``out`` (the dataset root):

- Kinetics-600: ``{train,val}/<label>/<youtube_id>_<start:06d>_<end:06d>.<mp4|webm|mkv>``,
  ``kinetics-600_train.csv`` and ``kinetics-600_val.csv`` (header
  ``label,youtube_id,time_start,time_end,split``).
- Jester: ``20bn-jester-v1/<id>/00001.jpg ...``, ``jester-v1-labels.csv`` (one label per line),
  ``jester-v1-train.csv`` and ``jester-v1-validation.csv`` (``id;label``), ``jester-v1-test.csv`` (``id``).
- UCF-101: ``UCF-101/<Class>/v_<Class>_g<gg>_c<cc>.avi`` and
  ``ucfTrainTestlist/{classInd,trainlist0k,testlist0k}.txt`` with CRLF line ends like the real lists.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import itertools
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from preprocess.synth_motion import make_scene
from shards.datasets import DATASETS

# (class name, motion) per dataset; ``SynthConfig.num_classes`` takes the first N.
CLASSES: dict[str, tuple[tuple[str, str], ...]] = {
    # Horizontal-flip-safe motions only (training flips these two datasets).
    "kinetics600": (
        ("moving up", "up"),
        ("moving down", "down"),
        ("zooming in", "zoom_in"),
        ("zooming out", "zoom_out"),
        ("bouncing up and down", "bounce"),
        ("swaying side to side", "sway"),
        ("pulsing", "pulse"),  # like some real labels ("abseiling"), one without a space
        ("standing still", "still"),
    ),
    "ucf101": (
        ("MovingUp", "up"),
        ("MovingDown", "down"),
        ("ZoomingIn", "zoom_in"),
        ("ZoomingOut", "zoom_out"),
        ("BouncingUpAndDown", "bounce"),
        ("SwayingSideToSide", "sway"),
        ("Pulsing", "pulse"),
        ("StandingStill", "still"),
    ),
    # Jester is never flipped: left/right and rotation direction are classes too. Names are real Jester
    # labels.
    "jester": (
        ("Swiping Left", "left"),
        ("Swiping Right", "right"),
        ("Swiping Up", "up"),
        ("Swiping Down", "down"),
        ("Zooming In With Full Hand", "zoom_in"),
        ("Zooming Out With Full Hand", "zoom_out"),
        ("Turning Hand Clockwise", "rotate_cw"),
        ("Turning Hand Counterclockwise", "rotate_ccw"),
        ("Shaking Hand", "sway"),
        ("No gesture", "still"),
    ),
}

# Labels used by the "unknown_label" rows; never among CLASSES.
UNKNOWN_LABEL = {"kinetics600": "juggling fire", "jester": "Drumming Fingers", "ucf101": "JugglingBalls"}

KINETICS_CSV_HEADER = ("label", "youtube_id", "time_start", "time_end", "split")
KINETICS_SPLITS = ("train", "val")
JESTER_FRAMES_DIR = "20bn-jester-v1"
JESTER_SPLITS = ("train", "validation", "test")
JESTER_FPS = 12
# Patch speed range for Jester (short sides per second), slower than the default: a training clip (16 frames at
# stride 2 = 32 frames at 12 fps = 2.7 s) sees about one crossing of the centred square.
JESTER_SPEED = (0.12, 0.22)
UCF_VIDEO_DIR = "UCF-101"
UCF_LIST_DIR = "ucfTrainTestlist"
UCF_SIZE = (320, 240)
UCF_FPS = 25
UCF_NEWLINE = "\r\n"  # the real ucfTrainTestlist files have Windows line ends
UCF_GROUPS = 25
EXPECTS = ("ok", "failed", "missing", "unlisted")  # the values of SynthItem.expect

# Normal Kinetics videos cycle through these (width, height) and frame rates: real YouTube clips vary.
KINETICS_SIZES: tuple[tuple[int, int], ...] = ((340, 256), (320, 240), (480, 360), (256, 340), (454, 256))
KINETICS_FPS: tuple[Fraction, ...] = (Fraction(25), Fraction(30), Fraction(30000, 1001), Fraction(24))

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
    "vp8": ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-crf", "20", "-b:v", "1M"]
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
# Muxer/encoder flags that drop version strings, random UIDs and timestamps from the output.
_BITEXACT = ["-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact"]


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Sizes in pixels, durations in seconds.

    ``videos_per_class`` counts normal videos per class and per split (Kinetics train/val; Jester
    train/validation/test); UCF-101 has ``videos_per_class`` per class in all, spread over the 25 groups so
    that each of the three official splits has train and test videos. The messy cases of ``bad_inputs`` come
    on top.
    """

    num_classes: int = 4
    videos_per_class: int = 6
    seconds: float = 2.0  # Kinetics and UCF-101 clip length (real Kinetics clips are ~10 s)
    seed: int = 0
    bad_inputs: bool = True
    jester_frames: tuple[int, int] = (30, 70)  # inclusive range of frames per Jester video (real: 30-70)
    jester_height: int = 100  # real Jester frames are 100 px high, ~176 px wide
    huge_size: tuple[int, int] = (3840, 2160)  # (width, height) of the "huge" Kinetics video
    huge_seconds: float = 0.2
    truncate_fraction: float = 0.4  # truncated files keep this fraction of their bytes
    workers: int = 0  # parallel ffmpeg processes; 0 = os.cpu_count()

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        if self.videos_per_class < 1:
            raise ValueError("videos_per_class must be >= 1")
        if not self.seconds > 0:
            raise ValueError("seconds must be > 0")
        lo, hi = self.jester_frames
        if not 1 <= lo <= hi:
            raise ValueError("jester_frames must be (lo, hi) with 1 <= lo <= hi")
        if not 0 < self.truncate_fraction < 1:
            raise ValueError("truncate_fraction must be in (0, 1)")


@dataclass(frozen=True)
class SynthItem:
    """One video file or Jester frame folder, or one listed entry that has no file.

    ``relpath`` is relative to the dataset root (POSIX separators). ``expect`` is what a correct preprocessor
    records: "ok" (decodes; ``frames`` source frames where known), "failed" (present and listed but unusable,
    or an unknown label), "missing" (listed, not on disk) or "unlisted" (on disk, in no list; ``split`` and
    ``label`` then come from the directory where there is one). ``width``/``height`` are the stored frame size
    (before rotation), ``fps`` the nominal frame rate as a fraction string ("30000/1001"), ``codec`` ffprobe's
    codec name, ``rotation`` the degrees a player turns the stored frames clockwise for display (ffprobe's
    display-matrix ``rotation`` is the negative of it). ``note`` says what is special, for humans.
    """

    relpath: str
    split: str | None
    label: str | None
    expect: str
    kind: str
    frames: int | None
    rotation: int = 0
    width: int | None = None
    height: int | None = None
    fps: str | None = None
    codec: str | None = None
    note: str = ""


@dataclass(frozen=True)
class SynthReport:
    """What :func:`generate` wrote: the dataset root, its class names and every item.

    ``classes`` is in class-index order: sorted train labels for Kinetics-600 (it ships no index), the
    order of ``jester-v1-labels.csv`` for Jester and of ``classInd.txt`` for UCF-101.
    """

    dataset: str
    root: Path
    classes: tuple[str, ...]
    items: tuple[SynthItem, ...]

    def to_json(self) -> str:
        """The report as JSON text (UTF-8 names kept as is)."""
        doc = {
            "dataset": self.dataset,
            "root": str(self.root),
            "classes": list(self.classes),
            "items": [dataclasses.asdict(it) for it in self.items],
        }
        return json.dumps(doc, indent=1, ensure_ascii=False, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SynthReport:
        """Inverse of :meth:`to_json`."""
        doc = json.loads(text)
        return cls(
            dataset=doc["dataset"],
            root=Path(doc["root"]),
            classes=tuple(doc["classes"]),
            items=tuple(SynthItem(**it) for it in doc["items"]),
        )

    def by_kind(self, kind: str) -> tuple[SynthItem, ...]:
        """Items of one kind, in report order."""
        return tuple(it for it in self.items if it.kind == kind)

    def motion_of(self, label: str) -> str:
        """The motion (see :mod:`preprocess.synth_motion`) that defines class ``label``."""
        return dict(CLASSES[self.dataset])[label]


# ------------------------------------------------------------------------------------------------------------
# ffmpeg helpers


def _require_ffmpeg() -> None:
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found on PATH; install it (Debian: apt-get install ffmpeg)")


@functools.cache
def _fps_mode_args() -> tuple[str, ...]:
    """Arguments that keep every frame and its timestamp (``-fps_mode`` since ffmpeg 5.1, else ``-vsync``)."""
    probe = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "nullsrc=s=16x16:d=0.04"]
        + ["-fps_mode", "passthrough", "-f", "null", "-"],
        capture_output=True,
    )
    return ("-fps_mode", "passthrough") if probe.returncode == 0 else ("-vsync", "passthrough")


def _run_ffmpeg(args: list[str], stdin_frames: Iterable[np.ndarray] | None = None) -> None:
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
    cmd += [*_fps_mode_args(), "-vf", "scale=16:16", "-f", "rawvideo", "-pix_fmt", "gray", "-"]
    r = subprocess.run(cmd, capture_output=True)
    return r.returncode, len(r.stdout) // 256


# ------------------------------------------------------------------------------------------------------------
# Video specs and writers


@dataclass(frozen=True)
class _Video:
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


def _fps_str(fps: Fraction) -> str:
    return f"{fps.numerator}/{fps.denominator}"


def _encode(path: Path, v: _Video) -> None:
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
        _fps_str(v.fps),
    ]
    args += ["-i", "-"]
    if v.audio:
        dur = v.frames / v.fps
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={float(dur):.3f}"]
        args += ["-map", "0:v", "-map", "1:a", *_AUDIO_ARGS[v.audio]]
    if v.vfr:
        # Every third frame interval is doubled: a variable frame rate, as phones record.
        args += ["-vf", f"setpts='(N+floor(N/3))/({_fps_str(v.fps)}*TB)'", *_fps_mode_args()]
    args += _CODEC_ARGS[v.codec] + (["-g", str(v.gop)] if v.gop else [])
    args += [*_BITEXACT, str(path)]
    _run_ffmpeg(args, v.stored_frames())
    if v.rotation:
        _set_mp4_rotation(path, v.rotation)


def _write_audio_only(path: Path, codec: str, seconds: float) -> None:
    """A 440 Hz sine of ``seconds`` in ``codec``, no video stream (a download that lost its video)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    src = f"sine=frequency=440:sample_rate=48000:duration={seconds:.3f}"
    _run_ffmpeg(["-f", "lavfi", "-i", src, *_AUDIO_ARGS[codec], *_BITEXACT, str(path)])


def _mp4_boxes(data: bytes | bytearray, start: int, end: int) -> Iterator[tuple[bytes, int, int, int]]:
    """Yield (type, offset, header size, box size) of the ISO-BMFF boxes in data[start:end]."""
    i = start
    while i + 8 <= end:
        size, typ = struct.unpack(">I4s", data[i : i + 8])
        hdr = 8
        if size == 1:
            size = struct.unpack(">Q", data[i + 8 : i + 16])[0]
            hdr = 16
        elif size == 0:
            size = end - i
        if size < hdr:
            raise ValueError(f"bad box size {size} at {i}")
        yield typ, i, hdr, size
        i += size


def _set_mp4_rotation(path: Path, rotation: int) -> None:
    """Write a display matrix into the video's ``tkhd``: players turn the frames ``rotation`` deg clockwise.

    Patching the box works with every ffmpeg version (how ffmpeg itself is told to write rotation changed
    between 5.x and 6.x). The matrix is the one phones write for portrait video: ffprobe reports it as a
    display-matrix side data ``rotation`` of ``-rotation``.
    """
    if rotation != 90:
        raise ValueError("only 90 degree rotation is implemented")
    data = bytearray(path.read_bytes())
    one, w = 1 << 16, 1 << 30  # 16.16 and 2.30 fixed point
    matrix = struct.pack(">9i", 0, one, 0, -one, 0, 0, 0, 0, w)
    patched = 0
    for typ, off, hdr, size in _mp4_boxes(data, 0, len(data)):
        if typ != b"moov":
            continue
        for ttyp, toff, thdr, tsize in _mp4_boxes(data, off + hdr, off + size):
            if ttyp != b"trak":
                continue
            for ktyp, koff, khdr, _ in _mp4_boxes(data, toff + thdr, toff + tsize):
                if ktyp != b"tkhd":
                    continue
                version = data[koff + khdr]
                # version/flags, times, track id, reserved, duration, reserved(8), layer, group, volume,
                # reserved
                body = 4 + (8 + 8 + 4 + 4 + 8 if version == 1 else 4 + 4 + 4 + 4 + 4) + 8 + 2 + 2 + 2 + 2
                mo = koff + khdr + body
                data[mo : mo + 36] = matrix
                patched += 1
    if patched != 1:
        raise RuntimeError(f"expected one track header in {path}, patched {patched}")
    path.write_bytes(bytes(data))


def _garble_mp4_samples(path: Path, rng: np.random.Generator) -> None:
    """Overwrite the payload of every ``mdat`` box with random bytes: the container (sizes, fps, codec) stays
    valid, but no video packet decodes."""
    data = bytearray(path.read_bytes())
    found = False
    for typ, off, hdr, size in list(_mp4_boxes(data, 0, len(data))):
        if typ == b"mdat":
            data[off + hdr : off + size] = rng.integers(0, 256, size - hdr, dtype=np.uint8).tobytes()
            found = True
    if not found:
        raise RuntimeError(f"no mdat box in {path}")
    path.write_bytes(bytes(data))


def _riff_chunks(data: bytes | bytearray, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """Yield (fourcc, offset, payload size) of the RIFF chunks in data[start:end]."""
    i = start
    while i + 8 <= end:
        fourcc, size = struct.unpack("<4sI", data[i : i + 8])
        yield fourcc, i, size
        i += 8 + size + (size & 1)  # chunks are padded to even sizes


def _avi_lists(data: bytes | bytearray) -> dict[bytes, tuple[int, int]]:
    """Top-level LIST chunks of an AVI file: list type -> (payload start after the type, end)."""
    if data[:4] != b"RIFF" or data[8:12] != b"AVI ":
        raise ValueError("not an AVI file")
    out = {}
    for fourcc, off, size in _riff_chunks(data, 12, len(data)):
        if fourcc == b"LIST":
            out[bytes(data[off + 8 : off + 12])] = (off + 12, off + 8 + size)
    return out


def _garble_avi_frames(path: Path, rng: np.random.Generator) -> None:
    """Overwrite every video chunk (``##dc``/``##db``) in the AVI's ``movi`` list with random bytes."""
    data = bytearray(path.read_bytes())
    start, end = _avi_lists(data)[b"movi"]
    n = 0
    for fourcc, off, size in _riff_chunks(data, start, end):
        if fourcc[2:] in (b"dc", b"db") and size:
            data[off + 8 : off + 8 + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            n += 1
    if not n:
        raise RuntimeError(f"no video chunks in {path}")
    path.write_bytes(bytes(data))


def _set_avi_fourcc(path: Path, fourcc: bytes) -> None:
    """Replace the video codec fourcc in the AVI header (``strh`` handler and ``strf`` compression) so that no
    decoder is known for the stream."""
    data = bytearray(path.read_bytes())
    start, end = _avi_lists(data)[b"hdrl"]
    header = bytes(data[start:end])
    n = header.count(b"XVID")
    if n == 0:
        raise RuntimeError(f"no XVID fourcc in the header of {path}")
    data[start:end] = header.replace(b"XVID", fourcc)
    path.write_bytes(bytes(data))


_HTML_ERROR = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Error 404 (Not Found)</title></head>
<body><p><b>404.</b> That's an error.</p><p>The requested URL was not found on this server.</p>
<p>This video is unavailable. This video has been removed by the uploader.</p></body></html>
"""


# ------------------------------------------------------------------------------------------------------------
# Generation plumbing


@dataclass
class _Plan:
    """Items to report, plus the jobs that write their files (run in parallel)."""

    root: Path
    items: list[SynthItem] = field(default_factory=list)
    jobs: list[tuple[int, Callable[[], object]]] = field(default_factory=list)

    def add(self, item: SynthItem, job: Callable[[], object] | None = None) -> None:
        """Report ``item``; ``job`` writes its files and may return a replacement SynthItem (measured)."""
        if job is not None:
            self.jobs.append((len(self.items), job))
        self.items.append(item)

    def run(self, workers: int) -> list[SynthItem]:
        n = workers or os.cpu_count() or 1
        with ThreadPoolExecutor(max_workers=n) as pool:
            futures = [(i, pool.submit(job)) for i, job in self.jobs]
            for i, fut in futures:
                updated = fut.result()
                if isinstance(updated, SynthItem):
                    self.items[i] = updated
        return self.items


def _seed(cfg: SynthConfig, dataset: str, relpath: str) -> tuple[int, ...]:
    """Per-file seed: depends only on the config seed, dataset and path, not on generation order."""
    return (cfg.seed, zlib.crc32(dataset.encode()), zlib.crc32(relpath.encode("utf-8")))


def _video_job(root: Path, item: SynthItem, v: _Video) -> Callable[[], None]:
    def job() -> None:
        _encode(root / item.relpath, v)

    return job


def _video_item(
    relpath: str, split: str | None, label: str | None, expect: str, kind: str, v: _Video, note: str = ""
) -> SynthItem:
    return SynthItem(
        relpath=relpath,
        split=split,
        label=label,
        expect=expect,
        kind=kind,
        frames=v.frames if expect in ("ok", "unlisted") else None,
        rotation=v.rotation,
        width=v.width,
        height=v.height,
        fps=_fps_str(v.fps),
        codec=CODEC_NAMES[v.codec],
        note=note,
    )


def _add_video(
    plan: _Plan,
    relpath: str,
    split: str | None,
    label: str | None,
    expect: str,
    kind: str,
    v: _Video,
    note: str = "",
) -> None:
    item = _video_item(relpath, split, label, expect, kind, v, note)
    plan.add(item, _video_job(plan.root, item, v))


def _measured(path: Path, item: SynthItem, write: Callable[[], object], source_frames: int | None) -> Callable:
    """A job that runs ``write`` and then sets ``item``'s expectation from what ffmpeg decodes of ``path``.

    A broken file's outcome is ffmpeg's to decide, not ours: "ok" (with the decoded frame count) when ffmpeg
    exits cleanly having decoded at least one frame, else "failed".
    """

    def job() -> SynthItem:
        write()
        rc, n = count_decoded_frames(path)
        ok = rc == 0 and n > 0
        of = f" of {source_frames}" if source_frames else ""
        note = f"{item.note}; ffmpeg decodes {n}{of} frames (exit {rc})".lstrip("; ")
        return dataclasses.replace(item, expect="ok" if ok else "failed", frames=n if ok else None, note=note)

    return job


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _add_file_case(
    plan: _Plan,
    cfg: SynthConfig,
    dataset: str,
    relpath: str,
    split: str | None,
    label: str | None,
    kind: str,
    v: _Video,
) -> None:
    """Add one of the file-level bad inputs (zero_byte, truncated, garbage, text, undecodable, unknown_codec).

    ``v`` is the valid video the case starts from (truncated, undecodable, unknown_codec) or whose name it
    takes. The expectation is measured with ffmpeg after writing (see :func:`_measured`).
    """
    path = plan.root / relpath
    rng = np.random.default_rng((*_seed(cfg, dataset, relpath), 7))
    video_item = _video_item(relpath, split, label, "failed", kind, v)
    bare = SynthItem(relpath=relpath, split=split, label=label, expect="failed", kind=kind, frames=None)
    if kind == "zero_byte":
        item = dataclasses.replace(bare, note="0 bytes (an interrupted download)")
        write: Callable[[], object] = functools.partial(_write_bytes, path, b"")
    elif kind == "garbage":
        item = dataclasses.replace(bare, note="48 KiB of random bytes")
        write = functools.partial(_write_bytes, path, rng.integers(0, 256, 48 * 1024, dtype=np.uint8).tobytes())
    elif kind == "text":
        item = dataclasses.replace(bare, note="an HTML error page saved under the video's name")
        write = functools.partial(_write_bytes, path, _HTML_ERROR.encode())
    elif kind == "truncated":

        def write() -> None:
            _encode(path, v)
            full = path.read_bytes()
            path.write_bytes(full[: int(len(full) * cfg.truncate_fraction)])

        # An mp4 cut before its moov atom does not open at all; a cut .avi/.mkv/.webm still yields its first
        # frames (ffmpeg decides, see _measured).
        item = dataclasses.replace(video_item, note=f"first {cfg.truncate_fraction:.0%} of the bytes")
    elif kind == "undecodable":

        def write() -> None:
            _encode(path, v)
            if path.suffix == ".avi":
                _garble_avi_frames(path, rng)
            else:
                _garble_mp4_samples(path, rng)

        note = "valid container and stream header, every video packet overwritten with random bytes"
        item = dataclasses.replace(video_item, note=note)
    elif kind == "unknown_codec":

        def write() -> None:
            _encode(path, v)
            _set_avi_fourcc(path, b"ZZ9Z")

        item = dataclasses.replace(video_item, codec=None, note="AVI video fourcc ZZ9Z: no decoder exists")
    else:
        raise ValueError(kind)
    if kind in ("zero_byte", "garbage", "text"):
        plan.add(item, write)  # no video stream to find: nothing to measure
    else:
        # Whether anything decodes from a damaged video is ffmpeg's call: measure it.
        plan.add(item, _measured(path, item, write, v.frames))


def _prepare_root(out: Path, entries: Iterable[str], overwrite: bool) -> Path:
    out = Path(out)
    present = [e for e in entries if (out / e).exists() or (out / e).is_symlink()]
    if present and not overwrite:
        raise FileExistsError(f"{out} already holds {', '.join(present)}; pass overwrite=True or use a new dir")
    for e in present:
        p = out / e
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _classes(dataset: str, cfg: SynthConfig) -> tuple[tuple[str, str], ...]:
    table = CLASSES[dataset]
    if cfg.num_classes > len(table):
        raise ValueError(f"{dataset}: at most {len(table)} classes (motions) are defined, got {cfg.num_classes}")
    return table[: cfg.num_classes]


def _frames_for(seconds: float, fps: Fraction) -> int:
    return max(1, round(seconds * fps))


# ------------------------------------------------------------------------------------------------------------
# Kinetics-600

_YT_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _youtube_ids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` unique 11-character YouTube-style ids; every fourth starts with ``-`` and contains ``_``."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        chars = [_YT_ALPHABET[i] for i in rng.integers(0, len(_YT_ALPHABET), 11)]
        if len(out) % 4 == 0:
            chars[0] = "-"
            chars[int(rng.integers(1, 11))] = "_"
        s = "".join(chars)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def _kinetics(out: Path, cfg: SynthConfig, overwrite: bool) -> SynthReport:
    ds = "kinetics600"
    classes = _classes(ds, cfg)
    root = _prepare_root(out, ("train", "val", "kinetics-600_train.csv", "kinetics-600_val.csv"), overwrite)
    rng = np.random.default_rng((cfg.seed, zlib.crc32(ds.encode())))
    plan = _Plan(root)
    rows: dict[str, list[tuple[str, str, int, int, str]]] = {s: [] for s in KINETICS_SPLITS}
    n_normal = len(classes) * cfg.videos_per_class * len(KINETICS_SPLITS)
    ids = iter(_youtube_ids(rng, n_normal + 40))
    dur = max(1, round(cfg.seconds))  # time_end - time_start, in whole seconds like the real CSVs

    def name(yid: str, ext: str = "mp4") -> tuple[str, int, int]:
        start = int(rng.integers(0, 300))
        return f"{yid}_{start:06d}_{start + dur:06d}.{ext}", start, start + dur

    def video(
        rel: str,
        motion: str,
        size: tuple[int, int],
        fps: Fraction,
        codec: str = "h264",
        frames: int | None = None,
        **kw,
    ) -> _Video:
        n = frames if frames is not None else _frames_for(cfg.seconds, fps)
        return _Video(motion, size[0], size[1], fps, n, codec, _seed(cfg, ds, rel), **kw)

    k = 0
    for split in KINETICS_SPLITS:
        for label, motion in classes:
            for _ in range(cfg.videos_per_class):
                yid = next(ids)
                fname, t0, t1 = name(yid)
                rel = f"{split}/{label}/{fname}"
                size, fps = (
                    KINETICS_SIZES[k % len(KINETICS_SIZES)],
                    KINETICS_FPS[k % len(KINETICS_FPS)],
                )
                # Real Kinetics clips carry audio; some of ours do, so adapters must pick the video stream.
                audio = "aac" if k % 3 == 2 else None
                v = video(rel, motion, size, fps, audio=audio)
                _add_video(plan, rel, split, label, "ok", "normal", v, "with an AAC audio track" if audio else "")
                rows[split].append((label, yid, t0, t1, split))
                k += 1

    if cfg.bad_inputs:
        lab = itertools.cycle(classes)

        def listed(split: str, ext: str = "mp4", yid: str | None = None, **vkw) -> tuple[str, str, _Video]:
            """A CSV row under the next class label; returns (relpath, label, the video it would hold)."""
            label, motion = next(lab)
            yid = yid or next(ids)
            fname, t0, t1 = name(yid, ext)
            rel = f"{split}/{label}/{fname}"
            rows[split].append((label, yid, t0, t1, split))
            return (
                rel,
                label,
                video(rel, motion, vkw.pop("size", (340, 256)), vkw.pop("fps", Fraction(25)), **vkw),
            )

        # File-level failures, listed in the CSV under a valid label.
        for kind, split in (
            ("zero_byte", "train"),
            ("garbage", "train"),
            ("text", "val"),
            ("truncated", "train"),
        ):
            rel, label, v = listed(split)
            _add_file_case(plan, cfg, ds, rel, split, label, kind, v)
        # An mkv cut short still decodes its first frames: "ok" with fewer frames (measured).
        # (A keyframe every 5 frames: with x264's default interval a short clip is one big keyframe followed
        # by tiny ones, and a 40% cut would end inside the first frame.)
        n30 = max(30, _frames_for(cfg.seconds, Fraction(30)))
        rel, label, v = listed("train", ext="mkv", fps=Fraction(30), frames=n30, gop=5)
        _add_file_case(plan, cfg, ds, rel, "train", label, "truncated", v)
        rel, label, v = listed("train")
        _add_file_case(plan, cfg, ds, rel, "train", label, "undecodable", v)
        # Audio only: what a download without its video stream looks like.
        for split, ext, codec in (("train", "mp4", "aac"), ("val", "webm", "opus")):
            rel, label, _ = listed(split, ext=ext)
            item = SynthItem(
                rel,
                split,
                label,
                "failed",
                "audio_only",
                None,
                codec=codec,
                note=f"{codec} audio, no video stream",
            )
            write = functools.partial(_write_audio_only, root / rel, codec, min(cfg.seconds, 1.0))
            plan.add(item, write)
        # Valid but unusual videos: all "ok".
        ok_cases: list[tuple[str, str, dict, str]] = [
            ("short", "mp4", dict(frames=1), "a single frame"),
            (
                "short",
                "mkv",
                dict(frames=7, fps=Fraction(30)),
                "7 frames (loop padding happens at load time)",
            ),
            (
                "huge",
                "mp4",
                dict(size=cfg.huge_size, codec="h264_fast", frames=_frames_for(cfg.huge_seconds, Fraction(25))),
                "4K frames",
            ),
            (
                "rotated",
                "mp4",
                dict(size=(320, 240), fps=Fraction(30), rotation=90),
                "stored 320x240, display matrix turns it 90 deg clockwise to 240x320 portrait; "
                "red square at the display's top-left corner",
            ),
            (
                "vfr",
                "mp4",
                dict(size=(320, 240), fps=Fraction(30), vfr=True),
                "variable frame rate: every third frame interval is doubled; frames = source frames "
                "(ffmpeg's default constant-rate output to rawvideo would duplicate frames)",
            ),
            (
                "odd_size",
                "webm",
                dict(size=(341, 257), codec="vp9"),
                "341x257 VP9 (odd sizes need VP9: x264 4:2:0 needs even ones)",
            ),
            ("webm", "webm", dict(size=(480, 360), fps=Fraction(30), codec="vp9"), "VP9 in WebM"),
            ("webm", "webm", dict(size=(320, 240), fps=Fraction(30000, 1001), codec="vp8"), "VP8 in WebM"),
            ("mkv", "mkv", dict(size=(340, 256), fps=Fraction(24), audio="opus"), "H.264 + Opus in Matroska"),
        ]
        for kind, ext, vkw, note in ok_cases:
            rel, label, v = listed("train", ext=ext, **vkw)
            _add_video(plan, rel, "train", label, "ok", kind, v, note)
        # Names that break naive key handling; ids as odd as this do not exist on YouTube but other sources
        # (and renamed files) have them.
        for yid, note in (
            ("-ab_c.d.e.f", "leading '-', '_' and several dots"),
            ("café_vidéo", "unicode"),
            ("ab cd ef_gh", "spaces"),
        ):
            rel, label, v = listed("train", yid=yid)
            _add_video(plan, rel, "train", label, "ok", "weird_name", v, note)
        # Listed but not on disk (deleted from YouTube before download).
        for split in KINETICS_SPLITS:
            rel, label, _ = listed(split)
            plan.add(SynthItem(rel, split, label, "missing", "missing_file", None, note="in the CSV, not on disk"))
        # On disk but in no CSV.
        label, motion = next(lab)
        fname, _, _ = name(next(ids))
        rel = f"train/{label}/{fname}"
        _add_video(
            plan,
            rel,
            "train",
            label,
            "unlisted",
            "unlisted_file",
            video(rel, motion, (340, 256), Fraction(25)),
            "on disk, in no CSV",
        )
        # A val row whose label is not a train label (and its file, which decodes fine).
        unk = UNKNOWN_LABEL[ds]
        yid = next(ids)
        fname, t0, t1 = name(yid)
        rel = f"val/{unk}/{fname}"
        rows["val"].append((unk, yid, t0, t1, "val"))
        v = video(rel, classes[0][1], (340, 256), Fraction(25))
        _add_video(plan, rel, "val", None, "failed", "unknown_label", v, f"label {unk!r} is not a train label")

    def write_csvs() -> None:
        for split in KINETICS_SPLITS:
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(KINETICS_CSV_HEADER)
            for r in sorted(rows[split]):
                w.writerow(r)
            (root / f"kinetics-600_{split}.csv").write_text(buf.getvalue(), encoding="utf-8")

    write_csvs()
    items = plan.run(cfg.workers)
    # Kinetics ships no class index: the usual one is the sorted list of train labels.
    return SynthReport(ds, root, tuple(sorted(c for c, _ in classes)), tuple(items))


# ------------------------------------------------------------------------------------------------------------
# Jester


def _write_jpegs(folder: Path, frames: Iterable[np.ndarray], quality: int = 85) -> int:
    import simplejpeg  # a project dependency; imported here so that importing this module stays cheap

    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for n, f in enumerate(frames, start=1):
        data = simplejpeg.encode_jpeg(f, quality=quality, colorspace="RGB", colorsubsampling="420")
        (folder / f"{n:05d}.jpg").write_bytes(data)
    return n


JESTER_WIDTHS = (176, 176, 132, 150, 177)  # real Jester frames are 100 px high with varying width


def _jester(out: Path, cfg: SynthConfig, overwrite: bool) -> SynthReport:
    ds = "jester"
    classes = _classes(ds, cfg)
    files = [JESTER_FRAMES_DIR] + [f"jester-v1-{s}.csv" for s in ("labels", *JESTER_SPLITS)]
    root = _prepare_root(out, files, overwrite)
    rng = np.random.default_rng((cfg.seed, zlib.crc32(ds.encode())))
    plan = _Plan(root)
    rows: dict[str, list[tuple[int, str | None]]] = {s: [] for s in JESTER_SPLITS}
    n_total = len(classes) * cfg.videos_per_class * len(JESTER_SPLITS) + 20
    ids = iter(int(i) for i in rng.choice(np.arange(1, 150_001), size=n_total, replace=False))
    h = cfg.jester_height
    lo, hi = cfg.jester_frames
    speed = JESTER_SPEED

    def folder(vid: int, motion: str, n: int, width: int) -> tuple[str, Callable[[], int]]:
        rel = f"{JESTER_FRAMES_DIR}/{vid}"

        def job() -> int:
            scene = make_scene(
                motion, h, width, np.random.default_rng(_seed(cfg, ds, rel)), fps=JESTER_FPS, speed=speed
            )
            return _write_jpegs(root / rel, scene.frames(n))

        return rel, job

    def item(
        rel: str,
        split: str | None,
        label: str | None,
        expect: str,
        kind: str,
        n: int | None,
        width: int,
        note: str = "",
    ) -> SynthItem:
        return SynthItem(
            rel,
            split,
            label,
            expect,
            kind,
            n,
            width=width,
            height=h,
            fps=str(JESTER_FPS),
            codec="mjpeg",
            note=note,
        )

    k = 0
    for split in JESTER_SPLITS:
        for label, motion in classes:
            for _ in range(cfg.videos_per_class):
                vid = next(ids)
                n = int(rng.integers(lo, hi + 1))
                width = JESTER_WIDTHS[k % len(JESTER_WIDTHS)]
                rel, job = folder(vid, motion, n, width)
                # The test split is unlabeled in the real dataset; its hidden label is only in the note.
                lab = None if split == "test" else label
                note = f"hidden label: {label}" if split == "test" else ""
                plan.add(item(rel, split, lab, "ok", "normal", n, width, note), job)
                rows[split].append((vid, lab))
                k += 1

    if cfg.bad_inputs:
        lab_iter = itertools.cycle(classes)

        def extra(
            split: str | None,
            kind: str,
            expect: str,
            n: int,
            note: str,
            *,
            listed_label: str | None = None,
            write: bool = True,
            corrupt: bool = False,
        ) -> None:
            label, motion = next(lab_iter)
            vid = next(ids)
            width = JESTER_WIDTHS[0]
            rel, job = folder(vid, motion, n, width)
            if split is not None:
                rows[split].append((vid, listed_label if listed_label is not None else label))

            def run() -> None:
                if not write:
                    return
                if n == 0:
                    (root / rel).mkdir(parents=True, exist_ok=True)
                    return
                job()
                if corrupt:
                    # Cut a middle frame in half: it starts like a JPEG but has no end-of-image marker, and
                    # libjpeg stops with "Premature end of JPEG file".
                    p = root / rel / f"{(n + 1) // 2:05d}.jpg"
                    data = p.read_bytes()
                    p.write_bytes(data[: len(data) // 2])

            # No label where the dataset gives none: unknown label, or a folder in no CSV (then the note
            # has it).
            item_label = label if listed_label is None and split is not None else None
            if split is None:
                note += f"; hidden label: {label}"
            frames = n if expect in ("ok", "unlisted") else None
            it = item(rel, split, item_label, expect, kind, frames, width, note)
            plan.add(it, run)

        mid = (lo + hi) // 2
        extra("train", "short", "ok", min(8, hi), "fewer than 16 frames (loop padding happens at load time)")
        extra("train", "empty_folder", "failed", 0, "listed folder without frames")
        extra("train", "corrupt_jpeg", "failed", mid, "middle frame truncated (no EOI marker)", corrupt=True)
        extra("validation", "missing_file", "missing", mid, "listed, no folder on disk", write=False)
        extra(None, "unlisted_file", "unlisted", mid, "frame folder in no CSV")
        unk = UNKNOWN_LABEL[ds]
        extra(
            "train",
            "unknown_label",
            "failed",
            mid,
            f"label {unk!r} is not in jester-v1-labels.csv",
            listed_label=unk,
        )

    (root / "jester-v1-labels.csv").write_text("".join(f"{c}\n" for c, _ in classes), encoding="utf-8")
    for split in JESTER_SPLITS:
        lines = [f"{vid}\n" if split == "test" else f"{vid};{lab}\n" for vid, lab in rows[split]]
        (root / f"jester-v1-{split}.csv").write_text("".join(lines), encoding="utf-8")
    items = plan.run(cfg.workers)
    return SynthReport(ds, root, tuple(c for c, _ in classes), tuple(items))


# ------------------------------------------------------------------------------------------------------------
# UCF-101

_UCF_GROUP_ORDER = tuple(g for i in range(7) for g in (1 + i, 8 + i, 15 + i, 22 + i) if g <= UCF_GROUPS)


def ucf_test_groups(split: int) -> range:
    """Groups in the test list of official split ``split`` (1-3): 7(k-1)+1 .. 7k; all other groups train."""
    if split not in (1, 2, 3):
        raise ValueError("UCF-101 splits are 1, 2 and 3")
    return range(7 * (split - 1) + 1, 7 * split + 1)


_UCF_GROUP_RE = re.compile(r"_g(\d\d)_c(\d\d)")


def ucf_group(relpath: str) -> int:
    """The group number in a UCF-101 file name (``..._g08_c01.avi`` -> 8)."""
    m = _UCF_GROUP_RE.search(relpath.rsplit("/", 1)[-1])
    if not m:
        raise ValueError(f"no _gNN_cNN in {relpath!r}")
    return int(m.group(1))


def _ucf(out: Path, cfg: SynthConfig, overwrite: bool) -> SynthReport:
    ds = "ucf101"
    classes = _classes(ds, cfg)
    root = _prepare_root(out, (UCF_VIDEO_DIR, UCF_LIST_DIR), overwrite)
    plan = _Plan(root)
    listed: list[tuple[str, str]] = []  # (relpath under UCF-101/, class name as listed)
    n_frames = _frames_for(cfg.seconds, Fraction(UCF_FPS))

    def video(rel: str, motion: str, frames: int = n_frames) -> _Video:
        return _Video(motion, *UCF_SIZE, Fraction(UCF_FPS), frames, "xvid", _seed(cfg, ds, rel))

    for ci, (cls, motion) in enumerate(classes):
        for j in range(cfg.videos_per_class):
            # _UCF_GROUP_ORDER cycles through the test blocks of splits 1, 2, 3 and the always-train groups
            # 22-25. From three videos per class on, every class starts at a split-1 group, so it has test
            # videos in each split; with fewer, the start moves with the class, so that each split still
            # has some test videos.
            slot = j + (4 * ci if cfg.videos_per_class >= 3 else ci)
            g = _UCF_GROUP_ORDER[slot % UCF_GROUPS]
            c = slot // UCF_GROUPS + 1
            name = f"{cls}/v_{cls}_g{g:02d}_c{c:02d}.avi"
            rel = f"{UCF_VIDEO_DIR}/{name}"
            _add_video(plan, rel, None, cls, "ok", "normal", video(rel, motion))
            listed.append((name, cls))

    if cfg.bad_inputs:
        counter = itertools.count()

        def extra_name(cls: str, stem: str | None = None, suffix: str = "") -> str:
            k = next(counter)
            g = _UCF_GROUP_ORDER[k % UCF_GROUPS]
            c = 10 + k  # clip numbers above the normal ones, so names never clash
            stem = stem or f"v_{cls}"
            return f"{cls}/{stem}_g{g:02d}_c{c:02d}{suffix}.avi"

        def pick(i: int) -> tuple[str, str]:
            return classes[i % len(classes)]

        for i, kind in enumerate(("zero_byte", "garbage", "text", "truncated", "undecodable", "unknown_codec")):
            cls, motion = pick(i)
            name = extra_name(cls)
            rel = f"{UCF_VIDEO_DIR}/{name}"
            listed.append((name, cls))
            _add_file_case(plan, cfg, ds, rel, None, cls, kind, video(rel, motion))
        cls, _ = pick(0)
        name = extra_name(cls)
        rel = f"{UCF_VIDEO_DIR}/{name}"
        listed.append((name, cls))
        item = SynthItem(rel, None, cls, "failed", "audio_only", None, codec="pcm_s16le", note="PCM audio only")
        write = functools.partial(_write_audio_only, root / rel, "pcm", min(cfg.seconds, 1.0))
        plan.add(item, write)
        cls, motion = pick(1)
        name = extra_name(cls)
        rel = f"{UCF_VIDEO_DIR}/{name}"
        listed.append((name, cls))
        _add_video(plan, rel, None, cls, "ok", "short", video(rel, motion, 5), "5 frames")
        for i, (stem_fn, suffix, note) in enumerate(
            (
                (lambda c: f"v_{c}", " (1)", "space and parentheses, like a re-downloaded copy"),
                (lambda c: f"v_{c}_café", "", "unicode"),
                (lambda c: f"-v_{c}", "", "leading '-'"),
                (lambda c: f"v_{c[:3]}.{c[3:6]}.x", "", "several dots"),
            )
        ):
            cls, motion = pick(i)
            name = extra_name(cls, stem_fn(cls), suffix)
            rel = f"{UCF_VIDEO_DIR}/{name}"
            listed.append((name, cls))
            _add_video(plan, rel, None, cls, "ok", "weird_name", video(rel, motion), note)
        cls, _ = pick(2)
        name = extra_name(cls)
        listed.append((name, cls))
        plan.add(
            SynthItem(
                f"{UCF_VIDEO_DIR}/{name}",
                None,
                cls,
                "missing",
                "missing_file",
                None,
                note="in the split lists, not on disk",
            )
        )
        cls, motion = pick(3)
        rel = f"{UCF_VIDEO_DIR}/{extra_name(cls)}"
        _add_video(plan, rel, None, cls, "unlisted", "unlisted_file", video(rel, motion), "on disk, in no list")
        unk = UNKNOWN_LABEL[ds]
        name = extra_name(unk)
        rel = f"{UCF_VIDEO_DIR}/{name}"
        listed.append((name, unk))
        _add_video(
            plan,
            rel,
            None,
            None,
            "failed",
            "unknown_label",
            video(rel, classes[0][1]),
            f"class {unk!r} is not in classInd.txt",
        )

    index = {cls: i + 1 for i, (cls, _) in enumerate(classes)}
    unknown_index = len(classes) + 1
    lists = root / UCF_LIST_DIR
    lists.mkdir(parents=True, exist_ok=True)
    nl = UCF_NEWLINE
    (lists / "classInd.txt").write_text("".join(f"{i} {c}{nl}" for c, i in index.items()), encoding="utf-8", newline="")
    ordered = sorted(listed)
    for k in (1, 2, 3):
        test = ucf_test_groups(k)
        train_lines = [f"{n} {index.get(c, unknown_index)}{nl}" for n, c in ordered if ucf_group(n) not in test]
        test_lines = [f"{n}{nl}" for n, c in ordered if ucf_group(n) in test]
        (lists / f"trainlist0{k}.txt").write_text("".join(train_lines), encoding="utf-8", newline="")
        (lists / f"testlist0{k}.txt").write_text("".join(test_lines), encoding="utf-8", newline="")
    items = plan.run(cfg.workers)
    return SynthReport(ds, root, tuple(c for c, _ in classes), tuple(items))


# ------------------------------------------------------------------------------------------------------------


DEFAULT_CONFIG = SynthConfig()


def generate(dataset: str, out: Path, cfg: SynthConfig = DEFAULT_CONFIG, *, overwrite: bool = False) -> SynthReport:
    """Write synthetic ``dataset`` ("kinetics600", "jester" or "ucf101") in its real layout under ``out``.

    ``out`` becomes the dataset root (created if needed). Raises FileExistsError when ``out`` already holds
    the dataset's top-level entries, unless ``overwrite`` (which deletes only those entries). Returns the
    report of everything written; nothing but the dataset itself is written under ``out``.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    _require_ffmpeg()
    make = {"kinetics600": _kinetics, "jester": _jester, "ucf101": _ucf}[dataset]
    return make(Path(out), cfg, overwrite)


__all__ = [
    "CLASSES",
    "DATASETS",
    "SynthConfig",
    "SynthItem",
    "SynthReport",
    "count_decoded_frames",
    "generate",
    "ucf_group",
    "ucf_test_groups",
]
