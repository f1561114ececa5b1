"""``bench/gpu_check.sh --quick`` runs end to end here (CI has no GPU), so the script cannot rot: its CPU
parts run, every GPU part is reported as skipped, and its outputs exist."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.ray
def test_gpu_check_script_runs_its_cpu_parts_and_reports_skips(tmp_path):
    import torch

    env = {**os.environ, "PY": sys.executable, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")  # its own embedded Ray, never another cluster on this machine
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for section in ("1. training step", "2. deployment runtimes", "3. synthetic data", "4. loader"):
        assert section in out
    if not torch.cuda.is_available():
        assert out.count("SKIPPED (no GPU):") == 4 and "SKIPPED 4 GPU part(s)" in out
        runtime = json.loads((tmp_path / "runtime.json").read_text())["results"]
        notes = {r["runtime"]: r["note"] for r in runtime}
        assert notes["cuda"].startswith("not measured") and notes["onnxruntime_cuda"].startswith("not measured")
        assert notes["eager"] == notes["onnxruntime"] == ""
    ev = json.loads((tmp_path / "eval" / "eval_validation.json").read_text())
    assert ev["eval_videos"] > 0 and 0 <= ev["eval_video_top1"] <= 1
