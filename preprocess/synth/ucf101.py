"""Synthetic UCF-101: ``UCF-101/<Class>/v_<Class>_g<gg>_c<cc>.avi`` and
``ucfTrainTestlist/{classInd,trainlist0k,testlist0k}.txt`` with CRLF line ends like the real lists."""

from __future__ import annotations

import functools
import itertools
import re
from fractions import Fraction
from pathlib import Path

from preprocess.synth.cases import FILE_KINDS, Case, cases_for
from preprocess.synth.config import UNKNOWN_LABEL, SynthConfig, SynthItem, SynthReport, frames_for
from preprocess.synth.ffmpeg import AUDIO_CODEC_NAMES, Video, write_audio_only
from preprocess.synth.plan import Plan, add_file_case, add_video, classes_of, prepare_root, seed

DS = "ucf101"
UCF_VIDEO_DIR = "UCF-101"
UCF_LIST_DIR = "ucfTrainTestlist"
UCF_SIZE = (320, 240)
UCF_FPS = 25
UCF_NEWLINE = "\r\n"  # the real ucfTrainTestlist files have Windows line ends
UCF_GROUPS = 25

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


class _Ucf:
    """The state of one generation: the plan, the listed files and the clip counter of the extra files."""

    def __init__(self, root: Path, cfg: SynthConfig) -> None:
        self.root, self.cfg = root, cfg
        self.classes = classes_of(DS, cfg)
        self.plan = Plan(root)
        self.listed: list[tuple[str, str]] = []  # (relpath under UCF-101/, class name as listed)
        self.counter = itertools.count()

    def video(self, rel: str, motion: str, frames: int | None = None) -> Video:
        n = frames if frames is not None else frames_for(self.cfg.seconds, Fraction(UCF_FPS))
        return Video(motion, *UCF_SIZE, Fraction(UCF_FPS), n, "xvid", seed(self.cfg, DS, rel))

    def normal(self) -> None:
        per_class = self.cfg.videos_per_class
        for ci, (cls, motion) in enumerate(self.classes):
            for j in range(per_class):
                # _UCF_GROUP_ORDER cycles through the test blocks of splits 1, 2, 3 and the always-train groups
                # 22-25. From three videos per class on, every class starts at a split-1 group, so it has test
                # videos in each split; with fewer, the start moves with the class, so that each split still
                # has some test videos.
                slot = j + (4 * ci if per_class >= 3 else ci)
                g = _UCF_GROUP_ORDER[slot % UCF_GROUPS]
                c = slot // UCF_GROUPS + 1
                name = f"{cls}/v_{cls}_g{g:02d}_c{c:02d}.avi"
                rel = f"{UCF_VIDEO_DIR}/{name}"
                add_video(self.plan, rel, None, cls, "ok", "normal", self.video(rel, motion))
                self.listed.append((name, cls))

    def extra_name(self, cls: str, case: Case) -> str:
        k = next(self.counter)
        g = _UCF_GROUP_ORDER[k % UCF_GROUPS]
        c = 10 + k  # clip numbers above the normal ones, so names never clash
        stem = case.name.format(c=cls, c3=cls[:3], c36=cls[3:6]) if case.name else f"v_{cls}"
        return f"{cls}/{stem}_g{g:02d}_c{c:02d}{case.suffix}.avi"

    def bad(self, case: Case) -> None:
        cfg, plan, kind = self.cfg, self.plan, case.kind
        unk = UNKNOWN_LABEL[DS]
        note = case.note_for(cfg, unk)
        if kind == "unknown_label":
            cls, motion, label = unk, self.classes[0][1], None
        else:
            cls, motion = self.classes[case.pick % len(self.classes)]
            label = cls
        name = self.extra_name(cls, case)
        rel = f"{UCF_VIDEO_DIR}/{name}"
        if kind != "unlisted_file":
            self.listed.append((name, cls))
        v = self.video(rel, motion, case.video_kw(cfg).get("frames"))
        if kind in FILE_KINDS:
            add_file_case(plan, cfg, DS, rel, None, cls, kind, v, note)
        elif kind == "audio_only":
            item = SynthItem(rel, None, cls, case.expect, kind, None, codec=AUDIO_CODEC_NAMES[case.audio], note=note)
            plan.add(item, functools.partial(write_audio_only, self.root / rel, case.audio, min(cfg.seconds, 1.0)))
        elif kind == "missing_file":
            plan.add(SynthItem(rel, None, cls, case.expect, kind, None, note=note))
        else:
            add_video(plan, rel, None, label, case.expect, kind, v, note)

    def write_lists(self) -> None:
        index = {cls: i + 1 for i, (cls, _) in enumerate(self.classes)}
        unknown_index = len(self.classes) + 1
        lists = self.root / UCF_LIST_DIR
        lists.mkdir(parents=True, exist_ok=True)
        nl = UCF_NEWLINE
        class_ind = "".join(f"{i} {c}{nl}" for c, i in index.items())
        (lists / "classInd.txt").write_text(class_ind, encoding="utf-8", newline="")
        ordered = sorted(self.listed)
        for k in (1, 2, 3):
            test = ucf_test_groups(k)
            train = [f"{n} {index.get(c, unknown_index)}{nl}" for n, c in ordered if ucf_group(n) not in test]
            test_lines = [f"{n}{nl}" for n, c in ordered if ucf_group(n) in test]
            (lists / f"trainlist0{k}.txt").write_text("".join(train), encoding="utf-8", newline="")
            (lists / f"testlist0{k}.txt").write_text("".join(test_lines), encoding="utf-8", newline="")


def generate_ucf(out: Path, cfg: SynthConfig, overwrite: bool) -> SynthReport:
    """Write synthetic UCF-101 under ``out`` (see :func:`preprocess.synth.generate`)."""
    root = prepare_root(out, (UCF_VIDEO_DIR, UCF_LIST_DIR), overwrite)
    gen = _Ucf(root, cfg)
    gen.normal()
    if cfg.bad_inputs:
        for case in cases_for(DS):
            gen.bad(case)
    gen.write_lists()
    items = gen.plan.run(cfg.workers)
    return SynthReport(DS, root, tuple(c for c, _ in gen.classes), tuple(items))
