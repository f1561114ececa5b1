"""A loopback TCP proxy in front of an S3 test server that behaves like a distant object store.

* ``latency_s``: added before the first byte of each request's response (held back on the request side, which
  for the client is the same: time to first byte);
* ``bandwidth``: a cap in bytes/s on everything sent back, shared by all connections (a node's NIC);
* :meth:`S3Proxy.inject`: the next N requests matching a predicate fail as ``503`` (S3's SlowDown), ``reset``
  (TCP RST) or ``stall`` (no answer for ``stall_s`` seconds) without reaching the server;
* counters of requests and response bytes.

Used by the object-store tests (retries, ranged reads) and ``bench/bench_objstore.py``. One thread pair per
connection; HTTP/1.1 without pipelining (what the AWS SDK does), so a request starts whenever the client
sends after having received a response.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable

_SLOWDOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")


def is_ranged_get(head: bytes) -> bool:
    """Predicate for :meth:`S3Proxy.inject`: a GET with a Range header (a data read, not a HEAD or a listing)."""
    return head.startswith(b"GET ") and b"\r\nrange:" in head.lower()


class S3Proxy:
    def __init__(self, upstream: tuple[str, int], *, latency_s: float = 0.0, bandwidth: float | None = None):
        self.upstream = upstream
        self.latency_s = latency_s
        self.bandwidth = bandwidth
        self.requests = 0
        self.bytes_out = 0
        self.injected = 0
        self._faults: list[tuple[str, int, Callable[[bytes], bool], float]] = []
        self._lock = threading.Lock()
        self._free_at = 0.0
        self._srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(256)
        self.port = self._srv.getsockname()[1]
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="s3proxy-accept")
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inject(self, kind: str, count: int = 1, when: Callable[[bytes], bool] = is_ranged_get,
               stall_s: float = 5.0) -> None:
        """Make the next ``count`` requests for which ``when(request head)`` holds fail with ``kind``."""
        if kind not in ("503", "reset", "stall"):
            raise ValueError(kind)
        with self._lock:
            self._faults.append((kind, count, when, stall_s))

    def reset_counters(self) -> None:
        with self._lock:
            self.requests = self.bytes_out = self.injected = 0

    # -- plumbing --------------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True, name="s3proxy-conn").start()

    def _fault_for(self, head: bytes) -> tuple[str, float] | None:
        with self._lock:
            for i, (kind, count, when, stall_s) in enumerate(self._faults):
                if when(head):
                    if count <= 1:
                        self._faults.pop(i)
                    else:
                        self._faults[i] = (kind, count - 1, when, stall_s)
                    self.injected += 1
                    return kind, stall_s
        return None

    def _throttle(self, n: int) -> None:
        if not self.bandwidth:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._free_at)
            self._free_at = start + n / self.bandwidth
            wait = self._free_at - now
        if wait > 0:
            time.sleep(wait)

    def _serve(self, client: socket.socket) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._conns.update((client, upstream))
        new_request = threading.Event()
        new_request.set()

        def down() -> None:  # server → client
            try:
                while True:
                    data = upstream.recv(1 << 16)
                    if not data:
                        break
                    self._throttle(len(data))
                    client.sendall(data)
                    with self._lock:
                        self.bytes_out += len(data)
                    new_request.set()
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=down, daemon=True, name="s3proxy-down")
        t.start()
        try:
            while True:
                data = client.recv(1 << 16)
                if not data:
                    break
                if new_request.is_set():
                    new_request.clear()
                    with self._lock:
                        self.requests += 1
                    fault = self._fault_for(data)
                    if fault is not None:
                        self._fail(client, *fault)
                        return
                    if self.latency_s:
                        time.sleep(self.latency_s)
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)
            t.join(timeout=30)
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.close()
            with self._lock:
                self._conns.discard(client)
                self._conns.discard(upstream)

    def _fail(self, client: socket.socket, kind: str, stall_s: float) -> None:
        if kind == "503":
            client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                           b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_SLOWDOWN) + _SLOWDOWN)
            return  # closed gracefully by the caller
        if kind == "stall":
            self._stop.wait(stall_s)
        # reset (and after a stall): close with RST so the client sees "connection reset by peer"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._srv.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone does not)
        self._srv.close()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> S3Proxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve_control(proxy: S3Proxy, port_out: list[int]) -> None:
    """A line protocol on a second loopback port: ``stats`` → ``requests bytes``, ``reset``, ``latency S``,
    ``bandwidth B``, ``inject KIND N`` (for a proxy running in another process)."""
    srv = socket.create_server(("127.0.0.1", 0))
    port_out.append(srv.getsockname()[1])
    while True:
        conn, _ = srv.accept()
        with conn, conn.makefile("rwb") as f:
            for line in f:
                cmd, *args = line.decode().split()
                if cmd == "stats":
                    f.write(f"{proxy.requests} {proxy.bytes_out}\n".encode())
                elif cmd == "reset":
                    proxy.reset_counters()
                    f.write(b"ok\n")
                elif cmd == "latency":
                    proxy.latency_s = float(args[0])
                    f.write(b"ok\n")
                elif cmd == "bandwidth":
                    proxy.bandwidth = float(args[0]) or None
                    f.write(b"ok\n")
                elif cmd == "inject":
                    proxy.inject(args[0], int(args[1]))
                    f.write(b"ok\n")
                f.flush()


class ProxyControl:
    """Client of :func:`_serve_control`."""

    def __init__(self, port: int):
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._f = self._sock.makefile("rwb")

    def _cmd(self, text: str) -> str:
        self._f.write(text.encode() + b"\n")
        self._f.flush()
        return self._f.readline().decode().strip()

    def stats(self) -> tuple[int, int]:
        a, b = self._cmd("stats").split()
        return int(a), int(b)

    def reset(self) -> None:
        self._cmd("reset")

    def set(self, what: str, value: float) -> None:
        self._cmd(f"{what} {value}")

    def close(self) -> None:
        self._f.close()
        self._sock.close()


if __name__ == "__main__":
    # ``python tests/s3proxy.py``: a moto S3 server and this proxy in front of it, in this process (so that
    # a benchmark's own process does not share its CPU/GIL with them). Prints
    # ``<server endpoint> <proxy endpoint> <control port>`` and serves until stdin closes.
    import sys

    from moto.s3.models import FakeKey
    from moto.server import ThreadedMotoServer

    if "--fast-ranges" in sys.argv:
        # moto reads (and copies) a whole object for every ranged GET, so a 100-byte read of a 40 MB shard costs
        # ~40 ms of server CPU, which no real object store charges. Keeping each object's bytes once in memory
        # makes a ranged GET cost what its range costs; objects are written once in a benchmark.
        prop = FakeKey.value

        def _get(self):
            v = self.__dict__.get("_e3d_value")
            if v is None:
                v = self.__dict__["_e3d_value"] = prop.fget(self)
            return v

        def _set(self, new):
            self.__dict__.pop("_e3d_value", None)
            prop.fset(self, new)

        FakeKey.value = property(_get, _set)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    proxy = S3Proxy((host, port))
    ports: list[int] = []
    threading.Thread(target=_serve_control, args=(proxy, ports), daemon=True).start()
    while not ports:
        time.sleep(0.01)
    print(f"http://{host}:{port} {proxy.endpoint} {ports[0]}", flush=True)
    sys.stdin.read()
    proxy.close()
    server.stop()
