"""Model speed bench: clips/s at batch 8, inference and training step, contiguous vs channels_last_3d.

Same as ``e3d bench models``; all options are those of :func:`training.speed.main` (``--help``).  Needs the
project importable (``pip install -e .``, as ``make setup`` does), e.g.::

    python bench/bench_models.py --models shufflenetv2_1.0x,mobilenetv2_1.0x --iters 10
"""

import sys

from training.speed import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
