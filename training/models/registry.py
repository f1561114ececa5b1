"""One registry for every model: ``get_model(name, num_classes=..., **kw)``.

Builders register themselves with :func:`register_model`.  One builder can be registered under several names
with some keyword arguments fixed, which is how the Table 8 configurations (``shufflenetv2_1.0x`` ...) are
defined on top of the family builders (``shufflenetv2`` with a free ``width_mult``)::

    @register_model("shufflenetv2_1.0x", width_mult=1.0)
    @register_model("shufflenetv2")
    def shufflenetv2(num_classes: int = 600, width_mult: float = 1.0, dropout: float = 0.2) -> nn.Module: ...
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from torch import nn

from training.models.catalog import BUILTIN_MODULES
from training.models.convention import RELEASED_DEFAULT_RGB

Builder = Callable[..., nn.Module]
B = TypeVar("B", bound=Builder)


@dataclass(frozen=True)
class ModelEntry:
    """A registered name: the builder it calls and the keyword arguments the name fixes."""

    name: str
    builder: Builder
    fixed: Mapping[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.builder.__name__

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.builder) or ""
        return doc.splitlines()[0] if doc else ""

    def free_kwargs(self) -> dict[str, Any]:
        """Keyword arguments a caller may still pass (name -> default), excluding ``num_classes``."""
        params = inspect.signature(self.builder).parameters
        return {
            k: p.default
            for k, p in params.items()
            if k != "num_classes" and k not in self.fixed and p.kind is not inspect.Parameter.VAR_KEYWORD
        }


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model: ``get_model(name, num_classes, **kwargs)``.

    ``kwargs`` holds only what the caller passed (not the name's fixed values), as plain Python values, so the
    config can be stored in a checkpoint and loaded with ``torch.load(weights_only=True)``.
    """

    name: str
    num_classes: int
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "num_classes": self.num_classes, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        return cls(name=str(d["name"]), num_classes=int(d["num_classes"]), kwargs=dict(d.get("kwargs", {})))

    def build(self) -> nn.Module:
        return get_model(self.name, num_classes=self.num_classes, **self.kwargs)


class UnknownModelError(KeyError):
    """Raised by :func:`get_model` for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would show the message quoted.
        return str(self.args[0])


_REGISTRY: dict[str, ModelEntry] = {}


def _load_builtin() -> None:
    """Import the architecture modules (each registers its builders on import; idempotent)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(f"training.models.{module}")


def register_model(name: str | None = None, **fixed: Any) -> Callable[[B], B]:
    """Decorator: register ``builder`` under ``name`` (default: the function's name) with ``fixed`` kwargs.

    The builder must accept ``num_classes`` and every fixed kwarg.  The decorated function is returned
    unchanged, so decorators can be stacked to register several names for one builder."""

    def decorator(builder: B) -> B:
        key = name or builder.__name__
        if key in _REGISTRY:
            raise ValueError(f"model name {key!r} is already registered (by {_REGISTRY[key].family})")
        params = inspect.signature(builder).parameters
        if "num_classes" not in params:
            raise TypeError(f"builder {builder.__name__} for {key!r} must accept num_classes")
        unknown = [k for k in fixed if k not in params]
        if unknown:
            raise TypeError(f"builder {builder.__name__} for {key!r} has no parameter(s) {unknown}")
        _REGISTRY[key] = ModelEntry(key, builder, MappingProxyType(dict(fixed)))
        return builder

    return decorator


def list_models(family: str | None = None) -> list[str]:
    """Registered names in registration order, optionally only those built by the builder named ``family``."""
    _load_builtin()
    # The built-in modules in their fixed order (whichever was imported first), then any other registrations.
    rank = {f"training.models.{m}": i for i, m in enumerate(BUILTIN_MODULES)}
    entries = sorted(enumerate(_REGISTRY.values()),
                     key=lambda ie: (rank.get(ie[1].builder.__module__, len(rank)), ie[0]))
    return [e.name for _, e in entries if family is None or e.family == family]


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; unknown names raise :class:`UnknownModelError` listing the valid
    ones."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} Valid names: {', '.join(list_models())}"
        ) from None


def get_model(name: str, num_classes: int = 600, **kwargs: Any) -> nn.Module:
    """Build a registered model with freshly initialised weights.

    Args:
        name: a registered name, e.g. ``"shufflenetv2_1.0x"`` (see :func:`list_models`).
        num_classes: size of the classifier output (600 = Kinetics-600, 27 = Jester, 101 = UCF-101).
        **kwargs: builder options not fixed by the name, e.g. ``width_mult`` for ``"shufflenetv2"`` or
            ``dropout`` for every efficient model.

    Returns:
        The model, mapping float ``(N, 3, T, H, W)`` clips to ``(N, num_classes)`` logits.  It carries
        ``model.config`` (a :class:`ModelConfig` that rebuilds it) and ``model.input_convention`` (the
        released code's default pixel preparation until a checkpoint loader replaces it).
    """
    entry = get_entry(name)
    clash = sorted(set(kwargs) & set(entry.fixed))
    if clash:
        fixed = ", ".join(f"{k}={entry.fixed[k]!r}" for k in clash)
        raise TypeError(f"model {name!r} fixes {fixed}; use the family name {entry.family!r} to choose it")
    allowed = entry.free_kwargs()
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(
            f"model {name!r} got unexpected option(s) {unknown}; it accepts num_classes and "
            f"{sorted(allowed) or 'nothing else'}"
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    model = entry.builder(num_classes=num_classes, **entry.fixed, **kwargs)
    model.config = ModelConfig(name=name, num_classes=num_classes, kwargs=dict(kwargs))
    model.input_convention = RELEASED_DEFAULT_RGB
    return model
