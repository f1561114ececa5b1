"""``e3d predict``: same scores as ``e3d eval`` on the shards (no train/test skew), released checkpoints,
frame folders, a folder of good and bad files through Ray, resumable output.

Data: tiny synthetic UCF-101 (videos) and Jester (frame folders, stored at stride 2), preprocessed to
shards at a 32 px short side; models with random weights saved as our checkpoints (the scores only have to
agree, not be right).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.cli import main
from pipeline.predict import PredictConfig, expand_inputs, read_done, render, run_predict
from preprocess.config import PreprocessConfig
from preprocess.ray_tasks import run_tasks_local
from preprocess.run import preprocess
from preprocess.synth import SynthConfig, generate
from shards.manifest import read_dataset_info
from training.checkpoints import ours_to_upstream, save_checkpoint
from training.config import TrainConfig
from training.models import get_model

MODEL = "shufflenetv2_0.25x"


def _dataset(tmp_path_factory, dataset: str, **synth) -> tuple[Path, str]:
    base = tmp_path_factory.mktemp(f"predict-{dataset}")
    generate(dataset, base / "src", SynthConfig(bad_inputs=False, seed=3, **synth))
    out = base / "shards"
    preprocess(PreprocessConfig(dataset=dataset, src=str(base / "src"), out=str(out), short_side=32, quality=75,
                                shard_size=4, progress=False), executor=run_tasks_local)
    return base / "src", str(out)


def _checkpoint(path: Path, dataset: str, shards: str, *, clip_len: int, size: int, seed: int = 0) -> str:
    classes = read_dataset_info(shards)["classes"]
    torch.manual_seed(seed)
    model = get_model(MODEL, num_classes=len(classes))
    with torch.no_grad():  # random BN statistics so that eval-mode BN is not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    cfg = TrainConfig.for_dataset(dataset, shards, str(path.parent), model=MODEL, clip_len=clip_len, size=size)
    save_checkpoint(path, model, epoch=1, extra={"train_config": cfg.to_dict(), "normalization": None,
                                                 "classes": classes})
    return str(path)


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    src, shards = _dataset(tmp_path_factory, "ucf101", num_classes=3, videos_per_class=4, seconds=1.5)
    ckpt = _checkpoint(Path(shards).parent / "ckpt" / "checkpoint.pt", "ucf101", shards, clip_len=8, size=32)
    return src, shards, ckpt


def _sources(shards: str, split: str) -> dict[str, str]:
    rows = pq.read_table(Path(shards) / "manifest" / split / "videos.parquet").to_pylist()
    return {r["key"]: r["source"] for r in rows if r["status"] == "ok"}


def _eval_rows(ckpt: str, shards: str, split: str, out: Path) -> dict[str, dict]:
    assert main(["eval", "--checkpoint", ckpt, "--shards", shards, "--out", str(out), "--split", split,
                 "--batch-size", "5"]) == 0
    return {r["key"]: r for r in pq.read_table(out / f"predictions_{split}.parquet").to_pylist()}


def _assert_same_scores(evals: dict[str, dict], preds: dict[str, dict], sources: dict[str, str], src: Path):
    assert len(evals) == len(sources) >= 3
    worst = 0.0
    for key, ev in evals.items():
        row = preds[str(src / sources[key])]
        assert row["status"] == "ok", row
        assert row["clips"] == ev["clips"]
        scores = np.asarray(row["scores"])
        assert [t["index"] for t in row["top"]] == ev["top5"][: len(row["top"])]
        worst = max(worst, float(np.abs(scores[ev["top5"]] - np.asarray(ev["top5_scores"])).max()))
        assert scores.sum() == pytest.approx(1.0, abs=1e-6)  # float32 softmax
    print(f"max |predict - eval| over {len(evals)} videos: {worst:.2e}")
    assert worst <= 1e-5, worst


@pytest.mark.slow
def test_predict_on_sources_equals_eval_on_shards(ucf, tmp_path, capsys):
    src, shards, ckpt = ucf
    split = "test1"
    evals = _eval_rows(ckpt, shards, split, tmp_path / "eval")
    sources = _sources(shards, split)
    assert any(ev["clips"] > 1 for ev in evals.values())  # several windows averaged for some videos
    out = tmp_path / "pred.jsonl"
    capsys.readouterr()
    args = ["predict", "--checkpoint", ckpt, *[str(src / s) for s in sources.values()], "--scores",
            "--out", str(out), "--format", "json", "--top", "3", "--no-progress"]
    assert main(args) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(printed) == len(sources) and all(len(r["top"]) == 3 for r in printed)
    preds = read_done(str(out))
    _assert_same_scores(evals, preds, sources, src)
    # the decode settings came from the training shards' dataset.json (32 px, quality 75), not the defaults
    classes = read_dataset_info(shards)["classes"]
    assert {t["class"] for r in printed for t in r["top"]} <= set(classes)


@pytest.mark.slow
def test_predict_jester_frame_folders_center_window(tmp_path_factory, tmp_path):
    src, shards = _dataset(tmp_path_factory, "jester", num_classes=3, videos_per_class=2)
    ckpt = _checkpoint(tmp_path / "j" / "checkpoint.pt", "jester", shards, clip_len=8, size=32, seed=1)
    from training.evaluate import evaluate_checkpoint

    split = "validation"
    # the defaults of both sides (the dataset's protocol: Jester's middle window), then every window on both
    for mode, windows in ((None, "auto"), ("eval", "all")):
        r = evaluate_checkpoint(ckpt, shards, out=str(tmp_path / f"eval-{mode}"), split=split, mode=mode,
                                batch_size=4)
        evals = {e["key"]: e for e in pq.read_table(r["predictions"]).to_pylist()}
        sources = _sources(shards, split)
        res = run_predict(PredictConfig(checkpoint=ckpt, inputs=(str(src / "20bn-jester-v1"),), windows=windows,
                                        with_scores=True, progress=False))
        assert res.settings.stride == 2 and res.settings.short_side == 32
        preds = {r["path"]: r for r in res.rows}
        assert all(r["status"] == "ok" for r in res.rows)
        _assert_same_scores(evals, preds, sources, src)
        if mode is None:
            assert all(e["clips"] == 1 for e in evals.values())
        else:
            assert any(e["clips"] > 1 for e in evals.values())


@pytest.mark.slow
@pytest.mark.ray
def test_folder_with_bad_files_through_ray_and_resume(ucf, tmp_path, ray_local):
    src, shards, ckpt = ucf
    folder = tmp_path / "videos"
    folder.mkdir()
    good = sorted((src / "UCF-101").rglob("*.avi"))[:3]
    for g in good:
        os.symlink(g, folder / g.name)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "garbage.mp4").write_bytes(os.urandom(3000))
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.txt").write_text("not a video")  # not a video extension: not an input
    (folder / "sub" / "text.avi").write_text("hello, I am not a video\n" * 20)
    out = tmp_path / "results.csv"
    cfg = PredictConfig(checkpoint=ckpt, inputs=(str(folder),), out=str(out), workers=2, progress=False)
    first = run_predict(cfg)
    assert (first.ran, first.skipped, first.failed) == (6, 0, 3)
    rows = read_done(str(out))
    assert len(rows) == 6
    reasons = {Path(p).name: r["reason"] for p, r in rows.items() if r["status"] == "failed"}
    assert reasons.keys() == {"empty.mp4", "garbage.mp4", "text.avi"}
    table = render(first.rows, "table")
    assert table.count("FAILED: ") == 3 and "empty file" in table
    assert "empty file" in reasons["empty.mp4"]
    assert all(reasons.values())
    ok = {Path(p).name: r for p, r in rows.items() if r["status"] == "ok"}
    assert ok.keys() == {g.name for g in good} and all(len(r["top"]) == 3 for r in ok.values())
    # a rerun skips every video already in the output (even with one more good file added)
    extra = sorted((src / "UCF-101").rglob("*.avi"))[3]
    os.symlink(extra, folder / extra.name)
    before = {p: r["top"] for p, r in rows.items()}
    again = run_predict(PredictConfig(checkpoint=ckpt, inputs=(str(folder),), out=str(out), workers=1,
                                      progress=False))
    assert (again.ran, again.skipped) == (1, 6)
    after = read_done(str(out))
    assert len(after) == 7 and all(after[p]["top"] == t for p, t in before.items())
    retry = run_predict(PredictConfig(checkpoint=ckpt, inputs=(str(folder),), out=str(out), retry_failed=True,
                                      progress=False))
    assert (retry.ran, retry.failed) == (3, 3)


def test_released_checkpoint_and_class_file(ucf, tmp_path):
    src, shards, _ = ucf
    model = get_model(MODEL, num_classes=27)
    torch.save({"epoch": 3, "arch": "shufflenetv2", "best_prec1": 0.5,
                "state_dict": ours_to_upstream(model.state_dict(), model)}, tmp_path / "jester.pth")
    names = tmp_path / "classes.txt"
    names.write_text("".join(f"gesture {i}\n" for i in range(27)))
    video = str(next((src / "UCF-101").rglob("*.avi")))
    res = run_predict(PredictConfig(checkpoint=str(tmp_path / "jester.pth"), model=MODEL, classes=str(names),
                                    inputs=(video,), top=2, with_scores=True, progress=False))
    (row,) = res.rows
    assert row["status"] == "ok" and len(row["scores"]) == 27 and row["clips"] == 1  # Jester: centre window
    assert [t["class"] for t in row["top"]] == [f"gesture {t['index']}" for t in row["top"]]
    assert res.settings.stride == 2 and res.settings.short_side == 128  # Jester defaults
    with pytest.raises(ValueError, match="27 outputs but 3 class names"):
        run_predict(PredictConfig(checkpoint=str(tmp_path / "jester.pth"), model=MODEL, classes=shards,
                                  inputs=(video,), progress=False))


def test_expand_inputs_and_read_done_fuzz(tmp_path):
    (tmp_path / "a" / "frames1").mkdir(parents=True)
    (tmp_path / "a" / "frames1" / "00001.jpg").write_bytes(b"x")
    (tmp_path / "a" / "v.MP4").write_bytes(b"x")
    (tmp_path / "a" / "skip.txt").write_bytes(b"x")
    got = expand_inputs([str(tmp_path / "a"), str(tmp_path / "missing.avi")])
    assert got == sorted([(str(tmp_path / "a" / "frames1"), "frames"), (str(tmp_path / "a" / "v.MP4"), "video"),
                          (str(tmp_path / "missing.avi"), "video")])
    rng = np.random.default_rng(0)
    good = json.dumps({"path": "/x.mp4", "status": "ok", "top": []})
    for i in range(50):  # garbage lines never crash the resume reader; well-formed rows survive
        junk = rng.bytes(int(rng.integers(0, 200))).decode("latin-1").replace("\n", " ")
        text = "\n".join([junk, good, junk[: i % 7], '{"path": 3, "status": "ok"}', "[1, 2]"]) + "\n"
        f = tmp_path / f"r{i}.jsonl"
        f.write_text(text, encoding="utf-8")
        assert list(read_done(str(f))) == ["/x.mp4"]
