"""Local shard cache: whole shards from object storage kept on a local disk (NVMe), LRU-evicted to a size cap.

Entries are content-addressed: ``<dir>/<sha256>.tar``, the digest the manifest (``shards.parquet``) lists.
An entry appears only complete and verified: a fill downloads to ``<dir>/.tmp-<sha256>-<pid>-<rand>`` while
hashing, checks the sha256 and size against the manifest and renames into place. Several processes on a node
(DataLoader workers, Ray Train workers) share one directory safely:

* ``<dir>/.lock`` (``fcntl.flock``, held for milliseconds) serialises space accounting, eviction and publishing;
* ``<dir>/.fill-<sha256>.lock`` is held by the one process downloading that shard; others do not wait for it,
  they keep reading by ranges (a cache never makes a read slower or fail);
* space for a download is reserved before it starts (temporaries count towards the cap), so concurrent fills
  never overrun the cap; a temporary whose fill lock is free belongs to a dead process and is removed.

LRU order is the entries' mtime, touched on every hit. Evicting a file another process has open is safe on
POSIX (the reader keeps its descriptor). A shard larger than the cap, or a cap filled by in-progress downloads,
is simply not cached. Linux/macOS only (``fcntl``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from shards.ranged import RangeReader, read_whole

_ENTRY = re.compile(r"([0-9a-f]{64})\.tar")
_TMP = re.compile(r"\.tmp-([0-9a-f]{64})-.*")


class CacheVerifyError(OSError):
    """A downloaded shard does not match the manifest's sha256/size (the object store holds other bytes)."""


class ShardCacheWarning(UserWarning):
    """A cache fill failed (the message says why); reads go on by ranges."""


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    temporaries: int


