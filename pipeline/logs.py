"""What a person sees on the console: the project's own lines, not Ray's internal chatter.

At the default verbosity (``e3d <cmd>`` without ``-v``), :func:`configure`

* drops Ray Train's internal lines that Ray forwards from its actors (the placement-group cleaner's "Failed to
  query Ray Train Controller actor state" that appears when the dashboard is off, the controller's resource and
  worker-group lines and transient retries, ``TrainingReport(...)`` dumps, "Checkpoint successfully created",
  process-group set-up), keeping warnings and the workers' exception lines (their traceback bodies are
  dropped: the driver raises the same error);
* prints the training workers' own output (the loop's epoch lines, final evaluation) without Ray's
  ``(RayTrainWorker pid=...)`` prefix;
* turns rank 0's tagged progress lines (:mod:`training.progress`) into a bar on the terminal, or drops them
  when stderr is not one;
* keeps Ray's driver-side INFO messages ("Started a local Ray instance") off the console and sets
  ``ray.train``'s own log level to WARNING (``E3D_VERBOSE``, read by ``training.ray_train``);
* turns off Ray Train's print patch (``RAY_TRAIN_ENABLE_PRINT_PATCH=0``), which otherwise sends every line a
  worker prints both to stdout and through a logger: each progress line arrived twice.

``-v`` keeps all of Ray's output (the print patch stays off: it only doubles lines).

The filter hooks Ray's driver-side log dispatcher (``ray._private.ray_logging``), which ray==2.60.0 exposes;
:func:`filter_lines` is the pure part and is what the tests exercise.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from training.progress import PROGRESS_TAG, parse_progress, render_bar

#: actors whose lines are all internal
NOISE_ACTORS = ("PlacementGroupCleaner",)
#: Ray Train's controller: only its failure decisions are kept (it logs them at INFO, so they show with -v);
#: its transient retries ("Failed to send resource request" with a GetTimeoutError traceback on a loaded
#: machine) are not the user's concern, and a run that fails raises its error on the driver
CONTROLLER_ACTORS = ("TrainController",)
CONTROLLER_KEEP = re.compile(r"\[FailurePolicy\] (RETRY|RAISE)")
#: internal lines from any actor (training workers included)
NOISE = re.compile("|".join((
    r"Failed to query Ray Train Controller actor state",
    r"Reporting training result \d+: TrainingReport\(",
    r"Checkpoint successfully created at",
    r"Setting up process group for",
    r"Requesting resources: ",
    r"Attempting to start training worker group",
    r"Started training worker group of size",
    r"^- \(ip=[^)]*\) world_rank=",
    r"core_worker\.cc:\d+: Actor with class name: '\w+' and ID: '\w+' has constructor arguments in the object store",
    r"Token authentication is enabled for this Ray cluster",
    r"Generated new authentication token and saved to",
)))
WORKER_ACTORS = ("RayTrainWorker",)
#: the body of a worker's Python traceback: the driver raises the same error (one line for bad input), and the
#: whole traceback stays in Ray's log files and on the console with -v
TRACEBACK_BODY = re.compile(r"^(Error in training function:|Traceback \(most recent call last\):|\s|\S*\^{3,}|"
                            r"During handling of the above exception|The above exception was the direct cause)")

_lock = threading.Lock()
_state: dict[str, Any] = {"bar": False, "installed": False}


def filter_lines(data: dict[str, Any]) -> tuple[list[str], list[str], list[Any]]:
    """Split one batch of forwarded lines (Ray's dict: ``lines``, ``actor_name``, ``is_err``, ``pid``...)
    into ``(keep with Ray's prefix, print plainly, progress updates)``; everything else is dropped."""
    actor = str(data.get("actor_name") or data.get("task_name") or "")
    keep, plain, progress = [], [], []
    for line in data.get("lines") or []:
        if line.startswith(PROGRESS_TAG):
            p = parse_progress(line)
            if p is not None:
                progress.append(p)
            continue
        if actor.startswith(NOISE_ACTORS) or NOISE.search(line):
            continue
        if actor.startswith(CONTROLLER_ACTORS):
            if CONTROLLER_KEEP.search(line):
                keep.append(line)
            continue
        if actor.startswith(WORKER_ACTORS) and not data.get("is_err"):
            plain.append(line)  # the loop's own prints (rank 0 only)
        elif actor.startswith(WORKER_ACTORS) and TRACEBACK_BODY.match(line):
            continue
        else:
            keep.append(line)
    return keep, plain, progress


def _clear_bar() -> None:
    if _state["bar"]:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()
        _state["bar"] = False


def _emit(original: Callable[[dict[str, Any]], None], data: dict[str, Any]) -> None:
    keep, plain, progress = filter_lines(data)
    with _lock:
        if keep or plain:
            _clear_bar()
        for line in plain:
            print(line, flush=True)
        if keep:
            original({**data, "lines": keep})
        if progress and sys.stderr.isatty():
            sys.stderr.write("\r" + render_bar(progress[-1]) + "\x1b[K")
            sys.stderr.flush()
            _state["bar"] = True


class _DropNoise(logging.Filter):
    """On the driver's ``ray`` logger handlers: INFO and below, and known internal warnings, are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and not NOISE.search(record.getMessage())


def configure(verbose: int = 0, *, environ=os.environ) -> None:
    """Set up the console for one ``e3d`` command: environment only (cheap; Ray is not imported). Commands
    that start Ray call :func:`quiet_ray` once their input is checked."""
    environ["E3D_VERBOSE"] = str(verbose)
    # Workers of an embedded local Ray inherit these; training.ray_train passes them to remote workers.
    environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if not verbose and sys.stderr.isatty():
        environ.setdefault("E3D_PROGRESS", "tag")


def quiet_ray() -> None:
    """Install the filter of forwarded worker lines and of the driver's ``ray`` logger (default verbosity
    only; imports Ray). Idempotent."""
    if os.environ.get("E3D_VERBOSE", "0") != "0" or _state["installed"]:
        return
    try:
        import ray  # noqa: F401  (sets up the "ray" logger and its handler)
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # another Ray: keep its output as it is
        return
    for handler in logging.getLogger("ray").handlers:
        handler.addFilter(_DropNoise())
    original = dispatcher.emit
    dispatcher.emit = lambda data: _emit(original, data)
    _state["installed"] = True


def lines_kept(batches: Iterable[dict[str, Any]]) -> list[str]:
    """Every line a user would see from ``batches`` (both kinds, in order): for tests and the line count."""
    out: list[str] = []
    for data in batches:
        keep, plain, _ = filter_lines(data)
        out.extend(keep + plain)
    return out


# metrics.json's eval_windows (DatasetSpec.eval_windows) in the summary's words
_WINDOWS = {"all": "every window", "center": "middle window"}


def _num(value: Any, fmt: str = ".3f") -> str | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return format(v, fmt) if v == v and abs(v) != float("inf") else None


def train_summary(model: str, dataset: str, run: Any, metrics_path: str, *, final_eval: bool = True) -> str:
    """The closing lines of ``e3d train``/``finetune``, printed once by the driver, each figure with the
    checkpoint (weights) it came from. ``run``: :func:`training.ray_train.run_training`'s
    :class:`training.result.RunResult` (or the same fields as a dict)."""
    m = dict(run) if isinstance(run, dict) else {
        **dict(getattr(run, "metrics", {}) or {}),
        **{k: getattr(run, k) for k in ("epochs", "step", "checkpoint", "best_checkpoint", "predictions",
                                        "resumed_at_step") if getattr(run, k, None) is not None}}
    resumed = f" (resumed at step {m['resumed_at_step']})" if m.get("resumed_at_step") is not None else ""
    lines = [f"{model} on {dataset}: {m.get('epochs')} epochs, {m.get('step')} steps{resumed}"]
    v1, v5, c1 = (_num(m.get(f"eval_{k}")) for k in ("video_top1", "video_top5", "clip_top1"))
    if v1 is None:
        why = "no finite scores" if final_eval else "--no-final-eval"
        lines.append(f"  final evaluation: not evaluated ({why})")
    else:
        lines.append(f"  final evaluation on {m.get('eval_split', 'the validation split')} "
                     f"({m.get('eval_videos')} videos, {_WINDOWS.get(m.get('eval_windows'), 'every window')}): "
                     f"video top1 {v1} top5 {v5}, clip top1 {c1}"
                     + (f" [{m['eval_weights']}]" if m.get("eval_weights") else "")
                     + f" -- weights of the last checkpoint {m.get('checkpoint')}")
    best = _num(m.get("best_val_top1"))
    if best is None or float(best) < 0:
        lines.append("  best validation: not evaluated")
    else:
        at = f" at epoch {m['best_epoch']}" if m.get("best_epoch") is not None else ""
        lines.append(f"  best validation video top1 {best}{at} (one centre clip per video, during training) -- "
                     f"best checkpoint {m.get('best_checkpoint')}")
    if m.get("predictions"):
        lines.append(f"  predictions {m['predictions']}")
    lines.append(f"  metrics {metrics_path}")
    return "\n".join(lines)
