"""Bad input, as a user meets it: each case of tests/test_checks.py run as its own ``e3d`` process (cold start:
Python, imports, the checks), printed as a Markdown table: command, the one line on stderr, exit code, wall
seconds. Every case must exit 2 with one ``e3d <cmd>: error:`` line before Ray starts.

    .venv/bin/python bench/bench_bad_input.py          # ~1 min on 2 cores

Data: tiny synthetic Jester shards made here (no Ray) and the bad files of ``tests.test_checks``.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from preprocess.config import PreprocessConfig  # noqa: E402
from preprocess.ray_tasks import run_tasks_local  # noqa: E402
from preprocess.run import preprocess  # noqa: E402
from preprocess.synth import SynthConfig, generate  # noqa: E402
from tests.test_checks import _cases, make_bad_inputs  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="e3d-bad-") as tmp:
        base = Path(tmp)
        generate("jester", base / "src", SynthConfig(num_classes=3, videos_per_class=5, seed=1, bad_inputs=False))
        shards = str(base / "shards")
        preprocess(PreprocessConfig(dataset="jester", src=str(base / "src"), out=shards, short_side=32,
                                    shard_size=4, progress=False), executor=run_tasks_local)
        bad = base / "bad"
        bad.mkdir()
        make_bad_inputs(bad, shards)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("RAY_ADDRESS", None)
        # wall seconds depend on what else runs on the machine; CPU seconds of the e3d process much less so
        print("| command | message | exit | wall s | CPU s |\n|---|---|---|---|---|")
        worst, wrong = 0.0, 0
        for argv, fragment, code in _cases(shards, bad):
            t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            proc = subprocess.run([sys.executable, "-m", "pipeline", *argv], env=env, capture_output=True,
                                  text=True, timeout=300)
            seconds = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            line = lines[-1] if lines else ""
            ok = proc.returncode == code and len(lines) == 1 and fragment in line
            wrong += not ok
            worst = max(worst, seconds)
            shown = " ".join(argv).replace(str(bad), "BAD").replace(shards, "SHARDS")
            print(f"| `e3d {shown}` | {line.replace(str(bad), 'BAD').replace(shards, 'SHARDS')[:200]} "
                  f"| {proc.returncode} | {seconds:.2f} | {cpu:.2f} |{'' if ok else ' UNEXPECTED'}")
        print(f"\n{wrong} unexpected; slowest {worst:.2f} s; load average {os.getloadavg()[0]:.1f}")
        return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
