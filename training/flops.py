"""Parameter and FLOP counts: exact multiply-accumulates and the paper's own "MFLOPs" convention.

Two counts per model, both for one clip (batch 1) of ``(3, T, H, W)``, by default Table 8's 3x16x112x112:

* **exact MACs**: multiply-accumulates of every convolution and linear layer, from
  ``torch.utils.flop_counter.FlopCounterMode`` (its FLOPs / 2; bias additions not counted).
* **paper convention**: what the released code's modified ``thop`` counter reports, which is what Table 8
  prints as MFLOPs.  It hooks module calls and counts, per call,

  ===================  ==========================================================================
  Conv3d               output elements x (k_T*k_H*k_W*C_in/groups + 1 if bias)
  BatchNorm3d          2 x input elements
  ReLU / ReLU6         1 x input elements
  MaxPool3d            (prod(kernel_size) - 1) x output elements
  AvgPool3d            prod(kernel_size) x output elements
  AdaptiveAvgPool3d    averaged window x output elements (our stand-in for the released fixed pools)
  Linear               (2 x in_features - 1) x output elements
  anything else        0 (dropout, and every functional op: channel shuffle, concat, residual adds,
                       F.relu, F.avg_pool3d)
  ===================  ==========================================================================

  Quirk reproduced: ``prod(kernel_size)`` is taken of the attribute as given, so ``MaxPool3d(kernel_size=3)``
  counts 3 - 1 = 2 ops per output (not 26), while ResNet's ``MaxPool3d(kernel_size=(3, 3, 3))`` counts 26.
  Table 8's efficient-model MFLOPs depend on it.

Counting runs on the ``meta`` device (shapes only, no arithmetic), so the whole table takes about a second.

Run ``python -m training.flops [--markdown]`` for the Table 8 report (``e3d models`` prints the same).
"""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from training.models import BASELINES, REFERENCE_INPUT, TABLE8, Table8Entry, get_model
from training.models.common import MaxPool3d

InputShape = Sequence[int]

# aten ops that carry the conv and linear work; the models contain no other matmul-like ops.
_CONV_LINEAR_OPS = {torch.ops.aten.convolution, torch.ops.aten.addmm, torch.ops.aten.mm}


def count_params(model: nn.Module) -> int:
    """Trainable parameters (``requires_grad``), as the released code counts them."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _input_for(model: nn.Module, input_shape: InputShape) -> torch.Tensor:
    first = next(model.parameters())
    return torch.zeros(tuple(input_shape), dtype=first.dtype, device=first.device)


def _thop_kernel_prod(kernel_size: int | tuple[int, ...]) -> int:
    # The released counter did prod(Tensor([m.kernel_size])): an int kernel_size k gives k, not k**3.
    return math.prod(kernel_size) if isinstance(kernel_size, tuple) else int(kernel_size)


def _conv(m: nn.Conv3d, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    per_output = math.prod(m.kernel_size) * m.in_channels // m.groups + (1 if m.bias is not None else 0)
    return out.numel() * per_output


def _batchnorm(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    return 2 * inputs[0].numel()


def _activation(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    return inputs[0].numel()


def _maxpool(m: nn.MaxPool3d, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    return (_thop_kernel_prod(m.kernel_size) - 1) * out.numel()


def _avgpool(m: nn.AvgPool3d, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    return _thop_kernel_prod(m.kernel_size) * out.numel()


def _adaptive_avgpool(m: nn.AdaptiveAvgPool3d, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    # Stands in for the released models' AvgPool3d module, whose fixed window covered the whole final map at
    # the reference size; the window is the number of input positions averaged per output.
    window = math.prod(inputs[0].shape[2:]) // math.prod(out.shape[2:])
    return window * out.numel()


def _linear(m: nn.Linear, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
    return (2 * m.in_features - 1) * out.numel()


# Exact module types, as the released counter matched ``type(m)``; anything absent counts 0.
PAPER_RULES: dict[type[nn.Module], Callable[..., int]] = {
    nn.Conv3d: _conv,
    nn.BatchNorm3d: _batchnorm,
    nn.ReLU: _activation,
    nn.ReLU6: _activation,
    nn.MaxPool3d: _maxpool,
    MaxPool3d: _maxpool,  # the models' faster-on-CPU subclass (training.models.common), counted as the original
    nn.AvgPool3d: _avgpool,
    nn.AdaptiveAvgPool3d: _adaptive_avgpool,
    nn.Linear: _linear,
}


def count_ops(
    model: nn.Module, input_shape: InputShape = REFERENCE_INPUT, macs: bool = True
) -> tuple[int | None, int]:
    """``(exact MACs, paper-convention ops)`` of one forward pass on a zero input of ``input_shape``
    ``(N, 3, T, H, W)``; MACs are ``None`` unless ``macs``.

    Runs in eval mode on the model's device, so use a ``meta``-device model to count without computing.
    Every call of a hooked module counts (a ReLU module used twice in a block counts twice), as in the
    released counter.
    """
    total = 0

    def make_hook(rule: Callable[..., int]) -> Callable[..., None]:
        def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            nonlocal total
            total += rule(m, inputs, out)

        return hook

    handles = [
        m.register_forward_hook(make_hook(PAPER_RULES[type(m)]))
        for m in model.modules()
        if type(m) in PAPER_RULES
    ]
    counter: AbstractContextManager[object] = FlopCounterMode(display=False) if macs else nullcontext()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(_input_for(model, input_shape))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if not isinstance(counter, FlopCounterMode):
        return None, total
    counts = counter.get_flop_counts().get("Global", {})
    # FlopCounterMode counts 2 FLOPs per multiply-accumulate.
    return sum(n for op, n in counts.items() if op in _CONV_LINEAR_OPS) // 2, total


def exact_macs(model: nn.Module, input_shape: InputShape = REFERENCE_INPUT) -> int:
    """Conv + linear multiply-accumulates (bias additions excluded) of one forward pass on ``input_shape``."""
    macs, _ = count_ops(model, input_shape)
    assert macs is not None
    return macs


def paper_flops(model: nn.Module, input_shape: InputShape = REFERENCE_INPUT) -> int:
    """Operations in the paper's (modified-thop) convention; divide by 1e6 for Table 8's "MFLOPs"."""
    return count_ops(model, input_shape, macs=False)[1]


@dataclass(frozen=True)
class FlopRow:
    """Counts of one Table 8 configuration next to what the paper prints."""

    entry: Table8Entry
    params: int
    macs: int
    paper_ops: int

    @property
    def mmacs(self) -> float:
        return self.macs / 1e6

    @property
    def paper_mflops(self) -> float:
        return self.paper_ops / 1e6

    @property
    def mflops_match(self) -> bool:
        """Our paper-convention count rounds to the MFLOPs Table 8 prints."""
        return round(self.paper_mflops) == self.entry.paper_mflops

    @property
    def params_match(self) -> bool:
        """Our parameter count rounds (to 0.01 M) to what Table 8 prints."""
        return round(self.params / 1e6, 2) == self.entry.paper_params_m


def count_entry(
    entry: Table8Entry, input_shape: InputShape = REFERENCE_INPUT, num_classes: int = 600
) -> FlopRow:
    """Build ``entry``'s model on the meta device; count parameters, exact MACs and paper-convention ops."""
    key = (entry.name, tuple(sorted(entry.kwargs.items())), tuple(input_shape), num_classes)
    return FlopRow(entry, *_count_config(*key))


