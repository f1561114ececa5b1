"""Ray at the edge: run shard tasks as Ray tasks on an embedded local Ray or an existing cluster.

``process_shard`` is a plain function; this module only wraps it in ``ray.remote`` and streams results
back as they finish. Ray retries system failures (a worker or node dying); per-video decode errors are
ordinary results and are never retried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from preprocess.shard_task import ShardTask, process_shard
from shards.raycluster import init_ray  # noqa: F401  (preprocess.run starts Ray through this module)


def run_tasks_ray(tasks: Sequence[ShardTask], *, max_retries: int = 3,
                  fn: Callable[[ShardTask], dict] = process_shard) -> Iterator[tuple[ShardTask, Any]]:
    """Yield ``(task, record)`` as tasks finish; a task that still fails after retries yields its exception.

    ``max_retries`` covers system failures (the worker process or its node dying); exceptions raised by
    ``fn`` are not retried, since per-video decode errors are already results and anything else would fail
    the same way again.
    """
    import ray

    remote = ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=False)(fn)
    pending = {remote.remote(t): t for t in tasks}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            task = pending.pop(ref)
            try:
                yield task, ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - surfaced per shard, never loses other shards' work
                yield task, exc


def run_tasks_local(tasks: Sequence[ShardTask]) -> Iterator[tuple[ShardTask, Any]]:
    """Same contract as ``run_tasks_ray``, in this process (tests, debugging)."""
    for t in tasks:
        try:
            yield t, process_shard(t)
        except Exception as exc:  # noqa: BLE001
            yield t, exc


Executor = Callable[[Sequence[ShardTask]], Iterator[tuple[ShardTask, Any]]]
