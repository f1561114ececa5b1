"""Ranged reads from object storage: exactly the bytes a clip needs, several requests in flight, retried.

On local disk a seek costs nothing; on S3/GCS every request costs a round trip (tens of ms before the first
byte). So a reader that wants throughput limited by bandwidth, not latency, keeps a *window* of requests in
flight ahead of its consumer. :class:`RangeReader` does that with a small thread pool over pyarrow's
``open_input_file(...).read_at`` (one ranged GET per call, thread safe): :meth:`RangeReader.prefetch` takes
requests in consumption order and yields their bytes in the same order, at most ``window`` requests ahead.
Close ranges of one shard are coalesced into one request (:func:`coalesce`).

Transient object-store errors (timeouts, 503 SlowDown, connection resets, 500s) are retried a bounded number
of times with exponential backoff and full jitter (:class:`RetryPolicy`); after that, or at once for a
permanent error (404, 403), the read raises :class:`UnreadableError` (an ``OSError``) naming the object and the
range, which the loader counts as a corrupt/unreadable sample. Nothing waits without a bound: pyarrow's S3
client has its own connect/request timeouts, and every retry sleeps at most ``max_delay_s``.
"""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from shards import storage

# Messages of errors worth retrying, as the AWS SDK (through pyarrow), libcurl and the OS phrase them.
# pyarrow reports AWS errors by their SDK enum names (``SERVICE_UNAVAILABLE``, ``SLOW_DOWN``, ``THROTTLING``,
# ``NETWORK_CONNECTION``, ``INTERNAL_FAILURE``, ``REQUEST_TIMEOUT``), often with an empty message.
_TRANSIENT = re.compile(
    r"Slow_?Down|Throttl|Service_?Unavailable|Internal_?(?:Error|Failure)|Request_?Time_?out|Network_?Connection|"
    r"\b50[0234]\b|timed? ?out|Timeout|Connection reset|reset by peer|Broken pipe|connection (?:was )?closed|"
    r"Couldn't connect|Unable to connect|curlCode: (?:7|18|28|52|55|56)\b|Connection refused|Empty reply|"
    r"transient",
    re.IGNORECASE)


class UnreadableError(OSError):
    """A byte range could not be read after bounded retries (or hit a permanent error)."""


