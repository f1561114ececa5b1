"""FLOP counting: the paper's convention reproduces Table 8; exact MACs; the counter's per-layer rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.flops import FlopRow, count_params, exact_macs, paper_flops, table8_report, table8_rows
from training.models import TABLE8

# Per configuration: (exact conv+linear MMACs, released thop counter's MFLOPs), both measured on the released
# code (shared/reference/released-code-facts.md section 9), to 2 decimals.
RELEASED_COUNTS = {
    "shufflenetv1_0.5x": (71.96, 77.78),
    "shufflenetv1_1.0x": (187.71, 199.35),
    "shufflenetv1_1.5x": (329.19, 346.65),
    "shufflenetv1_2.0x": (514.45, 537.74),
    "shufflenetv2_0.25x": (110.47, 116.12),
    "shufflenetv2_1.0x": (186.54, 194.92),
    "shufflenetv2_1.5x": (280.86, 291.19),
    "shufflenetv2_2.0x": (424.91, 437.66),
    "mobilenetv1_0.5x": (94.02, 97.93),
    "mobilenetv1_1.0x": (233.03, 240.85),
    "mobilenetv1_1.5x": (417.03, 428.76),
    "mobilenetv1_2.0x": (646.02, 661.66),
    "mobilenetv2_0.2x": (54.90, 63.28),
    "mobilenetv2_0.45x": (157.96, 176.65),
    "mobilenetv2_0.7x": (295.70, 324.69),
    "mobilenetv2_1.0x": (519.05, 561.09),
    "squeezenet1_1": (902.61, 925.99),
    "resnet18": (8296.38, 8323.18),
    "resnet50": (9779.27, 9835.41),
    "resnet101": (13600.67, 13664.49),
    "resnext101": (9568.12, 9652.23),
}


@pytest.fixture(scope="module")
def rows() -> list[FlopRow]:
    return table8_rows(baselines=True)


def test_all_17_table8_mflops_reproduced(rows: list[FlopRow]) -> None:
    efficient = rows[: len(TABLE8)]
    assert [r.entry.name for r in efficient] == [e.name for e in TABLE8]
    mismatched = [(r.entry.name, r.paper_mflops) for r in efficient if not r.mflops_match]
    assert not mismatched
    for r in efficient:
        assert round(r.paper_mflops) == r.entry.paper_mflops
        assert r.params_match, r.entry.name


def test_counts_equal_released_counters_to_two_decimals(rows: list[FlopRow]) -> None:
    for r in rows:
        macs, thop = RELEASED_COUNTS[r.entry.name]
        assert round(r.mmacs, 2) == pytest.approx(macs, abs=1e-9), r.entry.name
        assert round(r.paper_mflops, 2) == pytest.approx(thop, abs=1e-9), r.entry.name
        assert r.mflops_match, r.entry.name  # the baselines' MFLOPs match Table 8 too


def test_maxpool_int_kernel_quirk() -> None:
    """MaxPool3d(kernel_size=3) counts 3 - 1 = 2 ops per output; (3, 3, 3) counts 26 (released counter)."""
    x_shape = (1, 2, 4, 8, 8)
    out_elems = 2 * 2 * 4 * 4
    as_int = nn.Sequential(nn.Conv3d(2, 2, 1, bias=False), nn.MaxPool3d(3, 2, 1))
    as_tuple = nn.Sequential(nn.Conv3d(2, 2, 1, bias=False), nn.MaxPool3d((3, 3, 3), 2, 1))
    conv = 2 * 4 * 8 * 8 * 2
    assert paper_flops(as_int, x_shape) == conv + 2 * out_elems
    assert paper_flops(as_tuple, x_shape) == conv + 26 * out_elems


class _Functional(nn.Module):
    """Functional ops only: the paper's counter must see none of them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        y = torch.cat([y, y], 1) + 1.0
        return F.avg_pool3d(y, y.shape[-3:]).flatten(1)


def test_paper_rules_per_layer() -> None:
    t, h, w = 2, 4, 4
    n = t * h * w
    model = nn.Sequential(
        nn.Conv3d(3, 4, 3, padding=1, bias=True),  # 4n outputs x (27*3 + 1)
        nn.BatchNorm3d(4),  # 2 x 4n
        nn.ReLU(),  # 4n
        nn.Conv3d(4, 4, 3, padding=1, groups=4, bias=False),  # 4n x 27
        nn.ReLU6(),  # 4n
        nn.AvgPool3d((1, 2, 2)),  # 4 * (n / 4) outputs x 4
        nn.Dropout(0.5),  # 0
        nn.AdaptiveAvgPool3d(1),  # 4 outputs x (n / 4) window
        nn.Flatten(),
        nn.Linear(4, 5),  # 5 x (2*4 - 1)
    )
    expected = 4 * n * 82 + 8 * n + 4 * n + 4 * n * 27 + 4 * n + n * 4 + 4 * (n // 4) + 5 * 7
    assert paper_flops(model, (1, 3, t, h, w)) == expected
    assert paper_flops(_Functional(), (1, 3, t, h, w)) == 4 * n * 3


def test_exact_macs_conv_and_linear_only() -> None:
    model = nn.Sequential(
        nn.Conv3d(3, 8, 3, stride=(1, 2, 2), padding=1, bias=True),
        nn.BatchNorm3d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    out = 8 * 4 * 8 * 8  # (C, T, H/2, W/2) for a 4x16x16 input
    assert exact_macs(model, (2, 3, 4, 16, 16)) == 2 * (out * 27 * 3 + 8 * 10)
    assert count_params(model) == 8 * 81 + 8 + 16 + 90


def test_counting_leaves_the_model_as_it_was() -> None:
    model = nn.Sequential(nn.Conv3d(3, 2, 1), nn.ReLU()).train()
    paper_flops(model, (1, 3, 2, 2, 2))
    exact_macs(model, (1, 3, 2, 2, 2))
    assert model.training
    assert not model[0]._forward_hooks and not model[1]._forward_hooks


def test_report_plain_and_markdown() -> None:
    text = table8_report()
    assert "17/17 paper-convention MFLOPs round to Table 8." in text
    assert " NO" not in text
    for e in TABLE8:
        assert e.name in text and e.label in text
    md = table8_report(markdown=True)
    table_lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(table_lines) == 2 * 2 + 17 + 4  # two headers + rules, 17 configs, 4 baselines
    row = "| 3D-ShuffleNetV2 1.0x | shufflenetv2_1.0x | 1,914,180 | 1.91M | 186.54 | 194.92 | 195 | yes |"
    assert row in md


def test_cli_table_into_a_closed_pipe_ends_quietly() -> None:
    """`e3d models | head`: the reader is gone before the table is written; exit 141 without a traceback."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe now fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "pipeline", "models"], stdout=write_end,
                              stderr=subprocess.PIPE, timeout=300)
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and b"Traceback" not in proc.stderr, proc.stderr.decode()
