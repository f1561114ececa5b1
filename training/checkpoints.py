"""Checkpoints: import the authors' released weights, and save/load our own.

Released checkpoints (okankop/Efficient-3DCNNs, Kinetics-600 and Jester) are ``torch.save`` dicts::

    {"epoch": int, "arch": "shufflenetv2", "state_dict": {"module.conv1.0.weight": ..., ...},
     "optimizer": SGD state, "best_prec1": float}

Keys carry DataParallel's ``module.`` prefix and, for ShuffleNetV2, the misspelt ``banch1``/``banch2``.
:func:`load_released_checkpoint` maps them onto our models, refuses anything that does not fit with a
:class:`CheckpointMismatchError` naming the missing, unexpected and mis-shaped keys and the expected
architecture, and attaches the pixel convention the weights were trained with (``model.input_convention``).

Our own checkpoints (:func:`save_checkpoint` / :func:`load_checkpoint`) store the registry name, class count
and builder options next to the weights and the input convention, so a file alone rebuilds its model.

Everything is read with ``torch.load(weights_only=True)``: no code from a checkpoint file is executed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shards import storage
from shards.datasets import DATASET_SPECS
from training.checkpoint_header import FORMAT  # one definition, readable without torch
from training.models import InputConvention, ModelConfig, get_model
from training.models.convention import RELEASED_CONVENTIONS

FORMAT_VERSION = 1
DATA_PARALLEL_PREFIX = "module."
# Released class counts -> dataset, used to pick the input convention when the caller does not say.
RELEASED_DATASETS = {s.released_classes: s.released_name for s in DATASET_SPECS.values() if s.released_classes}
# Upstream checkpoints older than PyTorch 0.4.1 lack these BN buffers; fresh zeros are equivalent for eval.
_OPTIONAL_SUFFIX = "num_batches_tracked"
_MAX_LISTED = 12

StateDict = dict[str, torch.Tensor]
PathLike = str | os.PathLike[str]


class CheckpointMismatchError(ValueError):
    """A checkpoint's architecture or tensors do not fit the requested model."""


@dataclass(frozen=True)
class ReleasedCheckpoint:
    """What a released checkpoint said about itself, next to the model it was loaded into."""

    path: str
    arch: str | None
    epoch: int | None
    best_prec1: float | None
    num_classes: int
    dataset: str | None
    input_convention: InputConvention


def _unwrap(model: nn.Module) -> nn.Module:
    # DataParallel/DistributedDataParallel keep the model in .module, torch.compile in ._orig_mod.
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _renames(model: nn.Module) -> tuple[tuple[str, str], ...]:
    return tuple(getattr(type(_unwrap(model)), "UPSTREAM_RENAMES", ()))


def upstream_arch(model: nn.Module) -> str:
    """The ``arch`` string the released code wrote for this model's architecture (e.g. ``"shufflenetv2"``)."""
    arch = getattr(type(_unwrap(model)), "UPSTREAM_ARCH", None)
    if arch is None:
        raise TypeError(f"{type(model).__name__} has no released (upstream) counterpart")
    return str(arch)


def _rename_segments(key: str, mapping: Mapping[str, str]) -> str:
    return ".".join(mapping.get(part, part) for part in key.split("."))


