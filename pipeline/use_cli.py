"""``e3d predict`` and ``e3d export``: argument parsers and commands (registered by :mod:`pipeline.cli`)."""

from __future__ import annotations

import argparse
import sys

from shards.datasets import EVAL_WINDOWS
from training.config import DATASETS


def cmd_predict(args: argparse.Namespace) -> int:
    from pipeline.predict import PredictConfig, render, run_predict

    cfg = PredictConfig(checkpoint=args.checkpoint, inputs=tuple(args.inputs), model=args.model,
                        classes=args.classes, dataset=args.dataset, shards=args.shards, top=args.top,
                        windows=args.windows, out=args.out, workers=args.workers, gpu=args.gpu,
                        batch_size=args.batch_size, address=args.address, num_cpus=args.num_cpus,
                        retry_failed=args.retry_failed, with_scores=args.scores, progress=not args.no_progress)
    result = run_predict(cfg)
    sys.stdout.write(render(result.rows, args.format))
    s = result.settings
    where = f"; written to {cfg.out}" if cfg.out else ""
    print(f"e3d predict: {result.summary()}{where} (decoded with short side {s.short_side}, JPEG quality "
          f"{s.quality}, stride {s.stride}, decoder {s.decoder}; settings from {s.source})", file=sys.stderr)
    return 1 if result.failed and result.failed == len(result.rows) else 0


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.export import ExportConfig, run_export

    cfg = ExportConfig(checkpoint=args.checkpoint, format=args.format, out=args.out, model=args.model,
                       classes=args.classes, dataset=args.dataset, dynamic_batch=args.batch == "dynamic",
                       batch=1 if args.batch == "dynamic" else int(args.batch), clip_len=args.clip_len,
                       size=args.size, check=not args.no_check)
    info = run_export(cfg)
    print(f"e3d export: {info['model']} -> {info['out']} ({info['format']}, input uint8 {info['input_shape']}, "
          f"{info['classes']} classes; max |diff| vs eager {info.get('max_abs_diff', 'not checked')})")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("predict", help="top-k labels of videos or frame folders with a trained model")
    s.add_argument("inputs", nargs="+", metavar="VIDEO_OR_DIR", help="video files, frame folders, or folders of them")
    s.add_argument("--checkpoint", required=True, help="our checkpoint.pt, or a released .pth with --model")
    s.add_argument("--model", default=None, help="registry name of a released .pth checkpoint's architecture")
    s.add_argument("--classes", default=None, help="class names: a file (one per line), a dataset.json or shard root")
    s.add_argument("--dataset", choices=DATASETS, default=None, help="protocol/stride for released checkpoints")
    s.add_argument("--shards", default=None, help="take the decode settings from this dataset's dataset.json")
    s.add_argument("--top", type=int, default=5)
    s.add_argument("--format", choices=("table", "json", "csv"), default="table", help="what is printed")
    s.add_argument("--out", default=None, help="results file (.csv, else JSON lines); reruns skip what it holds")
    s.add_argument("--retry-failed", action="store_true", help="rerun videos that failed in --out")
    s.add_argument("--scores", action="store_true", help="include every class probability in the rows")
    s.add_argument("--windows", choices=("auto", *EVAL_WINDOWS), default="auto",
                   help="all non-overlapping windows or the centre one (auto: centre for Jester, all otherwise)")
    s.add_argument("--workers", type=int, default=1, help="1: in this process; more: Ray tasks")
    s.add_argument("--gpu", action="store_true", help="one GPU per Ray task for inference")
    s.add_argument("--batch-size", type=int, default=16, help="clips per forward pass")
    s.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    s.add_argument("--num-cpus", type=int, default=None)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("export", help="export a model (normalisation inside) to ONNX or TorchScript")
    s.add_argument("--checkpoint", required=True, help="our checkpoint.pt, or a released .pth with --model")
    s.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--model", default=None, help="registry name of a released .pth checkpoint's architecture")
    s.add_argument("--classes", default=None, help="class names: a file (one per line), a dataset.json or shard root")
    s.add_argument("--dataset", choices=DATASETS, default=None)
    s.add_argument("--batch", default="dynamic", help="'dynamic' or a fixed batch size")
    s.add_argument("--clip-len", type=int, default=None, help="frames per clip (default: the checkpoint's)")
    s.add_argument("--size", type=int, default=None, help="crop side (default: the checkpoint's)")
    s.add_argument("--no-check", action="store_true", help="skip the parity check against eager PyTorch")
    s.set_defaults(func=cmd_export)
