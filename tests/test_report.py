"""Sweep report: Pareto front, Table-8-style Markdown and the accuracy/MFLOPs PNG, rebuilt from Parquet."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.report import (
    TrialResult,
    build_report,
    class_note,
    markdown_table,
    pareto_front,
    read_results,
    write_results,
)

REPO = Path(__file__).resolve().parents[1]


def _r(trial, model, mflops, top1, status="done"):
    top5 = top1 if math.isnan(top1) else min(1.0, top1 + 0.2)
    return TrialResult(trial=trial, model=model, dataset="jester", status=status, params=1_000_000, mflops=mflops,
                       macs_m=mflops * 0.9, clips_per_s=100.0, video_top1=top1, video_top5=top5,
                       clip_top1=top1 - 0.05, epochs=2, train_clips=100, wall_s=10.0, decode_cpu_s_per_clip=0.002)


def test_pareto_front():
    pts = [(10, 0.5), (20, 0.4), (30, 0.7), (5, 0.2), (30, 0.6), (40, float("nan")), (50, 0.7)]
    assert pareto_front(pts) == [3, 0, 2]
    assert pareto_front([]) == []


def test_markdown_marks_the_front_in_table8_layout():
    rows = [_r("a", "shufflenetv2_0.25x", 116, 0.5), _r("b", "shufflenetv2_1.0x", 195, 0.45),
            _r("c", "mobilenetv2_1.0x", 561, 0.8), _r("d", "mobilenetv1_0.5x", 98, float("nan"), "failed")]
    md = markdown_table(rows)
    lines = md.splitlines()
    assert lines[0].startswith("| Model | MFLOPs | Params | Speed")
    assert "**shufflenetv2_0.25x**" in md and "**mobilenetv2_1.0x**" in md
    assert "| shufflenetv2_1.0x |" in md  # dominated: not bold
    assert "| mobilenetv1_0.5x | 98 | 1.00M | 100 | – | – |" in md
    # beside the data's class count: the 600-class figures (when recorded) and Table 8's printed ones
    assert md.splitlines()[0].endswith("| MFLOPs @600 | Params @600 | Table 8: MFLOPs, params |")
    assert "| – | – | 98, 1.17M |" in md  # not recorded here; the paper's row for mobilenetv1_0.5x
    counted = markdown_table([dataclasses.replace(rows[0], num_classes=4, params_600=829_656, mflops_600=116.4)])
    assert "| 116 | 0.83M | 116, 0.83M |" in counted
    assert "the 4 classes of this dataset" in class_note([dataclasses.replace(rows[0], num_classes=4)])


def test_report_round_trip_and_cli_rebuild(tmp_path):
    rows = [_r("t1", "shufflenetv2_0.25x", 116, 0.5), _r("t2", "mobilenetv2_0.2x", 63, 0.4),
            _r("t3", "squeezenet1_1", 926, 0.6)]
    write_results(str(tmp_path), rows)
    assert read_results(str(tmp_path)) == sorted(rows, key=lambda r: r.trial)
    md, png = build_report(str(tmp_path))
    text = Path(md).read_text()
    assert "squeezenet1_1" in text and "CPU-ms per clip" in text
    data = Path(png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    Path(md).unlink()
    Path(png).unlink()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "report", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert Path(md).exists() and Path(png).exists()


def test_report_refuses_a_directory_without_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="no sweep results"):
        build_report(str(tmp_path))
