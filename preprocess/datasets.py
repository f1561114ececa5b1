"""Dataset adapters: read each dataset's real on-disk layout and lists into one uniform listing.

An adapter never decodes anything. It turns CSVs / split lists and the files on disk into:

* ``items``: videos (or Jester frame folders) to decode, each with its label and the splits it is in;
* ``problems``: rows that go straight to the manifest: listed but missing on disk, unknown labels,
  malformed list lines, and files on disk that no list names.

Layouts (relative to ``--src``):

* kinetics600: ``{train,val,test}/<label>/<youtube_id>_<start:06d>_<end:06d>.<ext>`` and
  ``kinetics-600_{train,val,test}.csv`` (``label,youtube_id,time_start,time_end,split``; test has no label).
* jester: ``20bn-jester-v1/<id>/00001.jpg…``, ``jester-v1-labels.csv`` (one label per line),
  ``jester-v1-{train,validation}.csv`` (``id;label``) and ``jester-v1-test.csv`` (``id``).
* ucf101: ``UCF-101/<Class>/v_<Class>_g<gg>_c<cc>.avi``, ``ucfTrainTestlist/classInd.txt``,
  ``trainlist0{1,2,3}.txt`` (``Class/v_x.avi <index>``) and ``testlist0{1,2,3}.txt`` (``Class/v_x.avi``).
"""

from __future__ import annotations

import csv
import os
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shards.datasets import dataset_spec
from shards.format import safe_key

UCF_VIDEOS = "UCF-101"
VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv", ".3gp", ".mpg", ".mpeg", ".ogv", ".wmv")


@dataclass(frozen=True)
class VideoItem:
    """One video (or frame folder) to decode. ``source`` is a POSIX path relative to the dataset root."""

    source: str
    label: str | None
    label_index: int
    splits: tuple[str, ...]

    @property
    def key(self) -> str:
        return safe_key(self.source)

    @property
    def shard_set(self) -> str:
        return shard_set_name(self.splits)


@dataclass(frozen=True)
class Problem:
    """A manifest row decided before decoding: ``status`` is failed, missing or unlisted."""

    source: str
    label: str | None
    splits: tuple[str, ...]
    status: str
    reason: str


@dataclass(frozen=True)
class Listing:
    dataset: str
    kind: str  # "video" or "frames"
    classes: tuple[str, ...]
    splits: tuple[str, ...]
    items: tuple[VideoItem, ...]
    problems: tuple[Problem, ...]


def shard_set_name(splits: Iterable[str]) -> str:
    return "+".join(sorted(set(splits)))


@dataclass(frozen=True)
class Adapter:
    name: str
    kind: str
    all_splits: tuple[str, ...]
    stride: int  # temporal stride applied at preprocessing (Jester 32 → 16: every second frame)
    lister: Callable[[Path, tuple[str, ...]], Listing] = field(repr=False)
    list_file: Callable[[Path, str], Path] = field(repr=False)

    def available_splits(self, root: str | os.PathLike) -> tuple[str, ...]:
        """The splits whose list file exists under ``root`` (the default when no split is asked for)."""
        return tuple(s for s in self.all_splits if self.list_file(Path(root), s).is_file())

    def list(self, root: str | os.PathLike, splits: Iterable[str] | None = None) -> Listing:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: dataset root not found")
        wanted = tuple(splits) if splits else self.available_splits(root)
        if not wanted:
            raise FileNotFoundError(f"{root}: no {self.name} split list found "
                                    f"(expected e.g. {self.list_file(root, self.all_splits[0]).name})")
        unknown = [s for s in wanted if s not in self.all_splits]
        if unknown:
            raise ValueError(f"{self.name}: unknown split(s) {unknown}; valid: {list(self.all_splits)}")
        # Membership is read from every list present, so a video's shard set (the splits it is in) does not
        # depend on which splits this run asked for; only items and problems of wanted splits are kept.
        full = self.lister(root, wanted)
        keep = set(wanted)
        items = tuple(i for i in full.items if keep & set(i.splits))
        problems = tuple(p for p in full.problems if p.status == "unlisted" or keep & set(p.splits))
        return Listing(full.dataset, full.kind, full.classes, wanted, items, problems)


ADAPTERS: dict[str, Adapter] = {}


def register_adapter(name: str):
    """Register the lister of dataset ``name``; kind, splits, list files and stride come from its
    :class:`shards.datasets.DatasetSpec`."""
    spec = dataset_spec(name)

    def deco(fn):
        ADAPTERS[name] = Adapter(name, spec.kind, spec.splits, spec.stored_stride, fn,
                                 lambda root, split: root / spec.list_file(split))
        return fn

    return deco


def get_adapter(name: str) -> Adapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid: {sorted(ADAPTERS)}") from None


# --------------------------------------------------------------------------------------------------
# helpers