@functools.lru_cache(maxsize=128)
def _count_config(
    name: str, kwargs: tuple[tuple[str, Any], ...], input_shape: tuple[int, ...], num_classes: int
) -> tuple[int, int, int]:
    # Cached: a configuration's counts never change, and meta-device BatchNorm is slow-ish (Python decomps).
    with torch.device("meta"):
        model = get_model(name, num_classes=num_classes, **dict(kwargs))
    macs, ops = count_ops(model, input_shape)
    assert macs is not None
    return count_params(model), macs, ops


def table8_rows(baselines: bool = False) -> list[FlopRow]:
    """One :class:`FlopRow` per Table 8 configuration (17), plus 4 ResNet/ResNeXt rows if ``baselines``."""
    return [count_entry(e) for e in [*TABLE8, *(BASELINES if baselines else [])]]


_HEADER = ("model", "name", "params", "Table 8 params", "exact MMACs", "paper-conv. MFLOPs", "Table 8 MFLOPs")


def _cells(row: FlopRow) -> list[str]:
    e = row.entry
    return [
        e.label,
        e.name + "".join(f" {k}={v}" for k, v in e.kwargs.items()),
        f"{row.params:,}",
        f"{e.paper_params_m:.2f}M",
        f"{row.mmacs:.2f}",
        f"{row.paper_mflops:.2f}",
        str(e.paper_mflops),
        "yes" if row.mflops_match else "NO",
    ]


def _render(header: Sequence[str], body: list[list[str]], markdown: bool) -> list[str]:
    numeric = [False, False, True, True, True, True, True, False]
    if markdown:
        rule = ["---:" if n else "---" for n in numeric]
        return ["| " + " | ".join(r) + " |" for r in [list(header), rule, *body]]
    widths = [max(len(r[i]) for r in [list(header), *body]) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(r, widths, numeric, strict=True))

    return [line(header), "  ".join("-" * w for w in widths), *(line(r).rstrip() for r in body)]


def table8_report(markdown: bool = False) -> str:
    """The ``e3d models`` table: for each Table 8 configuration, params, exact MACs, paper-convention
    MFLOPs, Table 8's value and whether they match; then the ResNet/ResNeXt baselines.

    ``markdown`` gives pipe tables instead of aligned plain text.
    """
    shape = "x".join(str(s) for s in REFERENCE_INPUT)
    header = [*_HEADER, "MFLOPs match"]
    rows = table8_rows(baselines=True)
    efficient, baselines = rows[: len(TABLE8)], rows[len(TABLE8) :]
    matched = sum(r.mflops_match for r in efficient)
    out = [
        f"Table 8 configurations: 600 classes, input {shape} (N, C, T, H, W).",
        "exact MMACs = conv + linear multiply-accumulates (torch.utils.flop_counter); "
        "paper-conv. MFLOPs = the released code's thop convention (see training/flops.py).",
        "",
        *_render(header, [_cells(r) for r in efficient], markdown),
        "",
        f"{matched}/{len(efficient)} paper-convention MFLOPs round to Table 8.",
        "",
        "Baselines (Table 8's ResNet MFLOPs were counted with shortcut A; its ResNet params match "
        "neither shortcut of the released code):",
        "",
        *_render(header, [_cells(r) for r in baselines], markdown),
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.flops", description=table8_report.__doc__)
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args(argv)
    print(table8_report(markdown=args.markdown), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
