"""Checkpoints: released-format import (round trip), refusal of wrong architectures, our own format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from training.checkpoints import (
    CheckpointMismatchError,
    load_checkpoint,
    load_released_checkpoint,
    save_checkpoint,
)
from training.models import InputConvention, get_model
from training.models.convention import RELEASED_JESTER, RELEASED_KINETICS


def _upstream_name(key: str) -> str:
    """Our key -> the released code's, written out independently of training.checkpoints: DataParallel's
    ``module.`` prefix and ShuffleNetV2's ``banch`` spelling."""
    return "module." + key.replace(".branch1.", ".banch1.").replace(".branch2.", ".banch2.")


def _fake_released(model: nn.Module, arch: str, path: Path, legacy: bool = False) -> Path:
    """Write ``model`` the way the released training script did (epoch, arch, state_dict, optimizer, best)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, dampening=0.9, weight_decay=1e-3)
    model.train()
    # One step: momentum buffers in the optimizer state, BN statistics moved away from their initial values.
    nn.functional.cross_entropy(model(torch.randn(2, 3, 4, 32, 32)), torch.tensor([0, 1])).backward()
    optimizer.step()
    payload = {
        "epoch": 42,
        "arch": arch,
        "state_dict": {_upstream_name(k): v.clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "best_prec1": 46.1,
    }
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path


def _assert_same_outputs(model: nn.Module, reference: nn.Module, batch: int) -> None:
    """Both in eval mode, on one random ``(batch, 3, 4, 32, 32)`` float32 clip: finite, bit-identical scores."""
    model.eval()
    reference.eval()
    x = torch.randn(batch, 3, 4, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, reference(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "arch", "num_classes", "legacy"),
    [
        ("shufflenetv2_0.25x", "shufflenetv2", 600, False),
        ("shufflenetv1_0.5x", "shufflenet", 27, True),
        ("mobilenetv1_0.5x", "mobilenet", 600, False),
        ("mobilenetv2_0.2x", "mobilenetv2", 27, False),
        ("squeezenet1_1", "squeezenet", 600, True),
    ],
)
def test_released_checkpoint_round_trip(
    tmp_path: Path, name: str, arch: str, num_classes: int, legacy: bool
) -> None:
    torch.manual_seed(0)
    source = get_model(name, num_classes=num_classes)
    path = _fake_released(source, arch, tmp_path / f"{name}.pth", legacy=legacy)
    raw_keys = torch.load(path, weights_only=True)["state_dict"].keys()
    assert all(k.startswith("module.") for k in raw_keys)
    if name.startswith("shufflenetv2"):
        assert "module.features.0.banch1.0.weight" in raw_keys
        assert not any(".branch" in k for k in raw_keys)

    model, info = load_released_checkpoint(path, name)

    assert info.arch == arch and info.epoch == 42 and info.best_prec1 == pytest.approx(46.1)
    assert info.num_classes == num_classes  # taken from the checkpoint's head
    expected_convention = RELEASED_KINETICS if num_classes == 600 else RELEASED_JESTER
    assert info.input_convention == expected_convention == model.input_convention
    assert info.dataset == ("kinetics" if num_classes == 600 else "jester")
    assert not model.training
    loaded = model.state_dict()
    reference = source.state_dict()
    assert loaded.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(loaded[key], value), key
    _assert_same_outputs(model, source, batch=2)


def test_wrong_architecture_is_refused(tmp_path: Path) -> None:
    source = get_model("shufflenetv2_0.25x", num_classes=600)
    path = _fake_released(source, "shufflenetv2", tmp_path / "sn2.pth")
    with pytest.raises(CheckpointMismatchError) as err:
        load_released_checkpoint(path, "mobilenetv2_1.0x")
    msg = str(err.value)
    assert "'shufflenetv2'" in msg and "'mobilenetv2_1.0x'" in msg and "'mobilenetv2'" in msg

    # Without the arch check (or a file whose arch string lies), the tensors themselves are refused.
    with pytest.raises(CheckpointMismatchError) as err:
        load_released_checkpoint(path, "mobilenetv2_1.0x", check_arch=False, num_classes=600)
    msg = str(err.value)
    assert "upstream arch 'mobilenetv2'" in msg
    assert "missing key(s): features.0.0.weight" in msg
    assert "unexpected key(s): conv1.0.weight" in msg


def test_wrong_width_lists_shape_mismatches(tmp_path: Path) -> None:
    source = get_model("shufflenetv2_0.25x", num_classes=600)
    path = _fake_released(source, "shufflenetv2", tmp_path / "sn2.pth")
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatch\(es\): .*\(16, 24, 1, 1, 1\)"):
        load_released_checkpoint(path, "shufflenetv2_1.0x")
    with pytest.raises(CheckpointMismatchError, match=r"classifier\.1\.weight: checkpoint \(600, 1024\)"):
        load_released_checkpoint(path, "shufflenetv2_0.25x", num_classes=27, dataset="jester")


def test_old_checkpoint_without_num_batches_tracked_loads(tmp_path: Path) -> None:
    source = get_model("mobilenetv2_0.2x", num_classes=27)
    state = {_upstream_name(k): v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    torch.save({"epoch": 1, "arch": "mobilenetv2", "state_dict": state}, tmp_path / "old.pth")
    model, info = load_released_checkpoint(tmp_path / "old.pth", "mobilenetv2_0.2x")
    assert info.num_classes == 27 and info.best_prec1 is None
    assert torch.equal(model.classifier[1].weight, source.classifier[1].weight)


def test_bare_state_dict_and_family_name(tmp_path: Path) -> None:
    source = get_model("mobilenetv1", num_classes=101, width_mult=0.25)
    torch.save({_upstream_name(k): v for k, v in source.state_dict().items()}, tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="input convention of a 101-class checkpoint"):
        load_released_checkpoint(tmp_path / "bare.pth", "mobilenetv1", width_mult=0.25)
    model, info = load_released_checkpoint(
        tmp_path / "bare.pth", "mobilenetv1", width_mult=0.25, dataset="kinetics"
    )
    assert info.arch is None and info.num_classes == 101 and info.input_convention == RELEASED_KINETICS
    assert model.config.kwargs == {"width_mult": 0.25}


def test_own_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = get_model("shufflenetv2", num_classes=10, width_mult=0.5, dropout=0.3)
    convention = InputConvention(1.0, (0.45, 0.45, 0.4), (0.225, 0.225, 0.225), "RGB", note="ours")
    model.input_convention = convention
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    nn.functional.cross_entropy(model(torch.randn(2, 3, 4, 32, 32)), torch.tensor([0, 9])).backward()
    optimizer.step()
    path = tmp_path / "run" / "epoch3.pt"
    save_checkpoint(path, model, epoch=3, optimizer=optimizer, metrics={"top1": 0.5}, extra={"seed": 1})
    assert not path.with_name("epoch3.pt.tmp").exists()

    loaded, ckpt = load_checkpoint(path)  # weights_only=True inside
    assert loaded.config == model.config
    assert loaded.input_convention == convention
    assert (ckpt["epoch"], ckpt["metrics"], ckpt["extra"]) == (3, {"top1": 0.5}, {"seed": 1})
    assert loaded.classifier[0].p == 0.3
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    resumed = torch.optim.SGD(loaded.parameters(), lr=1e-3, momentum=0.9)
    resumed.load_state_dict(ckpt["optimizer"])
    assert len(resumed.state) == len(optimizer.state)
    _assert_same_outputs(loaded, model, batch=1)


def test_own_checkpoint_of_wrapped_model(tmp_path: Path) -> None:
    """A DataParallel-style wrapper (``.module``) is unwrapped: no ``module.`` prefix in our files."""

    class Wrapper(nn.Module):
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    inner = get_model("squeezenet1_1", num_classes=4)
    save_checkpoint(tmp_path / "w.pt", Wrapper(inner))
    loaded, ckpt = load_checkpoint(tmp_path / "w.pt")
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    assert loaded.config.name == "squeezenet1_1"


def test_formats_are_not_confused(tmp_path: Path) -> None:
    released = _fake_released(get_model("squeezenet1_1", num_classes=27), "squeezenet", tmp_path / "r.pth")
    with pytest.raises(CheckpointMismatchError, match="use load_released_checkpoint"):
        load_checkpoint(released)
    with pytest.raises(ValueError, match="no .config"):
        save_checkpoint(tmp_path / "x.pt", nn.Linear(2, 2))


def test_checkpoint_carries_the_normalisation_it_was_trained_with(tmp_path: Path) -> None:
    """The convention stored next to the weights is what evaluation normalises with; a checkpoint written
    before training kept it in sync (default convention stored, preset named in extra) still gets its preset."""
    from training.data import PRESETS
    from training.evaluate import stored_convention

    model = get_model("shufflenetv2", num_classes=3, width_mult=0.25)
    model.input_convention = PRESETS["imagenet"]
    save_checkpoint(tmp_path / "new.pt", model, epoch=0, extra={"normalization": "imagenet"})
    loaded, ckpt = load_checkpoint(tmp_path / "new.pt")
    assert stored_convention(loaded, ckpt) == PRESETS["imagenet"] == loaded.input_convention
    model.input_convention = PRESETS["paper"]  # what training wrote before, whatever the preset
    save_checkpoint(tmp_path / "old.pt", model, epoch=0, extra={"normalization": "released-kinetics600"})
    loaded, ckpt = load_checkpoint(tmp_path / "old.pt")
    assert stored_convention(loaded, ckpt) == PRESETS["released-kinetics600"]
    save_checkpoint(tmp_path / "plain.pt", model, epoch=0)
    loaded, ckpt = load_checkpoint(tmp_path / "plain.pt")
    assert stored_convention(loaded, ckpt) == PRESETS["paper"]
