"""Pre-flight checks: everything about a command's input that the driver can check is checked here, before Ray
starts, so a mistake costs a fraction of a second and one line instead of Ray's start-up and tracebacks.

Each ``check_*`` function is pure apart from reading the inputs it checks (dataset.json, manifests, checkpoint
headers, directory listings; local paths and object-store URIs alike, through :mod:`shards.storage`) and
raises :class:`training.errors.InputError` with one line naming the option, the value and the fix. The CLI
prints it as ``e3d <cmd>: error: ...`` and exits 2.

What is checked, by command:

* ``train``/``finetune``: counts (workers, loader workers, failures, checkpoint cadence); the model name (with
  close matches) and its builder options; the global batch against the worker count; ``--shards`` is a
  preprocessed root of ``--dataset`` (``dataset.json``) with both splits present and non-empty; ``--pretrained``
  is a readable checkpoint whose architecture fits ``--model`` (its format is resolved here, so workers never
  guess); ``--out`` is not a file, not someone else's directory, and holds no run unless ``--resume``.
* ``eval``: the checkpoint is ours, readable, trained on the classes of ``--shards`` and on the same dataset;
  the split exists; counts.
* ``sweep``: trial names stay under ``--out``; every trial's settings, model and batch; the shards;
  ``--out`` is empty or a sweep.
* ``preprocess``: ``--src`` exists, numeric options are in range.
"""

from __future__ import annotations

import difflib
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow.fs as pafs

from shards import storage
from training.checkpoint_header import checkpoint_kind, peek_checkpoint
from training.errors import InputError
from training.models.catalog import catalog, model_names

# What may sit in a training run directory (Ray's files, the loop's outputs and its local checkpoints/ folder, a
# sweep trial's marker).
RUN_ENTRIES = ("checkpoint_", "checkpoints", "epoch", "tensorboard", "profile", "metrics.json", "predictions_",
               "checkpoint.pt", "trial.json", "checkpoint_manager_snapshot.json", "ray-eval", "eval_")
SWEEP_ENTRIES = ("trials", "groups", "sweep.json", "results.parquet", "report.md", "accuracy_vs_mflops.png")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


# -- small value checks ---------------------------------------------------------------------------------------


def check_counts(values: Mapping[str, float | int | None], *, minimum: Mapping[str, float]) -> None:
    """Each named option (``--flag`` spelling) must be at least its minimum when given (None: not given)."""
    for flag, value in values.items():
        if value is None:
            continue
        low = minimum[flag]
        if not (isinstance(value, (int, float)) and math.isfinite(value)) or value < low:
            raise InputError(f"{flag} must be >= {low:g}, got {value}")


def check_model(name: str, model_kwargs: Mapping[str, Any] | None = None) -> None:
    """``name`` is registered (else the closest names and every valid one) and takes ``model_kwargs``."""
    entry = catalog().get(name)
    if entry is None:
        names = model_names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise InputError(f"unknown model {name!r}; {hint}valid names ({len(names)}, `e3d models` has the table): "
                         f"{', '.join(names)}") from None
    free = entry.free
    bad = sorted(set(model_kwargs or {}) - set(free) - {"dropout"})
    if bad:
        raise InputError(f"model {name!r} takes no option(s) {bad}; its options: {sorted(free) or 'none'}")


def check_batch(batch_size: int, workers: int, *, flag: str = "--workers", batch_flag: str = "--batch-size") -> None:
    """The global batch splits evenly over the workers (every rank does the same work per step)."""
    if batch_size % workers:
        lower = batch_size - batch_size % workers
        raise InputError(f"{batch_flag} {batch_size} does not split evenly over {flag} {workers}; use a multiple "
                         f"of {workers} (e.g. {lower or workers} or {lower + workers})")


