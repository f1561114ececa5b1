"""Valid JSON only: every JSON file the project writes goes through :func:`dumps`.

Python's ``json`` writes NaN and infinities as the bare words ``NaN``/``Infinity``, which no other JSON reader
accepts. :func:`dumps` writes them as ``null`` instead (a missing figure, which is what a NaN metric means) and
then refuses, via ``allow_nan=False``, anything non-finite that slipped past the conversion.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from typing import Any


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (Python, NumPy or torch scalar) replaced by None; containers are
    copied (tuples become lists, as JSON would write them), everything else is returned unchanged."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, Mapping):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        value = float(obj)
        return value if math.isfinite(value) else None
    item = getattr(obj, "item", None)  # a 0-d tensor / array
    if callable(item) and getattr(obj, "ndim", None) == 0:
        return finite(item())
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes non-finite numbers as ``null`` and never emits ``NaN``/``Infinity``.
    Keyword arguments go to ``json.dumps`` (``allow_nan`` is always False)."""
    kwargs["allow_nan"] = False
    return json.dumps(finite(obj), **kwargs)
