"""``e3d predict``: classify new videos (files or Jester-style frame folders) with a trained model.

No train/test skew: a video is decoded by the preprocessing's own function
(:func:`preprocess.shard_task.decode_source`: same decoder, rotation, short side, stride and JPEG round trip
at the shard quality) and scored by the evaluation's windows, crop and averaging (:mod:`training.infer`).
The preprocessing settings come from the shards the model was trained on (``dataset.json``: ``--shards``,
else the checkpoint's own training shards when readable), else the preprocessing defaults.

Many videos run as Ray tasks (``--workers N``); each worker process loads the model once. Results are
written to ``--out`` atomically every few seconds; a rerun skips the videos already there. A file that
cannot be decoded gets a row with ``status: failed`` and the reason, never an exception.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any

from shards.datasets import EVAL_WINDOWS

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts")
FRAME_EXTS = (".jpg", ".jpeg")
FORMATS = ("table", "json", "csv")
WINDOWS = ("auto", *EVAL_WINDOWS)
#: Released checkpoints name their dataset ``kinetics``/``jester``; ours use the shard dataset names.
RELEASED_TO_DATASET = {"kinetics": "kinetics600", "jester": "jester"}


@dataclass(frozen=True)
class DecodeSettings:
    """How source videos are turned into stored frames (the fields of ``PreprocessConfig`` that matter)."""

    short_side: int | None = 128
    quality: int = 90
    decoder: str = "av"
    stride: int = 1
    native_fps: float | None = None
    timeout_s: float = 600.0
    source: str = "defaults"  # where the settings came from (a dataset.json path or "defaults")


@dataclass(frozen=True)
class PredictConfig:
    """One ``e3d predict`` run; built at the CLI edge.

    ``checkpoint``: ours (``checkpoint.pt``) or, with ``model``, a released ``.pth``. ``classes``: a file
    with one class name per line or a ``dataset.json`` / shard root (default: the checkpoint's). ``dataset``
    decides the protocol and stride for released checkpoints (default: from their class count).
    ``windows``: ``auto`` (per dataset), ``all`` or ``center``. ``workers``: 0/1 run in this process, more
    run Ray tasks. ``batch_size``: clips per forward pass.
    """

    checkpoint: str
    inputs: tuple[str, ...]
    model: str | None = None
    classes: str | None = None
    dataset: str | None = None
    shards: str | None = None
    top: int = 5
    windows: str = "auto"
    out: str | None = None
    workers: int = 1
    gpu: bool = False
    batch_size: int = 16
    address: str | None = None
    num_cpus: int | None = None
    retry_failed: bool = False
    with_scores: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.top < 1:
            raise ValueError(f"--top must be >= 1, got {self.top}")
        if self.windows not in WINDOWS:
            raise ValueError(f"--windows must be one of {WINDOWS}, got {self.windows!r}")
        if self.workers < 0 or self.batch_size < 1:
            raise ValueError("--workers must be >= 0 and --batch-size >= 1")
        if not self.inputs:
            raise ValueError("no video or folder given")


@dataclass
class LoadedModel:
    """A model ready for inference with everything needed to feed it uint8 clips and name its outputs."""

    model: Any  # torch.nn.Module, eval mode
    name: str
    dataset: str | None
    clip_len: int
    size: int
    normalization: Any  # training.data.InputConvention
    classes: list[str]
    channels_last: bool = False
    amp: bool = False
    train_shards: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# -- model loading -------------------------------------------------------------------------------------------


def read_class_names(path: str) -> list[str]:
    """Class names from a text file (one per line, blank lines ignored), a ``dataset.json`` or a shard root."""
    from shards.manifest import read_dataset_info

    if os.path.isdir(path) or path.endswith("dataset.json"):
        root = os.path.dirname(path) if path.endswith("dataset.json") else path
        classes = read_dataset_info(root).get("classes")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ValueError(f"{path}: dataset.json has no list of class names")
        return list(classes)
    with open(path, encoding="utf-8") as f:
        names = [ln.strip() for ln in f if ln.strip()]
    if not names:
        raise ValueError(f"{path}: no class names in the file")
    return names


def load_model(checkpoint: str, *, model: str | None = None, classes: str | None = None,
               dataset: str | None = None, device: Any = "cpu") -> LoadedModel:
    """Load our checkpoint, or with ``model`` a released ``.pth``, for inference on uint8 clips.

    Our checkpoints carry their training config (dataset, clip length, crop size, normalisation preset,
    class names); the normalisation is chosen exactly as :func:`training.evaluate.evaluate_checkpoint` does.
    Released checkpoints get the input convention the importer attaches, 16 x 112 clips, and class names from
    ``classes`` (else ``class_<i>``).
    """
    import torch

    from training.checkpoints import load_checkpoint, load_released_checkpoint
    from training.config import TrainConfig
    from training.evaluate import stored_convention

    device = torch.device(device)
    if model is not None:
        net, info = load_released_checkpoint(checkpoint, model, dataset=_released_name(dataset),
                                             map_location=device)
        norm = info.input_convention
        ds = dataset or RELEASED_TO_DATASET.get(info.dataset or "")
        names = read_class_names(classes) if classes else [f"class_{i}" for i in range(info.num_classes)]
        loaded = LoadedModel(net.eval(), model, ds, 16, 112, norm, names,
                             meta={"format": "released", "arch": info.arch, "epoch": info.epoch})
    else:
        net, ckpt = load_checkpoint(checkpoint, map_location=device)
        extra = ckpt.get("extra") or {}
        name = net.config.name
        if "train_config" in extra:
            tcfg = TrainConfig.from_dict(extra["train_config"])
            norm = stored_convention(net, ckpt)  # exactly what evaluate_checkpoint normalises with
            names = list(extra.get("classes") or [])
            loaded = LoadedModel(net.eval(), name, tcfg.dataset, tcfg.clip_len, tcfg.size, norm, names,
                                 channels_last=tcfg.uses_channels_last(device.type), amp=tcfg.amp,
                                 train_shards=tcfg.shards,
                                 meta={"format": "e3d", "epoch": ckpt.get("epoch")})
        else:  # saved by save_checkpoint without a training config: the model's own input convention
            norm = net.input_convention
            loaded = LoadedModel(net.eval(), name, dataset, 16, 112, norm, [],
                                 meta={"format": "e3d", "epoch": ckpt.get("epoch")})
        if classes:
            loaded.classes = read_class_names(classes)
        if not loaded.classes:
            loaded.classes = [f"class_{i}" for i in range(net.config.num_classes)]
    n_out = _num_outputs(loaded.model)
    if n_out is not None and n_out != len(loaded.classes):
        raise ValueError(f"{checkpoint}: the model has {n_out} outputs but {len(loaded.classes)} class names "
                         "were given")
    if loaded.channels_last:
        loaded.model = loaded.model.to(memory_format=torch.channels_last_3d)
    return loaded


def _released_name(dataset: str | None) -> str | None:
    if dataset is None:
        return None
    inverse = {v: k for k, v in RELEASED_TO_DATASET.items()}
    return inverse.get(dataset, dataset)


def _num_outputs(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    return int(cfg.num_classes) if cfg is not None else None


# -- decode settings ---------------------------------------------------------------------------------------


def _native_fps(dataset: str | None) -> float | None:
    """The frame rate of a frame-folder dataset (DatasetSpec); None for video datasets or an unknown name."""
    from shards.datasets import DATASET_SPECS

    spec = DATASET_SPECS.get(dataset or "")
    return spec.native_fps if spec is not None else None


def decode_settings(dataset: str | None, shards: str | None = None, train_shards: str | None = None
                    ) -> DecodeSettings:
    """The preprocessing settings new videos are decoded with: the ``dataset.json`` of ``shards``, else of
    the checkpoint's training shards when readable, else the preprocessing defaults for ``dataset``."""
    from preprocess.config import PreprocessConfig
    from preprocess.datasets import ADAPTERS
    from shards.manifest import read_dataset_info

    for root, required in ((shards, True), (train_shards, False)):
        if not root:
            continue
        try:
            info = read_dataset_info(root)
        except (FileNotFoundError, OSError, ValueError):
            if required:
                raise
            continue
        c = info.get("config") or {}
        ds = info.get("dataset") or dataset
        stride = info.get("stride", 1)
        short = c.get("short_side", 128)
        quality = c.get("quality", 90)
        if not (isinstance(stride, int) and stride >= 1 and isinstance(quality, int) and 1 <= quality <= 100
                and (short is None or (isinstance(short, int) and short >= 16))):
            raise ValueError(f"{root}/dataset.json: implausible preprocessing settings (stride {stride!r}, "
                             f"short_side {short!r}, quality {quality!r})")
        return DecodeSettings(short_side=short, quality=quality, decoder=c.get("decoder", "av"), stride=stride,
                              native_fps=_native_fps(ds), source=f"{root}/dataset.json")
    defaults = PreprocessConfig(dataset=dataset or "", src="", out="")
    adapter = ADAPTERS.get(dataset or "")
    return DecodeSettings(short_side=defaults.short_side, quality=defaults.quality, decoder=defaults.decoder,
                          stride=adapter.stride if adapter else 1, native_fps=_native_fps(dataset),
                          timeout_s=defaults.timeout_s)


# -- inputs ------------------------------------------------------------------------------------------------


def _has_frames(path: str) -> bool:
    try:
        return any(n.lower().endswith(FRAME_EXTS) for n in os.listdir(path))
    except OSError:
        return False


def expand_inputs(inputs: Iterable[str]) -> list[tuple[str, str]]:
    """``(path, kind)`` for every video: a named file is a video; a folder holding JPEGs is one frame folder;
    another folder is searched recursively for video files (by extension) and frame folders. Sorted, unique.
    A path that does not exist is kept (it gets a ``failed`` row)."""
    out: dict[str, str] = {}
    for item in inputs:
        path = os.path.abspath(item)
        if os.path.isdir(path):
            if _has_frames(path):
                out[path] = "frames"
                continue
            for root, dirs, files in os.walk(path):
                dirs.sort()
                if root != path and _has_frames(root):
                    out[root] = "frames"
                    dirs[:] = []
                    continue
                for name in files:
                    if name.lower().endswith(VIDEO_EXTS):
                        out[os.path.join(root, name)] = "video"
        else:
            out[path] = "video"
    return sorted(out.items())


# -- the per-video work -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to build its :class:`Predictor` (a small picklable value)."""

    checkpoint: str
    model: str | None
    classes: str | None
    dataset: str | None
    shards: str | None
    windows: str
    top: int
    batch_size: int
    gpu: bool
    with_scores: bool


class Predictor:
    """Loads the model once; :meth:`predict` turns one path into one result row (never raises)."""

    def __init__(self, spec: WorkerSpec):
        import torch

        from training.data import ClipNormalizer, LoaderConfig
        from training.data.config import WINDOW_MODES, evaluation_mode

        self.spec = spec
        self.device = torch.device("cuda", torch.cuda.current_device()) if spec.gpu else torch.device("cpu")
        self.loaded = load_model(spec.checkpoint, model=spec.model, classes=spec.classes, dataset=spec.dataset,
                                 device=self.device)
        lm = self.loaded
        self.settings = decode_settings(lm.dataset, spec.shards, lm.train_shards)
        ds = lm.dataset or "kinetics600"
        # --windows auto: the dataset's protocol (DatasetSpec.eval_windows), as `e3d eval` and a run's final
        # evaluation score it: Jester's middle window, every non-overlapping window elsewhere
        mode = evaluation_mode(ds) if spec.windows == "auto" else WINDOW_MODES[spec.windows]
        self.cfg = LoaderConfig.for_dataset(ds, mode, clip_len=lm.clip_len, size=lm.size)
        self.normalizer = ClipNormalizer(lm.normalization, channels_last=lm.channels_last).to(self.device)

    def predict(self, path: str, kind: str) -> dict[str, Any]:
        """One row: ``path``, ``status`` (ok/failed), ``reason``, ``top`` ([{class, index, prob}]), ``clips``,
        ``frames`` (stored frames after the stride) and, when asked, ``scores`` (all class probabilities)."""
        from preprocess.decode import DecodeError
        from preprocess.shard_task import decode_source
        from training.infer import score_clips, top_k, video_clips

        row: dict[str, Any] = {"path": path, "status": "failed", "reason": "", "top": [], "clips": 0, "frames": 0}
        s = self.settings
        try:
            v = decode_source(path, kind=kind, short_side=s.short_side, quality=s.quality, stride=s.stride,
                              decoder=s.decoder, native_fps=s.native_fps, timeout_s=s.timeout_s)
            clips = video_clips(v.jpegs, self.cfg, s.stride)
            scores = score_clips(self.loaded.model, self.normalizer, clips, self.device,
                                 batch_size=self.spec.batch_size, amp=self.loaded.amp)
        except (DecodeError, ValueError) as exc:
            row["reason"] = str(exc)
            return row
        except Exception as exc:  # noqa: BLE001 - one odd file must not stop thousands of others
            row["reason"] = f"unexpected error: {type(exc).__name__}: {exc}"
            return row
        names = self.loaded.classes
        row.update(status="ok", clips=len(clips), frames=len(v.jpegs),
                   top=[{"class": names[c], "index": c, "prob": float(scores[c])}
                        for c in top_k(scores, min(self.spec.top, len(scores)))])
        if v.warnings:
            row["reason"] = "; ".join(v.warnings)
        if self.spec.with_scores:
            row["scores"] = [float(p) for p in scores]
        return row


@lru_cache(maxsize=2)
def _cached_predictor(spec: WorkerSpec) -> Predictor:
    # A Ray worker process runs many tasks: the model is loaded once per process, not once per video.
    return Predictor(spec)


def _predict_remote(spec: WorkerSpec, path: str, kind: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # one CPU per task: intra-op threads would oversubscribe the node
    return _cached_predictor(spec).predict(path, kind)


# -- output ------------------------------------------------------------------------------------------------


def _csv_row(r: dict[str, Any]) -> dict[str, Any]:
    top = r.get("top") or []
    return {"path": r["path"], "status": r["status"], "reason": r.get("reason", ""), "clips": r.get("clips", 0),
            "frames": r.get("frames", 0), "top_classes": "|".join(t["class"] for t in top),
            "top_probs": "|".join(f"{t['prob']:.6f}" for t in top)}


CSV_FIELDS = ("path", "status", "reason", "clips", "frames", "top_classes", "top_probs")


def render(rows: Sequence[dict[str, Any]], fmt: str) -> str:
    """Rows as an aligned table, JSON lines or CSV."""
    if fmt == "json":
        return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow(_csv_row(r))
        return buf.getvalue()
    if fmt != "table":
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    lines = []
    for r in rows:
        if r["status"] == "ok":
            preds = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
            lines.append(f"{r['path']}  [{r['clips']} clip(s)]  {preds}")
        else:
            lines.append(f"{r['path']}  FAILED: {r['reason']}")
    return "\n".join(lines) + ("\n" if lines else "")


def read_done(out: str) -> dict[str, dict[str, Any]]:
    """Rows already in ``out`` (JSON lines, or CSV for ``.csv``), by path; a missing file gives {}.

    Unreadable lines (a file edited by hand) are ignored, so those videos run again."""
    if not os.path.exists(out):
        return {}
    done: dict[str, dict[str, Any]] = {}
    with open(out, encoding="utf-8", newline="") as f:
        if out.endswith(".csv"):
            for rec in csv.DictReader(f):
                if rec.get("path") and rec.get("status") in ("ok", "failed"):
                    classes = [c for c in (rec.get("top_classes") or "").split("|") if c]
                    probs = [float(p) for p in (rec.get("top_probs") or "").split("|") if p]
                    rec["top"] = [{"class": c, "prob": p} for c, p in zip(classes, probs, strict=False)]
                    rec["clips"] = int(rec.get("clips") or 0)
                    rec["frames"] = int(rec.get("frames") or 0)
                    done[rec["path"]] = rec
            return done
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("path"), str) and rec.get("status") in ("ok", "failed"):
                done[rec["path"]] = rec
    return done


def write_rows(out: str, rows: Sequence[dict[str, Any]]) -> None:
    """Write all rows to ``out`` atomically (temporary file, then rename)."""
    text = render(rows, "csv" if out.endswith(".csv") else "json")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)


