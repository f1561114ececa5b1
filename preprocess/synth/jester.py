"""Synthetic Jester: ``20bn-jester-v1/<id>/00001.jpg ...``, ``jester-v1-labels.csv`` (one label per line),
``jester-v1-train.csv`` and ``jester-v1-validation.csv`` (``id;label``), ``jester-v1-test.csv`` (``id``)."""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from preprocess.synth.cases import Case, cases_for
from preprocess.synth.config import UNKNOWN_LABEL, SynthConfig, SynthItem, SynthReport
from preprocess.synth.motion import make_scene
from preprocess.synth.plan import Plan, classes_of, prepare_root, seed

DS = "jester"
JESTER_FRAMES_DIR = "20bn-jester-v1"
JESTER_SPLITS = ("train", "validation", "test")
JESTER_FPS = 12
# Patch speed range for Jester (short sides per second), slower than the default: a training clip (16 frames at
# stride 2 = 32 frames at 12 fps = 2.7 s) sees about one crossing of the centred square.
JESTER_SPEED = (0.12, 0.22)
JESTER_WIDTHS = (176, 176, 132, 150, 177)  # real Jester frames are 100 px high with varying width


def _write_jpegs(folder: Path, frames: Iterable[np.ndarray], quality: int = 85) -> int:
    import simplejpeg  # a project dependency; imported here so that importing this package stays cheap

    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for n, f in enumerate(frames, start=1):
        data = simplejpeg.encode_jpeg(f, quality=quality, colorspace="RGB", colorsubsampling="420")
        (folder / f"{n:05d}.jpg").write_bytes(data)
    return n


def _truncate_middle_frame(folder: Path, n: int) -> None:
    """Cut a middle frame in half: it starts like a JPEG but has no end-of-image marker, and libjpeg stops
    with "Premature end of JPEG file"."""
    p = folder / f"{(n + 1) // 2:05d}.jpg"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


class _Jester:
    """The state of one generation: the random stream for ids and frame counts, the plan and the list rows."""

    def __init__(self, root: Path, cfg: SynthConfig) -> None:
        self.root, self.cfg = root, cfg
        self.classes = classes_of(DS, cfg)
        self.rng = np.random.default_rng((cfg.seed, zlib.crc32(DS.encode())))
        self.plan = Plan(root)
        self.rows: dict[str, list[tuple[int, str | None]]] = {s: [] for s in JESTER_SPLITS}
        n_total = len(self.classes) * cfg.videos_per_class * len(JESTER_SPLITS) + 20
        self.ids = iter(int(i) for i in self.rng.choice(np.arange(1, 150_001), size=n_total, replace=False))
        self.labels = itertools.cycle(self.classes)

    def folder(self, vid: int, motion: str, n: int, width: int) -> tuple[str, Callable[[], int]]:
        rel = f"{JESTER_FRAMES_DIR}/{vid}"
        h, cfg = self.cfg.jester_height, self.cfg

        def job() -> int:
            rng = np.random.default_rng(seed(cfg, DS, rel))
            scene = make_scene(motion, h, width, rng, fps=JESTER_FPS, speed=JESTER_SPEED)
            return _write_jpegs(self.root / rel, scene.frames(n))

        return rel, job

    def item(
        self,
        rel: str,
        split: str | None,
        label: str | None,
        expect: str,
        kind: str,
        n: int | None,
        width: int,
        note: str = "",
    ) -> SynthItem:
        h = self.cfg.jester_height
        return SynthItem(
            rel, split, label, expect, kind, n, width=width, height=h, fps=str(JESTER_FPS), codec="mjpeg", note=note
        )

    def normal(self) -> None:
        lo, hi = self.cfg.jester_frames
        k = 0
        for split in JESTER_SPLITS:
            for label, motion in self.classes:
                for _ in range(self.cfg.videos_per_class):
                    vid = next(self.ids)
                    n = int(self.rng.integers(lo, hi + 1))
                    width = JESTER_WIDTHS[k % len(JESTER_WIDTHS)]
                    rel, job = self.folder(vid, motion, n, width)
                    # The test split is unlabeled in the real dataset; its hidden label is only in the note.
                    lab = None if split == "test" else label
                    note = f"hidden label: {label}" if split == "test" else ""
                    self.plan.add(self.item(rel, split, lab, "ok", "normal", n, width, note), job)
                    self.rows[split].append((vid, lab))
                    k += 1

    def bad(self, case: Case) -> None:
        label, motion = next(self.labels)
        vid = next(self.ids)
        n, width, split = case.frame_count(self.cfg), JESTER_WIDTHS[0], case.split
        rel, job = self.folder(vid, motion, n, width)
        listed_label = UNKNOWN_LABEL[DS] if case.kind == "unknown_label" else label
        if split is not None:
            self.rows[split].append((vid, listed_label))

        def run() -> None:
            if case.kind == "missing_file":
                return
            if n == 0:
                (self.root / rel).mkdir(parents=True, exist_ok=True)
                return
            job()
            if case.kind == "corrupt_jpeg":
                _truncate_middle_frame(self.root / rel, n)

        # No label where the dataset gives none: unknown label, or a folder in no CSV (then the note has it).
        item_label = label if case.kind != "unknown_label" and split is not None else None
        note = case.note_for(self.cfg, UNKNOWN_LABEL[DS])
        if split is None:
            note += f"; hidden label: {label}"
        frames = n if case.expect in ("ok", "unlisted") else None
        self.plan.add(self.item(rel, split, item_label, case.expect, case.kind, frames, width, note), run)

    def write_lists(self) -> None:
        labels = "".join(f"{c}\n" for c, _ in self.classes)
        (self.root / "jester-v1-labels.csv").write_text(labels, encoding="utf-8")
        for split in JESTER_SPLITS:
            lines = [f"{vid}\n" if split == "test" else f"{vid};{lab}\n" for vid, lab in self.rows[split]]
            (self.root / f"jester-v1-{split}.csv").write_text("".join(lines), encoding="utf-8")


def generate_jester(out: Path, cfg: SynthConfig, overwrite: bool) -> SynthReport:
    """Write synthetic Jester under ``out`` (see :func:`preprocess.synth.generate`)."""
    files = [JESTER_FRAMES_DIR] + [f"jester-v1-{s}.csv" for s in ("labels", *JESTER_SPLITS)]
    root = prepare_root(out, files, overwrite)
    gen = _Jester(root, cfg)
    gen.normal()
    if cfg.bad_inputs:
        for case in cases_for(DS):
            gen.bad(case)
    gen.write_lists()
    items = gen.plan.run(cfg.workers)
    return SynthReport(DS, root, tuple(c for c, _ in gen.classes), tuple(items))
