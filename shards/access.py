"""How a loader reaches the bytes of a shard: local seeks, ranged reads through the index, or a cached copy.

:class:`ShardAccess` is built once per loader (picklable: each DataLoader worker gets its own threads, handles
and caches) and answers, for a :class:`ShardRef` (a shard's URL plus what the manifest says about it):

* :meth:`ShardAccess.local` — a local file to seek in: the shard itself when it is on a local disk, or its
  verified copy in the shard cache (``cache_dir``); on a cache miss a background fill starts (the first epoch
  fills the cache while training) and None is returned;
* :meth:`ShardAccess.index` — the shard's parsed index (fetched once per process, checked against the
  manifest's sha256 for the index, and the index against the shard's sha256 and size), or None when the
  shard has none or it is unusable (the loader then walks the tar as before);
* :meth:`ShardAccess.reader` — the :class:`shards.ranged.RangeReader` that fetches clip byte ranges with a
  prefetch window;
* :meth:`ShardAccess.open_stream` — for a remote shard without index: the whole shard, downloaded once to a
  local temporary file with per-chunk retries and verified against the manifest's sha256 when ``verify`` is on
  (the bytes a sequential reader would have streamed anyway), then read with local seeks.

``verify`` (default: on for object storage) is the manifest check of issue 11 item 10: a cache fill and a
downloaded stream hash every byte; an indexed shard read by ranges checks the index chain (index sha256 from
the manifest, shard sha256 and size named in the index, object size from the store).
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing.util
import os
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

from shards import storage
from shards.cache import CacheVerifyError, ShardCache
from shards.index import ShardIndex, ShardIndexError, parse_index
from shards.ranged import RangeReader, Request, RetryPolicy, UnreadableError, call_with_retries, read_whole


class ShardVerifyError(OSError):
    """A shard (or its index) does not match the manifest's sha256/size."""


@dataclass(frozen=True)
class ShardRef:
    """A shard as the manifest describes it. ``index_url``/``index_sha256`` are None for shards without index;
    ``bytes``/``sha256`` None when unknown (shards given without a manifest)."""

    url: str
    bytes: int | None = None
    sha256: str | None = None
    index_url: str | None = None
    index_sha256: str | None = None

    @property
    def remote(self) -> bool:
        return storage.is_remote(self.url)


@dataclass(frozen=True)
class AccessConfig:
    """Knobs of object-storage access (all per DataLoader worker).

    Attributes:
        threads: concurrent ranged requests.
        window: clip reads in flight ahead of the consumer (default ``4 × threads``).
        cache_dir: local shard cache directory (None: no cache).
        cache_bytes: the cache's size cap in bytes.
        verify: check shards against the manifest's sha256 (None: on for object storage, off for local disks).
        coalesce_gap: ranges of one video closer than this many bytes are read in one request.
        retry: retry policy for transient errors.
        dataset_bytes: total bytes of the shards this loader reads; when it exceeds ``cache_bytes`` the cache
            is only read, never filled: an LRU cache smaller than what each epoch reads would evict every
            shard before its next use and download whole shards (~19x a clip's bytes on Kinetics) for nothing.
    """

    threads: int = 8
    window: int | None = None
    cache_dir: str | None = None
    cache_bytes: int = 100 << 30
    verify: bool | None = None
    coalesce_gap: int = 64 << 10
    retry: RetryPolicy = RetryPolicy()
    dataset_bytes: int | None = None

    @property
    def fills(self) -> bool:
        """Whether cache misses start background fills (the dataset fits the cache)."""
        return self.dataset_bytes is None or self.dataset_bytes <= self.cache_bytes

    @property
    def prefetch(self) -> int:
        return self.window or 4 * self.threads


