"""The ``e3d`` command line: the one place where configs are built from arguments.

Runs as the ``e3d`` console script, as ``python -m pipeline`` and as ``python pipeline/cli.py`` (the form
``ray submit <cluster.yaml> pipeline/cli.py preprocess kinetics600 ...`` uses on a cluster head). Arguments
never rely on shell globbing, because ``ray submit`` passes them unquoted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import TYPE_CHECKING

if __package__ in (None, ""):
    # Run as a plain script (``python pipeline/cli.py``): make the repository's packages importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.logs import configure as configure_logs  # noqa: E402  (light: no Ray, no torch)
from pipeline.logs import quiet_ray  # noqa: E402
from preprocess.config import PreprocessConfig as _Pre  # noqa: E402  (light modules: dataclasses only)
from shards.datasets import DATASETS, EVAL_WINDOWS  # noqa: E402  (a light module: dataclasses only)

if TYPE_CHECKING:
    from training.result import EvaluationResult

CACHE_HELP = ("local shard cache for --shards on object storage (e.g. an NVMe path, shared by the workers of a "
              "node; 100 GB cap (train: --cache-gb), least recently used shards evicted)")


def _splits(text: str | None) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip()) if text else ()


def _short_side(text: str) -> int | None:
    return None if text.lower() in ("none", "0", "native") else int(text)


def cmd_synth(args: argparse.Namespace) -> int:
    from preprocess.synth import SynthConfig, generate

    cfg = SynthConfig(num_classes=args.classes, videos_per_class=args.per_class, seconds=args.seconds,
                      seed=args.seed, bad_inputs=not args.no_bad)
    report = generate(args.dataset, args.out, cfg)
    kinds = {}
    for it in report.items:
        kinds[it.expect] = kinds.get(it.expect, 0) + 1
    print(f"{args.dataset}: {len(report.items)} entries under {report.root} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}); classes: {', '.join(report.classes)}")
    bad, attempted = kinds.get("failed", 0), kinds.get("ok", 0) + kinds.get("failed", 0)
    if bad and attempted:
        # the broken files are there on purpose; preprocessing's default tolerance (5 %) is for real datasets
        frac = bad / attempted
        flag = min(1.0, math.ceil((frac + 0.05) * 10) / 10)
        print(f"{bad} of {attempted} listed videos are broken on purpose ({frac:.1%} will fail): preprocess this "
              f"copy with --max-failed {flag:g} (the default 0.05 is for real datasets), or generate it with --no-bad")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from pipeline.checks import check_preprocess
    from preprocess.config import PreprocessConfig
    from preprocess.isolate import InfrastructureError
    from preprocess.run import preprocess
    from shards.lease import LeaseHeld

    check_preprocess(src=args.src, timeout=args.timeout, max_failed=args.max_failed, quality=args.quality,
                     shard_size=args.shard_size, num_cpus=args.num_cpus, max_frames=args.max_frames,
                     task_memory=args.task_memory)
    quiet_ray()
    cfg = PreprocessConfig(
        dataset=args.dataset, src=args.src, out=args.out, splits=_splits(args.splits), short_side=args.short_side,
        quality=args.quality, shard_size=args.shard_size, decoder=args.decoder, max_failed=args.max_failed,
        timeout_s=args.timeout, max_frames=args.max_frames, task_memory_mb=args.task_memory, address=args.address,
        num_cpus=args.num_cpus, progress=not args.no_progress, force_unlock=args.force_unlock,
    )
    try:
        summary = preprocess(cfg)
    except LeaseHeld as exc:
        print(f"e3d preprocess: error: {exc}", file=sys.stderr)
        return 2
    except InfrastructureError as exc:
        print(f"e3d preprocess: error: infrastructure failure, run stopped: {exc}\n"
              "  No video was marked failed for it; finished shards are kept. Fix the cause and rerun the same "
              "command to resume.", file=sys.stderr)
        return 3
    print(summary.format())
    return summary.exit_code


def cmd_verify(args: argparse.Namespace) -> int:
    from shards.manifest import verify

    result = verify(args.root, check_samples=not args.quick)
    for p in result.problems:
        print(f"MISMATCH {p}")
    walked = ("sizes and sha256 only; --quick walks no samples" if args.quick
              else f"{result.samples_checked} samples walked")
    print(f"verified {result.shards_checked} shards ({walked}): "
          f"{'OK' if result.ok else f'{len(result.problems)} problem(s)'}")
    return 0 if result.ok else 1


def cmd_index(args: argparse.Namespace) -> int:
    from shards.manifest import index_root

    result = index_root(args.root, force=args.force)
    for p in result.problems:
        print(f"PROBLEM {p}")
    print(f"indexed {result.written} shard(s), {result.present} already indexed"
          f"{f', {len(result.problems)} problem(s)' if result.problems else ''}")
    return 0 if not result.problems else 1


def cmd_models(args: argparse.Namespace) -> int:
    from training.flops import table8_report

    print(table8_report(markdown=args.markdown))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "models":
        from training.speed import main as bench_models

        return bench_models(args.rest)
    raise SystemExit(f"unknown benchmark {args.what!r}")


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipeline.checks import check_sweep
    from pipeline.sweep import SweepConfig, run_sweep, trials_from_args

    trials, base = trials_from_args(args.grid, _splits(args.models))
    base = {**base, **_model_kwargs(args.set), **({"cache_dir": args.cache_dir} if args.cache_dir else {})}
    cfg = SweepConfig(dataset=args.dataset, shards=args.shards, out=args.out, trials=tuple(trials), base=base,
                      workers_per_trial=args.workers_per_trial, max_concurrent=args.max_concurrent, use_gpu=args.gpu,
                      address=args.address, num_cpus=args.num_cpus, shared_decode=args.shared_decode,
                      max_group=args.max_group)
    check_sweep(cfg)
    quiet_ray()
    results = run_sweep(cfg)
    failed = [r.trial for r in results if r.status != "finished"]
    if failed:
        print(f"e3d sweep: {len(failed)} trial(s) did not finish: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import build_report

    md, png = build_report(args.root)
    print(f"wrote {md} and {png}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo  # it quiets Ray's logs once --workdir is checked

    return run_demo(args.workdir, fresh=args.fresh, train=not args.no_train, seed=args.seed)


def _model_kwargs(pairs: list[str] | None) -> dict:
    import json

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--model-arg needs KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _train_config(args: argparse.Namespace):
    from training.config import TrainConfig

    overrides = {name: getattr(args, name) for name in _train_flag_fields() if getattr(args, name) is not None}
    if args.model_arg:
        overrides["model_kwargs"] = _model_kwargs(args.model_arg)
    if args.command == "finetune" or args.finetune:
        pretrained = overrides.pop("pretrained", None)
        if not pretrained:
            raise ValueError("fine-tuning needs --pretrained CKPT")
        return TrainConfig.finetune_preset(args.dataset, args.shards, args.out, pretrained=pretrained, **overrides)
    return TrainConfig.for_dataset(args.dataset, args.shards, args.out, **overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.checks import check_train

    # checked before the heavy imports and before Ray starts: a mistake costs well under 2 s
    cfg = check_train(_train_config(args), workers=args.workers, resume=args.resume, max_failures=args.max_failures,
                      num_cpus=args.num_cpus)
    quiet_ray()
    from training.evaluate import NonFiniteEvalError
    from training.loop import NonFiniteLossError
    from training.ray_train import run_training

    try:
        m = run_training(cfg, workers=args.workers, max_failures=args.max_failures, address=args.address,
                         resume=args.resume, num_cpus=args.num_cpus, resume_if_exists=args.resume_if_exists,
                         overrides=tuple(args.override or ()))
    except (NonFiniteLossError, NonFiniteEvalError) as exc:
        print(f"e3d {args.command}: {exc}", file=sys.stderr)
        return 3
    from pipeline.logs import train_summary

    print(train_summary(cfg.model, cfg.dataset, m, f"{cfg.out}/metrics.json", final_eval=cfg.final_eval))
    return 0


def eval_summary(m: EvaluationResult) -> str:
    """The one-line summary of ``e3d eval``; an unlabelled split (a test split) reports no accuracy."""
    if m.video_top1 is None:
        scores = "no labels in this split: predictions only, no accuracy"
    else:
        scores = f"video top1 {m.video_top1:.4f} top5 {m.video_top5:.4f}, clip top1 {m.clip_top1:.4f}"
    return f"{m.split}: {m.videos} videos, {m.clips} clips: {scores}; predictions {m.predictions}"


def cmd_eval(args: argparse.Namespace) -> int:
    from pipeline.checks import check_eval

    split = check_eval(args.checkpoint, args.shards, split=args.split, workers=args.workers,
                       batch_size=args.batch_size, num_cpus=args.num_cpus)
    from training.data.config import WINDOW_MODES  # after the checks: these import torch (~1.5 s)
    from training.evaluate import NonFiniteEvalError
    from training.ray_train import run_evaluation

    if args.workers > 1:
        quiet_ray()
    try:
        m = run_evaluation(args.checkpoint, args.shards, out=args.out, workers=args.workers, split=split,
                           batch_size=args.batch_size, use_gpu=args.gpu, address=args.address,
                           num_cpus=args.num_cpus, cache_dir=args.cache_dir,
                           mode=None if args.windows == "auto" else WINDOW_MODES[args.windows])
    except NonFiniteEvalError as exc:
        print(f"e3d eval: error: {exc}", file=sys.stderr)
        return 3
    print(f"{eval_summary(m)} -- weights of {args.checkpoint}")
    return 0


# TrainConfig fields that are not generated flags: given another way (--dataset, --shards, --out, --model-arg,
# --finetune, which picks the preset) below.
_NOT_GENERATED = ("dataset", "shards", "out", "model_kwargs", "finetune")
# Flags whose name is not the field's (kept from before the flags were generated).
_FLAG_NAMES = {"checkpoint_every_steps": "--checkpoint-every", "profile_steps": "--profile", "use_gpu": "--gpu"}


def _train_flag_fields() -> list[str]:
    import dataclasses

    from training.config import TrainConfig

    return [f.name for f in dataclasses.fields(TrainConfig) if f.name not in _NOT_GENERATED]


def _comma_list(kind: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
    parse.__name__ = f"comma-separated {kind.__name__}s"
    return parse


_FLAG_TYPES = {"str": str, "int": int, "float": float, "tuple[int, ...]": _comma_list(int),
               "tuple[float, ...]": _comma_list(float)}


def _add_config_flags(s: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (name, type, choices, help and default stated once, in the dataclass).
    Every flag defaults to None, i.e. "not given", so the preset (paper or fine-tuning) decides; the help
    shows TrainConfig's own default. Booleans get --X / --no-X."""
    import dataclasses

    from training.config import TrainConfig

    docs = TrainConfig.field_docs()
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in _train_flag_fields():
        f = fields[name]
        kind = str(f.type).removesuffix(" | None")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f"{docs.get(name, '')} (default: {default})".replace("%", "%%")
        flag = _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        if kind == "bool":
            s.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            s.add_argument(flag, dest=name, type=_FLAG_TYPES[kind], choices=f.metadata.get("choices"), default=None,
                           help=text)


