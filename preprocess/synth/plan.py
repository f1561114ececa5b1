"""Generation plumbing shared by the layouts: the plan of items and the jobs that write them, per-file seeds,
and the file-level bad inputs (zero-byte, garbage, text, truncated, undecodable, unknown codec).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from preprocess.synth.config import CLASSES, SynthConfig, SynthItem
from preprocess.synth.containers import garble_avi_frames, garble_mp4_samples, set_avi_fourcc
from preprocess.synth.ffmpeg import CODEC_NAMES, Video, count_decoded_frames, encode, fps_str

# A web server's error page saved under a video's name.
HTML_ERROR = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Error 404 (Not Found)</title></head>
<body><p><b>404.</b> That's an error.</p><p>The requested URL was not found on this server.</p>
<p>This video is unavailable. This video has been removed by the uploader.</p></body></html>
"""


@dataclass
class Plan:
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


def seed(cfg: SynthConfig, dataset: str, relpath: str) -> tuple[int, ...]:
    """Per-file seed: depends only on the config seed, dataset and path, not on generation order."""
    return (cfg.seed, zlib.crc32(dataset.encode()), zlib.crc32(relpath.encode("utf-8")))


def video_job(root: Path, item: SynthItem, v: Video) -> Callable[[], None]:
    """A job that encodes ``v`` into ``root / item.relpath``."""

    def job() -> None:
        encode(root / item.relpath, v)

    return job


def video_item(
    relpath: str, split: str | None, label: str | None, expect: str, kind: str, v: Video, note: str = ""
) -> SynthItem:
    """The report item of video ``v`` stored at ``relpath``; ``frames`` only where a decoder should get them."""
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
        fps=fps_str(v.fps),
        codec=CODEC_NAMES[v.codec],
        note=note,
    )


def add_video(
    plan: Plan,
    relpath: str,
    split: str | None,
    label: str | None,
    expect: str,
    kind: str,
    v: Video,
    note: str = "",
) -> None:
    """Report video ``v`` at ``relpath`` and plan its encoding."""
    item = video_item(relpath, split, label, expect, kind, v, note)
    plan.add(item, video_job(plan.root, item, v))


def measured(path: Path, item: SynthItem, write: Callable[[], object], source_frames: int | None) -> Callable:
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


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_truncated(path: Path, v: Video, rng: np.random.Generator, cfg: SynthConfig) -> None:
    encode(path, v)
    full = path.read_bytes()
    path.write_bytes(full[: int(len(full) * cfg.truncate_fraction)])


def _write_undecodable(path: Path, v: Video, rng: np.random.Generator, cfg: SynthConfig) -> None:
    encode(path, v)
    if path.suffix == ".avi":
        garble_avi_frames(path, rng)
    else:
        garble_mp4_samples(path, rng)


def _write_unknown_codec(path: Path, v: Video, rng: np.random.Generator, cfg: SynthConfig) -> None:
    encode(path, v)
    set_avi_fourcc(path, b"ZZ9Z")


# Bytes of the file-level cases that hold no video stream (nothing to measure), from the per-file rng.
_NO_STREAM: dict[str, Callable[[np.random.Generator], bytes]] = {
    "zero_byte": lambda rng: b"",
    "garbage": lambda rng: rng.integers(0, 256, 48 * 1024, dtype=np.uint8).tobytes(),
    "text": lambda rng: HTML_ERROR.encode(),
}
# Writers of the file-level cases that start from a valid video and damage it.
_DAMAGED: dict[str, Callable[[Path, Video, np.random.Generator, SynthConfig], None]] = {
    "truncated": _write_truncated,
    "undecodable": _write_undecodable,
    "unknown_codec": _write_unknown_codec,
}


def add_file_case(
    plan: Plan,
    cfg: SynthConfig,
    dataset: str,
    relpath: str,
    split: str | None,
    label: str | None,
    kind: str,
    v: Video,
    note: str,
) -> None:
    """Add one of the file-level bad inputs (zero_byte, truncated, garbage, text, undecodable, unknown_codec).

    ``v`` is the valid video the case starts from (truncated, undecodable, unknown_codec) or whose name it
    takes. The expectation of a damaged video is measured with ffmpeg after writing (see :func:`measured`).
    """
    path = plan.root / relpath
    rng = np.random.default_rng((*seed(cfg, dataset, relpath), 7))
    if kind in _NO_STREAM:
        item = SynthItem(relpath, split, label, "failed", kind, None, note=note)
        plan.add(item, functools.partial(write_bytes, path, _NO_STREAM[kind](rng)))
        return
    if kind not in _DAMAGED:
        raise ValueError(kind)
    item = dataclasses.replace(video_item(relpath, split, label, "failed", kind, v), note=note)
    if kind == "unknown_codec":
        item = dataclasses.replace(item, codec=None)
    write = functools.partial(_DAMAGED[kind], path, v, rng, cfg)
    # Whether anything decodes from a damaged video is ffmpeg's call: measure it.
    plan.add(item, measured(path, item, write, v.frames))


def prepare_root(out: Path, entries: Iterable[str], overwrite: bool) -> Path:
    """Create ``out``; refuse (FileExistsError) or, with ``overwrite``, delete the dataset's top-level ``entries``."""
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


def classes_of(dataset: str, cfg: SynthConfig) -> tuple[tuple[str, str], ...]:
    """The first ``cfg.num_classes`` (class name, motion) pairs of ``dataset``."""
    table = CLASSES[dataset]
    if cfg.num_classes > len(table):
        raise ValueError(f"{dataset}: at most {len(table)} classes (motions) are defined, got {cfg.num_classes}")
    return table[: cfg.num_classes]
