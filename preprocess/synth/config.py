"""Configuration, report types and class tables of the synthetic datasets (see :mod:`preprocess.synth`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from shards.datasets import DATASETS  # noqa: F401  (re-exported by preprocess.synth)

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

EXPECTS = ("ok", "failed", "missing", "unlisted")  # the values of SynthItem.expect


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
        """The motion (see :mod:`preprocess.synth.motion`) that defines class ``label``."""
        return dict(CLASSES[self.dataset])[label]


def frames_for(seconds: float, fps: Fraction) -> int:
    """Frames in ``seconds`` at ``fps`` (at least one)."""
    return max(1, round(seconds * fps))
