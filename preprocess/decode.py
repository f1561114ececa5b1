"""Video and frame-folder decoding: probe, rotate, resize, temporal stride, JPEG encode.

Two interchangeable video backends produce the same frames (within JPEG tolerance):

* ``av`` (default): FFmpeg's libraries in-process through PyAV. No process start per video (the Debian
  ``ffmpeg`` binary costs 50–85 ms of CPU just to start, ~20 % of decoding a 10 s clip), which is what lets
  preprocessing beat ffmpeg's own extraction per core (see ``bench/README.md``).
* ``ffmpeg``: the ``ffmpeg`` binary driven through ffmpeg-python (``ffmpeg.probe`` then a rawvideo pipe).
  Used as the fallback when the in-process path cannot decode a file, and selectable with
  ``--decoder ffmpeg``.

Both apply the same filter chain: undo rotation metadata, scale so the short side is ``short_side``
(aspect kept, even dimensions, never upscaled), full-range YUV 4:2:0; frames are then JPEG-encoded from
the YUV planes with libjpeg-turbo (simplejpeg), skipping an RGB round trip.

Every function here is pure with respect to Ray: the same calls run in tests and inside Ray tasks.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

# Stop decoding a single video after this long: a pathological file must not stall a shard forever.
DEFAULT_TIMEOUT_S = 600.0


class DecodeError(Exception):
    """A per-video failure with a human-readable reason (recorded in the manifest, never retried)."""


@dataclass(frozen=True)
class VideoProbe:
    """Stream facts read before decoding.

    ``width``/``height`` are the coded size; ``rotation`` is the display rotation in degrees
    counter-clockwise (0, 90, 180, 270), applied when decoding. ``fps`` is the average frame rate.
    """

    codec: str
    width: int
    height: int
    fps: float
    duration_s: float
    nb_frames: int
    rotation: int
    has_audio: bool


class FrameSink:
    """Where encoded frames go: kept in a list (default) or appended to a spool file (``path``).

    A spooled video costs one JPEG of memory at a time whatever its length; ``sizes`` lists every stored
    frame's byte count either way, so the ``.jpgs`` offsets can be built without the bytes.
    """

    def __init__(self, path: str | None = None):
        self.path = path
        self.jpegs: list[bytes] = []
        self.sizes: list[int] = []
        self._f = open(path, "wb") if path else None  # noqa: SIM115 - closed by close()

    def add(self, jpeg: bytes) -> None:
        if self._f is not None:
            self._f.write(jpeg)
        else:
            self.jpegs.append(jpeg)
        self.sizes.append(len(jpeg))

    def __len__(self) -> int:
        return len(self.sizes)

    def reset(self) -> None:
        """Forget every frame (a fallback decoder starts over)."""
        self.jpegs.clear()
        self.sizes.clear()
        if self._f is not None:
            self._f.seek(0)
            self._f.truncate()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


@dataclass
class DecodedVideo:
    """Decoded, resized, JPEG-encoded frames of one video (after the temporal stride).

    ``jpegs`` holds the frames unless they went to a spool file (then it is empty); ``frame_sizes`` always
    has one byte count per stored frame.
    """

    jpegs: list[bytes]
    pts_ms: list[int]
    width: int
    height: int
    source_frames: int
    probe: VideoProbe
    backend: str
    vfr: bool = False
    warnings: list[str] = field(default_factory=list)
    frame_sizes: list[int] = field(default_factory=list)

    @property
    def num_stored(self) -> int:
        return len(self.frame_sizes)


def _cap_warning(max_frames: int) -> str:
    return f"truncated at {max_frames} stored frames (--max-frames)"


def target_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Output ``(width, height)`` for a displayed frame of ``width x height`` pixels.

    The short side becomes ``short_side`` with the aspect ratio kept; sizes are rounded to even numbers
    (4:2:0 chroma) and frames are never upscaled (``short_side=None`` keeps the size).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"invalid frame size {width}x{height}")
    short = min(width, height)
    if short_side is None or short <= short_side:
        w, h = width, height
    elif width <= height:
        w, h = short_side, height * short_side / width
    else:
        w, h = width * short_side / height, short_side
    # Half-up rounding (not banker's) so that equal inputs on either side of .5 behave predictably.
    return max(2, int(w / 2 + 0.5) * 2), max(2, int(h / 2 + 0.5) * 2)


def rotation_filters(rotation: int) -> list[tuple[str, str]]:
    """libavfilter steps that undo a counter-clockwise display rotation (as ffmpeg's autorotate does)."""
    r = rotation % 360
    if r == 90:
        return [("transpose", "cclock")]
    if r == 180:
        return [("hflip", ""), ("vflip", "")]
    if r == 270:
        return [("transpose", "clock")]
    return []


def normalise_rotation(degrees: float) -> int:
    """Nearest multiple of 90 in [0, 360); other angles cannot be undone losslessly and are ignored."""
    r = int(round(degrees / 90.0)) * 90 % 360
    return r if abs(((degrees - r) + 180) % 360 - 180) < 1.0 else 0


def _displayed_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    return (height, width) if rotation % 180 == 90 else (width, height)


def encode_yuv420(y: np.ndarray, u: np.ndarray, v: np.ndarray, quality: int) -> bytes:
    """JPEG-encode full-range YUV 4:2:0 planes ``(H, W)``, ``(H/2, W/2)``, ``(H/2, W/2)`` uint8."""
    import simplejpeg

    return simplejpeg.encode_jpeg_yuv_planes(
        np.ascontiguousarray(y), np.ascontiguousarray(u), np.ascontiguousarray(v), quality=quality
    )


# --------------------------------------------------------------------------------------------------
# In-process backend (PyAV)


def probe_av(path: str) -> VideoProbe:
    """Probe a file with libavformat in-process; raises ``DecodeError`` with the reason."""
    import av

    try:
        with av.open(path, metadata_errors="ignore") as c:
            return _probe_container(c)
    except av.error.FFmpegError as exc:
        raise DecodeError(f"unreadable container: {_ffmsg(exc)}") from exc


def _ffmsg(exc: Exception) -> str:
    msg = getattr(exc, "strerror", None) or str(exc)
    return msg.split(": '")[0] if isinstance(msg, str) else str(exc)


def _probe_container(c) -> VideoProbe:
    if not c.streams.video:
        kinds = sorted({s.type for s in c.streams}) or ["none"]
        raise DecodeError(f"no video stream (streams: {', '.join(kinds)})")
    s = c.streams.video[0]
    cc = s.codec_context
    if cc is None:
        # PyAV leaves codec_context unset when its FFmpeg has no decoder for the stream's codec.
        tag = getattr(s, "codec_tag", "") or "unknown"
        raise DecodeError(f"no decoder for the video codec (tag {tag!r})")
    rate = s.average_rate or s.guessed_rate or s.base_rate
    fps = float(rate) if rate else 0.0
    duration = float(s.duration * s.time_base) if s.duration and s.time_base else (c.duration or 0) / 1e6
    return VideoProbe(
        codec=cc.name or "unknown",
        width=int(cc.width or 0),
        height=int(cc.height or 0),
        fps=fps,
        duration_s=float(duration),
        nb_frames=int(s.frames or 0),
        rotation=0,  # read from the first frame's display matrix (PyAV exposes it per frame)
        has_audio=bool(c.streams.audio),
    )


class _Scaler:
    """A libavfilter graph: rotation undo + scale to ``(w, h)`` + full-range yuv420p."""

    def __init__(self, template, rotation: int, out_w: int, out_h: int):
        import av.filter

        self.key = (template.width, template.height, template.format.name)
        g = av.filter.Graph()
        src = g.add_buffer(width=template.width, height=template.height, format=template.format,
                           time_base=template.time_base or Fraction(1, 1000))
        steps = rotation_filters(rotation) + [
            ("scale", f"{out_w}:{out_h}:out_range=full"),
            ("format", "yuv420p"),
        ]
        nodes = [src] + [g.add(name, args) if args else g.add(name) for name, args in steps]
        nodes.append(g.add("buffersink"))
        g.link_nodes(*nodes).configure()
        self.graph = g

    def __call__(self, frame):
        self.graph.push(frame)
        return self.graph.pull()


def _iter_frames_av(c, stream, warnings: list[str]) -> Iterator:
    """Decode every frame, skipping corrupt packets (counted) instead of aborting the video."""
    import av

    errors = 0
    demux = c.demux(stream)
    while True:
        try:
            packet = next(demux)
        except StopIteration:
            break
        except av.error.FFmpegError as exc:
            warnings.append(f"demux stopped early: {_ffmsg(exc)}")
            break
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            errors += 1
            if errors == 1:
                warnings.append(f"corrupt packet skipped: {_ffmsg(exc)}")
            if errors > 200:
                warnings.append("too many corrupt packets; stopped")
                break
            continue
        yield from frames
    if errors > 1:
        warnings.append(f"{errors} corrupt packets skipped in total")


def decode_av(path: str, *, short_side: int | None, quality: int, stride: int = 1,
              timeout_s: float = DEFAULT_TIMEOUT_S, sink: FrameSink | None = None,
              max_frames: int | None = None) -> DecodedVideo:
    """Decode a video in-process (PyAV), returning stride-sampled, resized JPEG frames.

    Frames go to ``sink`` (a list by default); at most ``max_frames`` are stored (the rest of the video is
    not decoded, and a warning says so).
    """
    import av

    try:
        return _decode_av(path, short_side=short_side, quality=quality, stride=stride, timeout_s=timeout_s,
                          sink=sink if sink is not None else FrameSink(), max_frames=max_frames)
    except av.error.FFmpegError as exc:
        raise DecodeError(f"decoder error: {_ffmsg(exc)}") from exc


def _decode_av(path: str, *, short_side: int | None, quality: int, stride: int, timeout_s: float,
               sink: FrameSink, max_frames: int | None) -> DecodedVideo:
    import av

    warnings: list[str] = []
    t0 = time.monotonic()
    try:
        c = av.open(path, metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise DecodeError(f"unreadable container: {_ffmsg(exc)}") from exc
    with c:
        probe = _probe_container(c)
        stream = c.streams.video[0]
        # One core per Ray task: frame threads would only add CPU time per frame.
        stream.thread_type = "NONE"
        stream.codec_context.thread_count = 1
        pts: list[float] = []
        scaler = None
        rotation = 0
        out_w = out_h = 0
        n = 0
        for frame in _iter_frames_av(c, stream, warnings):
            if scaler is None:
                rotation = normalise_rotation(float(getattr(frame, "rotation", 0) or 0))
                out_w, out_h = target_size(*_displayed_size(frame.width, frame.height, rotation), short_side)
            if scaler is None or scaler.key != (frame.width, frame.height, frame.format.name):
                if scaler is not None:
                    warnings.append(f"frame size changed mid-stream to {frame.width}x{frame.height}")
                scaler = _Scaler(frame, rotation, out_w, out_h)
            if n % stride == 0:
                if max_frames is not None and len(sink) >= max_frames:
                    warnings.append(_cap_warning(max_frames))
                    break
                out = scaler(frame)
                y, u, v = (np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in out.planes)
                cw, ch = (out_w + 1) // 2, (out_h + 1) // 2
                sink.add(encode_yuv420(y[:out_h, :out_w], u[:ch, :cw], v[:ch, :cw], quality))
                t = frame.time if frame.time is not None else n / (probe.fps or 25.0)
                pts.append(t)
            n += 1
            if time.monotonic() - t0 > timeout_s:
                raise DecodeError(f"timeout after {timeout_s:g} s ({n} frames decoded)")
    if not len(sink):
        detail = f" ({warnings[0]})" if warnings else ""
        raise DecodeError(f"no decodable video frame in {probe.codec} stream{detail}")
    probe = VideoProbe(**{**probe.__dict__, "rotation": rotation})
    return DecodedVideo(list(sink.jpegs), _pts_ms(pts), out_w, out_h, n, probe, "av",
                        _is_vfr(pts, probe.fps / stride), warnings, list(sink.sizes))


def _pts_ms(times: list[float]) -> list[int]:
    t0 = times[0] if times else 0.0
    return [int(round((t - t0) * 1000)) for t in times]


def _is_vfr(times: list[float], fps: float) -> bool:
    """True when frame intervals deviate from the average rate by more than a quarter frame."""
    if len(times) < 3 or fps <= 0:
        return False
    d = np.diff(np.asarray(times, np.float64))
    return bool(np.any(np.abs(d - 1.0 / fps) > 0.25 / fps))


# --------------------------------------------------------------------------------------------------
# ffmpeg binary backend (ffmpeg-python)


def probe_ffmpeg(path: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> VideoProbe:
    """Probe with ``ffprobe`` (killed after ``timeout_s``); raises ``DecodeError`` with ffprobe's reason."""
    import json

    args = ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", path]
    try:
        proc = subprocess.run(args, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise DecodeError(f"timeout after {timeout_s:g} s (ffprobe)") from None
    if proc.returncode != 0:
        raise DecodeError(f"unreadable container: {_stderr_reason(proc.stderr, path)}")
    try:
        info = json.loads(proc.stdout.decode("utf-8", "replace"))
    except ValueError:
        raise DecodeError("unreadable container: ffprobe printed no JSON") from None
    streams = info.get("streams", [])
    video = [s for s in streams if s.get("codec_type") == "video"]
    if not video:
        kinds = sorted({s.get("codec_type", "?") for s in streams}) or ["none"]
        raise DecodeError(f"no video stream (streams: {', '.join(kinds)})")
    s = video[0]
    rotation = 0.0
    for sd in s.get("side_data_list", []) or []:
        if "rotation" in sd:
            rotation = float(sd["rotation"])
    if not rotation and "rotate" in (s.get("tags") or {}):
        rotation = -float(s["tags"]["rotate"])
    duration = float(s.get("duration") or info.get("format", {}).get("duration") or 0.0)
    return VideoProbe(
        codec=s.get("codec_name", "unknown"),
        width=int(s.get("width") or 0),
        height=int(s.get("height") or 0),
        fps=_rate(s.get("avg_frame_rate")) or _rate(s.get("r_frame_rate")),
        duration_s=duration,
        nb_frames=int(s.get("nb_frames") or 0),
        rotation=normalise_rotation(rotation),
        has_audio=any(x.get("codec_type") == "audio" for x in streams),
    )


def _rate(text: str | None) -> float:
    try:
        f = Fraction(text or "0")
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(f) if f else 0.0


def _stderr_reason(stderr: bytes | None, path: str = "") -> str:
    lines = [ln.strip() for ln in (stderr or b"").decode("utf-8", "replace").splitlines() if ln.strip()]
    if not lines:
        return "ffmpeg failed without a message"
    # ffmpeg prefixes messages with the input path; the manifest row already names the file.
    return lines[-1].removeprefix(f"{path}: ") if path else lines[-1]


def decode_ffmpeg(path: str, *, short_side: int | None, quality: int, stride: int = 1,
                  timeout_s: float = DEFAULT_TIMEOUT_S, sink: FrameSink | None = None,
                  max_frames: int | None = None) -> DecodedVideo:
    """Decode with the ffmpeg binary: ``ffprobe``, then a rawvideo full-range yuv420p pipe read one frame at
    a time (memory does not grow with the video's length). ``sink`` and ``max_frames`` as in
    :func:`decode_av`; the whole call is bounded by ``timeout_s`` (ffmpeg is killed when it runs over)."""
    import tempfile

    import ffmpeg

    t0 = time.monotonic()
    sink = sink if sink is not None else FrameSink()
    probe = probe_ffmpeg(path, timeout_s)
    if probe.width <= 0 or probe.height <= 0:
        raise DecodeError(f"video stream has no size ({probe.codec})")
    out_w, out_h = target_size(*_displayed_size(probe.width, probe.height, probe.rotation), short_side)
    # ffmpeg's autorotate inserts the rotation filter itself, before this scale.
    stream = (
        ffmpeg.input(path, threads=1)
        .video.filter("scale", out_w, out_h, out_range="full")
        .output("pipe:", format="rawvideo", pix_fmt="yuvj420p", threads=1, fps_mode="passthrough")
        .global_args("-nostdin", "-hide_banner", "-v", "error", "-map_metadata", "-1")
    )
    args = ffmpeg.compile(stream, cmd="ffmpeg")
    cw, ch = (out_w + 1) // 2, (out_h + 1) // 2
    frame_bytes = out_w * out_h + 2 * cw * ch
    warnings: list[str] = []
    capped = False
    n = 0
    # stderr goes to a file: a pipe nobody reads while stdout is drained could fill up and stall ffmpeg.
    with tempfile.TemporaryFile() as err, subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err) as proc:
        try:
            while True:
                f = _read_exact(proc.stdout, frame_bytes, t0 + timeout_s)
                if f is None:
                    break
                if n % stride == 0:
                    if max_frames is not None and len(sink) >= max_frames:
                        warnings.append(_cap_warning(max_frames))
                        capped = True
                        break
                    buf = np.frombuffer(f, np.uint8)
                    y = buf[: out_w * out_h].reshape(out_h, out_w)
                    u = buf[out_w * out_h : out_w * out_h + cw * ch].reshape(ch, cw)
                    v = buf[out_w * out_h + cw * ch :].reshape(ch, cw)
                    sink.add(encode_yuv420(y, u, v, quality))
                n += 1
        except TimeoutError:
            raise DecodeError(f"timeout after {timeout_s:g} s ({n} frames decoded)") from None
        finally:
            if proc.poll() is None:
                proc.kill()  # timed out, capped, or an error above: never leave ffmpeg running
            rc = proc.wait()
        err.seek(0)
        stderr = err.read()
    if rc != 0 and not capped:
        if n == 0:
            raise DecodeError(f"no decodable video frame: {_stderr_reason(stderr, path)}")
        warnings.append(f"ffmpeg stopped early: {_stderr_reason(stderr, path)}")
    elif n == 0:
        raise DecodeError(f"no decodable video frame in {probe.codec} stream")
    fps = probe.fps or 25.0
    # The rawvideo pipe carries no timestamps: nominal times from the average rate.
    pts = [i / fps for i in range(0, n, stride)][: len(sink)]
    return DecodedVideo(list(sink.jpegs), _pts_ms(pts), out_w, out_h, n, probe, "ffmpeg", False, warnings,
                        list(sink.sizes))


def _read_exact(pipe, nbytes: int, deadline: float) -> bytes | None:
    """``nbytes`` from ``pipe``, or None at end of stream (a partial last frame is dropped).

    Raises ``TimeoutError`` when ``deadline`` (``time.monotonic()``) passes first.
    """
    import select

    chunks: list[bytes] = []
    got = 0
    fd = pipe.fileno()
    while got < nbytes:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError
        b = os.read(fd, min(nbytes - got, 1 << 20))
        if not b:
            return None
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


BACKENDS = {"av": decode_av, "ffmpeg": decode_ffmpeg}


def decode_video(path: str, *, short_side: int | None, quality: int, stride: int = 1, backend: str = "av",
                 fallback: bool = True, timeout_s: float = DEFAULT_TIMEOUT_S, sink: FrameSink | None = None,
                 max_frames: int | None = None) -> DecodedVideo:
    """Decode one video file with ``backend``; on failure retry once with the other backend.

    Raises ``DecodeError`` whose message names the reason (both backends' when both fail). ``sink`` and
    ``max_frames`` as in :func:`decode_av`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown decoder {backend!r}; valid: {sorted(BACKENDS)}")
    if not os.path.isfile(path):
        raise DecodeError("file not found")
    if os.path.getsize(path) == 0:
        raise DecodeError("empty file (0 bytes)")
    sink = sink if sink is not None else FrameSink()
    t0 = time.monotonic()
    kw = dict(short_side=short_side, quality=quality, stride=stride, timeout_s=timeout_s, sink=sink,
              max_frames=max_frames)
    try:
        return BACKENDS[backend](path, **kw)
    except DecodeError as first:
        other = "ffmpeg" if backend == "av" else "av"
        # A missing stream or an unreadable container is a fact of the file, not of the decoder.
        if not fallback or str(first).startswith(("no video stream", "timeout after")):
            raise
        sink.reset()
        # The fallback gets what is left of the video's time, not a fresh allowance.
        kw["timeout_s"] = max(0.0, timeout_s - (time.monotonic() - t0))
        try:
            out = BACKENDS[other](path, **kw)
        except DecodeError as second:
            if str(second) == str(first):
                raise first from None
            raise DecodeError(f"{first} [{other}: {second}]") from None
        out.warnings.append(f"{backend} decoder failed ({first}); decoded with {other}")
        return out


# --------------------------------------------------------------------------------------------------
# Frame folders (Jester)

_IMAGE_EXTS = (".jpg", ".jpeg")


def _frame_sort_key(name: str) -> tuple[int, str]:
    stem = name.rsplit(".", 1)[0]
    return (int(stem), name) if stem.isdigit() else (1 << 60, name)


def decode_frame_folder(path: str, *, short_side: int | None, quality: int, stride: int = 1,
                        fps: float = 12.0, sink: FrameSink | None = None,
                        max_frames: int | None = None) -> DecodedVideo:
    """Repack a folder of numbered JPEG frames, keeping every ``stride``-th frame.

    Frames are copied byte for byte (each one is fully decoded once to reject corrupt files); they are
    re-encoded only when their short side exceeds ``short_side``. ``fps`` is the folder's native rate.
    Raises ``DecodeError`` naming the bad frame file. ``sink`` and ``max_frames`` as in :func:`decode_av`.
    """
    import cv2
    import simplejpeg

    if not os.path.isdir(path):
        raise DecodeError("frame folder not found")
    names = sorted((n for n in os.listdir(path) if n.lower().endswith(_IMAGE_EXTS)), key=_frame_sort_key)
    if not names:
        raise DecodeError("empty frame folder (no .jpg files)")
    kept = names[::stride]
    warnings: list[str] = []
    if max_frames is not None and len(kept) > max_frames:
        kept = kept[:max_frames]
        warnings.append(_cap_warning(max_frames))
    sink = sink if sink is not None else FrameSink()
    size: tuple[int, int] | None = None
    out_w = out_h = 0
    for name in kept:
        with open(os.path.join(path, name), "rb") as f:
            data = f.read()
        try:
            rgb = simplejpeg.decode_jpeg(data, colorspace="RGB")
        except Exception as exc:  # simplejpeg's errors carry no file name
            raise DecodeError(f"corrupt JPEG {name}: {exc}") from None
        h, w = rgb.shape[:2]
        if size is None:
            size = (w, h)
            out_w, out_h = target_size(w, h, short_side)
            if (out_w, out_h) != (w, h) and min(w, h) <= (short_side or min(w, h)):
                out_w, out_h = w, h  # only rounding to even would change: keep the original bytes
        elif (w, h) != size:
            raise DecodeError(f"frame {name} is {w}x{h}, earlier frames are {size[0]}x{size[1]}")
        if (out_w, out_h) == (w, h):
            sink.add(data)
        else:
            small = cv2.resize(rgb, (out_w, out_h), interpolation=cv2.INTER_AREA)
            sink.add(simplejpeg.encode_jpeg(small, quality=quality, colorspace="RGB", colorsubsampling="420"))
    assert size is not None
    probe = VideoProbe("jpeg", size[0], size[1], fps, len(names) / fps, len(names), 0, False)
    pts = [i * stride / fps for i in range(len(kept))]
    return DecodedVideo(list(sink.jpegs), _pts_ms(pts), out_w, out_h, len(names), probe, "frames", False, warnings,
                        list(sink.sizes))
