"""Bad input on every command: one line ``e3d <cmd>: error: ...``, exit 2, before Ray starts (issue 15 item 1,
issue 11 item 14). The table test prints command → message, exit code, seconds (in-process, for the record;
nothing asserts a time).

Data: the tiny synthetic Jester shards of ``tests/test_train.py``; checkpoints made here with the real code.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from pipeline.checks import check_trial_name
from pipeline.cli import main
from tests.test_train import tiny_shards  # noqa: F401  (session fixture)
from training.checkpoints import save_checkpoint
from training.config import TrainConfig
from training.errors import InputError
from training.models import get_model


@pytest.fixture(scope="module")
def bad_inputs(tiny_shards, tmp_path_factory):  # noqa: F811
    return make_bad_inputs(tmp_path_factory.mktemp("bad"), tiny_shards)


def make_bad_inputs(d: Path, shards: str) -> Path:
    """Files and folders a user gets wrong under ``d``, each made with the real code (also used by
    bench/bench_bad_input.py)."""
    model = get_model("shufflenetv2_0.25x", num_classes=3)
    good = d / "good.pt"
    cfg = TrainConfig.for_dataset("jester", shards, str(d / "run"), model="shufflenetv2_0.25x", clip_len=8,
                                  size=32, batch_size=4)
    save_checkpoint(good, model, epoch=1, extra={"train_config": cfg.to_dict(),
                                                 "classes": ["Swiping Left", "Swiping Right", "Swiping Up"]})
    other_classes = d / "other-classes.pt"
    save_checkpoint(other_classes, model, epoch=1, extra={"train_config": cfg.to_dict(), "classes": ["a", "b", "c"]})
    other_arch = d / "mobilenet.pt"
    save_checkpoint(other_arch, get_model("mobilenetv2_0.2x", num_classes=3), epoch=1)
    released_other = d / "released-resnet.pth"  # the paper's format, another architecture
    torch.save({"arch": "resnet-18", "state_dict": {f"module.{k}": v for k, v in
                                                    get_model("resnet18", num_classes=5).state_dict().items()}},
               released_other)
    (d / "empty.pth").write_bytes(b"")
    (d / "garbage.pth").write_bytes(b"this is not a checkpoint\n" * 40)
    data = good.read_bytes()
    (d / "truncated.pth").write_bytes(data[: len(data) // 2])
    (d / "empty-dir").mkdir()
    run = d / "old-run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    foreign = d / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    (d / "grid-unknown-key.yaml").write_text("models: [shufflenetv2_0.25x]\nwidth: [0.5]\n")
    (d / "grid-slash.yaml").write_text("trials: [{model: shufflenetv2_0.25x, name: ../escape}]\n")
    (d / "grid-sub.yaml").write_text("trials: [{model: shufflenetv2_0.25x, name: a/b}]\n")
    (d / "grid-no-model.yaml").write_text("trials: [{lr: 0.1}]\n")
    demo = d / "my-files"
    demo.mkdir()
    (demo / "keep.txt").write_text("mine")
    return d


def _cases(s: str, d: Path) -> list[tuple[list[str], str, int]]:
    """(argv, a fragment the one-line message must contain, exit code)."""
    train = ["train", "--dataset", "jester", "--shards", s, "--out", str(d / "new-run"), "--model",
             "shufflenetv2_0.25x", "--workers", "2", "--batch-size", "4", "--loader-workers", "0"]
    ft = ["finetune", "--dataset", "jester", "--shards", s, "--out", str(d / "new-ft"), "--model",
          "shufflenetv2_0.25x", "--workers", "2", "--batch-size", "4"]
    ev = ["eval", "--shards", s, "--out", str(d / "eval")]
    sweep = ["sweep", "--dataset", "jester", "--shards", s, "--out", str(d / "sweep")]
    pre = ["preprocess", "jester", "--src", str(d), "--out", str(d / "pre-out")]
    return [
        (train[:2] + ["kinetics600"] + train[3:], "holds jester shards (dataset.json); pass --dataset jester", 2),
        (train + ["--train-split", "train1"], "no split 'train1' in", 2),
        (train + ["--model", "shufflenetv2_025x"], "did you mean shufflenetv2_0.25x", 2),
        (train + ["--batch-size", "5"], "--batch-size 5 does not split evenly over --workers 2", 2),
        (train + ["--batch-size", "2"], "BatchNorm needs at least 2", 2),
        (train + ["--shards", str(d / "empty-dir")], "is empty: not a preprocessed dataset", 2),
        (train + ["--shards", str(d / "nowhere")], "does not exist", 2),
        (train + ["--shards", str(d / "old-run")], "holds no dataset.json", 2),
        (train + ["--out", s], "holds files that are not a training run's (dataset.json", 2),
        (train + ["--out", str(d / "old-run")], "already holds a run; pass --resume", 2),
        (train + ["--loader-workers", "-1"], "--loader-workers must be >= 0, got -1", 2),
        (train + ["--workers", "0"], "--workers must be >= 1", 2),
        (train + ["--model-arg", "width=2"], "takes no option(s) ['width']", 2),
        (ft + ["--pretrained", str(d / "garbage.pth")], "not a readable PyTorch checkpoint", 2),
        (ft + ["--pretrained", str(d / "empty.pth")], "is empty (0 bytes)", 2),
        (ft + ["--pretrained", str(d / "truncated.pth")], "not a readable PyTorch checkpoint", 2),
        (ft + ["--pretrained", str(d / "missing.pth")], "does not exist", 2),
        (ft + ["--pretrained", str(d / "mobilenet.pt")], "holds 'mobilenetv2_0.2x', not --model shufflenetv2_0.25x",
         2),
        (ft + ["--pretrained", str(d / "released-resnet.pth")], "does not match model 'shufflenetv2_0.25x'", 2),
        (ft + ["--pretrained", str(d / "good.pt"), "--pretrained-format", "released"],
         "is an e3d checkpoint, not --pretrained-format released", 2),
        (ev + ["--checkpoint", str(d / "other-classes.pt")], "trained on other classes", 2),
        (ev + ["--checkpoint", str(d / "good.pt"), "--split", "test9"], "no split 'test9'", 2),
        (ev + ["--checkpoint", str(d / "garbage.pth")], "not a readable PyTorch checkpoint", 2),
        (ev + ["--checkpoint", str(d)], "is a directory, not a checkpoint file", 2),
        (ev + ["--checkpoint", str(d / "released-resnet.pth")], "not an e3d checkpoint", 2),
        (ev + ["--checkpoint", str(d / "good.pt"), "--batch-size", "0"], "--batch-size must be >= 1", 2),
        (sweep + ["--grid", str(d / "grid-unknown-key.yaml")], "unknown grid keys ['width']", 2),
        (sweep + ["--grid", str(d / "grid-slash.yaml")], "trial name '../escape' is not a plain folder name", 2),
        (sweep + ["--grid", str(d / "grid-sub.yaml")], "trial name 'a/b' is not a plain folder name", 2),
        (sweep + ["--grid", str(d / "grid-no-model.yaml")], "each entry of trials needs a model name", 2),
        (sweep + ["--grid", str(d / "missing.yaml")], "missing.yaml", 2),
        (sweep + ["--models", "shufflenetv2_0.25x", "--set", "epoch=3"], "epoch (did you mean epochs?)", 2),
        (sweep + ["--models", "nosuchnet"], "the grid selects no trial", 2),
        (sweep + ["--models", "shufflenetv2_0.25x", "--workers-per-trial", "3"],
         "batch_size 128 does not split evenly over --workers-per-trial 3", 2),
        (sweep + ["--models", "shufflenetv2_0.25x", "--out", str(d / "foreign")], "thesis.tex", 2),
        (pre + ["--timeout", "-5"], "--timeout must be > 0 seconds, got -5.0", 2),
        (pre + ["--max-failed", "1.5"], "--max-failed is a fraction in [0, 1]", 2),
        (pre + ["--max-frames", "0"], "--max-frames must be >= 1, got 0", 2),
        (pre[:3] + [str(d / "nowhere")] + pre[4:], "--src", 2),
        (["demo", "--workdir", str(d / "my-files"), "--fresh"], "which e3d demo did not create", 2),
    ]


def test_bad_input_gives_one_line_and_exit_2_before_ray(bad_inputs, tiny_shards, capsys,  # noqa: F811
                                                        monkeypatch):
    import pipeline.demo
    import preprocess.ray_tasks
    import shards.raycluster
    import training.ray_train

    def ray_must_not_start(*_a, **_k):
        raise AssertionError("Ray was started before the input was checked")

    # the one init_ray and every module that bound it at import
    for mod in (shards.raycluster, training.ray_train, preprocess.ray_tasks, pipeline.demo):
        monkeypatch.setattr(mod, "init_ray", ray_must_not_start)

    rows, failures = [], []
    for argv, fragment, code in _cases(tiny_shards, bad_inputs):
        t0 = time.perf_counter()
        got = main(argv)
        seconds = time.perf_counter() - t0
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        cmd = argv[0]
        line = lines[-1] if lines else ""
        ok = (got == code and len(lines) == 1 and line.startswith(f"e3d {cmd}: error: ") and fragment in line)
        if not ok:
            failures.append(f"{argv}: exit {got}, stderr {captured.err!r}, want {fragment!r}")
        shown = " ".join(a.replace(str(bad_inputs), "BAD").replace(tiny_shards, "SHARDS") for a in argv)
        rows.append((shown, line.replace(str(bad_inputs), "BAD").replace(tiny_shards, "SHARDS"), got, seconds))
    # the --fresh refusal deleted nothing
    assert (bad_inputs / "my-files" / "keep.txt").read_text() == "mine"
    with capsys.disabled():
        print("\n| command | message | exit | s |\n|---|---|---|---|")
        for shown, line, got, seconds in rows:
            print(f"| `e3d {shown}` | {line[:160]} | {got} | {seconds:.2f} |")
    assert not failures, "\n".join(failures)


def test_trial_names_stay_under_out():
    for bad in ("..", ".", "", "a/b", "../x", "/abs", "a\\b", ".hidden", "nul\x00"):
        with pytest.raises(InputError):
            check_trial_name(bad)
    for good in ("shufflenetv2_0.25x", "mobilenetv2_w0.5_v1", "a-b.c"):
        check_trial_name(good)


def test_demo_fresh_deletes_only_its_own_folder(tmp_path):
    from pipeline.demo import DEMO_MARKER, prepare_workdir, run_demo

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="did not create"):
        run_demo(str(mine), fresh=True, train=False)
    prepare_workdir(mine, fresh=False)  # reused without --fresh: still not marked as the demo's
    assert (mine / "notes.txt").exists() and not (mine / DEMO_MARKER).exists()
    demo = prepare_workdir(tmp_path / "demo", fresh=False)  # a folder the demo creates is marked...
    (demo / "shards").mkdir()
    prepare_workdir(demo, fresh=True)  # ...so --fresh empties it
    assert sorted(p.name for p in demo.iterdir()) == [DEMO_MARKER]


def test_failure_policy_raises_bad_input_at_once_and_retries_the_rest():
    from ray.train import FailureConfig
    from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision
    from ray.train.v2.api.exceptions import WorkerGroupError

    from training.ray_train import _failure_policy, input_error_of

    policy = _failure_policy(DefaultFailurePolicy(FailureConfig(max_failures=5)))
    bad = WorkerGroupError("rank 0 failed", {0: ValueError("no split 'x'"), 1: ConnectionResetError("peer gone")})
    lost = WorkerGroupError("rank 1 died", {1: RuntimeError("worker killed")})
    assert isinstance(input_error_of(bad), ValueError) and input_error_of(lost) is None
    assert policy.make_decision(bad) == FailureDecision.RAISE
    assert policy.make_decision(lost) == FailureDecision.RETRY  # a lost worker is still retried


def test_pretrained_on_object_storage_is_checked_and_loaded_through_storage(
        s3_endpoint, bad_inputs, tiny_shards, tmp_path):  # noqa: F811
    import boto3
    import pyarrow.fs as pafs

    from pipeline.checks import check_train
    from training.loop import build_model

    bucket = "e3d-pretrained"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    fs = pafs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http")
    with fs.open_output_stream(f"{bucket}/k600/good.pt") as f:
        f.write((bad_inputs / "good.pt").read_bytes())
    with fs.open_output_stream(f"{bucket}/k600/garbage.pth") as f:
        f.write(b"garbage" * 10)
    uri = f"s3://{bucket}/k600/good.pt"
    cfg = TrainConfig.finetune_preset("jester", tiny_shards, str(tmp_path / "ft"), pretrained=uri,
                                      model="shufflenetv2_0.25x", batch_size=4)
    checked = check_train(cfg, workers=2, resume=False)
    assert checked.pretrained_format == "ours"  # resolved on the driver: workers never guess from the file
    model, *_ = build_model(checked, num_classes=3)
    src = torch.load(bad_inputs / "good.pt", weights_only=True)["state_dict"]
    key = next(k for k in src if k.startswith("conv1"))
    assert torch.equal(model.state_dict()[key], src[key])  # the backbone came from the bucket
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        check_train(cfg.replace(pretrained=f"s3://{bucket}/k600/garbage.pth"), workers=2, resume=False)
    assert json.dumps(checked.to_dict())  # still a plain, saveable config


@pytest.mark.slow
@pytest.mark.ray
def test_bad_input_inside_the_workers_comes_back_as_one_input_error(ray_local, tiny_shards, tmp_path):  # noqa: F811
    """What the driver cannot see (here a split the pre-flight check would have refused, passed to Ray Train
    directly) fails on the workers: the run stops on the first attempt despite max_failures=2 (the policy
    test above shows the decision) and the driver raises the worker's message as an InputError."""
    from training.ray_train import run_training

    cfg = TrainConfig.for_dataset("jester", tiny_shards, str(tmp_path / "run"), model="shufflenetv2_0.25x",
                                  clip_len=8, size=32, batch_size=4, loader_workers=0, epochs=1,
                                  val_split="no-such-split")
    with pytest.raises(InputError, match="training failed on a worker: .*no-such-split"):
        run_training(cfg, workers=2, max_failures=2)


_NO_TORCH_PROBE = """
import json, sys
from pipeline.cli import main
for argv in json.load(sys.stdin):
    main(argv)
    heavy = sorted(m for m in ("torch", "ray") if m in sys.modules)
    if heavy:
        print(json.dumps({"argv": argv, "imported": heavy}))
        break
"""


def test_bad_input_is_found_without_importing_torch_or_ray(bad_inputs, tiny_shards):  # noqa: F811
    """Issue 15's "in under 2 s" as a property, not a timing: ``import torch`` alone costs ~1.5 s on a 2-vCPU
    machine, so every mistake of the table is found with neither torch nor Ray imported (the model catalog
    and the checkpoint header reader do without). One fresh interpreter runs the cases in order and names the
    first that imports either."""
    import json
    import subprocess
    import sys

    cases = [argv for argv, _fragment, _code in _cases(tiny_shards, bad_inputs)]
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH_PROBE], input=json.dumps(cases), capture_output=True,
                          text=True, timeout=300, cwd=str(Path(__file__).resolve().parents[1]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"a bad-input case imported a heavy module: {proc.stdout}"
    assert proc.stderr.count(": error: ") == len(cases)  # each case did fail with its one line
