"""Faults injected into the isolated decode process (``preprocess.isolate``), for tests only.

Set ``E3D_DECODE_HOOK=tests.decode_hooks:faults`` and name the victims by file-name substring in
``E3D_TEST_HANG`` (the decoder blocks forever inside a C call, as a decoder stuck in a library does) or
``E3D_TEST_KILL`` (the decode process kills itself with SIGKILL, as the OOM killer would) or ``E3D_TEST_SEGV``
(it dereferences a null pointer: a real segmentation fault).
"""

from __future__ import annotations

import os
import signal

HOOK = "tests.decode_hooks:faults"


def _hit(var: str, path: str) -> bool:
    names = [n for n in os.environ.get(var, "").split(",") if n]
    return any(n in os.path.basename(path) for n in names)


def faults(path: str) -> None:
    if _hit("E3D_TEST_KILL", path):
        os.kill(os.getpid(), signal.SIGKILL)
    if _hit("E3D_TEST_SEGV", path):
        import ctypes

        ctypes.string_at(0)  # a real segmentation fault, as a buggy decoder library would cause
    if _hit("E3D_TEST_HANG", path):
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
        signal.sigwait([signal.SIGALRM])  # blocks in the kernel; nothing ever sends SIGALRM
