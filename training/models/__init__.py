"""The paper's 3D CNNs behind one registry.

>>> from training.models import get_model, list_models, TABLE8
>>> model = get_model("shufflenetv2_1.0x", num_classes=600)   # (N, 3, T, H, W) float -> (N, 600) logits

Each architecture module registers its builders on import; the registry imports them all the first time it is
asked for a name. The names below load on first use, so that ``training.models.table8`` and
``training.models.catalog`` (what the command line checks before Ray starts) import without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.models.convention import InputConvention
    from training.models.registry import (
        ModelConfig,
        UnknownModelError,
        get_entry,
        get_model,
        list_models,
        register_model,
    )
    from training.models.table8 import BASELINES, REFERENCE_INPUT, TABLE8, Table8Entry

_EXPORTS = {
    "BASELINES": "table8", "REFERENCE_INPUT": "table8", "TABLE8": "table8", "Table8Entry": "table8",
    "InputConvention": "convention",
    "ModelConfig": "registry", "UnknownModelError": "registry", "get_entry": "registry", "get_model": "registry",
    "list_models": "registry", "register_model": "registry",
}

__all__ = [
    "BASELINES",
    "REFERENCE_INPUT",
    "TABLE8",
    "InputConvention",
    "ModelConfig",
    "Table8Entry",
    "UnknownModelError",
    "get_entry",
    "get_model",
    "list_models",
    "register_model",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
