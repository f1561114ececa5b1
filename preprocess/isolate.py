"""Decode each video in a child process, under a hard wall-clock limit.

A shard task holds ~100 videos. Decoding them in the task's own process means one video can cost all of
them: a decoder stuck inside a library call never returns to check its timeout, and a segfault or an
out-of-memory kill takes the whole Ray worker down (Ray's retry then meets the same video again). Here a
long-lived child Python process (:class:`DecodeWorker`) decodes one video at a time and writes its JPEG
frames to a spool file; the parent waits for the answer with a deadline. When the deadline passes the
child's whole process group (ffprobe/ffmpeg included) is killed and the video is recorded
``timeout after N s``; when the child dies, the video is recorded with the signal that killed it. Either
way a fresh child decodes the next video, so only the one video is lost.

Protocol (parent ↔ child): length-prefixed pickles over the child's stdin and a private copy of its
stdout; the child points file descriptor 1 at stderr so that nothing a library prints can corrupt it.

Test-only hook: when ``E3D_DECODE_HOOK=module:function`` is in the child's environment, the child calls
``function(path)`` before decoding each video (tests use it to hang or kill the child for one named file).
Production configuration never sets it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from preprocess.decode import DecodedVideo, DecodeError, FrameSink, VideoProbe

HOOK_ENV = "E3D_DECODE_HOOK"
_SYS_PATH_ENV = "E3D_ISOLATE_SYS_PATH"
# Starting the child imports numpy, PyAV and simplejpeg: seconds on a loaded node, never minutes.
START_TIMEOUT_S = 120.0
_HEADER = struct.Struct("!Q")
# Errors of the machine, not of the video: they stop the run (exit 3) instead of failing the video.
INFRA_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


class InfrastructureError(RuntimeError):
    """Disk full, permission denied, an object-store error...: nothing to do with the video being decoded.

    Raised (never recorded as a failed video) so the run stops with exit code 3 and a rerun resumes.
    """


def is_infrastructure_errno(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in INFRA_ERRNOS


@dataclass(frozen=True)
class DecodeRequest:
    """One video to decode; ``kind`` is ``video`` (a file) or ``frames`` (a folder of JPEGs)."""

    kind: str
    path: str
    short_side: int | None
    quality: int
    stride: int
    backend: str
    native_fps: float | None
    timeout_s: float
    max_frames: int | None
    spool: str  # the child writes the stored frames, concatenated, to this file


def _decode(req: DecodeRequest) -> DecodedVideo:
    from preprocess.decode import decode_frame_folder, decode_video

    sink = FrameSink(req.spool)
    try:
        if req.kind == "frames":
            return decode_frame_folder(req.path, short_side=req.short_side, quality=req.quality, stride=req.stride,
                                       fps=req.native_fps or 12.0, sink=sink, max_frames=req.max_frames)
        return decode_video(req.path, short_side=req.short_side, quality=req.quality, stride=req.stride,
                            backend=req.backend, timeout_s=req.timeout_s, sink=sink, max_frames=req.max_frames)
    finally:
        sink.close()


# --------------------------------------------------------------------------------------------------
# child side


def _write_msg(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact_fd(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, n - got)
        if not b:
            return None
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _hook():
    spec = os.environ.get(HOOK_ENV)
    if not spec:
        return None
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def child_main() -> None:
    """The child's loop: read a request, decode, answer; exit when the parent closes stdin."""
    out_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints from libraries land in the log, not in the protocol stream
    sys.stdout = sys.stderr
    hook = _hook()
    import av  # noqa: F401  (imported before "ready": the first video's time is spent decoding)

    _write_msg(out_fd, ("ready", os.getpid()))
    import resource

    def cpu() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    while True:
        head = _read_exact_fd(0, _HEADER.size)
        if head is None:
            return
        req: DecodeRequest = pickle.loads(_read_exact_fd(0, _HEADER.unpack(head)[0]) or b"")
        c0 = cpu()
        try:
            if hook is not None:
                hook(req.path)
            v = _decode(req)
        except DecodeError as exc:
            answer: tuple = ("failed", str(exc))
        except OSError as exc:
            kind = "infra" if is_infrastructure_errno(exc) else "failed"
            answer = (kind, f"unexpected decoder error: {type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one odd file must not take the worker down
            answer = ("failed", f"unexpected decoder error: {type(exc).__name__}: {exc}")
        else:
            d = asdict(v)
            d["jpegs"] = []
            answer = ("ok", d)
        _write_msg(out_fd, (*answer, cpu() - c0))


# --------------------------------------------------------------------------------------------------
# parent side


def _e3d_env() -> dict[str, str]:
    # A child started before the project's variables changed (tests set the hook's) is replaced.
    return {k: v for k, v in os.environ.items() if k.startswith("E3D_") and k != _SYS_PATH_ENV}


def _signal_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (killed: out of memory or by the operator)" if -returncode == signal.SIGKILL else ""
        return f"decoder process died from {name}{hint}"
    return f"decoder process exited with code {returncode}"


class DecodeWorker:
    """A child process that decodes videos one at a time; restarted after a timeout or a crash.

    ``decode(req)`` returns the :class:`DecodedVideo` (``jpegs`` empty: the frames are in ``req.spool``)
    or raises ``DecodeError`` with the reason (a decoder error, ``timeout after N s``, or the signal that
    killed the child). Raises :class:`InfrastructureError` when the child cannot start or cannot write its
    spool file for reasons of the machine.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._env: dict[str, str] = {}  # the E3D_* variables the running child was started with
        self.cpu_s = 0.0  # CPU seconds the children spent decoding (answered videos only)

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ)
        self._env = _e3d_env()
        # The child imports exactly the code this process runs (a Ray job's working_dir included).
        # ("" is the parent's working directory: spelled out, since the child runs elsewhere.)
        env[_SYS_PATH_ENV] = json.dumps([p or os.getcwd() for p in sys.path])
        code = (f"import json, os, sys; sys.path[:] = json.loads(os.environ[{_SYS_PATH_ENV!r}]); "
                "from preprocess.isolate import child_main; child_main()")
        try:
            proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    env=env, start_new_session=True, cwd=os.path.dirname(os.path.abspath(__file__)))
        except OSError as exc:
            raise InfrastructureError(f"cannot start a decoder process: {exc}") from exc
        self._proc = proc
        try:
            msg = self._receive(time.monotonic() + START_TIMEOUT_S)
        except (TimeoutError, EOFError) as exc:
            self._kill()
            raise InfrastructureError(f"the decoder process did not start ({type(exc).__name__})") from None
        if msg[0] != "ready":
            self._kill()
            raise InfrastructureError(f"the decoder process said {msg!r} instead of ready")
        return proc

    def _receive(self, deadline: float) -> Any:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()

        def read(n: int) -> bytes:
            chunks, got = [], 0
            while got < n:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise TimeoutError
                b = os.read(fd, n - got)
                if not b:
                    raise EOFError
                chunks.append(b)
                got += len(b)
            return b"".join(chunks)

        return pickle.loads(read(_HEADER.unpack(read(_HEADER.size))[0]))

    def _kill(self) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the child and any ffmpeg/ffprobe it started
        for f in (proc.stdin, proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        return proc.wait()

    def decode(self, req: DecodeRequest, timeout_s: float) -> DecodedVideo:
        if self._proc is not None and (self._proc.poll() is not None or self._env != _e3d_env()):
            self._kill()
        proc = self._proc if self._proc is not None else self._start()
        assert proc.stdin is not None
        t0 = time.monotonic()
        try:
            data = pickle.dumps(req, protocol=pickle.HIGHEST_PROTOCOL)
            proc.stdin.write(_HEADER.pack(len(data)) + data)
            proc.stdin.flush()
            kind, payload, cpu_s = self._receive(t0 + timeout_s)
        except TimeoutError:
            self._kill()
            raise DecodeError(f"timeout after {timeout_s:g} s") from None
        except (EOFError, BrokenPipeError):
            try:
                rc = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                rc = None
            self._kill()
            raise DecodeError(_signal_reason(rc) if rc is not None else "decoder process stopped answering") from None
        self.cpu_s += cpu_s
        if kind == "ok":
            payload["probe"] = VideoProbe(**payload["probe"])
            return DecodedVideo(**payload)
        if kind == "infra":
            raise InfrastructureError(payload)
        raise DecodeError(payload)

    def close(self) -> None:
        """Stop the child (it also exits by itself when this process dies: its stdin closes)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._proc = proc
            self._kill()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()


_WORKER: DecodeWorker | None = None


def shared_worker() -> DecodeWorker:
    """One decode child per process (a Ray worker runs many shard tasks; each one reuses it)."""
    global _WORKER
    if _WORKER is None:
        import atexit

        _WORKER = DecodeWorker()
        atexit.register(_WORKER.close)
    return _WORKER
