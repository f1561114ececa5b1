"""Storage layer: every read and write of shards and manifests goes through ``pyarrow.fs``.

Local paths work now; object-store URIs (``s3://``, ``gs://``) use the same code paths. Writes are atomic:
data goes to a temporary name next to the destination and is renamed into place only when complete
(on object stores a single PUT is already atomic, and the rename becomes a copy).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import pyarrow.fs as pafs

TMP_MARK = ".tmp-"
OBJECT_STORES = ("s3", "gcs")


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for a local path or a URI understood by pyarrow.fs."""
    s = os.fspath(uri)
    if "://" not in s:
        return pafs.LocalFileSystem(), os.path.abspath(s)
    fs, path = pafs.FileSystem.from_uri(s)
    return fs, path


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def size(fs: pafs.FileSystem, path: str) -> int | None:
    info = fs.get_file_info(path)
    return None if info.type == pafs.FileType.NotFound else info.size


def makedirs(fs: pafs.FileSystem, path: str) -> None:
    if fs.type_name in OBJECT_STORES:
        return  # object stores have no directories; a bucket must already exist
    fs.create_dir(path, recursive=True)


class _HashingWriter:
    """File-like wrapper that counts and sha256-hashes what passes through."""

    def __init__(self, raw: IO[bytes]):
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.nbytes = 0

    def write(self, b) -> int:
        self._raw.write(b)
        self.sha256.update(b)
        self.nbytes += len(b)
        return len(b)

    def flush(self) -> None:
        self._raw.flush()


@contextmanager
def atomic_output(fs: pafs.FileSystem, path: str) -> Iterator[_HashingWriter]:
    """Open ``path`` for writing; it appears under its name only if the block completes.

    Yields a writer with ``.sha256`` and ``.nbytes`` of everything written. On error nothing appears at
    ``path``. Local filesystems get a temporary name next to the destination and a rename. On object stores
    (a rename there is a copy, and an interrupted upload stream may still be published when it is closed)
    the data is spooled to a local temporary file and uploaded once complete.
    """
    parent = path.rsplit("/", 1)[0]
    makedirs(fs, parent)
    if fs.type_name in OBJECT_STORES:
        with tempfile.SpooledTemporaryFile(max_size=64 << 20) as spool:
            writer = _HashingWriter(spool)
            yield writer
            spool.seek(0)
            with fs.open_output_stream(path) as out:
                shutil.copyfileobj(spool, out, 8 << 20)
        return
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    stream = fs.open_output_stream(tmp)
    writer = _HashingWriter(stream)
    try:
        yield writer
        stream.close()
        fs.move(tmp, path)
    except BaseException:
        if not stream.closed:
            stream.close()
        if exists(fs, tmp):
            fs.delete_file(tmp)
        raise


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> str:
    """Atomically write ``data``; return its sha256 hex digest."""
    with atomic_output(fs, path) as out:
        out.write(data)
    return out.sha256.hexdigest()


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def sha256_file(fs: pafs.FileSystem, path: str, chunk: int = 4 << 20) -> tuple[str, int]:
    """Return ``(sha256 hex, size in bytes)`` of a stored file, streaming in 4 MiB reads."""
    h = hashlib.sha256()
    n = 0
    with fs.open_input_stream(path) as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
            n += len(b)
    return h.hexdigest(), n


def remove_stale_temporaries(fs: pafs.FileSystem, directory: str) -> int:
    """Delete temporary files left by an interrupted writer below ``directory``; return how many."""
    if not exists(fs, directory):
        return 0
    n = 0
    for info in fs.get_file_info(pafs.FileSelector(directory, recursive=True)):
        if info.type == pafs.FileType.File and TMP_MARK in info.base_name:
            fs.delete_file(info.path)
            n += 1
    return n


def is_remote(uri: str | os.PathLike) -> bool:
    """True for an object-store URI (``s3://``, ``gs://``, ...); False for a local path or ``file://``."""
    s = os.fspath(uri)
    return "://" in s and not s.startswith("file://")


def canonical(uri: str | os.PathLike) -> str:
    """An absolute local path, or the URI (any scheme, ``file://`` too) without a trailing slash."""
    s = os.fspath(uri)
    return s.rstrip("/") if "://" in s else os.path.abspath(s)


def to_uri(fs: pafs.FileSystem, path: str) -> str:
    """The URI of ``path`` on ``fs`` (inverse of :func:`resolve`): ``s3://bucket/key``, ``gs://...`` or a local
    path."""
    scheme = {"s3": "s3", "gcs": "gs"}.get(fs.type_name)
    return f"{scheme}://{path.lstrip('/')}" if scheme else path


class DirMirror:
    """Keep a URI up to date with a local working folder, for writers that need a real file system
    (TensorBoard's event files, torch.profiler's traces, Parquet writers).

    ``local`` is ``uri`` itself when that is a local path (then :meth:`sync` does nothing); for an object-store
    URI it is a fresh temporary folder, and :meth:`sync` uploads every file that is new or changed since the
    last sync (each upload is one atomic PUT, so readers never see half a file).
    """

    def __init__(self, uri: str, prefix: str = "e3d-mirror-"):
        self.uri = os.fspath(uri)
        self.remote = is_remote(self.uri)
        self.local = tempfile.mkdtemp(prefix=prefix) if self.remote else resolve(self.uri)[1]
        self._sent: dict[str, tuple[int, int]] = {}

    def sync(self) -> int:
        """Upload new or changed files; returns how many were uploaded."""
        if not self.remote:
            return 0
        fs, base = resolve(self.uri)
        n = 0
        for root, _, files in os.walk(self.local):
            for name in files:
                src = os.path.join(root, name)
                st = os.stat(src)
                stamp = (st.st_size, st.st_mtime_ns)
                rel = os.path.relpath(src, self.local).replace(os.sep, "/")
                if TMP_MARK in name or name.endswith(".tmp") or self._sent.get(rel) == stamp:
                    continue
                with open(src, "rb") as f, atomic_output(fs, join(base, rel)) as out:
                    shutil.copyfileobj(f, out, 8 << 20)
                self._sent[rel] = stamp
                n += 1
        return n

    def close(self) -> None:
        """Final sync, then remove the temporary folder."""
        if self.remote:
            self.sync()
            shutil.rmtree(self.local, ignore_errors=True)