def _norm(path: str) -> str:
    """Case- and unicode-insensitive form of a relative path, for a tolerant second lookup."""
    return unicodedata.normalize("NFC", path).casefold()


class _DiskIndex:
    """Every file (or leaf folder) below some top directories, looked up exactly or tolerantly."""

    def __init__(self, root: Path, tops: Iterable[str], *, folders: bool = False):
        self.root = root
        self.paths: set[str] = set()
        for top in tops:
            base = root / top
            if not base.is_dir():
                continue
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames.sort()
                rel = Path(dirpath).relative_to(root).as_posix()
                if folders:
                    if dirpath != str(base) and not dirnames:
                        self.paths.add(rel)
                else:
                    self.paths.update(f"{rel}/{f}" for f in filenames)
        self.used: set[str] = set()
        self._tolerant: dict[str, str] = {}
        for p in sorted(self.paths):
            self._tolerant.setdefault(_norm(p), p)

    def find(self, rel: str) -> str | None:
        hit = rel if rel in self.paths else self._tolerant.get(_norm(rel))
        if hit is not None:
            self.used.add(hit)
        return hit

    def find_stem(self, rel_stem: str, exts: Iterable[str] = VIDEO_EXTS) -> str | None:
        for ext in exts:
            hit = self.find(rel_stem + ext)
            if hit is not None:
                return hit
        return None

    def unused(self) -> list[str]:
        return sorted(self.paths - self.used)


def _unlisted(index: _DiskIndex) -> list[Problem]:
    return [Problem(p, None, (), "unlisted", "on disk but in no split list") for p in index.unused()]


def _merge(entries: dict[str, dict], source: str, label: str | None, split: str) -> None:
    e = entries.setdefault(source, {"label": label, "splits": set()})
    e["splits"].add(split)
    if e["label"] is None:
        e["label"] = label


def _list_lines(lists: dict[str, Path], wanted: tuple[str, ...]) -> Iterator[tuple[str, Path, int, str]]:
    """``(split, list path, 1-based line number, line)`` for every non-blank line of each split's list file
    (``lists``: split -> path, read in that order, UTF-8). A missing list is skipped, or an error for a split in
    ``wanted``."""
    for split, path in lists.items():
        if not path.is_file():
            if split in wanted:
                raise FileNotFoundError(f"{path}: list for split {split!r} not found")
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                yield split, path, lineno, line


def _file_listed(entries: dict[str, dict], problems: list[Problem], disk: _DiskIndex, index: dict[str, int],
                 split: str, label: str | None, found: str | None, listed: str, *, classes_from: str,
                 missing_reason: str) -> None:
    """File one well-formed list entry of ``split``: merged into ``entries``, or a problem.

    ``found`` is what ``disk`` found for it (None: nothing), ``listed`` the path the list implies. A label not in
    ``index`` gives a "failed" problem (reason: ``unknown label ... (classes_from)``) and its file, if any, is
    not reported as unlisted; ``label`` None (a test list) is never unknown. Nothing on disk gives a "missing"
    problem at ``listed`` with ``missing_reason``."""
    if label is not None and label not in index:
        if found:
            disk.used.add(found)
        problems.append(Problem(found or listed, label, (split,), "failed",
                                f"unknown label {label!r} ({classes_from})"))
    elif found is None:
        problems.append(Problem(listed, label, (split,), "missing", missing_reason))
    else:
        _merge(entries, found, label, split)


def _items(entries: dict[str, dict], index: dict[str, int]) -> tuple[VideoItem, ...]:
    """The merged entries as items, sorted by source; an entry without a label gets label index -1."""
    return tuple(VideoItem(src, e["label"], index.get(e["label"], -1), tuple(sorted(e["splits"])))
                 for src, e in sorted(entries.items()))


# --------------------------------------------------------------------------------------------------
# Kinetics-600


def _k600_classes(root: Path) -> tuple[str, ...]:
    path = root / K600.classes_file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: needed for the class list (labels are taken from the train CSV)")
    with path.open(newline="", encoding="utf-8") as f:
        return tuple(sorted({row["label"].strip() for row in csv.DictReader(f) if row.get("label")}))


K600 = dataset_spec("kinetics600")