class ShardAccess:
    def __init__(self, cfg: AccessConfig | None = None):
        self.cfg = cfg or AccessConfig()
        self._init_local()

    def _init_local(self) -> None:
        self._pid = os.getpid()
        self._reader: RangeReader | None = None
        self._cache: ShardCache | None = None
        self._indexes: dict[str, ShardIndex | None] = {}
        self._index_errors: dict[str, str] = {}
        self._checked: set[str] = set()
        self._spools: dict[str, str] = {}
        self._bad: dict[str, str] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.cfg = state["cfg"]
        self._init_local()

    def verifies(self, ref: ShardRef) -> bool:
        return ref.remote if self.cfg.verify is None else self.cfg.verify

    # -- parts --------------------------------------------------------------------------------------

    def _forked(self) -> None:
        # A DataLoader worker started by fork inherits this object without the threads of its pools, whose
        # queues would then never be served: start over with fresh pools, handles and caches.
        if os.getpid() != self._pid:
            self._init_local()

    def reader(self) -> RangeReader:
        self._forked()
        if self._reader is None:
            self._reader = RangeReader(threads=self.cfg.threads, policy=self.cfg.retry)
        return self._reader

    def cache(self) -> ShardCache | None:
        if self.cfg.cache_dir is None:
            return None
        self._forked()
        if self._cache is None:
            self._cache = ShardCache(self.cfg.cache_dir, self.cfg.cache_bytes, reader=RangeReader(
                threads=1, policy=self.cfg.retry))
        return self._cache

    def local(self, ref: ShardRef) -> str | None:
        """A local file holding the shard's bytes (the shard itself, or its cached copy), or None."""
        if not ref.remote:
            return storage.resolve(ref.url)[1]
        cache = self.cache()
        if cache is None or ref.sha256 is None or ref.bytes is None:
            return None
        hit = cache.lookup(ref.sha256, ref.bytes)
        if hit is None and self.cfg.fills:
            def failed(exc: OSError) -> None:
                if isinstance(exc, CacheVerifyError):  # the store holds other bytes than the manifest says
                    self._bad[ref.url] = str(exc)

            cache.fill_async(ref.url, ref.sha256, ref.bytes, on_error=failed)
        return hit

    def bad(self, ref: ShardRef) -> str | None:
        """Why the shard was found not to match the manifest in this process (a cache fill hashed it), or None."""
        return self._bad.get(ref.url)

    def index(self, ref: ShardRef) -> ShardIndex | None:
        """The shard's index, checked against the manifest; None without one (``index_error`` says why)."""
        if ref.index_url is None:
            return None
        self._forked()
        with self._lock:
            if ref.url in self._indexes:
                return self._indexes[ref.url]
        index: ShardIndex | None = None
        try:
            data = self._fetch_small(ref.index_url)
            if ref.index_sha256 is not None and hashlib.sha256(data).hexdigest() != ref.index_sha256:
                raise ShardIndexError(f"{ref.index_url}: sha256 differs from the manifest's")
            index = parse_index(data, ref.index_url, shard_bytes=ref.bytes, shard_sha256=ref.sha256)
        except (ShardIndexError, OSError) as exc:
            self._index_errors[ref.url] = str(exc)
        with self._lock:
            self._indexes[ref.url] = index
        return index

    def index_error(self, ref: ShardRef) -> str | None:
        return self._index_errors.get(ref.url)

    def _fetch_small(self, url: str) -> bytes:
        fs, path = storage.resolve(url)
        if not storage.is_remote(url):
            return storage.read_bytes(fs, path)
        # One GET (no HEAD first): indexes are small; retried like any read.
        return call_with_retries(lambda: storage.read_bytes(fs, path), url, self.cfg.retry)

    def warm(self, refs: list[ShardRef]) -> None:
        """Fetch the indexes of ``refs`` and open their objects concurrently (a stream's shards at its start):
        one round trip of latency per stream and epoch instead of two per shard."""
        todo = [r for r in refs if r.remote and r.index_url is not None and r.url not in self._indexes
                and self.local(r) is None]  # cached shards are read locally: no index, no connection
        if len(todo) < 2:
            return
        reader = self.reader()

        def one(ref: ShardRef) -> None:
            if self.index(ref) is not None:
                with contextlib.suppress(OSError):
                    reader.open(ref.url, ref.bytes)

        list(reader.executor().map(one, todo))

    def check_object(self, ref: ShardRef) -> None:
        """Once per process and shard, when verifying: the object's size is the manifest's (a HEAD request).
        Raises :class:`ShardVerifyError` for a shard found bad before."""
        if ref.url in self._bad:
            raise ShardVerifyError(self._bad[ref.url])
        if not self.verifies(ref) or ref.bytes is None or ref.url in self._checked:
            return
        fs, path = storage.resolve(ref.url)
        size = storage.size(fs, path)
        if size != ref.bytes:
            raise ShardVerifyError(f"{ref.url}: {size} B in storage, the manifest says {ref.bytes} B")
        self._checked.add(ref.url)

    def open_stream(self, ref: ShardRef) -> str:
        """A local copy of a remote shard (downloaded once per process, sha256-checked when verifying)."""
        got = self._spools.get(ref.url)
        if got is not None and os.path.exists(got):
            return got
        fs, path = storage.resolve(ref.url)
        size = ref.bytes if ref.bytes is not None else storage.size(fs, path)
        if size is None:
            raise UnreadableError(f"{ref.url}: missing")
        # One spool per process: the previous shard's is deleted (a stream reads its shards one by one).
        for old in self._spools.values():
            with _suppress():
                os.unlink(old)
        self._spools.clear()
        fd, tmp = tempfile.mkstemp(prefix="e3d-shard-", suffix=".tar")
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                def sink(b: bytes) -> None:
                    digest.update(b)
                    out.write(b)

                read_whole(self.reader(), ref.url, size, sink)
            if self.verifies(ref) and ref.sha256 is not None and digest.hexdigest() != ref.sha256:
                self._bad[ref.url] = f"{ref.url}: sha256 differs from the manifest's"
                raise ShardVerifyError(f"{ref.url}: sha256 {digest.hexdigest()[:12]}… differs from the "
                                       f"manifest's {ref.sha256[:12]}…")
        except BaseException:
            with _suppress():
                os.unlink(tmp)
            raise
        self._spools[ref.url] = tmp
        # Removed when this object goes, or when the process exits: DataLoader workers leave through
        # multiprocessing's exit path, which runs these finalizers but not atexit handlers.
        multiprocessing.util.Finalize(self, _unlink_quiet, args=(tmp,), exitpriority=0)
        return tmp

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._cache is not None:
            self._cache.close(wait=False)
        for p in self._spools.values():
            with _suppress():
                os.unlink(p)
        self._spools.clear()

    # -- clip requests ---------------------------------------------------------------------------------

    @staticmethod
    def request(ref: ShardRef, index: ShardIndex, sample: int, lo: int, hi: int) -> Request:
        """The ranged request for stored frames ``lo..hi`` (inclusive) of sample number ``sample``."""
        start, stop = index.entries[sample].frame_range(lo, hi)
        return Request(ref.url, start, stop, ref.bytes)


def _suppress():
    return contextlib.suppress(OSError)


def _unlink_quiet(path: str) -> None:
    with _suppress():
        os.unlink(path)


__all__ = ["AccessConfig", "CacheVerifyError", "ShardAccess", "ShardRef", "ShardVerifyError", "UnreadableError"]
