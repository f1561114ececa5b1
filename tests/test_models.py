"""Models: registry, forward/backward of every registered model, exact parameter counts, layout facts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from training.models import (
    BASELINES,
    TABLE8,
    InputConvention,
    Table8Entry,
    UnknownModelError,
    get_entry,
    get_model,
    list_models,
    register_model,
)
from training.models import registry as registry_module
from training.models.common import channel_shuffle
from training.models.convention import RELEASED_KINETICS
from training.models.shufflenetv1 import ShuffleBottleneck
from training.speed import main as speed_main

ALL_MODELS = list_models()
# Extra configurations of the family builders (groups, widths outside Table 8, shortcut B).
EXTRA_CONFIGS = [
    ("shufflenetv1", {"groups": 1}),
    ("shufflenetv1", {"groups": 2}),
    ("shufflenetv1", {"groups": 4}),
    ("shufflenetv1", {"groups": 8}),
    ("shufflenetv1", {"groups": 3, "width_mult": 0.25}),
    ("shufflenetv2", {"width_mult": 0.5}),
    ("shufflenetv2", {"width_mult": 0.75}),
    ("mobilenetv1", {"width_mult": 0.25}),
    ("mobilenetv2", {"width_mult": 1.4}),
    ("resnet18", {"shortcut": "B"}),
    ("resnet50", {"shortcut": "A"}),
]
REFERENCE_SIZES = [(16, 56, 56), (8, 28, 28), (4, 14, 14), (2, 7, 7), (1, 4, 4)]
# 48-86 M parameters: building and back-propagating these takes ~1-2 s each on 2 idle cores, more under load.
BIG = {"resnet34", "resnet101", "resnext101"}
ALL_MODELS_MARKED = [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in ALL_MODELS]


def _meta(name: str, num_classes: int = 600, **kw: object) -> nn.Module:
    with torch.device("meta"):
        return get_model(name, num_classes=num_classes, **kw)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------- registry


def test_registry_has_every_table8_config_and_baseline() -> None:
    assert len(TABLE8) == 17
    assert len({e.name for e in TABLE8}) == 17
    for entry in [*TABLE8, *BASELINES]:
        assert entry.name in ALL_MODELS
    for name in ["resnet18", "resnet34", "resnet50", "resnet101", "resnext101", "squeezenet1_0"]:
        assert name in ALL_MODELS
    assert list_models("shufflenetv2") == [n for n in ALL_MODELS if n.startswith("shufflenetv2")]


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownModelError) as err:
        get_model("shufflenetv2_1.0")
    msg = str(err.value)
    assert "'shufflenetv2_1.0'" in msg
    assert "Did you mean" in msg and "'shufflenetv2_1.0x'" in msg
    for name in ALL_MODELS:
        assert name in msg


def test_name_fixed_options_cannot_be_overridden() -> None:
    with pytest.raises(TypeError, match=r"fixes width_mult=1\.0.*'shufflenetv2'"):
        get_model("shufflenetv2_1.0x", width_mult=2.0)


def test_unexpected_option_is_named() -> None:
    with pytest.raises(TypeError, match=r"unexpected option\(s\) \['width_mult'\].*dropout"):
        get_model("squeezenet1_1", width_mult=0.5)
    with pytest.raises(ValueError, match="num_classes"):
        get_model("shufflenetv2_0.25x", num_classes=0)


def test_register_model_decorator(monkeypatch: pytest.MonkeyPatch) -> None:
    # A private copy of the registry, so the test model does not leak into other tests.
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))

    @register_model("tiny_test_net_wide", width=8)
    @register_model()
    def tiny_test_net(num_classes: int = 600, width: int = 4) -> nn.Module:
        """A one-conv test net."""
        pool = nn.AdaptiveAvgPool3d(1)
        return nn.Sequential(nn.Conv3d(3, width, 1), pool, nn.Flatten(), nn.Linear(width, num_classes))

    assert {"tiny_test_net", "tiny_test_net_wide"} <= set(list_models())
    assert get_entry("tiny_test_net_wide").family == "tiny_test_net"
    assert get_entry("tiny_test_net").summary == "A one-conv test net."
    model = get_model("tiny_test_net_wide", num_classes=3)
    assert model[0].out_channels == 8
    assert model.config.name == "tiny_test_net_wide" and model.config.num_classes == 3
    assert model.config.build()[0].out_channels == 8
    assert model(torch.zeros(2, 3, 2, 4, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny_test_net")(tiny_test_net)
    with pytest.raises(TypeError, match="no parameter"):
        register_model("tiny_bad", depth=3)(tiny_test_net)


def test_model_carries_config_and_input_convention() -> None:
    model = get_model("shufflenetv2", num_classes=27, width_mult=0.5, dropout=0.5)
    assert model.config.to_dict() == {
        "name": "shufflenetv2",
        "num_classes": 27,
        "kwargs": {"width_mult": 0.5, "dropout": 0.5},
    }
    assert isinstance(model.input_convention, InputConvention)
    assert model.classifier[0].p == 0.5


# ---------------------------------------------------------------------------- every registered model


@pytest.mark.parametrize("name", ALL_MODELS_MARKED)
def test_train_step_reaches_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, num_classes=5).train()
    # Batch 2: with batch 1, training-mode BN on a 1x1x1 final map has a single value per channel.
    logits = model(torch.randn(2, 3, 8, 32, 32))
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters outside the graph: {no_grad}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad
    assert sum(p.grad.abs().sum() for p in model.parameters()) > 0


@pytest.mark.parametrize("name", ALL_MODELS_MARKED)
def test_eval_accepts_any_clip_size(name: str) -> None:
    model = get_model(name, num_classes=4).eval()
    with torch.no_grad():
        for shape in [(1, 3, 1, 1, 1), (1, 3, 5, 23, 19), (3, 3, 8, 32, 32)]:
            assert model(torch.randn(shape)).shape == (shape[0], 4), shape


@pytest.mark.parametrize("name", ALL_MODELS)
def test_reference_feature_map_sizes(name: str) -> None:
    """16x112x112 -> 16x56x56 after the stem, then 8x28x28, 4x14x14, 2x7x7, 1x4x4 (meta device)."""
    model = _meta(name).eval()
    sizes: list[tuple[int, ...]] = []

    def record(module: nn.Module, inputs: object, out: torch.Tensor) -> None:
        size = tuple(out.shape[2:])
        if size not in sizes:
            sizes.append(size)

    for m in model.modules():
        if isinstance(m, nn.Conv3d | nn.MaxPool3d):
            m.register_forward_hook(record)
    out = model(torch.zeros(1, 3, 16, 112, 112, device="meta"))
    assert out.shape == (1, 600)
    assert sizes == REFERENCE_SIZES


@pytest.mark.parametrize(("name", "kwargs"), EXTRA_CONFIGS, ids=lambda v: str(v))
def test_family_options_build_and_run(name: str, kwargs: dict[str, object]) -> None:
    model = get_model(name, num_classes=3, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 4, 32, 32)).shape == (1, 3)


def test_channels_last_3d_gives_same_logits() -> None:
    torch.manual_seed(0)
    for name in ["shufflenetv2_0.25x", "shufflenetv1_0.5x"]:
        model = get_model(name, num_classes=6).eval()
        x = torch.randn(2, 3, 8, 32, 32)
        with torch.no_grad():
            ref = model(x)
            model.to(memory_format=torch.channels_last_3d)
            out = model(x.contiguous(memory_format=torch.channels_last_3d))
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------- exact parameter counts


@pytest.mark.parametrize("entry", [*TABLE8, *BASELINES], ids=lambda e: e.name)
def test_parameter_count_equals_released_code(entry: Table8Entry) -> None:
    n = _n_params(_meta(entry.name, **entry.kwargs))
    assert n == entry.released_params
    if entry in TABLE8:  # Table 8's ResNet params do not match the released code (see table8.py)
        assert round(n / 1e6, 2) == entry.paper_params_m


@pytest.mark.parametrize(
    ("name", "num_classes", "kwargs", "expected"),
    [
        # Released-code counts for configurations outside Table 8 (600 classes unless noted).
        ("resnet18", 600, {"shortcut": "B"}, 33_511_704),
        ("resnet50", 600, {"shortcut": "B"}, 47_428_376),
        ("resnet101", 600, {"shortcut": "B"}, 86_474_520),
        ("squeezenet1_0", 600, {}, 2_239_768),
        ("shufflenetv2", 600, {"width_mult": 0.5}, 976_664),
        # Jester (27) and UCF-101 (101) heads.
        ("shufflenetv1_0.5x", 27, {}, 270_159),
        ("shufflenetv2_2.0x", 27, {}, 5_465_739),
        ("mobilenetv1_1.0x", 27, {}, 3_325_659),
        ("mobilenetv2_1.0x", 27, {}, 2_388_635),
        ("squeezenet1_1", 27, {}, 1_851_611),
        ("mobilenetv2_0.45x", 101, {}, 760_615),
        ("shufflenetv1_2.0x", 101, {}, 3_800_309),
    ],
)
def test_parameter_count_other_configs(name: str, num_classes: int, kwargs: dict, expected: int) -> None:
    assert _n_params(_meta(name, num_classes, **kwargs)) == expected


# ------------------------------------------------------------------------- structure facts of the release


@pytest.mark.parametrize(
    ("name", "n_tensors", "keys"),
    [
        ("mobilenetv1_1.0x", 164, ["features.0.0.weight", "features.13.conv2.weight", "classifier.1.bias"]),
        ("mobilenetv2_1.0x", 314, ["features.1.conv.4.running_var", "features.17.conv.7.weight"]),
        ("shufflenetv1_1.0x", 296, ["conv1.0.weight", "layer3.3.bn3.num_batches_tracked"]),
        ("shufflenetv2_1.0x", 338, ["features.0.branch1.3.weight", "features.15.branch2.6.bias"]),
        ("squeezenet1_1", 177, ["features.0.bias", "features.14.expand3x3_bn.weight", "classifier.1.weight"]),
    ],
)
def test_state_dict_layout_matches_release(name: str, n_tensors: int, keys: list[str]) -> None:
    sd = _meta(name).state_dict()
    assert len(sd) == n_tensors
    for key in keys:
        assert key in sd


def test_shufflenetv1_first_pointwise_conv_is_ungrouped_only_at_width_1() -> None:
    groups = {w: _meta(f"shufflenetv1_{w}x").layer1[0].conv1.groups for w in ("0.5", "1.0", "1.5", "2.0")}
    assert groups == {"0.5": 3, "1.0": 1, "1.5": 3, "2.0": 3}
    assert _meta("shufflenetv1_0.5x").conv1[0].out_channels == 12  # the stem is scaled too


def test_width_rules() -> None:
    m = _meta("mobilenetv2_0.7x")
    assert [m.features[i].conv[-1].num_features for i in (12, 13)] == [67, 67]  # int(96 * 0.7)
    assert m.features[18][0].out_channels == 1280  # 1280 kept for width <= 1
    assert _meta("mobilenetv2", width_mult=1.4).features[18][0].out_channels == int(1280 * 1.4)
    v1 = _meta("mobilenetv1_1.0x")
    assert v1.features[1].conv1.stride == (2, 2, 2) and v1.features[13].conv1.stride == (1, 1, 1)
    assert _meta("shufflenetv2_2.0x").conv_last[0].out_channels == 2048
    assert _meta("shufflenetv2_2.0x").features[0].branch2[0].out_channels == 112  # 224 / 2, not 244 / 2
    assert _meta("squeezenet1_1").features[4].squeeze.bias is not None
    assert _meta("shufflenetv2_1.0x").conv1[0].bias is None


def test_invalid_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="groups must be one of"):
        get_model("shufflenetv1", groups=5)
    with pytest.raises(ValueError, match="do not divide"):
        get_model("shufflenetv1", groups=8, width_mult=0.3)
    with pytest.raises(ValueError, match="width_mult"):
        get_model("mobilenetv2", width_mult=0.0)
    with pytest.raises(ValueError, match="shortcut"):
        get_model("resnet18", shortcut="C")
    with pytest.raises(ValueError, match="version"):
        from training.models.squeezenet import squeezenet

        squeezenet(version="2.0")


def test_shufflenetv1_shortcut_equals_released_pool_for_even_clips() -> None:
    """Our explicit-padding shortcut must give the released AvgPool3d((2,3,3), 2, padding (0,1,1)) values."""
    torch.manual_seed(0)
    block = ShuffleBottleneck(12, 120, stride=2, groups=3).eval()
    released_pool = nn.AvgPool3d((2, 3, 3), stride=2, padding=(0, 1, 1))
    for shape in [(2, 12, 4, 8, 8), (1, 12, 6, 7, 9)]:
        x = torch.randn(shape)
        with torch.no_grad():
            y = block(x)
        torch.testing.assert_close(y[:, -12:], torch.relu(released_pool(x)))


def test_channel_shuffle_interleaves_groups() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    with pytest.raises(ValueError):
        channel_shuffle(x, 4)


def test_squeezenet_scores_are_non_negative() -> None:
    model = get_model("squeezenet1_1", num_classes=9).eval()
    with torch.no_grad():
        assert (model(torch.randn(2, 3, 4, 32, 32)) >= 0).all()


def test_input_convention_normalize() -> None:
    clip = torch.zeros(1, 3, 2, 1, 1, dtype=torch.uint8)
    clip[:, 0] = 200  # red
    clip[:, 2] = 10  # blue
    out = RELEASED_KINETICS.normalize(clip)
    assert out.dtype == torch.float32 and out.shape == clip.shape
    mean = RELEASED_KINETICS.mean
    # BGR: channel 0 holds blue, and the first listed mean is subtracted from it.
    assert out[0, :, 0, 0, 0].tolist() == pytest.approx([10 - mean[0], 0 - mean[1], 200 - mean[2]])
    unit = InputConvention(1.0, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "RGB")
    assert unit.normalize(clip[0])[:, 0, 0, 0].tolist() == pytest.approx(
        [(200 / 255 - 0.5) / 0.25, -2.0, (10 / 255 - 0.5) / 0.25]
    )
    assert InputConvention.from_dict(RELEASED_KINETICS.to_dict()) == RELEASED_KINETICS
    with pytest.raises(ValueError):
        InputConvention(255.0, (0, 0, 0), (1, 1, 1), "BRG")  # type: ignore[arg-type]


def test_speed_bench_smoke(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The bench runs every mode x layout on CPU and reports positive throughput (tiny clips, one iteration)."""
    out_json = tmp_path / "bench.json"
    argv = ["--models", "shufflenetv2_0.25x", "--batch-size", "2", "--frames", "4", "--size", "16"]
    assert speed_main([*argv, "--iters", "1", "--warmup", "1", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "shufflenetv2_0.25x" in printed and "channels_last_3d" in printed and "clips/s" in printed
    rows = json.loads(out_json.read_text())["results"]
    assert {(r["mode"], r["layout"]) for r in rows} == {
        (m, layout) for m in ("infer", "train") for layout in ("contiguous", "channels_last_3d")
    }
    assert all(r["clips_per_s"] > 0 and not r["error"] for r in rows)
    with pytest.raises(SystemExit, match="unknown model"):
        speed_main(["--models", "nope"])


def test_the_torch_free_catalog_equals_the_live_registry():
    """``training.models.catalog`` reads names, options and upstream ``arch`` from the source (so the command
    line checks them before torch loads); it must say exactly what importing the modules registers."""
    import subprocess
    import sys

    from training.checkpoints import upstream_arch
    from training.models.catalog import catalog

    names = list_models()
    assert list(catalog()) == names
    for name in names:
        live, static = get_entry(name), catalog()[name]
        assert static.family == live.family, name
        assert dict(static.fixed) == dict(live.fixed), name
        assert dict(static.free) == live.free_kwargs(), name
        with torch.device("meta"):
            model = get_model(name, num_classes=2)
        assert static.upstream_arch == upstream_arch(model), name
    probe = ("import sys, training.models.catalog as c, training.models.table8; c.catalog(); "
             "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[1])).stdout
    assert out.strip() == "[]"
