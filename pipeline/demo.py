"""The main job on its embedded default: synthetic datasets → Ray preprocessing → verify → summary.

``make demo`` runs this on a fresh machine. It uses one embedded local Ray for all three datasets.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from preprocess.config import PreprocessConfig
from preprocess.ray_tasks import init_ray
from preprocess.run import preprocess
from preprocess.synth import SynthConfig, generate
from shards.manifest import verify

DEMO_SYNTH = {
    "kinetics600": SynthConfig(num_classes=4, videos_per_class=6, seconds=3.0, seed=0),
    "jester": SynthConfig(num_classes=4, videos_per_class=12, seed=0),
    "ucf101": SynthConfig(num_classes=4, videos_per_class=8, seconds=3.0, seed=0),
}
# The synthetic sets deliberately hold a few broken files among few videos; real runs keep the 5 % default.
DEMO_MAX_FAILED = 0.5


def run_demo(workdir: str, *, fresh: bool = False) -> int:
    work = Path(workdir)
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    started = init_ray()
    rows = []
    exit_code = 0
    try:
        for dataset, scfg in DEMO_SYNTH.items():
            src, out = work / "data" / dataset, work / "shards" / dataset
            t0 = time.monotonic()
            if not (src / ".synth-done").exists():
                generate(dataset, src, scfg, overwrite=True)
                (src / ".synth-done").write_text("ok\n")
            t_synth = time.monotonic() - t0
            cfg = PreprocessConfig(dataset=dataset, src=str(src), out=str(out), max_failed=DEMO_MAX_FAILED,
                                   shard_size=8)
            summary = preprocess(cfg)
            print(summary.format(), flush=True)
            check = verify(str(out))
            for p in check.problems:
                print(f"  verify MISMATCH {p}")
            exit_code = max(exit_code, summary.exit_code, 0 if check.ok else 1)
            rows.append((dataset, summary, check, t_synth))
    finally:
        if started:
            import ray

            ray.shutdown()
    print("\n== demo summary ==")
    print(f"{'dataset':<12}{'split':<9}{'ok':>5}{'failed':>7}{'missing':>8}{'shards':>7}{'MB':>8}{'frames':>8}"
          f"{'frames/s':>10}{'verify':>8}")
    for dataset, s, check, _ in rows:
        fps = s.frames_decoded / s.wall_s if s.wall_s > 0 else 0.0
        for i, sp in enumerate(s.splits):
            print(f"{dataset if i == 0 else '':<12}{sp.split:<9}{sp.ok:>5}{sp.failed:>7}{sp.missing:>8}"
                  f"{sp.shards:>7}{sp.bytes / 1e6:>8.2f}{sp.frames:>8}"
                  f"{(f'{fps:.0f}' if i == 0 else ''):>10}{(('OK' if check.ok else 'FAIL') if i == 0 else ''):>8}")
    print(f"shards under {work / 'shards'}; rerunning resumes (finished shards are skipped)")
    return exit_code
