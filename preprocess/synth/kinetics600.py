"""Synthetic Kinetics-600: ``{train,val}/<label>/<youtube_id>_<start:06d>_<end:06d>.<mp4|webm|mkv>`` and
``kinetics-600_{train,val}.csv`` (header ``label,youtube_id,time_start,time_end,split``)."""

from __future__ import annotations

import csv
import functools
import io
import itertools
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np

from preprocess.synth.cases import FILE_KINDS, Case, cases_for
from preprocess.synth.config import UNKNOWN_LABEL, SynthConfig, SynthItem, SynthReport, frames_for
from preprocess.synth.ffmpeg import AUDIO_CODEC_NAMES, Video, write_audio_only
from preprocess.synth.plan import Plan, add_file_case, add_video, classes_of, prepare_root, seed

DS = "kinetics600"
KINETICS_CSV_HEADER = ("label", "youtube_id", "time_start", "time_end", "split")
KINETICS_SPLITS = ("train", "val")
# Normal Kinetics videos cycle through these (width, height) and frame rates: real YouTube clips vary.
KINETICS_SIZES: tuple[tuple[int, int], ...] = ((340, 256), (320, 240), (480, 360), (256, 340), (454, 256))
KINETICS_FPS: tuple[Fraction, ...] = (Fraction(25), Fraction(30), Fraction(30000, 1001), Fraction(24))

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


Row = tuple[str, str, int, int, str]


class _Kinetics:
    """The state of one generation: the random stream for ids and start times, the plan and the CSV rows."""

    def __init__(self, root: Path, cfg: SynthConfig) -> None:
        self.root, self.cfg = root, cfg
        self.classes = classes_of(DS, cfg)
        self.rng = np.random.default_rng((cfg.seed, zlib.crc32(DS.encode())))
        self.plan = Plan(root)
        self.rows: dict[str, list[Row]] = {s: [] for s in KINETICS_SPLITS}
        n_normal = len(self.classes) * cfg.videos_per_class * len(KINETICS_SPLITS)
        self.ids = iter(_youtube_ids(self.rng, n_normal + 40))
        self.dur = max(1, round(cfg.seconds))  # time_end - time_start, in whole seconds like the real CSVs
        self.labels = itertools.cycle(self.classes)

    def name(self, yid: str, ext: str = "mp4") -> tuple[str, int, int]:
        start = int(self.rng.integers(0, 300))
        return f"{yid}_{start:06d}_{start + self.dur:06d}.{ext}", start, start + self.dur

    def video(
        self,
        rel: str,
        motion: str,
        size: tuple[int, int] = (340, 256),
        fps: Fraction = Fraction(25),
        codec: str = "h264",
        frames: int | None = None,
        **kw,
    ) -> Video:
        n = frames if frames is not None else frames_for(self.cfg.seconds, fps)
        return Video(motion, size[0], size[1], fps, n, codec, seed(self.cfg, DS, rel), **kw)

    def normal(self) -> None:
        k = 0
        for split in KINETICS_SPLITS:
            for label, motion in self.classes:
                for _ in range(self.cfg.videos_per_class):
                    yid = next(self.ids)
                    fname, t0, t1 = self.name(yid)
                    rel = f"{split}/{label}/{fname}"
                    size, fps = KINETICS_SIZES[k % len(KINETICS_SIZES)], KINETICS_FPS[k % len(KINETICS_FPS)]
                    # Real Kinetics clips carry audio; some of ours do, so adapters must pick the video stream.
                    audio = "aac" if k % 3 == 2 else None
                    v = self.video(rel, motion, size, fps, audio=audio)
                    note = "with an AAC audio track" if audio else ""
                    add_video(self.plan, rel, split, label, "ok", "normal", v, note)
                    self.rows[split].append((label, yid, t0, t1, split))
                    k += 1

    def listed(self, case: Case) -> tuple[str, str, Video]:
        """A CSV row under the next class label; returns (relpath, label, the video it would hold)."""
        label, motion = next(self.labels)
        yid = case.name or next(self.ids)
        fname, t0, t1 = self.name(yid, case.ext)
        rel = f"{case.split}/{label}/{fname}"
        self.rows[case.split].append((label, yid, t0, t1, case.split))
        return rel, label, self.video(rel, motion, **case.video_kw(self.cfg))

    def bad(self, case: Case) -> None:
        cfg, plan, split = self.cfg, self.plan, case.split
        note = case.note_for(cfg, UNKNOWN_LABEL[DS])
        if case.kind == "unlisted_file":
            label, motion = next(self.labels)
            fname, _, _ = self.name(next(self.ids))
            rel = f"train/{label}/{fname}"
            add_video(plan, rel, "train", label, case.expect, case.kind, self.video(rel, motion), note)
        elif case.kind == "unknown_label":
            unk = UNKNOWN_LABEL[DS]
            yid = next(self.ids)
            fname, t0, t1 = self.name(yid)
            rel = f"{split}/{unk}/{fname}"
            self.rows[split].append((unk, yid, t0, t1, split))
            add_video(plan, rel, split, None, case.expect, case.kind, self.video(rel, self.classes[0][1]), note)
        elif case.kind == "missing_file":
            rel, label, _ = self.listed(case)
            plan.add(SynthItem(rel, split, label, case.expect, case.kind, None, note=note))
        elif case.kind == "audio_only":
            rel, label, _ = self.listed(case)
            codec = AUDIO_CODEC_NAMES[case.audio]
            item = SynthItem(rel, split, label, case.expect, case.kind, None, codec=codec, note=note)
            plan.add(item, functools.partial(write_audio_only, self.root / rel, case.audio, min(cfg.seconds, 1.0)))
        elif case.kind in FILE_KINDS:
            rel, label, v = self.listed(case)
            add_file_case(plan, cfg, DS, rel, split, label, case.kind, v, note)
        else:
            rel, label, v = self.listed(case)
            add_video(plan, rel, split, label, case.expect, case.kind, v, note)

    def write_csvs(self) -> None:
        for split in KINETICS_SPLITS:
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(KINETICS_CSV_HEADER)
            for r in sorted(self.rows[split]):
                w.writerow(r)
            (self.root / f"kinetics-600_{split}.csv").write_text(buf.getvalue(), encoding="utf-8")


def generate_kinetics(out: Path, cfg: SynthConfig, overwrite: bool) -> SynthReport:
    """Write synthetic Kinetics-600 under ``out`` (see :func:`preprocess.synth.generate`)."""
    root = prepare_root(out, ("train", "val", "kinetics-600_train.csv", "kinetics-600_val.csv"), overwrite)
    gen = _Kinetics(root, cfg)
    gen.normal()
    if cfg.bad_inputs:
        for case in cases_for(DS):
            gen.bad(case)
    gen.write_csvs()
    items = gen.plan.run(cfg.workers)
    # Kinetics ships no class index: the usual one is the sorted list of train labels.
    return SynthReport(DS, root, tuple(sorted(c for c, _ in gen.classes)), tuple(items))