@register_adapter("kinetics600")
def _list_kinetics(root: Path, splits: tuple[str, ...]) -> Listing:
    classes = _k600_classes(root)
    index = {c: i for i, c in enumerate(classes)}
    classes_from = f"not among the {len(classes)} train classes"
    disk = _DiskIndex(root, K600.splits)
    entries: dict[str, dict] = {}
    problems: list[Problem] = []
    for split in K600.splits:
        path = root / K600.list_file(split)
        if not path.is_file():
            if split in splits and split != "test":
                raise FileNotFoundError(f"{path}: list for split {split!r} not found")
            continue
        with path.open(newline="", encoding="utf-8") as f:
            for lineno, row in enumerate(csv.DictReader(f), start=2):
                try:
                    yid = row["youtube_id"].strip()
                    start, end = int(float(row["time_start"])), int(float(row["time_end"]))
                except (KeyError, TypeError, ValueError, AttributeError):
                    problems.append(Problem(f"{path.name}:{lineno}", None, (split,), "failed",
                                            f"malformed CSV row: {row}"))
                    continue
                label = (row.get("label") or "").strip() or None
                stem = f"{yid}_{start:06d}_{end:06d}"
                rel_dir = f"{split}/{label}" if label else split
                found = disk.find_stem(f"{rel_dir}/{stem}")
                _file_listed(entries, problems, disk, index, split, label, found, f"{rel_dir}/{stem}.mp4",
                             classes_from=classes_from,
                             missing_reason=f"listed in {path.name} but no {stem}.* under {rel_dir}/")
    return Listing("kinetics600", "video", classes, splits, _items(entries, index), tuple(problems + _unlisted(disk)))


# --------------------------------------------------------------------------------------------------
# Jester

JESTER_FRAMES = "20bn-jester-v1"


JESTER = dataset_spec("jester")


@register_adapter("jester")
def _list_jester(root: Path, splits: tuple[str, ...]) -> Listing:
    labels_path = root / JESTER.classes_file
    if not labels_path.is_file():
        raise FileNotFoundError(f"{labels_path}: Jester label list not found")
    classes = tuple(ln.strip() for ln in labels_path.read_text(encoding="utf-8").splitlines() if ln.strip())
    index = {c: i for i, c in enumerate(classes)}
    disk = _DiskIndex(root, (JESTER_FRAMES,), folders=True)
    # An empty folder is a leaf too; _DiskIndex(folders=True) records leaves only, which is what we want.
    entries: dict[str, dict] = {}
    problems: list[Problem] = []
    lists = {split: root / JESTER.list_file(split) for split in JESTER.splits}
    for split, path, lineno, line in _list_lines(lists, splits):
        vid, _, label = (p.strip() for p in line.partition(";"))
        label = label or None
        source = f"{JESTER_FRAMES}/{vid}"
        if split != "test" and label is None:
            problems.append(Problem(f"{path.name}:{lineno}", None, (split,), "failed",
                                    f"malformed line (expected id;label): {line!r}"))
            continue
        _file_listed(entries, problems, disk, index, split, label, disk.find(source), source,
                     classes_from=f"not in {labels_path.name}",
                     missing_reason=f"listed in {path.name} but the frame folder is missing")
    return Listing("jester", "frames", classes, splits, _items(entries, index), tuple(problems + _unlisted(disk)))


# --------------------------------------------------------------------------------------------------
# UCF-101


UCF = dataset_spec("ucf101")


@register_adapter("ucf101")
def _list_ucf(root: Path, splits: tuple[str, ...]) -> Listing:
    class_ind = root / UCF.classes_file
    if not class_ind.is_file():
        raise FileNotFoundError(f"{class_ind}: UCF-101 class index not found")
    classes: list[str] = []
    for lineno, line in enumerate(class_ind.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        num, _, name = line.strip().partition(" ")
        if not num.isdigit() or int(num) != len(classes) + 1 or not name.strip():
            raise ValueError(f"{class_ind}:{lineno}: expected '<{len(classes) + 1}> <Class>', got {line!r}")
        classes.append(name.strip())
    index = {c: i for i, c in enumerate(classes)}
    disk = _DiskIndex(root, (UCF_VIDEOS,))
    entries: dict[str, dict] = {}
    problems: list[Problem] = []
    split_lists = {split: root / UCF.list_file(split) for split in UCF.splits}
    for split, path, lineno, line in _list_lines(split_lists, splits):
        line = line.strip()
        rel, given = line, None
        head, _, tail = line.rpartition(" ")
        if split[:-1] == "train" and head and tail.isdigit():
            rel, given = head, int(tail)
        cls = rel.split("/", 1)[0] if "/" in rel else None
        source = f"{UCF_VIDEOS}/{rel}"
        found = disk.find(source)
        if cls is None:
            problems.append(Problem(f"{path.name}:{lineno}", None, (split,), "failed",
                                    f"malformed line (expected Class/file.avi): {line!r}"))
        elif cls in index and given is not None and given != index[cls] + 1:
            problems.append(Problem(found or source, cls, (split,), "failed",
                                    f"class index {given} in {path.name} disagrees with classInd.txt "
                                    f"({cls} = {index[cls] + 1})"))
        else:
            _file_listed(entries, problems, disk, index, split, cls, found, source,
                         classes_from="not in classInd.txt",
                         missing_reason=f"listed in {path.name} but not on disk")
    return Listing("ucf101", "video", tuple(classes), splits, _items(entries, index),
                   tuple(problems + _unlisted(disk)))