def _add_train_args(s: argparse.ArgumentParser, finetune: bool) -> None:
    s.add_argument("--dataset", choices=DATASETS, default="ucf101" if finetune else None, required=not finetune)
    s.add_argument("--shards", required=True, help="preprocessed dataset root")
    s.add_argument("--out", required=True, help="run directory (Ray storage_path/name); rerun with --resume")
    s.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="builder option, e.g. width_mult=0.5")
    s.add_argument("--workers", type=int, default=2, help="Ray Train workers (DDP ranks)")
    _add_config_flags(s)
    if not finetune:
        s.add_argument("--finetune", choices=("last-layer",), help="freeze all but a new head (needs --pretrained)")
    s.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (refused when there is none)")
    s.add_argument("--resume-if-exists", action="store_true",
                   help="for scripts: resume the run in --out when there is one, else start it")
    s.add_argument("--override", action="append", metavar="FIELD",
                   help="with --resume: let this setting (e.g. lr) differ from the saved run's (repeatable)")
    s.add_argument("--max-failures", type=int, default=1, help="worker failures survived (restart from checkpoint)")
    s.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    s.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded local Ray")
    s.set_defaults(func=cmd_train, finetune=finetune)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="e3d", description="Resource-efficient 3D CNNs: preprocessing and training")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate a synthetic dataset in its real on-disk layout")
    s.add_argument("dataset", choices=DATASETS)
    s.add_argument("--out", required=True)
    s.add_argument("--classes", type=int, default=4)
    s.add_argument("--per-class", type=int, default=6, help="videos per class and split")
    s.add_argument("--seconds", type=float, default=2.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-bad", action="store_true", help="leave out the malformed inputs")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("preprocess", help="decode a dataset into WebDataset JPEG shards with Ray")
    s.add_argument("dataset", choices=DATASETS)
    s.add_argument("--src", required=True, help="dataset root in its original layout")
    s.add_argument("--out", required=True, help="output root (local path or URI)")
    s.add_argument("--splits", default=None, help="comma-separated splits (default: all of the dataset's)")
    s.add_argument("--short-side", type=_short_side, default=_Pre.short_side,
                   help=f"pixels, or 'native' (default {_Pre.short_side})")
    s.add_argument("--quality", type=int, default=_Pre.quality,
                   help=f"JPEG quality of encoded frames (default {_Pre.quality})")
    s.add_argument("--shard-size", type=int, default=None, help="videos per shard (default per dataset)")
    s.add_argument("--decoder", choices=("av", "ffmpeg"), default=_Pre.decoder,
                   help="av: FFmpeg libraries in-process (fast); ffmpeg: the ffmpeg binary via ffmpeg-python")
    s.add_argument("--max-failed", type=float, default=_Pre.max_failed, help="tolerated fraction of failed videos")
    s.add_argument("--timeout", type=float, default=_Pre.timeout_s, help="hard wall-clock limit per video in seconds "
                   f"(a stuck decoder is killed; default {_Pre.timeout_s:g})")
    s.add_argument("--max-frames", type=int, default=_Pre.max_frames, help="stored frames per video at most; "
                   f"longer videos are cut (default {_Pre.max_frames} = {_Pre.max_frames / 30 / 3600:g} h at 30/s)")
    s.add_argument("--task-memory", type=int, default=_Pre.task_memory_mb,
                   help=f"MiB each shard task declares to Ray (default {_Pre.task_memory_mb})")
    s.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    s.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded local Ray")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--force-unlock", action="store_true",
                   help="take over a stale lock on --out left by a run on another host that is known to be dead")
    s.set_defaults(func=cmd_preprocess)

    s = sub.add_parser("verify", help="re-check every shard against the manifests")
    s.add_argument("root")
    s.add_argument("--quick", action="store_true", help="sizes and checksums only, no sample walk")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("index", help="write the per-shard index of shards made without one (ranged reads)")
    s.add_argument("root")
    s.add_argument("--force", action="store_true", help="rebuild indexes that already exist")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("models", help="Table 8 models: params, MACs, paper-convention MFLOPs")
    s.add_argument("--markdown", action="store_true")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("bench", help="benchmarks")
    s.add_argument("what", choices=("models",))
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("sweep", help="train and evaluate many architectures on the same shards; Table 8 report")
    s.add_argument("--dataset", choices=DATASETS, required=True)
    s.add_argument("--shards", required=True, help="preprocessed dataset root, shared by every trial")
    s.add_argument("--out", required=True, help="sweep directory: trials/, results.parquet, report.md, PNG")
    s.add_argument("--grid", default="table8", help="'table8' (the 17 configurations) or a YAML/JSON grid file")
    s.add_argument("--models", default=None, help="with --grid table8: only these comma-separated names")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="training setting for every trial, e.g. epochs=30 (repeatable)")
    s.add_argument("--cache-dir", help=CACHE_HELP)
    s.add_argument("--workers-per-trial", type=int, default=1)
    s.add_argument("--shared-decode", action="store_true",
                   help="train trials that read the same clips together: one decode pass feeds several models")
    s.add_argument("--max-group", type=int, default=8, help="with --shared-decode: models per group (default 8)")
    s.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as resources allow)")
    s.add_argument("--gpu", action="store_true")
    s.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    s.add_argument("--num-cpus", type=int, default=None)
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("report", help="rebuild a sweep's Markdown report and accuracy/MFLOPs plot")
    s.add_argument("root", help="sweep output directory holding results.parquet")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("train", help="train a model with Ray Train (DDP), paper defaults per dataset")
    _add_train_args(s, finetune=False)

    s = sub.add_parser("finetune", help="fine-tune the last layer from a Kinetics-600 checkpoint (section 3.2)")
    _add_train_args(s, finetune=True)

    s = sub.add_parser("eval", help="video-level top-1/top-5 of a checkpoint (the dataset's protocol: every "
                       "non-overlapping window averaged; Jester: the middle window)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--shards", required=True)
    s.add_argument("--out", required=True, help="folder for predictions_<split>.parquet and eval_<split>.json")
    s.add_argument("--split", default=None, help="default: the validation split of the checkpoint's dataset")
    s.add_argument("--workers", type=int, default=1, help="1: in this process; more: Ray Train workers")
    s.add_argument("--batch-size", type=int, default=16, help="clips per batch per worker")
    s.add_argument("--windows", choices=("auto", *EVAL_WINDOWS), default="auto",
                   help="which windows of each video are scored: auto = the dataset's protocol (Jester: the middle "
                        "window, as the paper reports it; others: every non-overlapping window, scores averaged)")
    s.add_argument("--gpu", action="store_true")
    s.add_argument("--cache-dir", help=CACHE_HELP)
    s.add_argument("--address", default=None)
    s.add_argument("--num-cpus", type=int, default=None)
    s.set_defaults(func=cmd_eval)

    from pipeline.use_cli import add_parsers as add_predict_export

    add_predict_export(sub)  # predict, export

    s = sub.add_parser("demo", help="the main job end to end on synthetic data with a local Ray")
    s.add_argument("--workdir", default="/tmp/e3d-demo")
    s.add_argument("--fresh", action="store_true", help="delete the workdir first")
    s.add_argument("--no-train", action="store_true", help="preprocessing only (skip training and evaluation)")
    s.add_argument("--seed", type=int, default=0, help="training seed (model init, clip sampling, dropout)")
    s.set_defaults(func=cmd_demo)
    for s in sub.choices.values():
        s.add_argument("-v", "--verbose", action="count", default=0,
                       help="also show Ray's internal log lines (hidden by default)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logs(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        if isinstance(exc, KeyError) and type(exc).__name__ != "UnknownModelError":
            raise  # a bug, not bad input: keep the traceback
        print(f"e3d {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `e3d models | head`: the reader left; no traceback, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by the pipe


if __name__ == "__main__":
    sys.exit(main())
