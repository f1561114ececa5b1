"""Synthetic Kinetics-600, Jester and UCF-101 datasets in their real on-disk layouts, messy inputs included.

No real dataset can be downloaded here, so every dataset adapter is tested on data made by :func:`generate`.
Each dataset is written exactly as it ships (directory layout, file names, CSV / list formats, containers and
codecs), with classes that can be told apart only by motion and its direction (see
:mod:`preprocess.synth.motion`): a model succeeds only if the pipeline keeps the motion and the frame order.
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

Modules: :mod:`~preprocess.synth.config` (config, report, class tables), :mod:`~preprocess.synth.cases` (the
one table of bad inputs every layout draws from), :mod:`~preprocess.synth.ffmpeg` (encoding and decoding with
the ffmpeg binary), :mod:`~preprocess.synth.containers` (byte surgery on MP4 and AVI files),
:mod:`~preprocess.synth.plan` (items, parallel writing jobs, file-level bad inputs),
:mod:`~preprocess.synth.motion` (the frame renderer) and one module per layout
(:mod:`~preprocess.synth.kinetics600`, :mod:`~preprocess.synth.jester`, :mod:`~preprocess.synth.ucf101`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from preprocess.synth.config import CLASSES, DATASETS, EXPECTS, UNKNOWN_LABEL, SynthConfig, SynthItem, SynthReport
from preprocess.synth.ffmpeg import CODEC_NAMES, count_decoded_frames, require_ffmpeg
from preprocess.synth.jester import JESTER_FPS, JESTER_FRAMES_DIR, JESTER_SPLITS, generate_jester
from preprocess.synth.kinetics600 import KINETICS_CSV_HEADER, KINETICS_SPLITS, generate_kinetics
from preprocess.synth.ucf101 import UCF_LIST_DIR, UCF_VIDEO_DIR, generate_ucf, ucf_group, ucf_test_groups

_LAYOUTS: dict[str, Callable[[Path, SynthConfig, bool], SynthReport]] = {
    "kinetics600": generate_kinetics,
    "jester": generate_jester,
    "ucf101": generate_ucf,
}

DEFAULT_CONFIG = SynthConfig()


def generate(dataset: str, out: Path, cfg: SynthConfig = DEFAULT_CONFIG, *, overwrite: bool = False) -> SynthReport:
    """Write synthetic ``dataset`` ("kinetics600", "jester" or "ucf101") in its real layout under ``out``.

    ``out`` becomes the dataset root (created if needed). Raises FileExistsError when ``out`` already holds
    the dataset's top-level entries, unless ``overwrite`` (which deletes only those entries). Returns the
    report of everything written; nothing but the dataset itself is written under ``out``.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    require_ffmpeg()
    make = _LAYOUTS[dataset]
    return make(Path(out), cfg, overwrite)


__all__ = [
    "CLASSES",
    "CODEC_NAMES",
    "DATASETS",
    "DEFAULT_CONFIG",
    "EXPECTS",
    "JESTER_FPS",
    "JESTER_FRAMES_DIR",
    "JESTER_SPLITS",
    "KINETICS_CSV_HEADER",
    "KINETICS_SPLITS",
    "UCF_LIST_DIR",
    "UCF_VIDEO_DIR",
    "UNKNOWN_LABEL",
    "SynthConfig",
    "SynthItem",
    "SynthReport",
    "count_decoded_frames",
    "generate",
    "ucf_group",
    "ucf_test_groups",
]
