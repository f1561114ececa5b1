"""Shards, manifests and verify on an S3-compatible object store (moto's server on loopback), through the
same pyarrow.fs code paths as local disk: a full run, a resumed rerun, and checksum verification there."""

from __future__ import annotations

import hashlib
import uuid

import pyarrow.fs as pafs
import pytest

from preprocess.config import PreprocessConfig
from preprocess.ray_tasks import run_tasks_local
from preprocess.run import preprocess
from preprocess.synth import SynthConfig, generate
from shards import storage
from shards.manifest import read_dataset_info, shard_urls, verify
from tests.helpers import RaiseAt
from tests.test_train import TINY, tiny_cfg, tiny_shards  # noqa: F401  (session fixture)


@pytest.fixture
def s3(s3_endpoint) -> str:
    """A fresh bucket on the session's S3 server; returns its name."""
    import boto3

    bucket = f"e3d-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return bucket


def _objects(uri: str) -> dict[str, str]:
    fs, base = storage.resolve(uri)
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.type == pafs.FileType.File:
            out[info.path[len(base) + 1:]] = hashlib.sha256(storage.read_bytes(fs, info.path)).hexdigest()
    return out


def _local(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_preprocess_to_s3_resume_and_verify(s3, tmp_path):
    src = tmp_path / "jester"
    generate("jester", src, SynthConfig(num_classes=2, videos_per_class=2, seed=1))
    uri = f"s3://{s3}/shards/jester"

    def run(out: str):
        cfg = PreprocessConfig(dataset="jester", src=str(src), out=out, shard_size=3, max_failed=1.0,
                               progress=False)
        return preprocess(cfg, executor=run_tasks_local)

    first = run(uri)
    assert first.shards_built > 0 and first.videos_ok > 0
    local = tmp_path / "local"
    run(str(local))
    # the bucket holds exactly what a local run writes, byte for byte, and no temporaries
    assert _objects(uri) == _local(local)
    assert read_dataset_info(uri)["dataset"] == "jester"
    urls = shard_urls(uri, "train")
    assert urls and all(u.startswith(f"s3://{s3}/shards/jester/shards/") for u in urls)

    again = run(uri)
    assert again.shards_built == 0 and again.shards_skipped == first.shards_built

    result = verify(uri)
    assert result.ok and result.samples_checked == first.videos_ok
    fs, base = storage.resolve(uri)
    victim = storage.join(base, "shards/train/shard-000000.tar")
    data = bytearray(storage.read_bytes(fs, victim))
    data[700] ^= 0x55
    with fs.open_output_stream(victim) as f:
        f.write(bytes(data))
    bad = verify(uri)
    assert not bad.ok and any("shard-000000.tar" in p and "sha256" in p for p in bad.problems)


def test_interrupted_upload_publishes_nothing(s3):
    fs, base = storage.resolve(f"s3://{s3}/x")
    path = storage.join(base, "part.bin")
    with pytest.raises(RuntimeError, match="boom"), storage.atomic_output(fs, path) as out:
        out.write(b"partial data")
        raise RuntimeError("boom")
    assert not storage.exists(fs, path)
    with storage.atomic_output(fs, path) as out:
        out.write(b"whole")
    assert storage.read_bytes(fs, path) == b"whole"
    assert out.sha256.hexdigest() == hashlib.sha256(b"whole").hexdigest()


def test_loader_streams_training_clips_from_s3(s3, tmp_path):
    from training.data import ClipLoader, ClipStream, LoaderConfig, shard_specs

    src = tmp_path / "jester"
    generate("jester", src, SynthConfig(num_classes=2, videos_per_class=3, seed=2, bad_inputs=False))
    uri = f"s3://{s3}/jester"
    local = tmp_path / "local"
    for out in (uri, str(local)):
        preprocess(PreprocessConfig(dataset="jester", src=str(src), out=out, shard_size=4, progress=False),
                   executor=run_tasks_local)
    cfg = LoaderConfig.for_dataset("jester", "train", batch_size=2, num_workers=0, seed=5)

    def batches(root):
        loader = ClipLoader(ClipStream(shard_specs(root, "train", videos=False), cfg, rank=0, world_size=1))
        loader.set_epoch(0)
        return [(b["keys"], b["clips"]) for b in loader]

    remote, here = batches(uri), batches(str(local))
    assert len(remote) == len(here) > 0
    for (k1, c1), (k2, c2) in zip(remote, here, strict=True):
        assert list(k1) == list(k2) and bool((c1 == c2).all())


# -- training, evaluation and sweeps with everything on the bucket -----------------------------------------------


def _copy_tree_to_bucket(local: str, uri: str) -> None:
    fs, base = storage.resolve(uri)
    pafs.copy_files(local, base, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


@pytest.mark.slow
@pytest.mark.ray
def test_ray_training_on_s3_checkpoints_resumes_and_evaluates_there(ray_local, s3, tiny_shards):  # noqa: F811
    from training.checkpoints import load_checkpoint
    from training.ray_train import run_evaluation, run_training

    shards, run = f"s3://{s3}/shards/jester", f"s3://{s3}/runs/shufflenet"
    _copy_tree_to_bucket(tiny_shards, shards)
    # 15 videos, 2 workers × 2 clips: 3 steps per epoch. The fault kills rank 0 at step 5; Ray restarts the
    # workers, which restore the epoch-1 checkpoint from the bucket.
    cfg = tiny_cfg(shards, run, epochs=2, profile_steps=1)
    result = run_training(cfg, workers=2, max_failures=1, hooks=RaiseAt(5))
    assert result.status == "finished" and result.resumed_at_step == 3 and result.step == 6
    assert result.checkpoint.startswith(f"{run}/") and result.best_checkpoint.startswith(f"{run}/")
    model, ckpt = load_checkpoint(result.checkpoint)  # read straight from the bucket
    assert ckpt["extra"]["step"] == 6 and sum(p.numel() for p in model.parameters()) > 0

    objects = _objects(run)
    assert ".fault-raise@5" in objects and "metrics.json" in objects and "predictions_validation.parquet" in objects
    assert sum(k.endswith("/checkpoint.pt") for k in objects) in (1, 2)  # latest and best only
    fs, base = storage.resolve(run)
    events = [k for k in objects if k.startswith("tensorboard/events.out.tfevents")]
    assert events and all(b"train/loss" in storage.read_bytes(fs, storage.join(base, k)) for k in events[:1])
    assert b"val/top1" in b"".join(storage.read_bytes(fs, storage.join(base, k)) for k in events)
    assert any(k.startswith("profile/") and k.endswith(".pt.trace.json") for k in objects)

    with pytest.raises(ValueError, match="already holds a run"):  # the bucket's run is not silently overwritten
        run_training(cfg.replace(epochs=3), workers=2)
    again = run_training(cfg.replace(epochs=3), workers=2, resume=True)
    assert again.resumed_at_step == 6 and again.step == 9

    ev = run_evaluation(again.best_checkpoint, shards, out=f"s3://{s3}/eval", workers=2, batch_size=3)
    assert ev["eval_videos"] == 15 and ev["eval_incomplete_videos"] == 0
    assert {"eval_validation.json", "predictions_validation.parquet"} <= set(_objects(f"s3://{s3}/eval"))


@pytest.mark.slow
@pytest.mark.ray
def test_sweep_on_s3_writes_results_there_and_resumes(ray_local, s3, tiny_shards):  # noqa: F811
    from pipeline.report import build_report, read_results
    from pipeline.sweep import SweepConfig, TrialSpec, run_sweep

    shards, out = f"s3://{s3}/shards/jester", f"s3://{s3}/sweeps/first"
    _copy_tree_to_bucket(tiny_shards, shards)
    trials = (TrialSpec("shufflenetv2_0.25x", "shufflenetv2_0.25x"), TrialSpec("mobilenetv2_0.2x", "mobilenetv2_0.2x"))
    cfg = SweepConfig(dataset="jester", shards=shards, out=out, trials=trials,
                      base={k: v for k, v in TINY.items() if k != "model"} | {"epochs": 1},
                      workers_per_trial=1, max_concurrent=2, speed_iters=1)
    results = run_sweep(cfg, log=lambda _: None)
    assert [r.status for r in results] == ["finished"] * 2, results
    objects = _objects(out)
    assert {"sweep.json", "results.parquet", "report.md", "accuracy_vs_mflops.png"} <= set(objects)
    for t in trials:
        assert {f"trials/{t.name}/trial.json", f"trials/{t.name}/metrics.json"} <= set(objects)
    assert sorted(r.trial for r in read_results(out)) == sorted(t.name for t in trials)

    fs, base = storage.resolve(out)
    fs.delete_file(storage.join(base, "report.md"))
    build_report(out)  # `e3d report s3://...` rebuilds the report from the bucket's table
    assert "| Model | MFLOPs | Params |" in storage.read_bytes(fs, storage.join(base, "report.md")).decode()
    logs: list[str] = []
    run_sweep(cfg, log=logs.append)
    assert sum("finished earlier, skipped" in line for line in logs) == 2
