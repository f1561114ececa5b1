"""Shared fixtures: one real local Ray cluster per test session, started only by tests that ask for it."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance (2 CPUs, small object store), shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=150 * 1024 * 1024,
            # Ray's unix sockets break when the temp path is long.
            _temp_dir="/tmp/e3dray",
            log_to_driver=False,
        )
    yield ray
    # Left running for the rest of the session; pytest's exit shuts it down.
