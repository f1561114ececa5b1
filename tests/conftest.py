"""Shared fixtures: one real local Ray cluster per test session, started only by tests that ask for it."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible server (moto's server mode) on loopback for the whole session.

    The usual AWS variables (endpoint, credentials, region) point every process started afterwards at it,
    Ray's workers included: that is why :func:`ray_local` starts it first.
    """
    import boto3  # noqa: F401  (installed with moto[server]; fail here, not in a worker)
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = pytest.MonkeyPatch()
    for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        env.setenv(k, v)
    try:
        yield endpoint
    finally:
        env.undo()
        server.stop()


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """A real local Ray instance (2 CPUs, small object store), shared by every test that needs one. Its
    workers see the session's S3 endpoint (:func:`s3_endpoint`)."""
    import ray

    from shards.raycluster import apply_ray_train_env

    apply_ray_train_env()  # as init_ray does for the embedded Ray it starts
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