# -- the run -----------------------------------------------------------------------------------------------


@dataclass
class PredictResult:
    rows: list[dict[str, Any]]  # every video of this run's inputs, in input order (skipped ones included)
    ran: int  # videos processed in this run
    skipped: int  # videos taken from an earlier --out
    failed: int
    settings: DecodeSettings | None = None

    def summary(self) -> str:
        return (f"{len(self.rows)} video(s): {self.ran} predicted now, {self.skipped} already in the output, "
                f"{self.failed} failed")


def _spec(cfg: PredictConfig) -> WorkerSpec:
    return WorkerSpec(checkpoint=os.path.abspath(cfg.checkpoint) if os.path.exists(cfg.checkpoint) else cfg.checkpoint,
                      model=cfg.model, classes=cfg.classes, dataset=cfg.dataset, shards=cfg.shards,
                      windows=cfg.windows, top=cfg.top, batch_size=cfg.batch_size, gpu=cfg.gpu,
                      with_scores=cfg.with_scores)


def _run_local(spec: WorkerSpec, todo: Sequence[tuple[str, str]], predictor: Predictor
               ) -> Iterator[dict[str, Any]]:
    for path, kind in todo:
        yield predictor.predict(path, kind)


def _run_ray(spec: WorkerSpec, todo: Sequence[tuple[str, str]], workers: int, gpu: bool
             ) -> Iterator[dict[str, Any]]:
    import ray

    remote = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=2)(_predict_remote)
    queue = list(todo)
    pending: dict[Any, str] = {}
    spec_ref = ray.put(spec)
    while queue or pending:
        while queue and len(pending) < 2 * workers:  # bounded in flight: steady progress, little memory
            path, kind = queue.pop(0)
            pending[remote.remote(spec_ref, path, kind)] = path
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            path = pending.pop(ref)
            try:
                yield ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a crashed worker fails this video, not the run
                yield {"path": path, "status": "failed", "reason": f"worker failed: {type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''}", "top": [], "clips": 0, "frames": 0}