def check_trial_name(name: str) -> None:
    """A sweep trial's name becomes ``out/trials/<name>``: it must be one plain path segment."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name or name.startswith("."):
        raise InputError(f"trial name {name!r} is not a plain folder name (no '/', '\\', leading '.', or '..'): "
                         "trial directories stay under --out")


# -- directories ---------------------------------------------------------------------------------------------


def _listing(uri: str) -> list[str] | None:
    """Names directly under ``uri``; None when it does not exist; raises InputError when it is a file."""
    fs, path = storage.resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        # object stores have no directories: a prefix with objects under it is one
        if storage.is_remote(uri):
            found = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
            return [i.base_name for i in found] or None
        return None
    if info.type == pafs.FileType.File:
        raise InputError(f"{uri} is a file, not a directory")
    return [i.base_name for i in fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))]


def check_out_dir(uri: str, *, known: Sequence[str], what: str, flag: str = "--out") -> list[str]:
    """``uri`` is absent, empty, or holds only what this command writes (``known`` name prefixes; hidden
    files are Ray's and ours). Returns its entries."""
    names = _listing(uri) or []
    foreign = sorted(n for n in names if not n.startswith(".") and not n.startswith(tuple(known)))
    if foreign:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise InputError(f"{flag} {uri} holds files that are not {what} ({shown}); choose an empty or new directory")
    return names


def check_run_out(uri: str, *, resume: bool) -> None:
    """The run directory of ``e3d train``/``finetune``: not foreign; holding a run only with ``--resume``."""
    names = check_out_dir(uri, known=RUN_ENTRIES, what="a training run's")
    has_run = any(n.startswith(("checkpoint_", "epoch")) or n == "metrics.json" for n in names)
    if has_run and not resume:
        raise InputError(f"--out {uri} already holds a run; pass --resume to continue it or choose another --out")


# -- shards ---------------------------------------------------------------------------------------------------


def dataset_info(shards: str, *, flag: str = "--shards") -> dict[str, Any]:
    """``dataset.json`` of a preprocessed root, with the reason spelled out when ``shards`` is not one."""
    names = _listing(shards)
    if names is None:
        raise InputError(f"{flag} {shards} does not exist")
    if not names:
        raise InputError(f"{flag} {shards} is empty: not a preprocessed dataset (run `e3d preprocess DATASET --src "
                         f"SRC --out {shards}` first)")
    if "dataset.json" not in names:
        hint = " (it looks like a training run directory)" if any(n.startswith(RUN_ENTRIES) for n in names) else ""
        raise InputError(f"{flag} {shards} holds no dataset.json: not a preprocessed dataset root{hint}")
    fs, base = storage.resolve(shards)
    try:
        info = json.loads(storage.read_bytes(fs, storage.join(base, "dataset.json")))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{flag} {shards}: dataset.json is not valid JSON ({_one_line(exc)})") from None
    if not isinstance(info, dict) or not isinstance(info.get("classes"), list) or not info["classes"]:
        raise InputError(f"{flag} {shards}: dataset.json lists no classes")
    return info


def info_dataset(info: Mapping[str, Any]) -> str | None:
    """The dataset name ``dataset.json`` records (``config.dataset``; older roots: ``dataset``)."""
    cfg = info.get("config")
    return (cfg.get("dataset") if isinstance(cfg, dict) else None) or info.get("dataset")


def available_splits(shards: str) -> list[str]:
    fs, base = storage.resolve(shards)
    found = fs.get_file_info(pafs.FileSelector(storage.join(base, "manifest"), allow_not_found=True))
    return sorted(i.base_name for i in found if i.type == pafs.FileType.Directory and i.base_name != "unlisted")


def check_split(shards: str, split: str, *, flag: str) -> int:
    """``split`` has a shard manifest with at least one sample. Returns the sample count."""
    import pyarrow.parquet as pq

    fs, base = storage.resolve(shards)
    path = storage.join(base, "manifest", split, "shards.parquet")
    if not storage.exists(fs, path):
        have = available_splits(shards)
        raise InputError(f"no split {split!r} in {shards} (it has: {', '.join(have) or 'none'}); pass {flag} "
                         "with one of those, or preprocess that split")
    try:
        with fs.open_input_file(path) as f:
            table = pq.read_table(f)
    except Exception as exc:  # a truncated or foreign file: anything pyarrow raises means "unreadable"
        raise InputError(f"{path}: unreadable shard manifest ({_one_line(exc)})") from None
    samples = sum(int(n) for n in table.column("samples").to_pylist()) if "samples" in table.column_names else 0
    if table.num_rows == 0 or samples == 0:
        raise InputError(f"split {split!r} of {shards} holds no videos (every video failed or is missing? see "
                         f"manifest/{split}/videos.parquet)")
    return samples


def check_shards(shards: str, dataset: str | None, splits: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``shards`` is a preprocessed root of ``dataset`` holding each ``(split, flag)``. Returns dataset.json."""
    info = dataset_info(shards)
    recorded = info_dataset(info)
    if dataset is not None and recorded and recorded != dataset:
        raise InputError(f"--dataset {dataset}, but {shards} holds {recorded} shards (dataset.json); pass "
                         f"--dataset {recorded} or the {dataset} shards")
    for split, flag in splits:
        check_split(shards, split, flag=flag)
    return info


# -- checkpoints ----------------------------------------------------------------------------------------------


def read_checkpoint_bytes(path: str, *, flag: str) -> tuple[bytes, Any | None]:
    """The bytes of a ``.pt``/``.pth`` (local or URI) and what they say without torch
    (:func:`training.checkpoint_header.peek_checkpoint`: None when only ``torch.load`` can tell). A missing,
    empty or certainly foreign file is an InputError here, in a fraction of a second."""
    fs, key = storage.resolve(path)
    info = fs.get_file_info(key)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"{flag} {path} does not exist")
    if info.type != pafs.FileType.File:
        raise InputError(f"{flag} {path} is a directory, not a checkpoint file (the file inside is checkpoint.pt)")
    if not info.size:
        raise InputError(f"{flag} {path} is empty (0 bytes): not a checkpoint")
    data = storage.read_bytes(fs, key)
    return data, peek_checkpoint(data, f"{flag} {path}")


def load_checkpoint_bytes(data: bytes, path: str, *, flag: str) -> Any:
    """``torch.load(weights_only=True)`` of a checkpoint's bytes; every failure is an InputError."""
    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (UnpicklingError, RuntimeError, EOFError...) for a bad file
        raise InputError(f"{flag} {path}: not a readable PyTorch checkpoint (truncated or not made by torch.save: "
                         f"{_one_line(exc)})") from None


def read_checkpoint(path: str, *, flag: str) -> Any:
    """Load a ``.pt``/``.pth`` (local or URI) with ``weights_only=True``; every failure is an InputError."""
    data, _ = read_checkpoint_bytes(path, flag=flag)
    return load_checkpoint_bytes(data, path, flag=flag)


def _check_pretrained_header(raw: Any, path: str, model: str, fmt: str) -> str:
    """The checks a checkpoint's metadata answers (format, model name, released ``arch``); ``raw`` is the peeked
    or the loaded object. Returns the format found."""
    found = checkpoint_kind(raw)
    if fmt != "auto" and fmt != found:
        raise InputError(f"--pretrained {path} is {'an e3d' if found == 'ours' else 'a released'} checkpoint, not "
                         f"--pretrained-format {fmt}; drop the flag or pass --pretrained-format {found}")
    if found == "ours":
        saved = raw.get("model") or {}
        if not isinstance(saved, Mapping) or saved.get("name") != model:
            name = saved.get("name") if isinstance(saved, Mapping) else None
            raise InputError(f"--pretrained {path} holds {name!r}, not --model {model}")
        return found
    arch = raw.get("arch") if isinstance(raw, Mapping) and "state_dict" in raw else None
    expected = catalog()[model].upstream_arch if model in catalog() else None
    if arch is not None and expected is not None and arch != expected:
        raise InputError(f"--pretrained {path}: checkpoint architecture {arch!r} does not match model {model!r}, "
                         f"which expects upstream arch {expected!r}; pick the registry name of the checkpoint's "
                         "architecture")
    return found


def check_pretrained(path: str, model: str, model_kwargs: Mapping[str, Any], fmt: str) -> str:
    """``path`` is a checkpoint whose backbone fits ``model`` (the head is replaced, so classes may differ).
    Returns the format (``ours`` or ``released``), resolved when ``fmt`` is ``auto``. The metadata is checked
    before torch is imported; the tensors' shapes after."""
    data, header = read_checkpoint_bytes(path, flag="--pretrained")
    if header is not None:
        _check_pretrained_header(header, path, model, fmt)

    import torch

    from training.checkpoints import check_state_dict, load_released_checkpoint
    from training.models import get_model

    raw = load_checkpoint_bytes(data, path, flag="--pretrained")
    found = _check_pretrained_header(raw, path, model, fmt)
    plain = {k: v for k, v in model_kwargs.items() if k != "dropout"}
    try:
        if found == "ours":
            saved = raw.get("model") or {}
            with torch.device("meta"):  # shapes only: no memory, no initialisation
                ref = get_model(model, num_classes=int(saved.get("num_classes", 1)), **plain)
            check_state_dict(ref, raw.get("state_dict") or {}, f"--model {model} {plain or ''}".strip())
        else:
            del raw
            load_released_checkpoint(path, model, **plain)
    except InputError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"--pretrained {path}: {_one_line(exc).removeprefix(f'{path}: ')}") from None
    return found


# -- per command ----------------------------------------------------------------------------------------------


def check_train(cfg, *, workers: int, resume: bool, max_failures: int = 1, num_cpus: int | None = None):
    """All driver-side checks of ``e3d train``/``finetune`` for a :class:`training.config.TrainConfig`.
    Returns the config with ``pretrained_format`` resolved (workers then never guess a file's format)."""
    check_counts({"--workers": workers, "--max-failures": max_failures, "--num-cpus": num_cpus,
                           "--loader-workers": cfg.loader_workers, "--checkpoint-every": cfg.checkpoint_every_steps,
                           "--max-steps-per-epoch": cfg.max_steps_per_epoch, "--profile": cfg.profile_steps},
                 minimum={"--workers": 1, "--max-failures": 0, "--num-cpus": 1, "--loader-workers": 0,
                          "--checkpoint-every": 0, "--max-steps-per-epoch": 1, "--profile": 0})
    if cfg.dropout is not None and not 0 <= cfg.dropout < 1:
        raise InputError(f"--dropout must be in [0, 1), got {cfg.dropout}")
    check_batch(cfg.batch_size, workers)
    if cfg.batch_size // workers < 2:
        raise InputError(f"--batch-size {cfg.batch_size} over --workers {workers} leaves {cfg.batch_size // workers} "
                         "clip per worker; BatchNorm needs at least 2 in training: use --batch-size "
                         f"{2 * workers} or more")
    train_split, val_split = cfg.splits
    check_shards(cfg.shards, cfg.dataset, [(train_split, "--train-split"), (val_split, "--val-split")])
    check_run_out(cfg.out, resume=resume)
    check_model(cfg.model, cfg.model_kwargs)
    if cfg.pretrained:
        fmt = check_pretrained(cfg.pretrained, cfg.model, cfg.model_kwargs, cfg.pretrained_format)
        cfg = cfg.replace(pretrained_format=fmt)
    return cfg


def check_eval(checkpoint: str, shards: str, *, split: str | None, workers: int, batch_size: int,
               num_cpus: int | None = None) -> str:
    """Driver-side checks of ``e3d eval``. Returns the split that will be evaluated. Everything but the file's
    tensors is checked on its metadata before torch is imported; then the file is loaded as the workers will."""
    check_counts({"--workers": workers, "--batch-size": batch_size, "--num-cpus": num_cpus},
                 minimum={"--workers": 1, "--batch-size": 1, "--num-cpus": 1})
    data, header = read_checkpoint_bytes(checkpoint, flag="--checkpoint")
    if header is None:  # a file only torch can read: check what it loads to
        return _check_eval_checkpoint(load_checkpoint_bytes(data, checkpoint, flag="--checkpoint"), checkpoint,
                                      shards, split)
    # The checks read only the metadata, which the header holds as torch.load would return it (tensors aside);
    # the file is then loaded once, as the workers will, so an unloadable one is still refused here.
    split = _check_eval_checkpoint(header, checkpoint, shards, split)
    load_checkpoint_bytes(data, checkpoint, flag="--checkpoint")
    return split


def _check_eval_checkpoint(raw: Any, checkpoint: str, shards: str, split: str | None) -> str:
    from training.config import TrainConfig

    if checkpoint_kind(raw) != "ours":
        raise InputError(f"--checkpoint {checkpoint} is not an e3d checkpoint (a released .pth? fine-tune or "
                         "train from it with --pretrained, then evaluate that run's checkpoint)")
    extra = raw.get("extra") or {}
    if not isinstance(extra, Mapping) or "train_config" not in extra:
        raise InputError(f"--checkpoint {checkpoint} holds no training config (not written by e3d train)")
    try:
        tcfg = TrainConfig.from_dict(extra["train_config"])
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise InputError(f"--checkpoint {checkpoint}: unusable training config ({_one_line(exc)})") from None
    split = split or tcfg.splits[1]
    info = check_shards(shards, None, [(split, "--split")])
    recorded = info_dataset(info)
    if recorded and recorded != tcfg.dataset:
        raise InputError(f"--checkpoint was trained on {tcfg.dataset}, --shards {shards} holds {recorded}")
    classes = list(info["classes"])
    if extra.get("classes") and list(extra["classes"]) != classes:
        saved = list(extra["classes"])
        pairs = zip(saved, classes, strict=False)  # same length here, else the count is the difference
        what = (f"{len(saved)} classes vs {len(classes)}" if len(saved) != len(classes)
                else f"first difference: {next(f'{a!r} vs {b!r}' for a, b in pairs if a != b)}")
        raise InputError(f"--checkpoint was trained on other classes than --shards {shards} has ({what})")
    return split


def check_sweep(cfg) -> None:
    """Driver-side checks of ``e3d sweep`` for a :class:`pipeline.sweep.SweepConfig`."""
    import dataclasses

    from training.config import DEFAULT_SPLITS, TrainConfig

    check_counts({"--workers-per-trial": cfg.workers_per_trial, "--max-group": cfg.max_group,
                           "--max-concurrent": cfg.max_concurrent, "--num-cpus": cfg.num_cpus},
                 minimum={"--workers-per-trial": 1, "--max-group": 1, "--max-concurrent": 1, "--num-cpus": 1})
    if not cfg.trials:
        raise InputError("the grid selects no trial (check --models against `e3d models`)")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(cfg.base) - fields)
    if bad:
        close = {b: difflib.get_close_matches(b, fields, n=1) for b in bad}
        hints = ", ".join(f"{b} (did you mean {c[0]}?)" if c else b for b, c in close.items())
        raise InputError(f"unknown training setting(s) in --set/base: {hints}")
    for t in cfg.trials:
        check_trial_name(t.name)
        over = {**cfg.base, **t.overrides}
        wrong = sorted(set(over) - fields)
        if wrong:
            raise InputError(f"trial {t.name}: unknown training setting(s) {wrong}")
        try:
            check_model(t.model, t.model_kwargs)
        except InputError as exc:
            raise InputError(f"trial {t.name}: {exc}") from None
        batch = over.get("batch_size", TrainConfig.batch_size)
        check_batch(int(batch), cfg.workers_per_trial, flag="--workers-per-trial", batch_flag="batch_size")
    base = cfg.base
    train_split, val_split = base.get("train_split") or DEFAULT_SPLITS[cfg.dataset][0], \
        base.get("val_split") or DEFAULT_SPLITS[cfg.dataset][1]
    check_shards(cfg.shards, cfg.dataset, [(train_split, "--set train_split=..."),
                                           (val_split, "--set val_split=...")])
    check_out_dir(cfg.out, known=SWEEP_ENTRIES, what="a sweep's")


def check_preprocess(*, src: str, timeout: float, max_failed: float, quality: int, shard_size: int | None,
                     num_cpus: int | None, max_frames: int | None = None, task_memory: int | None = None) -> None:
    """Driver-side checks of ``e3d preprocess``."""
    check_counts({"--quality": quality, "--shard-size": shard_size, "--num-cpus": num_cpus,
                  "--max-frames": max_frames, "--task-memory": task_memory},
                 minimum={"--quality": 1, "--shard-size": 1, "--num-cpus": 1, "--max-frames": 1, "--task-memory": 1})
    if not (math.isfinite(timeout) and timeout > 0):
        raise InputError(f"--timeout must be > 0 seconds, got {timeout}")
    if quality > 100:
        raise InputError(f"--quality must be 1..100, got {quality}")
    if not (math.isfinite(max_failed) and 0 <= max_failed <= 1):
        raise InputError(f"--max-failed is a fraction in [0, 1], got {max_failed}")
    if _listing(src) is None:
        raise InputError(f"--src {src} does not exist")
