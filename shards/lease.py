"""An exclusive lease on an output root, so that two runs writing the same ``--out`` cannot corrupt it.

The lease is the file ``<root>/.lease.json``: ``{"run_id", "owner", "host", "pid", "started", "heartbeat",
"ttl_s"}`` (times in Unix seconds). A holder rewrites ``heartbeat`` every ``ttl_s / 4`` seconds from a
background thread. Another run that finds the file:

* refuses (:class:`LeaseHeld`, exit code 2 at the CLI) while the lease is live, naming its owner;
* takes it over by itself when the holder is provably gone: same host and its pid no longer exists;
* otherwise (another host, heartbeat older than ``ttl_s``) refuses too, as *stale*, unless the user passes
  ``force_unlock`` after checking that the other run is really dead (a partitioned host may still be
  running, so this is never automatic).

Creation is atomic per file system: ``O_CREAT | O_EXCL`` on local disks and NFS (v3 and later implement
exclusive create on the server). Object stores (``s3://``, ``gs://``) have no exclusive create in
``pyarrow.fs``: there the lease is written, then read back after a short settle delay, and the run proceeds
only if the file still names it (two runs racing within that window can both see their own write on a
store without read-after-write consistency; S3 and GCS are strongly consistent, which closes it).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from shards import storage

LEASE_NAME = ".lease.json"
DEFAULT_TTL_S = 120.0
_OBJECT_STORE_SETTLE_S = 1.0


class LeaseHeld(RuntimeError):
    """Another run holds the lease (or held it and may still be alive)."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (``--force-unlock`` from another run) or can no longer be read."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def describe(info: dict[str, Any], now: float | None = None) -> str:
    """``user@host pid N (run R), started <UTC>, last heartbeat S s ago``."""
    now = time.time() if now is None else now
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(info.get("started", 0))))
    age = now - float(info.get("heartbeat", 0))
    return (f"{info.get('owner', '?')}@{info.get('host', '?')} pid {info.get('pid', '?')} "
            f"(run {str(info.get('run_id', '?'))[:8]}), started {started}, last heartbeat {age:.0f} s ago")


class Lease:
    """Hold ``<root>/.lease.json`` for the lifetime of a run (a context manager).

    ``ttl_s``: seconds without a heartbeat after which the lease counts as stale. ``force_unlock``: take
    over a stale lease of another host (never a live one). ``acquire()`` raises :class:`LeaseHeld` with the
    owner's description; ``check()`` raises :class:`LeaseLost` when the file no longer names this run.
    ``took_over`` tells whether a dead or stale holder's lease was replaced (its temporary files are then
    this run's to clean up).
    """

    def __init__(self, root: str, *, ttl_s: float = DEFAULT_TTL_S, force_unlock: bool = False):
        self.fs, self.base = storage.resolve(root)
        self.path = storage.join(self.base, LEASE_NAME)
        self.ttl_s = float(ttl_s)
        self.force_unlock = force_unlock
        self.run_id = uuid.uuid4().hex
        self.took_over = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.info: dict[str, Any] = {}

    # -- file access ---------------------------------------------------------------------------------

    def _payload(self, started: float | None = None) -> dict[str, Any]:
        now = time.time()
        return {"run_id": self.run_id, "owner": getpass.getuser(), "host": socket.gethostname(), "pid": os.getpid(),
                "started": started if started is not None else now, "heartbeat": now, "ttl_s": self.ttl_s}

    def read(self) -> dict[str, Any] | None:
        """The lease file's content; None when there is none. A file that is not a lease dict counts as a
        holder that is gone (a torn write of a crashed run), described as such."""
        try:
            data = storage.read_bytes(self.fs, self.path)
        except FileNotFoundError:
            return None
        try:
            info = json.loads(data)
        except ValueError:
            info = None
        if not isinstance(info, dict):
            return {"run_id": "", "owner": "?", "host": "?", "pid": -1, "started": 0, "heartbeat": 0,
                    "ttl_s": self.ttl_s, "unreadable": True}
        return info

    def _create_exclusive(self, payload: dict[str, Any]) -> bool:
        data = json.dumps(payload, sort_keys=True).encode()
        if self.fs.type_name in storage.OBJECT_STORES:
            if storage.exists(self.fs, self.path):
                return False
            storage.write_bytes_atomic(self.fs, self.path, data)
            time.sleep(_OBJECT_STORE_SETTLE_S)  # let a racing writer's PUT land before reading back
            got = self.read()
            return bool(got) and got.get("run_id") == self.run_id
        local = self.path  # LocalFileSystem paths are OS paths
        try:
            fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _write(self, payload: dict[str, Any]) -> None:
        storage.write_bytes_atomic(self.fs, self.path, json.dumps(payload, sort_keys=True).encode())

    # -- protocol ------------------------------------------------------------------------------------

    def _verdict(self, info: dict[str, Any]) -> str:
        """``live``, ``dead`` (provably gone: take over) or ``stale`` (maybe gone: needs force_unlock)."""
        if info.get("unreadable"):
            return "stale"
        age = time.time() - float(info.get("heartbeat", 0))
        same_host = info.get("host") == socket.gethostname()
        if same_host and isinstance(info.get("pid"), int) and not _pid_alive(info["pid"]):
            return "dead"
        if age > float(info.get("ttl_s", self.ttl_s)):
            return "stale"
        return "live"

    def acquire(self) -> Lease:
        storage.makedirs(self.fs, self.base)
        payload = self._payload()
        for _ in range(3):  # a holder may finish between our look and our create: look again
            if self._create_exclusive(payload):
                break
            info = self.read()
            if info is None:
                continue
            verdict = self._verdict(info)
            if verdict == "live" or (verdict == "stale" and not self.force_unlock):
                hint = ("; if that run is dead, rerun with --force-unlock" if verdict == "stale" else
                        "; wait for it to finish or use another --out")
                raise LeaseHeld(f"{storage.to_uri(self.fs, self.base)} is locked by another run: "
                                f"{describe(info)}{' (stale)' if verdict == 'stale' else ''}{hint}")
            # Dead or force-unlocked stale holder: replace its lease, then make sure ours won.
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(self.path)
            self.took_over = True
        else:
            raise LeaseHeld(f"{storage.to_uri(self.fs, self.base)}: could not take the lease (another run "
                            "keeps taking it)")
        self.info = payload
        self._thread = threading.Thread(target=self._beat, name="e3d-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            with self._lock:
                try:
                    if not self._still_ours():
                        return  # taken over: check() reports it where writes happen
                    self.info = self._payload(started=self.info["started"])
                    self._write(self.info)
                except OSError:
                    continue  # a transient storage error: the next beat retries

    def _still_ours(self) -> bool:
        info = self.read()
        return bool(info) and info.get("run_id") == self.run_id

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless the lease file still names this run (call before shared writes)."""
        with self._lock:
            try:
                ok = self._still_ours()
            except OSError as exc:
                raise LeaseLost(f"{self.path}: cannot read the lease: {exc}") from exc
        if not ok:
            info = self.read()
            who = describe(info) if info else "nobody (the lease file is gone)"
            raise LeaseLost(f"{storage.to_uri(self.fs, self.base)}: this run's lease was taken over by {who}")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock, contextlib.suppress(OSError):
            if self._still_ours():
                self.fs.delete_file(self.path)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