def run_predict(cfg: PredictConfig, flush_s: float = 2.0) -> PredictResult:
    """Predict every video of ``cfg.inputs``; resume from and write to ``cfg.out`` when given.

    The model is loaded here first (a bad checkpoint fails fast, before any Ray task starts)."""
    items = expand_inputs(cfg.inputs)
    done = read_done(cfg.out) if cfg.out else {}
    if cfg.retry_failed:
        done = {p: r for p, r in done.items() if r["status"] == "ok"}
    todo = [(p, k) for p, k in items if p not in done]
    spec = _spec(cfg)
    # Loaded here first: a bad checkpoint, class file or settings fail before any task starts. With Ray
    # workers the driver (perhaps a CPU-only head node) loads it on the CPU; the GPUs are the tasks'.
    predictor = Predictor(replace(spec, gpu=spec.gpu and cfg.workers <= 1))
    results: dict[str, dict[str, Any]] = dict(done)
    if len(todo) > 0 and cfg.workers > 1:
        from preprocess.ray_tasks import init_ray

        started = init_ray(cfg.address, cfg.num_cpus)
        stream = _run_ray(spec, todo, cfg.workers, cfg.gpu)
    else:
        started = False
        stream = _run_local(spec, todo, predictor)
    bar = None
    if cfg.progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="video", desc="predict", dynamic_ncols=True)
    last = time.monotonic()
    n_failed = 0
    try:
        for row in stream:
            results[row["path"]] = row
            n_failed += row["status"] != "ok"
            if bar is not None:
                bar.update(1)
                bar.set_postfix(failed=n_failed)
            if cfg.out and time.monotonic() - last > flush_s:
                write_rows(cfg.out, _ordered(results, items))
                last = time.monotonic()
    finally:
        if bar is not None:
            bar.close()
        if cfg.out:
            write_rows(cfg.out, _ordered(results, items))
        if started:
            import ray

            ray.shutdown()
    rows = [results[p] for p, _ in items if p in results]
    return PredictResult(rows=rows, ran=len(todo), skipped=len(items) - len(todo),
                         failed=sum(r["status"] != "ok" for r in rows), settings=predictor.settings)


def _ordered(results: dict[str, dict[str, Any]], items: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """This run's videos in input order, then rows of earlier runs for videos not among today's inputs."""
    names = {p for p, _ in items}
    return [results[p] for p, _ in items if p in results] + [r for p, r in results.items() if p not in names]


def settings_dict(s: DecodeSettings) -> dict[str, Any]:
    return asdict(s)
