"""Sweeps: several architectures trained and evaluated on one set of shards under one Ray driver, with the
Table 8 report and plot, skipping finished trials and resuming unfinished ones on a rerun."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.sweep import SweepConfig, TrialSpec, load_grid, run_sweep, table8_grid
from preprocess.config import PreprocessConfig
from preprocess.ray_tasks import run_tasks_local
from preprocess.run import preprocess
from preprocess.synth import SynthConfig, generate

TINY = {"epochs": 1, "clip_len": 8, "size": 32, "batch_size": 4, "loader_workers": 0, "max_steps_per_epoch": 2}


def test_table8_grid_has_the_17_configurations():
    names = [t.name for t in table8_grid()]
    assert len(names) == 17 == len(set(names))
    assert {"shufflenetv2_1.0x", "mobilenetv2_0.45x", "squeezenet1_1"} <= set(names)


def test_user_grid_is_a_cross_product_with_checked_keys(tmp_path):
    g = tmp_path / "grid.yaml"
    g.write_text("base: {epochs: 3}\nmodels: [shufflenetv2, mobilenetv2]\nwidths: [0.25, 0.5]\n"
                 "overrides: [{lr: 0.1}, {lr: 0.01}]\ntrials: [{model: squeezenet1_1, dropout: 0.5}]\n")
    trials, base = load_grid(str(g))
    assert base == {"epochs": 3} and len(trials) == 2 * 2 * 2 + 1
    assert trials[0] == TrialSpec("shufflenetv2_w0.25_v0", "shufflenetv2", {"width_mult": 0.25}, {"lr": 0.1})
    assert trials[-1].model == "squeezenet1_1" and trials[-1].overrides == {"dropout": 0.5}
    g.write_text("models: [x]\nbogus: 1\n")
    with pytest.raises(ValueError, match="unknown grid keys"):
        load_grid(str(g))


def _shards(tmp_path: Path) -> Path:
    src, shards = tmp_path / "jester", tmp_path / "shards"
    generate("jester", src, SynthConfig(num_classes=2, videos_per_class=4, seed=4, bad_inputs=False))
    preprocess(PreprocessConfig(dataset="jester", src=str(src), out=str(shards), shard_size=4, progress=False),
               executor=run_tasks_local)
    return shards


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_of_three_models_on_shared_shards(ray_local, tmp_path):
    shards = _shards(tmp_path)
    before = sorted(p.stat().st_mtime_ns for p in shards.rglob("*.tar"))
    trials = (TrialSpec("shufflenetv2_0.25x", "shufflenetv2_0.25x"), TrialSpec("mobilenetv2_0.2x", "mobilenetv2_0.2x"),
              TrialSpec("shufflenetv1_g2", "shufflenetv1", {"width_mult": 1.0, "groups": 2}))
    out = tmp_path / "sweep"
    cfg = SweepConfig(dataset="jester", shards=str(shards), out=str(out), trials=trials, base=TINY,
                      workers_per_trial=1, max_concurrent=2, speed_iters=1)
    logs: list[str] = []
    results = run_sweep(cfg, log=logs.append)
    assert [r.status for r in results] == ["finished"] * 3, results
    assert all(0.0 <= r.video_top1 <= 1.0 and r.params > 0 and r.mflops > 0 for r in results)
    assert all(r.decode_cpu_s_per_clip > 0 and r.train_clips > 0 for r in results)
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted(r["trial"] for r in table) == sorted(t.name for t in trials)
    report = (out / "report.md").read_text()
    assert all(t.model in report for t in trials) and "| Model | MFLOPs | Params |" in report
    assert (out / "accuracy_vs_mflops.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="shufflenetv1_g7"):  # a bad trial is refused before anything runs
        run_sweep(SweepConfig(dataset="jester", shards=str(shards), out=str(tmp_path / "bad"), base=TINY,
                              trials=(TrialSpec("shufflenetv1_g7", "shufflenetv1", {"groups": 7}),)))
    # the shards were read, never rewritten
    assert sorted(p.stat().st_mtime_ns for p in shards.rglob("*.tar")) == before

    # rerun: finished trials are skipped; an unfinished one (no trial.json) resumes from its run directory
    (out / "trials" / "mobilenetv2_0.2x" / "trial.json").unlink()
    logs.clear()
    again = run_sweep(cfg, log=logs.append)
    assert sum("skipped" in line for line in logs) == 2
    assert [r.status for r in again] == ["finished"] * 3
    resumed = json.loads((out / "trials" / "mobilenetv2_0.2x" / "metrics.json").read_text())
    assert resumed.get("resumed_at_step", 0) > 0
    assert not math.isnan(again[1].video_top1)
    assert Path(out / "sweep.json").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_shared_decode_sweep_feeds_several_models_from_one_decode_pass(ray_local, tmp_path):
    shards = _shards(tmp_path)
    trials = (TrialSpec("shufflenetv2_0.25x", "shufflenetv2_0.25x"), TrialSpec("mobilenetv2_0.2x", "mobilenetv2_0.2x"),
              TrialSpec("shufflenetv2_lr", "shufflenetv2_0.25x", overrides={"lr": 0.05}),
              TrialSpec("short_clips", "shufflenetv2_0.25x", overrides={"clip_len": 4}))  # other clips: own run
    out = tmp_path / "sweep"
    cfg = SweepConfig(dataset="jester", shards=str(shards), out=str(out), trials=trials, base=TINY,
                      workers_per_trial=1, max_concurrent=2, speed_iters=1, shared_decode=True)
    logs: list[str] = []
    results = {r.trial: r for r in run_sweep(cfg, log=logs.append)}
    assert any("4 trial(s) in 2 Ray Train run(s) (3, 1 models each)" in line for line in logs), logs
    assert all(r.status == "finished" and 0.0 <= r.video_top1 <= 1.0 for r in results.values())
    group = {results[t.name].decode_group for t in trials[:3]}
    assert len(group) == 1 and group != {""} and results["short_clips"].decode_group == ""
    # one decode pass for three models: each trained clip carries a third of a decode
    shared = results["mobilenetv2_0.2x"].decode_cpu_s_per_clip
    assert shared > 0 and results["short_clips"].decode_cpu_s_per_clip == pytest.approx(3 * shared)
    (gid,) = group
    assert list((out / "groups" / gid).glob("*/checkpoint.pt"))  # the group's checkpoints hold all three
    for t in trials:
        run = out / "trials" / t.name
        assert json.loads((run / "metrics.json").read_text())["status"] == "finished"
        assert (run / "trial.json").exists() and (run / "predictions_validation.parquet").exists()
    assert "shared-decode group" in (out / "report.md").read_text()
    logs.clear()
    run_sweep(cfg, log=logs.append)
    assert sum("finished earlier, skipped" in line for line in logs) == 4


def test_shared_decode_groups_only_trials_that_read_the_same_clips():
    from pipeline.sweep import plan_groups

    trials = [TrialSpec("a", "shufflenetv2_0.25x"), TrialSpec("b", "mobilenetv2_0.2x", overrides={"lr": 0.01}),
              TrialSpec("c", "shufflenetv2_0.25x", overrides={"clip_len": 4}), TrialSpec("d", "squeezenet1_1"),
              TrialSpec("e", "shufflenetv1_0.5x", overrides={"dropout": 0.5})]
    cfg = SweepConfig(dataset="jester", shards="/s", out="/o", trials=tuple(trials), base=TINY, shared_decode=True,
                      max_group=2)
    names = [[t.name for t in g] for g in plan_groups(cfg, trials)]
    # lr and dropout are per model; clip_len changes the clips. Groups hold at most max_group models.
    assert names == [["a", "b"], ["d", "e"], ["c"]]
    separate = dataclasses.replace(cfg, shared_decode=False)
    assert [[t.name for t in g] for g in plan_groups(separate, trials)] == [[t.name] for t in trials]


def test_a_failed_trial_reports_the_innermost_error():
    from pipeline.sweep import _cause

    ray_style = RuntimeError("Training failed due to worker errors:\n[Rank 0 Error Snippet]:\nTraceback (most recent "
                             "call last):\n  File \"x.py\", line 1, in f\nFileNotFoundError: /d/dataset.json: not a "
                             "preprocessed dataset (dataset.json missing)\n")
    assert _cause(ray_style) == "FileNotFoundError: /d/dataset.json: not a preprocessed dataset (dataset.json missing)"
    assert _cause(ValueError("bad grid")) == "ValueError: bad grid"


def test_decode_cost_reads_clips_as_the_trials_do():
    # The decode-cost measurement must decode what training decodes: before issue 10 the sweep built its own
    # LoaderConfig and dropped crop_scales (and the seed), so a sweep on small crops measured the paper's crops.
    from pipeline.sweep import _train_config, decode_loader_config

    base = {**TINY, "crop_scales": [1.0], "seed": 3, "loader_workers": 2}
    cfg = SweepConfig(dataset="jester", shards="/s", out="/o", trials=(TrialSpec("a", "shufflenetv2_0.25x"),),
                      base=base)
    tcfg = _train_config(cfg, cfg.trials[0])
    lc = decode_loader_config(tcfg)
    assert lc == tcfg.loader_config("train", batch_size=8, num_workers=0)
    assert (lc.mode, lc.scales, lc.seed, lc.clip_len, lc.size) == ("train", (1.0,), 3, 8, 32)
    assert lc.num_workers == 0  # decoded in this process: getrusage(RUSAGE_SELF) sees only its own CPU time
