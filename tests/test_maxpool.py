"""The models' max pooling (training.models.common.MaxPool3d): nn.MaxPool3d's results, faster on contiguous CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.models.common import MaxPool3d

CASES = [((2, 3, 7, 9, 11), 3, 2, 1), ((3, 5, 16, 24, 24), 3, 2, 1), ((1, 4, 5, 6, 7), (3, 3, 3), 2, 1),
         ((2, 2, 8, 10, 10), (1, 3, 3), (1, 2, 2), (0, 1, 1)), ((2, 3, 4, 5, 5), 2, 2, 0)]


def _pair(shape, kernel, stride, padding, x: torch.Tensor):
    fast, native = MaxPool3d(kernel, stride, padding), nn.MaxPool3d(kernel, stride, padding)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    ya, yb = fast(a), native(b)
    g = torch.randn(yb.shape, generator=torch.Generator().manual_seed(1))
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    return ya, yb, a.grad, b.grad


@pytest.mark.parametrize(("shape", "kernel", "stride", "padding"), CASES)
def test_same_output_and_gradient_as_nn_maxpool3d(shape, kernel, stride, padding) -> None:
    x = torch.relu(torch.randn(shape, generator=torch.Generator().manual_seed(0)))  # ties at 0, as after ReLU
    ya, yb, ga, gb = _pair(shape, kernel, stride, padding, x)
    assert ya.is_contiguous() and torch.equal(ya, yb)
    assert ga.is_contiguous() and torch.equal(ga, gb)
    with torch.no_grad():  # evaluation: the same numbers without the autograd function
        assert torch.equal(MaxPool3d(kernel, stride, padding)(x), yb.detach())


def test_ties_send_the_gradient_to_a_maximum_and_lose_none_of_it() -> None:
    # small integers: many windows hold several equal maxima, where kernels may pick different positions
    x = torch.randint(0, 3, (2, 3, 6, 8, 8), generator=torch.Generator().manual_seed(2)).float()
    ya, yb, ga, gb = _pair(x.shape, 3, 2, 1, x)
    assert torch.equal(ya, yb)
    torch.testing.assert_close(ga.sum(), gb.sum())  # every output's gradient reached the input once
    assert torch.all(x[ga != 0] == 2)  # and only at the window maxima (here all 2: every window holds one)


def test_other_layouts_and_tracing_use_nn_maxpool3d_itself(monkeypatch) -> None:
    pool = MaxPool3d(3, 2, 1)
    x = torch.randn(2, 3, 6, 8, 8)
    calls = []
    original = nn.MaxPool3d.forward
    monkeypatch.setattr(nn.MaxPool3d, "forward", lambda self, t: calls.append(1) or original(self, t))
    assert torch.equal(pool(x.contiguous(memory_format=torch.channels_last_3d)), nn.functional.max_pool3d(x, 3, 2, 1))
    traced = torch.jit.trace(pool, (x,), check_trace=False)  # export: a plain aten max_pool3d in the graph
    assert "max_pool3d" in str(traced.graph) and "PythonOp" not in str(traced.graph)
    assert len(calls) == 2
    pool(x)
    assert len(calls) == 2  # contiguous CPU input: the channels-last path