def is_transient(exc: BaseException) -> bool:
    """Whether an error from an object-store read is worth retrying (network, throttling, 5xx)."""
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, FileNotFoundError | PermissionError):
        return False
    return isinstance(exc, OSError) and bool(_TRANSIENT.search(str(exc)))


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: ``attempts`` tries in all, sleeping ``uniform(0, min(max_delay_s, base_s * 2**k))``
    before try ``k + 1`` ("full jitter", so many readers that failed together do not retry together)."""

    attempts: int = 5
    base_s: float = 0.05
    max_delay_s: float = 2.0

    def delay(self, k: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_delay_s, self.base_s * (2 ** k)))


def call_with_retries(fn: Callable[[], Any], what: str, policy: RetryPolicy, *,
                      rng: random.Random | None = None, on_retry: Callable[[BaseException], None] | None = None
                      ) -> Any:
    """``fn()``, retried on transient errors per ``policy``; raise :class:`UnreadableError` naming ``what``."""
    rng = rng or random.Random()
    last: BaseException | None = None
    for k in range(max(1, policy.attempts)):
        try:
            return fn()
        except OSError as exc:
            last = exc
            if not is_transient(exc):
                raise UnreadableError(f"{what}: {exc}") from exc
            if k + 1 < policy.attempts:
                if on_retry is not None:
                    on_retry(exc)
                time.sleep(policy.delay(k, rng))
    raise UnreadableError(f"{what}: still failing after {policy.attempts} attempts ({last})") from last


@dataclass(frozen=True)
class Request:
    """Bytes ``[start, stop)`` of the object at ``url`` (``size``: the object's size when known, saves a HEAD)."""

    url: str
    start: int
    stop: int
    size: int | None = None


def coalesce(ranges: Sequence[tuple[int, int]], max_gap: int) -> list[tuple[int, int, list[int]]]:
    """Merge ``[start, stop)`` ranges whose gap is at most ``max_gap`` bytes.

    Returns ``(start, stop, members)`` per merged range, ``members`` the positions of the input ranges it
    covers, in input order of first appearance (inputs are sorted by start first).
    """
    order = sorted(range(len(ranges)), key=lambda i: ranges[i])
    out: list[tuple[int, int, list[int]]] = []
    for i in order:
        a, b = ranges[i]
        if out and a - out[-1][1] <= max_gap:
            s, e, m = out[-1]
            out[-1] = (s, max(e, b), [*m, i])
        else:
            out.append((a, b, [i]))
    return out


class RangeReader:
    """Reads byte ranges of objects with ``threads`` concurrent requests, retries and per-object handles.

    Args:
        threads: concurrent requests (per DataLoader worker; each worker builds its own reader).
        policy: retry policy for transient errors.
        filesystem: ``url → (FileSystem, path)``; default :func:`shards.storage.resolve` (cached per bucket).
        stats: count requests and bytes (for benchmarks and tests): see :attr:`requests`, :attr:`bytes_read`.
    """

    def __init__(self, threads: int = 8, policy: RetryPolicy | None = None,
                 filesystem: Callable[[str], tuple[pafs.FileSystem, str]] | None = None):
        self.threads = max(1, threads)
        self.policy = policy or RetryPolicy()
        self._resolve = filesystem or _cached_resolve()
        self._pool: ThreadPoolExecutor | None = None
        self._files: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._open_lock = threading.Lock()
        self._rng = random.Random()
        self.requests = 0
        self.bytes_read = 0
        self.retries = 0

    # -- single reads ----------------------------------------------------------------------------------

    def _file(self, url: str, size: int | None) -> Any:
        with self._lock:
            f = self._files.get(url)
        if f is not None:
            return f
        with self._open_lock:  # the threads that want a new object at once: one HEAD, not one each
            with self._lock:
                f = self._files.get(url)
            if f is not None:
                return f
            fs, path = self._resolve(url)
            f = fs.open_input_file(path)  # one HEAD per object and process; the handle is kept for later reads
            if size is not None and f.size() != size:
                actual = f.size()
                f.close()
                raise UnreadableError(f"{url}: object has {actual} B, the manifest says {size} B")
            with self._lock:
                self._files[url] = f
            return f

    def _drop(self, url: str) -> None:
        with self._lock:
            f = self._files.pop(url, None)
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()

    def read(self, req: Request) -> bytes:
        """The bytes of one request (exactly ``stop - start`` of them); :class:`UnreadableError` on failure."""
        n = req.stop - req.start
        if n < 0 or req.start < 0:
            raise ValueError(f"{req.url}: bad range {req.start}:{req.stop}")

        def once() -> bytes:
            try:
                data = self._file(req.url, req.size).read_at(n, req.start)
            except OSError:
                self._drop(req.url)  # a fresh handle (and connection) for the retry
                raise
            if len(data) != n:
                raise UnreadableError(f"short read: {len(data)} of {n} B (object truncated?)")
            return data

        def counted(exc: BaseException) -> None:
            with self._lock:
                self.retries += 1

        data = call_with_retries(once, f"{req.url} bytes {req.start}:{req.stop}", self.policy, rng=self._rng,
                                 on_retry=counted)
        with self._lock:
            self.requests += 1
            self.bytes_read += n
        return data

    # -- many reads ------------------------------------------------------------------------------------

    def open(self, url: str, size: int | None = None) -> None:
        """Open ``url`` now (its HEAD request) so later reads of it start at once."""
        self._file(url, size)

    def executor(self) -> ThreadPoolExecutor:
        return self._executor()

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="e3d-range")
        return self._pool

    def submit(self, req: Request) -> Future:
        return self._executor().submit(self.read, req)

    def prefetch(self, requests: Iterable[Any], window: int | None = None,
                 key: Callable[[Any], Request | None] = lambda r: r
                 ) -> Iterator[tuple[Any, bytes | BaseException | None]]:
        """Yield ``(item, bytes or the exception)`` for each item, in order, with up to ``window`` reads in flight.

        ``key(item)`` gives the item's :class:`Request`, or None for an item that needs no read (yielded with
        None). Reading ahead never changes what is yielded or in which order: only when.
        """
        window = max(1, window or 2 * self.threads)
        pending: deque[tuple[Any, Future | None]] = deque()
        it = iter(requests)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < window:
                    try:
                        item = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    req = key(item)
                    pending.append((item, None if req is None else self.submit(req)))
                if not pending:
                    return
                item, fut = pending.popleft()
                if fut is None:
                    yield item, None
                    continue
                exc = fut.exception()
                yield item, (exc if exc is not None else fut.result())
        finally:
            for _, fut in pending:
                if fut is not None:
                    fut.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for url in list(self._files):
            self._drop(url)

    def __getstate__(self) -> dict[str, Any]:
        # Sent to DataLoader workers before use: each process builds its own pool and handles.
        state = self.__dict__.copy()
        state.update(_pool=None, _files={}, _lock=None, _open_lock=None, _resolve=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._open_lock = threading.Lock()
        self._resolve = _cached_resolve()


def _cached_resolve() -> Callable[[str], tuple[pafs.FileSystem, str]]:
    """``storage.resolve`` with one FileSystem per bucket/scheme (building an S3 client costs ~ms)."""
    cache: dict[str, pafs.FileSystem] = {}
    lock = threading.Lock()

    def resolve(url: str) -> tuple[pafs.FileSystem, str]:
        if "://" not in url:
            return storage.resolve(url)
        scheme, rest = url.split("://", 1)
        root = f"{scheme}://{rest.split('/', 1)[0]}"
        with lock:
            fs = cache.get(root)
        if fs is None:
            fs, _ = storage.resolve(url)
            with lock:
                cache.setdefault(root, fs)
        return fs, rest

    return resolve


def read_whole(reader: RangeReader, url: str, size: int, sink: Callable[[bytes], None],
               chunk: int = 8 << 20) -> None:
    """Stream an object of ``size`` bytes into ``sink`` in ``chunk``-byte ranged reads, each retried on its own
    (a failure halfway costs one chunk, not the whole download)."""
    pos = 0
    while pos < size:
        stop = min(size, pos + chunk)
        sink(reader.read(Request(url, pos, stop, size)))
        pos = stop
