"""The ``e3d`` command line: the one place where configs are built from arguments.

Runs as the ``e3d`` console script, as ``python -m pipeline`` and as ``python pipeline/cli.py`` (the form
``ray submit <cluster.yaml> pipeline/cli.py preprocess kinetics600 ...`` uses on a cluster head). Arguments
never rely on shell globbing, because ``ray submit`` passes them unquoted.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
    # Run as a plain script (``python pipeline/cli.py``): make the repository's packages importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DATASETS = ("kinetics600", "jester", "ucf101")


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
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from preprocess.config import PreprocessConfig
    from preprocess.run import preprocess

    cfg = PreprocessConfig(
        dataset=args.dataset, src=args.src, out=args.out, splits=_splits(args.splits), short_side=args.short_side,
        quality=args.quality, shard_size=args.shard_size, decoder=args.decoder, max_failed=args.max_failed,
        timeout_s=args.timeout, address=args.address, num_cpus=args.num_cpus, progress=not args.no_progress,
    )
    summary = preprocess(cfg)
    print(summary.format())
    return summary.exit_code


def cmd_verify(args: argparse.Namespace) -> int:
    from shards.manifest import verify

    result = verify(args.root, check_samples=not args.quick)
    for p in result.problems:
        print(f"MISMATCH {p}")
    print(f"verified {result.shards_checked} shards, {result.samples_checked} samples: "
          f"{'OK' if result.ok else f'{len(result.problems)} problem(s)'}")
    return 0 if result.ok else 1


def cmd_models(args: argparse.Namespace) -> int:
    from training.flops import table8_report

    print(table8_report(markdown=args.markdown))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "models":
        from training.speed import main as bench_models

        return bench_models(args.rest)
    raise SystemExit(f"unknown benchmark {args.what!r}")


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import build_report

    md, png = build_report(args.root)
    print(f"wrote {md} and {png}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    return run_demo(args.workdir, fresh=args.fresh)


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
    s.add_argument("--short-side", type=_short_side, default=128, help="pixels, or 'native' (default 128)")
    s.add_argument("--quality", type=int, default=90, help="JPEG quality of encoded frames (default 90)")
    s.add_argument("--shard-size", type=int, default=None, help="videos per shard (default per dataset)")
    s.add_argument("--decoder", choices=("av", "ffmpeg"), default="av",
                   help="av: FFmpeg libraries in-process (fast); ffmpeg: the ffmpeg binary via ffmpeg-python")
    s.add_argument("--max-failed", type=float, default=0.05, help="tolerated fraction of failed videos")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per video")
    s.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    s.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded local Ray")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_preprocess)

    s = sub.add_parser("verify", help="re-check every shard against the manifests")
    s.add_argument("root")
    s.add_argument("--quick", action="store_true", help="sizes and checksums only, no sample walk")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("models", help="Table 8 models: params, MACs, paper-convention MFLOPs")
    s.add_argument("--markdown", action="store_true")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("bench", help="benchmarks")
    s.add_argument("what", choices=("models",))
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("report", help="rebuild a sweep's Markdown report and accuracy/MFLOPs plot")
    s.add_argument("root", help="sweep output directory holding results.parquet")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("demo", help="the main job end to end on synthetic data with a local Ray")
    s.add_argument("--workdir", default="/tmp/e3d-demo")
    s.add_argument("--fresh", action="store_true", help="delete the workdir first")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        print(f"e3d {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
