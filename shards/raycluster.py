"""Connecting to Ray: the one ``init_ray`` that preprocessing, training and sweeps use.

It lives in the bottom layer because ``preprocess/`` and ``training/`` may not import each other; it
imports Ray only when called, so nothing else in ``shards/`` needs Ray.
"""

from __future__ import annotations

import os
import sys

#: Ray's temp dir for an embedded local Ray: its unix socket paths break when the dir is long (pytest's are).
RAY_TEMP_DIR = "/tmp/e3dray"
#: Object store of an embedded local Ray. Shard tasks return small records and Ray Train moves checkpoints
#: through files, so little is needed; Ray's default (30 % of RAM) would reserve far more on a laptop.
LOCAL_OBJECT_STORE_BYTES = 200 * 1024 * 1024


#: Set (unless the user set them) before an embedded Ray starts; its workers, and so Ray Train's controller, inherit
#: them. The controller drains each worker's one-slot report queue once per health check, every 2 s by default, so a
#: second ``ray.train.report`` within 2 s blocks until the next one. The loop reports twice per validating epoch (the
#: checkpoint before validation, then the scored one), and on the demo's 4-s epochs those waits took 1.1-1.2 s per
#: report and 59 s of its 198 s of training; at 0.5 s a report takes ~0.01 s. A cluster sets it in its own
#: environment (the polls are one small remote call per worker).
RAY_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def apply_ray_train_env() -> None:
    """Put :data:`RAY_TRAIN_ENV` into this process's environment, keeping any value the user set: call it before
    starting a Ray whose workers should inherit it."""
    for key, value in RAY_TRAIN_ENV.items():
        os.environ.setdefault(key, value)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start an embedded local Ray with ``num_cpus`` CPUs
    (default: all), no dashboard and worker output forwarded to this process.

    Returns True when this call started or connected Ray (the caller then shuts it down with
    ``ray.shutdown()``), False when Ray was already up in this process.
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray Train's print patch sends each line a training worker prints both to stdout and through a logger:
    # every line reached the console twice. Workers of an embedded Ray inherit this.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    apply_ray_train_env()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # Ray's own "Connecting to existing Ray cluster" line is hidden at the default verbosity; say it here,
        # so a job's log shows that it joined a cluster rather than starting one of its own.
        print(f"e3d: joining the existing Ray cluster at {address}", file=sys.stderr, flush=True)
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, _temp_dir=RAY_TEMP_DIR,
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES)
    return True
