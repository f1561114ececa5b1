"""The input convention of a model: defined once in :mod:`training.data.normalize` (:class:`InputConvention`
and its :data:`~training.data.normalize.PRESETS`); the names here are the released checkpoints' presets, kept
for the model and checkpoint code that refers to them."""

from __future__ import annotations

from shards.datasets import DATASET_SPECS
from training.data.normalize import PRESETS, InputConvention

RELEASED_DEFAULT_RGB = PRESETS["paper"]
RELEASED_KINETICS = PRESETS["released-kinetics600"]
RELEASED_JESTER = PRESETS["released-jester"]
JESTER_MAINTAINER_ANSWER = PRESETS["released-jester-maintainer"]

#: Released-checkpoint dataset name (``DatasetSpec.released_name``) → the convention its weights expect.
RELEASED_CONVENTIONS: dict[str, InputConvention] = {
    s.released_name: PRESETS[s.released_normalization] for s in DATASET_SPECS.values()
    if s.released_name and s.released_normalization}

__all__ = ["JESTER_MAINTAINER_ANSWER", "RELEASED_CONVENTIONS", "RELEASED_DEFAULT_RGB", "RELEASED_JESTER",
           "RELEASED_KINETICS", "InputConvention"]
