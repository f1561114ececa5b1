"""The paper's 3D CNNs behind one registry.

>>> from training.models import get_model, list_models, TABLE8
>>> model = get_model("shufflenetv2_1.0x", num_classes=600)   # (N, 3, T, H, W) float -> (N, 600) logits

Each architecture module registers its builders on import; importing this package imports them all.
"""

from training.models import (  # noqa: F401  (imported to register their builders)
    mobilenetv1,
    mobilenetv2,
    resnet,
    resnext,
    shufflenetv1,
    shufflenetv2,
    squeezenet,
)
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
