"""Ranged reads with bounded retries and the local shard cache (issue 13, items 2, 3 and 7), on the session's
S3 test server behind a loopback proxy that adds latency and injects failures (``tests/s3proxy.py``)."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import time
import uuid

import pyarrow.fs as pafs
import pytest

from shards.cache import CacheVerifyError, ShardCache
from shards.ranged import RangeReader, Request, RetryPolicy, UnreadableError, coalesce, is_transient
from tests.s3proxy import S3Proxy

FAST = RetryPolicy(attempts=4, base_s=0.01, max_delay_s=0.05)


def _fs(endpoint: str, **kw) -> pafs.S3FileSystem:
    # max_attempts=1: the AWS SDK's own retries off, so every injected failure reaches our retry layer.
    return pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1", access_key="test",
                             secret_key="test", retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1),
                             connect_timeout=2, request_timeout=kw.pop("request_timeout", 5), **kw)


@pytest.fixture
def store(s3_endpoint):
    """(proxy, filesystem through it, {url: bytes}) with three objects in a fresh bucket."""
    import boto3

    bucket = f"e3d-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    host, port = s3_endpoint.rsplit("//", 1)[1].split(":")
    with S3Proxy((host, int(port))) as proxy:
        fs = _fs(proxy.endpoint, request_timeout=0.5)
        objects = {}
        for i, n in enumerate((300_000, 120_000, 90_000)):
            data = os.urandom(n)
            with fs.open_output_stream(f"{bucket}/o{i}") as f:
                f.write(data)
            objects[f"s3://{bucket}/o{i}"] = data
        yield proxy, fs, objects


def _reader(fs, **kw) -> RangeReader:
    return RangeReader(filesystem=lambda url: (fs, url.split("://", 1)[1]), policy=kw.pop("policy", FAST), **kw)


def test_ranged_reads_return_exact_bytes_in_order_with_requests_in_flight(store):
    proxy, fs, objects = store
    url, data = next(iter(objects.items()))
    reader = _reader(fs, threads=8)
    try:
        reqs = [Request(url, s, s + 7_000) for s in range(0, 280_000, 9_000)]
        proxy.reset_counters()
        proxy.latency_s = 0.05
        t0 = time.monotonic()
        out = list(reader.prefetch(reqs, window=8))
        wall = time.monotonic() - t0
        assert [r for r, _ in out] == reqs
        assert all(b == data[r.start:r.stop] for r, b in out)
        # exactly the requested bytes crossed the wire (plus HTTP headers), one GET per range
        assert reader.bytes_read == sum(r.stop - r.start for r in reqs) and reader.requests == len(reqs)
        assert proxy.requests <= len(reqs) + 1  # + the HEAD that opened the object
        # 32 requests of 50 ms each one after another take 1.6 s; 8 in flight overlap them
        assert wall < 0.5 * len(reqs) * proxy.latency_s
    finally:
        reader.close()


def test_coalesce_merges_close_ranges_only():
    ranges = [(100, 200), (0, 20), (260, 300), (10_000, 10_100)]
    assert coalesce(ranges, max_gap=64) == [(0, 20, [1]), (100, 300, [0, 2]), (10_000, 10_100, [3])]
    assert coalesce(ranges, max_gap=0) == [(0, 20, [1]), (100, 200, [0]), (260, 300, [2]), (10_000, 10_100, [3])]


@pytest.mark.parametrize("kind", ["503", "reset", "stall"])
def test_transient_failures_are_retried(store, kind):
    proxy, fs, objects = store
    url, data = next(iter(objects.items()))
    reader = _reader(fs)
    try:
        proxy.inject(kind, 2, stall_s=3.0)
        t0 = time.monotonic()
        assert reader.read(Request(url, 1000, 60_000)) == data[1000:60_000]
        assert reader.retries == 2 and proxy.injected == 2
        assert time.monotonic() - t0 < 8  # two stalls cut by the request timeout, not waited out
    finally:
        reader.close()


def test_persistent_failures_end_in_an_unreadable_error_not_a_hang(store):
    proxy, fs, objects = store
    url = next(iter(objects))
    reader = _reader(fs)
    try:
        proxy.inject("503", 1000)
        t0 = time.monotonic()
        with pytest.raises(UnreadableError, match=r"o0 bytes 5:500: still failing after 4 attempts"):
            reader.read(Request(url, 5, 500))
        assert time.monotonic() - t0 < 5 and proxy.injected == FAST.attempts
        proxy._faults.clear()
        # a permanent error (no such object) is not retried
        with pytest.raises(UnreadableError, match="o9"):
            reader.read(Request(url.replace("o0", "o9"), 0, 10))
        assert reader.retries == FAST.attempts - 1
    finally:
        reader.close()


def test_error_classification():
    assert is_transient(OSError("AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate."))
    assert is_transient(OSError("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 56, Failure"))
    assert is_transient(ConnectionResetError(104, "Connection reset by peer"))
    assert not is_transient(FileNotFoundError("Path does not exist 'b/o9'"))
    assert not is_transient(OSError("AWS Error ACCESS_DENIED during GetObject operation: Access Denied"))


# -- cache -----------------------------------------------------------------------------------------------


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_cache_fills_verifies_and_hits(store, tmp_path):
    proxy, fs, objects = store
    url, data = next(iter(objects.items()))
    cache = ShardCache(str(tmp_path / "c"), max_bytes=1 << 20, reader=_reader(fs))
    assert cache.lookup(_sha(data), len(data)) is None
    path = cache.fill(url, _sha(data), len(data))
    with open(path, "rb") as f:
        assert f.read() == data
    proxy.reset_counters()
    assert cache.lookup(_sha(data), len(data)) == path and proxy.requests == 0  # no remote access on a hit
    assert cache.fill(url, _sha(data), len(data)) == path and proxy.requests == 0
    assert cache.stats().temporaries == 0


def test_cache_refuses_bytes_that_differ_from_the_manifest(store, tmp_path):
    _, fs, objects = store
    url, data = next(iter(objects.items()))
    cache = ShardCache(str(tmp_path / "c"), max_bytes=1 << 20, reader=_reader(fs))
    wrong = _sha(data[:-1] + b"x")
    with pytest.raises(CacheVerifyError, match="differs from the manifest"):
        cache.fill(url, wrong, len(data))
    assert os.listdir(cache.directory) == [] or all(n.startswith(".") and "tmp" not in n
                                                    for n in os.listdir(cache.directory))
    assert cache.lookup(wrong, len(data)) is None


def test_cache_evicts_least_recently_used_and_degrades_when_too_small(store, tmp_path):
    _, fs, objects = store
    (u0, d0), (u1, d1), (u2, d2) = objects.items()
    cache = ShardCache(str(tmp_path / "c"), max_bytes=len(d0) + len(d1) + 10, reader=_reader(fs))
    p0 = cache.fill(u0, _sha(d0), len(d0))
    p1 = cache.fill(u1, _sha(d1), len(d1))
    os.utime(p1, (time.time() - 100, time.time() - 100))  # o1 used long ago
    os.utime(p0, (time.time() - 50, time.time() - 50))
    assert cache.lookup(_sha(d0), len(d0)) == p0  # a hit makes o0 the most recent
    p2 = cache.fill(u2, _sha(d2), len(d2))
    assert os.path.exists(p0) and os.path.exists(p2) and not os.path.exists(p1)
    assert cache.stats().bytes <= cache.max_bytes
    tiny = ShardCache(str(tmp_path / "tiny"), max_bytes=len(d2) - 1, reader=_reader(fs))
    assert tiny.fill(u2, _sha(d2), len(d2)) is None  # does not fit: not cached, no error
    assert tiny.stats().entries == 0


def _fill_worker(args):
    directory, cap, endpoint, jobs = args
    fs = _fs(endpoint)
    cache = ShardCache(directory, max_bytes=cap, reader=_reader(fs))
    out = []
    for url, sha, size in jobs:
        try:
            out.append((url, cache.fill(url, sha, size)))
        except OSError as exc:  # pragma: no cover - reported by the assertion below
            out.append((url, f"error {exc}"))
    return out


def test_cache_is_safe_with_several_processes(store, tmp_path):
    proxy, _, objects = store
    directory = str(tmp_path / "shared")
    items = [(u, _sha(d), len(d)) for u, d in objects.items()]
    cap = 300_000 + 120_000 + 1000  # room for two of the three objects
    jobs = [(directory, cap, proxy.endpoint, items[k:] + items[:k]) for k in (0, 1, 2, 0)]
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.map(_fill_worker, jobs)
    for res in results:
        for url, got in res:
            assert got is None or (isinstance(got, str) and got.endswith(f"{_sha(objects[url])}.tar")), got
    cache = ShardCache(directory, max_bytes=cap)
    stats = cache.stats()
    assert stats.temporaries == 0 and stats.entries >= 1 and stats.bytes <= cap
    for name in os.listdir(directory):
        if name.endswith(".tar"):
            with open(os.path.join(directory, name), "rb") as f:
                assert _sha(f.read()) + ".tar" == name  # every entry is complete and verified


def _double_in_pool(access, q) -> None:
    q.put(list(access.reader().executor().map(lambda x: 2 * x, [1, 2, 3])))


def test_access_used_before_a_fork_works_in_the_child():
    from shards.access import ShardAccess

    access = ShardAccess()
    pool = access.reader().executor()
    list(pool.map(time.sleep, [0.02] * 4 * access.cfg.threads))  # the parent's pool has all its threads
    ctx = mp.get_context("fork")  # what DataLoader workers use on Linux: no pickling, the pool is inherited
    q = ctx.Queue()
    p = ctx.Process(target=_double_in_pool, args=(access, q), daemon=True)
    p.start()
    p.join(timeout=30)
    if p.is_alive():  # its tasks were queued to threads that do not exist in the child
        p.kill()
    assert p.exitcode == 0 and q.get(timeout=5) == [2, 4, 6]
    access.close()
