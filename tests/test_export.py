"""``e3d export``: every registered model exports to ONNX and TorchScript with the normalisation inside and
matches eager PyTorch on random uint8 clips; class names travel in the file; our and released checkpoints
export through the CLI."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.export import parity
from training.checkpoints import ours_to_upstream, save_checkpoint
from training.data import ClipNormalizer, normalization_for
from training.export import DeployModel, example_input, export, metadata, onnx_session, read_metadata, run_exported
from training.models import get_model, list_models

# The smallest input every registered model accepts quickly on 2 cores; batch 1 exported, batch 2 checked (the
# batch axis is dynamic).
CLIP, SIZE = 8, 32
CLASSES = [f"class {i}" for i in range(7)]


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_exports_with_eager_parity(name, tmp_path):
    torch.manual_seed(0)
    model = get_model(name, num_classes=len(CLASSES)).eval()
    norm = normalization_for(checkpoint="released-kinetics600")  # BGR + mean: the convention is in the graph
    deploy = DeployModel(model, norm)
    meta = metadata(model=name, classes=CLASSES, clip_len=CLIP, size=SIZE, norm=norm)
    x = example_input(2, CLIP, SIZE, seed=1)
    with torch.no_grad():
        ref = model(ClipNormalizer(norm)(x))  # the evaluation's path: uint8 → ClipNormalizer → model
    assert ref.abs().max() > 0
    t0 = time.perf_counter()
    for fmt, ext in (("onnx", ".onnx"), ("torchscript", ".pt")):
        path = export(deploy, fmt, tmp_path / f"m{ext}", example=example_input(1, CLIP, SIZE), meta=meta)
        got = run_exported(path, x)
        assert got.shape == ref.shape and got.dtype == torch.float32
        rel = parity(ref, got)
        assert rel <= 1e-4, (fmt, rel)
        assert read_metadata(path)["classes"] == CLASSES
    print(f"{name}: onnx + torchscript in {time.perf_counter() - t0:.1f} s")


def _our_checkpoint(path, name="shufflenetv2_0.25x"):
    from training.config import TrainConfig

    model = get_model(name, num_classes=len(CLASSES))
    cfg = TrainConfig.for_dataset("ucf101", "/nonexistent/shards", str(path.parent), model=name, clip_len=8,
                                  size=32)
    save_checkpoint(path, model, extra={"train_config": cfg.to_dict(), "normalization": None, "classes": CLASSES})
    return model.eval()


def test_cli_exports_our_checkpoint_to_onnx_uint8_in_logits_out(tmp_path, capsys):
    model = _our_checkpoint(tmp_path / "checkpoint.pt")
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--format", "onnx", "--out", str(out)]) == 0
    assert "of the logits' scale" in capsys.readouterr().out
    meta = read_metadata(out)
    assert meta["classes"] == CLASSES and meta["input"]["dtype"] == "uint8"
    assert (meta["input"]["clip_len"], meta["input"]["size"], meta["model"]) == (8, 32, "shufflenetv2_0.25x")
    # a deployment needs only onnxruntime: uint8 in, logits out, equal to the evaluation's path
    sess = onnx_session(out, threads=1)
    (inp,) = sess.get_inputs()
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == [3, 8, 32, 32]
    x = example_input(3, 8, 32, seed=5)
    (logits,) = sess.run(None, {inp.name: x.numpy()})
    with torch.no_grad():
        ref = model(ClipNormalizer(normalization_for("ucf101"))(x)).numpy()
    assert logits.shape == (3, len(CLASSES))
    assert np.abs(logits - ref).max() <= 1e-4 * np.abs(ref).max()


def test_cli_exports_released_checkpoint_to_torchscript(tmp_path):
    name = "mobilenetv2_0.2x"
    model = get_model(name, num_classes=27).eval()
    torch.save({"epoch": 9, "arch": "mobilenetv2", "best_prec1": 0.8,
                "state_dict": ours_to_upstream(model.state_dict(), model)}, tmp_path / "jester_mnv2.pth")
    names = tmp_path / "jester.txt"
    names.write_text("".join(f"gesture_{i}\n" for i in range(27)))
    out = tmp_path / "jester.pt"
    assert main(["export", "--checkpoint", str(tmp_path / "jester_mnv2.pth"), "--model", name, "--classes",
                 str(names), "--format", "torchscript", "--out", str(out), "--clip-len", "8", "--size", "32"]) == 0
    meta = read_metadata(out)
    assert meta["classes"][26] == "gesture_26" and meta["dataset"] == "jester"
    loaded = torch.jit.load(str(out))
    x = example_input(2, 8, 32, seed=2)
    from training.models.convention import RELEASED_JESTER

    with torch.no_grad():
        ref = model(RELEASED_JESTER.normalize(x))
        got = loaded(x)
    assert parity(ref, got) <= 1e-4
    # class names that do not fit the head are refused (exit 2, message on stderr)
    bad = tmp_path / "three.txt"
    bad.write_text("a\nb\nc\n")
    assert main(["export", "--checkpoint", str(tmp_path / "jester_mnv2.pth"), "--model", name, "--classes",
                 str(bad), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 2