@contextlib.contextmanager
def _flock(path: str, *, blocking: bool = True) -> Iterator[bool]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class ShardCache:
    """A size-capped, multi-process-safe cache of verified shards in ``directory``.

    Args:
        directory: a local directory (created if needed); share it between the processes of a node.
        max_bytes: the cap on entries plus in-progress downloads, in bytes.
        reader: the :class:`RangeReader` downloads go through (retries included); a private one by default.
    """

    def __init__(self, directory: str, max_bytes: int, reader: RangeReader | None = None):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.max_bytes = max_bytes
        self._reader = reader
        self._bg: ThreadPoolExecutor | None = None
        self._pending: dict[str, Future] = {}
        self._plock = threading.Lock()
        self.hits = self.misses = self.fills = 0

    def __getstate__(self) -> dict:
        # A DataLoader worker gets its own background thread and reader.
        state = self.__dict__.copy()
        state.update(_bg=None, _pending={}, _plock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._plock = threading.Lock()

    # -- paths -------------------------------------------------------------------------------------

    def path_for(self, sha256: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
            raise ValueError(f"not a sha256 hex digest: {sha256!r:.80}")
        return os.path.join(self.directory, f"{sha256}.tar")

    def _lock_path(self) -> str:
        return os.path.join(self.directory, ".lock")

    def _fill_lock(self, sha256: str) -> str:
        return os.path.join(self.directory, f".fill-{sha256}.lock")

    # -- lookups -----------------------------------------------------------------------------------

    def lookup(self, sha256: str, size: int) -> str | None:
        """The local path of the shard with this digest and size, or None; a hit becomes most recently used."""
        path = self.path_for(sha256)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self.misses += 1
            return None
        if st.st_size != size:  # not ours to trust (a manifest for other bytes?): leave it to eviction
            self.misses += 1
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
        self.hits += 1
        return path

    # -- filling -----------------------------------------------------------------------------------

    def _scan(self) -> tuple[list[tuple[float, int, str]], int]:
        """(mtime, size, path) of the entries, and bytes held by temporaries of live fills (stale ones removed)."""
        entries, tmp_bytes = [], 0
        for name in os.listdir(self.directory):
            full = os.path.join(self.directory, name)
            try:
                if _ENTRY.fullmatch(name):
                    st = os.stat(full)
                    entries.append((st.st_mtime, st.st_size, full))
                elif m := _TMP.fullmatch(name):
                    with _flock(self._fill_lock(m.group(1)), blocking=False) as free:
                        if free:  # nobody fills it: left by a dead process
                            os.unlink(full)
                            continue
                    tmp_bytes += _reserved(full)
            except FileNotFoundError:
                continue  # removed meanwhile by another process
        return entries, tmp_bytes

    def _reserve(self, size: int) -> bool:
        """Evict least recently used entries until ``size`` more bytes fit; False when they cannot."""
        if size > self.max_bytes:
            return False
        entries, tmp_bytes = self._scan()
        used = tmp_bytes + sum(s for _, s, _ in entries)
        for _, s, path in sorted(entries):
            if used + size <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            used -= s
        return used + size <= self.max_bytes

    def fill(self, url: str, sha256: str, size: int) -> str | None:
        """Download ``url`` into the cache (verified against ``sha256``/``size``); return its path.

        Returns None when the shard does not fit or another process is filling it. Raises
        :class:`CacheVerifyError` when the object's bytes differ from the manifest's, and the reader's
        ``UnreadableError`` when the download fails after retries; nothing partial is left behind.
        """
        final = self.path_for(sha256)
        if self.lookup(sha256, size) is not None:
            return final
        with _flock(self._fill_lock(sha256), blocking=False) as mine:
            if not mine:
                return None
            if self.lookup(sha256, size) is not None:  # filled while we waited for the lock
                return final
            tmp = os.path.join(self.directory, f".tmp-{sha256}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            with _flock(self._lock_path()):
                if not self._reserve(size):
                    return None
                _write_reservation(tmp, size)
            try:
                digest = hashlib.sha256()
                with open(tmp, "r+b") as out:
                    def sink(b: bytes) -> None:
                        digest.update(b)
                        out.write(b)

                    read_whole(self._get_reader(), url, size, sink)
                    out.truncate()
                    out.flush()
                    os.fsync(out.fileno())
                if digest.hexdigest() != sha256:
                    raise CacheVerifyError(f"{url}: sha256 {digest.hexdigest()[:12]}… differs from the "
                                           f"manifest's {sha256[:12]}… (the object changed since preprocessing?)")
                with _flock(self._lock_path()):
                    os.replace(tmp, final)
                self.fills += 1
                return final
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def fill_async(self, url: str, sha256: str, size: int,
                   on_error: Callable[[OSError], None] | None = None) -> Future:
        """Start :meth:`fill` on this process's background thread (one download at a time); returns its future.

        Failures become a :class:`ShardCacheWarning` (the shard is then read by ranges) and are passed to
        ``on_error``.
        """
        with self._plock:
            fut = self._pending.get(sha256)
            if fut is not None:
                return fut
            if self._bg is None:
                self._bg = ThreadPoolExecutor(1, thread_name_prefix="e3d-cache-fill")

            def run() -> str | None:
                try:
                    return self.fill(url, sha256, size)
                except OSError as exc:
                    warnings.warn(f"shard cache: not caching {url}: {exc}", ShardCacheWarning, stacklevel=1)
                    if on_error is not None:
                        on_error(exc)
                    return None

            fut = self._pending[sha256] = self._bg.submit(run)
            return fut

    def _get_reader(self) -> RangeReader:
        if self._reader is None:
            self._reader = RangeReader(threads=1)
        return self._reader

    def stats(self) -> CacheStats:
        entries, tmp_bytes = self._scan()
        tmps = sum(1 for n in os.listdir(self.directory) if _TMP.fullmatch(n))
        return CacheStats(len(entries), sum(s for _, s, _ in entries), tmps)

    def close(self, wait: bool = True) -> None:
        if self._bg is not None:
            self._bg.shutdown(wait=wait, cancel_futures=not wait)
            self._bg = None
        self._pending.clear()


def _write_reservation(path: str, size: int) -> None:
    # The temporary holds its reservation as its apparent size (sparse: no disk written yet), so other
    # processes count it before a byte has arrived.
    with open(path, "wb") as f:
        f.truncate(size)


def _reserved(path: str) -> int:
    return os.stat(path).st_size
