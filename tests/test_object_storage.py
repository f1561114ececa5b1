"""Shards, manifests and verify on an S3-compatible object store (moto's server on loopback), through the
same pyarrow.fs code paths as local disk: a full run, a resumed rerun, and checksum verification there."""

from __future__ import annotations

import hashlib

import pyarrow.fs as pafs
import pytest

from preprocess.config import PreprocessConfig
from preprocess.ray_tasks import run_tasks_local
from preprocess.run import preprocess
from preprocess.synth import SynthConfig, generate
from shards import storage
from shards.manifest import read_dataset_info, shard_urls, verify

BUCKET = "e3d-test"


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on 127.0.0.1 with one bucket; credentials and endpoint via the usual AWS variables."""
    import boto3  # installed with moto[server]
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


def _objects(uri: str) -> dict[str, str]:
    fs, base = storage.resolve(uri)
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.type == pafs.FileType.File:
            out[info.path[len(base) + 1:]] = hashlib.sha256(storage.read_bytes(fs, info.path)).hexdigest()
    return out


def _local(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_preprocess_to_s3_resume_and_verify(s3, tmp_path):
    src = tmp_path / "jester"
    generate("jester", src, SynthConfig(num_classes=2, videos_per_class=2, seed=1))
    uri = f"s3://{BUCKET}/shards/jester"

    def run(out: str):
        cfg = PreprocessConfig(dataset="jester", src=str(src), out=out, shard_size=3, max_failed=1.0,
                               progress=False)
        return preprocess(cfg, executor=run_tasks_local)

    first = run(uri)
    assert first.shards_built > 0 and first.videos_ok > 0
    local = tmp_path / "local"
    run(str(local))
    # the bucket holds exactly what a local run writes, byte for byte, and no temporaries
    assert _objects(uri) == _local(local)
    assert read_dataset_info(uri)["dataset"] == "jester"
    urls = shard_urls(uri, "train")
    assert urls and all(u.startswith(f"s3://{BUCKET}/shards/jester/shards/") for u in urls)

    again = run(uri)
    assert again.shards_built == 0 and again.shards_skipped == first.shards_built

    result = verify(uri)
    assert result.ok and result.samples_checked == first.videos_ok
    fs, base = storage.resolve(uri)
    victim = storage.join(base, "shards/train/shard-000000.tar")
    data = bytearray(storage.read_bytes(fs, victim))
    data[700] ^= 0x55
    with fs.open_output_stream(victim) as f:
        f.write(bytes(data))
    bad = verify(uri)
    assert not bad.ok and any("shard-000000.tar" in p and "sha256" in p for p in bad.problems)


def test_interrupted_upload_publishes_nothing(s3):
    fs, base = storage.resolve(f"s3://{BUCKET}/x")
    path = storage.join(base, "part.bin")
    with pytest.raises(RuntimeError, match="boom"), storage.atomic_output(fs, path) as out:
        out.write(b"partial data")
        raise RuntimeError("boom")
    assert not storage.exists(fs, path)
    with storage.atomic_output(fs, path) as out:
        out.write(b"whole")
    assert storage.read_bytes(fs, path) == b"whole"
    assert out.sha256.hexdigest() == hashlib.sha256(b"whole").hexdigest()


def test_loader_streams_training_clips_from_s3(s3, tmp_path):
    from training.data import ClipLoader, ClipStream, LoaderConfig, shard_specs

    src = tmp_path / "jester"
    generate("jester", src, SynthConfig(num_classes=2, videos_per_class=3, seed=2, bad_inputs=False))
    uri = f"s3://{BUCKET}/jester"
    local = tmp_path / "local"
    for out in (uri, str(local)):
        preprocess(PreprocessConfig(dataset="jester", src=str(src), out=out, shard_size=4, progress=False),
                   executor=run_tasks_local)
    cfg = LoaderConfig.for_dataset("jester", "train", batch_size=2, num_workers=0, seed=5)

    def batches(root):
        loader = ClipLoader(ClipStream(shard_specs(root, "train", videos=False), cfg, rank=0, world_size=1))
        loader.set_epoch(0)
        return [(b["keys"], b["clips"]) for b in loader]

    remote, here = batches(uri), batches(str(local))
    assert len(remote) == len(here) > 0
    for (k1, c1), (k2, c2) in zip(remote, here, strict=True):
        assert list(k1) == list(k2) and bool((c1 == c2).all())