def upstream_to_ours(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """Released key names -> ours: drop the ``module.`` prefix and apply the model's renames
    (``banch1`` -> ``branch1``...).  Tensors are not copied."""
    mapping = dict(_renames(model))
    out: StateDict = {}
    for key, value in state_dict.items():
        bare = key[len(DATA_PARALLEL_PREFIX) :] if key.startswith(DATA_PARALLEL_PREFIX) else key
        out[_rename_segments(bare, mapping)] = value
    return out


def ours_to_upstream(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, data_parallel: bool = True
) -> StateDict:
    """Our key names -> the released code's (inverse of :func:`upstream_to_ours`), with the ``module.`` prefix
    a DataParallel-wrapped upstream model would have written when ``data_parallel``."""
    mapping = {ours: theirs for theirs, ours in _renames(model)}
    prefix = DATA_PARALLEL_PREFIX if data_parallel else ""
    return {prefix + _rename_segments(k, mapping): v for k, v in state_dict.items()}


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state_dict`` has exactly the model's keys and shapes.

    Missing ``num_batches_tracked`` buffers are allowed.  ``what`` names the model and architecture in the
    message.
    """
    expected = _unwrap(model).state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith(_OPTIONAL_SUFFIX)]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mis_shaped:
        parts = [f"checkpoint does not fit {what}:"]
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listed(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
        if mis_shaped:
            parts.append(f"{len(mis_shaped)} shape mismatch(es): {_listed(mis_shaped)}")
        raise CheckpointMismatchError("\n  ".join(parts))


def _load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    check_state_dict(model, state_dict, what)
    target = _unwrap(model)
    full = dict(state_dict)
    for k, v in target.state_dict().items():
        if k not in full and k.endswith(_OPTIONAL_SUFFIX):
            full[k] = torch.zeros_like(v)
    target.load_state_dict(full, strict=True)


def _torch_load(path: PathLike, map_location: str | torch.device) -> Any:
    fs, key = storage.resolve(path)
    if storage.is_remote(path):  # a checkpoint on object storage (s3://, gs://) is read into memory
        return torch.load(io.BytesIO(storage.read_bytes(fs, key)), map_location=map_location, weights_only=True)
    return torch.load(Path(key), map_location=map_location, weights_only=True)


def _head_shape_key(name: str, model_kwargs: Mapping[str, Any]) -> str:
    """The state-dict key whose first dimension is the class count (found by building 1- and 2-class
    models on the meta device)."""
    with torch.device("meta"):
        one = get_model(name, num_classes=1, **model_kwargs).state_dict()
        two = get_model(name, num_classes=2, **model_kwargs).state_dict()
    return next(k for k in one if k.endswith("weight") and one[k].shape != two[k].shape)


def load_released_checkpoint(
    path: PathLike,
    name: str,
    *,
    num_classes: int | None = None,
    dataset: str | None = None,
    input_convention: InputConvention | None = None,
    check_arch: bool = True,
    map_location: str | torch.device = "cpu",
    **model_kwargs: Any,
) -> tuple[nn.Module, ReleasedCheckpoint]:
    """Build model ``name`` and load a checkpoint released by the paper's authors into it, head included.

    Args:
        path: the ``.pth`` file (a dict with ``state_dict``; a bare state dict is accepted too).
        name: our registry name of the same configuration, e.g. ``"shufflenetv2_1.0x"`` for
            ``kinetics_shufflenetv2_1.0x_RGB_16_best.pth``.
        num_classes: defaults to the checkpoint's head size (600 Kinetics-600, 27 Jester).
        dataset: ``"kinetics"`` or ``"jester"``, selects the input convention; inferred from the class count.
        input_convention: overrides the convention (see :mod:`training.models.convention`: the Jester one is
            uncertain upstream).
        check_arch: refuse a checkpoint whose ``arch`` is not this model's upstream architecture string.
        **model_kwargs: builder options for family names, e.g. ``width_mult`` for ``"mobilenetv2"``.

    Returns:
        ``(model, info)``: the model in eval mode with ``model.input_convention`` set, and what the file said.

    Raises:
        CheckpointMismatchError: wrong architecture, or missing / unexpected / mis-shaped tensors.
    """
    raw = _torch_load(path, map_location)
    if not isinstance(raw, Mapping):
        raise CheckpointMismatchError(f"{path}: expected a dict, got {type(raw).__name__}")
    is_bare = "state_dict" not in raw and all(isinstance(v, torch.Tensor) for v in raw.values())
    state = raw if is_bare else raw.get("state_dict")
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f"{path}: no 'state_dict' in the checkpoint (keys: {sorted(raw)})")
    arch = None if is_bare else raw.get("arch")

    with torch.device("meta"):
        probe = get_model(name, num_classes=1, **model_kwargs)
    expected_arch = upstream_arch(probe)
    what = f"model {name!r} (upstream arch {expected_arch!r}; checkpoint arch {arch!r})"
    if check_arch and arch is not None and arch != expected_arch:
        raise CheckpointMismatchError(
            f"{path}: checkpoint architecture {arch!r} does not match model {name!r}, which expects upstream "
            f"arch {expected_arch!r}; pick the registry name of the checkpoint's architecture"
        )

    ours = upstream_to_ours(state, probe)
    if num_classes is None:
        head = _head_shape_key(name, model_kwargs)
        if head not in ours:
            check_state_dict(probe, ours, what)  # raises, listing what is missing
        num_classes = int(ours[head].shape[0])
    dataset = dataset or RELEASED_DATASETS.get(num_classes)
    if input_convention is None:
        if dataset not in RELEASED_CONVENTIONS:
            raise ValueError(
                f"cannot tell the input convention of a {num_classes}-class checkpoint; pass dataset="
                f"{sorted(RELEASED_CONVENTIONS)} or input_convention="
            )
        input_convention = RELEASED_CONVENTIONS[dataset]

    model = get_model(name, num_classes=num_classes, **model_kwargs)
    _load_into(model, ours, what)
    model.input_convention = input_convention
    model.eval()
    info = ReleasedCheckpoint(
        path=str(path),
        arch=arch,
        epoch=None if is_bare else raw.get("epoch"),
        best_prec1=None if is_bare else raw.get("best_prec1"),
        num_classes=num_classes,
        dataset=dataset,
        input_convention=input_convention,
    )
    return model, info


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    *,
    epoch: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Save ``model`` (built by :func:`training.models.get_model`, possibly wrapped in DDP or compiled) with
    its config and input convention.  The file is written to a temporary name and renamed, so an interrupted
    save never leaves a truncated checkpoint behind.

    ``extra`` must hold plain Python values (str, numbers, lists, dicts) so that the file stays loadable with
    ``weights_only=True``.
    """
    inner = _unwrap(model)
    config = getattr(inner, "config", None)
    if not isinstance(config, ModelConfig):
        raise ValueError("model has no .config; build it with training.models.get_model to save it")
    convention = getattr(inner, "input_convention", None)
    if not isinstance(convention, InputConvention):
        raise ValueError("model has no .input_convention (an InputConvention)")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": config.to_dict(),
        "input_convention": convention.to_dict(),
        "state_dict": inner.state_dict(),
        "epoch": epoch,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "metrics": dict(metrics or {}),
        "extra": dict(extra or {}),
        "torch_version": str(torch.__version__),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and load a model saved by :func:`save_checkpoint`.

    Returns:
        ``(model, checkpoint)``: the model (train mode, on ``map_location``) with ``model.config`` and
        ``model.input_convention`` restored, and the raw checkpoint dict (``epoch``, ``optimizer``,
        ``metrics``, ``extra``...).
    """
    ckpt = _torch_load(path, map_location)
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != FORMAT:
        released = isinstance(ckpt, Mapping) and "arch" in ckpt
        hint = " (a released upstream checkpoint? use load_released_checkpoint)" if released else ""
        raise CheckpointMismatchError(f"{path}: not an {FORMAT} file{hint}")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointMismatchError(
            f"{path}: format version {ckpt['format_version']} is newer than this code's ({FORMAT_VERSION})"
        )
    config = ModelConfig.from_dict(ckpt["model"])
    model = config.build()
    _load_into(model, ckpt["state_dict"], f"model {config.name!r} as saved in {path}")
    model.input_convention = InputConvention.from_dict(ckpt["input_convention"])
    return model.to(map_location), dict(ckpt)
