"""Ray at the edge: run shard tasks as Ray tasks on an embedded local Ray or an existing cluster.

``process_shard`` is a plain function; this module only wraps it in ``ray.remote`` and streams results
back as they finish. Ray retries system failures (a worker or node dying); per-video decode errors are
ordinary results and are never retried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from preprocess.isolate import START_TIMEOUT_S, InfrastructureError
from preprocess.shard_task import ShardTask, process_shard
from shards.raycluster import init_ray  # noqa: F401  (preprocess.run starts Ray through this module)

DEFAULT_TASK_MEMORY = 1 << 30


def task_time_limit(task: ShardTask) -> float:
    """Seconds one shard task can legitimately take once started: every video at its hard limit, plus the
    decode process's start and the shard's write."""
    return len(task.items) * task.timeout_s + START_TIMEOUT_S + 300.0


def run_tasks_ray(tasks: Sequence[ShardTask], *, max_retries: int = 3,
                  fn: Callable[[ShardTask], dict] = process_shard, memory_bytes: int = DEFAULT_TASK_MEMORY,
                  stall_timeout_s: float | None = None) -> Iterator[tuple[ShardTask, Any]]:
    """Yield ``(task, record)`` as tasks finish; a task that still fails after retries yields its exception.

    ``max_retries`` covers system failures (the worker process or its node dying); exceptions raised by
    ``fn`` are not retried, since per-video decode errors are already results and anything else would fail
    the same way again. Each task declares ``memory_bytes`` to Ray's scheduler. The wait is bounded: when no
    task finishes for ``stall_timeout_s`` (default: the longest a task may take, :func:`task_time_limit`),
    the remaining tasks are cancelled and :class:`InfrastructureError` is raised (the run stops, exit 3; a
    rerun resumes from the shards already written).
    """
    import ray

    if stall_timeout_s is None:
        stall_timeout_s = max((task_time_limit(t) for t in tasks), default=0.0)
    remote = ray.remote(num_cpus=1, memory=memory_bytes, max_retries=max_retries, retry_exceptions=False)(fn)
    pending = {remote.remote(t): t for t in tasks}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=stall_timeout_s)
        if not done:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise InfrastructureError(f"no shard task finished in {stall_timeout_s:g} s; {len(pending)} cancelled "
                                      f"(the cluster or the storage is stuck)")
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
