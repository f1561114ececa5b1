"""What the registry holds, read from the architecture modules' source without importing torch.

The command line checks a model name, its options and a released checkpoint's ``arch`` before anything heavy
starts (``import torch`` alone costs ~1.5 s on a 2-vCPU machine). Those facts are defined once, by the
``@register_model(...)`` decorators, the builders' signatures and each module's ``UPSTREAM_ARCH`` class
attribute; this module reads them from the source with :mod:`ast` instead of executing it.
``tests/test_models.py`` checks that the catalog equals the live registry for every registered name.

Only literal decorator arguments and literal defaults are understood; anything else is reported as
:data:`NOT_LITERAL`, which the tests would catch for a registered name.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

# The architecture modules under training/models/ that register builders, in registration order.
BUILTIN_MODULES = ("mobilenetv1", "mobilenetv2", "resnet", "resnext", "shufflenetv1", "shufflenetv2", "squeezenet")

NOT_LITERAL = "<not a literal>"


@dataclass(frozen=True)
class CatalogEntry:
    """A registered name as the source declares it: the builder's name (the family), the kwargs the name
    fixes, the options a caller may still pass (name -> default, without ``num_classes``) and the ``arch``
    string the released code wrote for this architecture (None when it has no released counterpart)."""

    name: str
    family: str
    fixed: Mapping[str, Any] = field(default_factory=dict)
    free: Mapping[str, Any] = field(default_factory=dict)
    upstream_arch: str | None = None


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return NOT_LITERAL


def _upstream_archs(tree: ast.Module) -> dict[str, str]:
    """Class name -> its ``UPSTREAM_ARCH = "..."`` string, for the module's top-level classes."""
    found = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for stmt in cls.body:
            if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                    and stmt.targets[0].id == "UPSTREAM_ARCH" and isinstance(stmt.value, ast.Constant)):
                found[cls.name] = str(stmt.value.value)
    return found


def _free_options(fn: ast.FunctionDef) -> dict[str, Any]:
    """The builder's keyword parameters (positional-or-keyword and keyword-only) with their defaults."""
    args = fn.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, defaults, strict=True)) + list(zip(args.kwonlyargs, args.kw_defaults, strict=True))
    return {a.arg: (NOT_LITERAL if d is None else _literal(d)) for a, d in pairs[len(args.posonlyargs):]}


def _register_calls(fn: ast.FunctionDef) -> list[tuple[str, dict[str, Any]]]:
    """``(name, fixed kwargs)`` of each ``@register_model(...)`` on ``fn``, top decorator first (the order the
    decorators run is bottom-up, which is the registration order)."""
    calls = []
    for dec in fn.decorator_list:
        if not (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Name) and dec.func.id == "register_model"):
            continue
        name = _literal(dec.args[0]) if dec.args else fn.name
        calls.append((name if isinstance(name, str) else NOT_LITERAL,
                      {k.arg: _literal(k.value) for k in dec.keywords if k.arg}))
    return calls


def _module_entries(path: Path) -> list[CatalogEntry]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    archs = _upstream_archs(tree)
    entries = []
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        calls = _register_calls(fn)
        if not calls:
            continue
        options = _free_options(fn)
        returned = fn.returns.id if isinstance(fn.returns, ast.Name) else None
        arch = archs.get(returned) if returned else None
        for name, fixed in reversed(calls):  # bottom decorator registers first
            free = {k: v for k, v in options.items() if k != "num_classes" and k not in fixed}
            entries.append(CatalogEntry(name, fn.name, MappingProxyType(fixed), MappingProxyType(free), arch))
    return entries


@functools.cache
def catalog() -> Mapping[str, CatalogEntry]:
    """Every built-in registered name -> its :class:`CatalogEntry`, in registration order."""
    here = Path(__file__).resolve().parent
    entries = [e for module in BUILTIN_MODULES for e in _module_entries(here / f"{module}.py")]
    return MappingProxyType({e.name: e for e in entries})


def model_names() -> list[str]:
    """The built-in registered names in registration order (``list_models()`` without importing torch)."""
    return list(catalog())
