"""Read what a ``torch.save`` file says about itself without importing torch or unpickling anything unsafe.

The command line checks a ``--checkpoint``/``--pretrained`` file before Ray starts, and most mistakes (an empty,
truncated or foreign file, a checkpoint of another model, of other classes, an e3d checkpoint given as a released
one) show in the file's metadata. ``import torch`` alone costs ~1.5 s on a 2-vCPU machine, so this module reads
both ``torch.save`` layouts with the standard library:

* the zip archive (PyTorch >= 1.6): ``<name>/data.pkl`` plus one entry per storage;
* the legacy stream (the paper's released ``.pth`` files, PyTorch 1.0): a magic-number pickle, a protocol
  pickle, a system-info pickle, then the object's pickle and the raw storages.

The object's pickle is read by an unpickler that resolves no global except an allow-list: tensors become
:class:`TensorInfo` (shape and storage type; the storages are never read), ``OrderedDict`` a dict, a few
builtins themselves. It never calls code named by the file.

:func:`peek_checkpoint` answers three ways: the structure (the file is a torch file and its pickle reads), an
:class:`~training.errors.InputError` (the file is certainly not a checkpoint: no zip and no legacy stream, a
zip without its central directory or without ``data.pkl``), or ``None`` (something this reader does not know,
e.g. a numpy array or an unfamiliar global): then ``torch.load`` decides, as before. Callers still load the
file with ``torch.load(weights_only=True)`` before using it; this only makes the common mistakes fast.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from training.errors import InputError

FORMAT = "e3d-checkpoint"
"""The ``format`` value of every checkpoint :func:`training.checkpoints.save_checkpoint` writes."""

# torch/serialization.py's legacy header: the first pickle of a pre-zip torch.save file holds this number.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
MAX_PICKLE_BYTES = 64 << 20  # metadata pickles are KBs to a few MBs; a bigger one is not read here


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the pickle describes it: ``shape`` (sizes) and the storage type name (e.g. ``FloatStorage``)."""

    shape: tuple[int, ...]
    storage: str


class _Unknown(Exception):
    """The pickle uses something this reader does not know: let torch decide."""


@dataclass(frozen=True)
class _StorageRef:
    storage: str


class _TorchGlobal:
    """Stands for a ``torch.*`` global named by the pickle; called, it builds a description, never a tensor."""

    _REBUILD_TENSOR = frozenset({"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3"})
    _REBUILD_PARAMETER = frozenset({"_rebuild_parameter", "_rebuild_parameter_with_state"})

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:
        if self.name in self._REBUILD_TENSOR and len(args) >= 3:
            storage, size = args[0], args[2]
            if not (isinstance(storage, _StorageRef) and isinstance(size, tuple | list)
                    and all(isinstance(s, int) and s >= 0 for s in size)):
                raise _Unknown(f"{self.name} with unexpected arguments")
            return TensorInfo(tuple(size), storage.storage)
        if self.name in self._REBUILD_PARAMETER and args:
            return args[0]
        if self.name == "Size":
            return tuple(args[0]) if args else ()
        raise _Unknown(f"call of {self.module}.{self.name}")

    def __repr__(self) -> str:
        return f"{self.module}.{self.name}"


_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "complex": complex, "slice": slice, "bytearray": bytearray}


class _HeaderUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if module == "_codecs" and name == "encode":  # protocol 2 writes bytes as _codecs.encode(str, "latin1")
            return _latin1_encode
        if module == "torch" or module.startswith("torch."):
            return _TorchGlobal(module, name)
        raise _Unknown(f"global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        # zip: ('storage', storage_type, key, location, numel); legacy adds view metadata.
        if isinstance(pid, tuple) and len(pid) >= 2 and pid[0] == "storage" and isinstance(pid[1], _TorchGlobal):
            return _StorageRef(pid[1].name)
        raise _Unknown("persistent id of an unknown kind")


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Unknown("_codecs.encode with unexpected arguments")
    return text.encode("latin1")


def _unpickle(stream: io.BytesIO) -> Any:
    try:
        return _HeaderUnpickler(stream).load()
    except _Unknown:
        raise
    except RecursionError:
        raise _Unknown("nested too deeply") from None
    except Exception as exc:  # a damaged pickle raises many types (UnpicklingError, EOFError, KeyError, ...)
        raise _Unknown(f"unreadable pickle ({type(exc).__name__})") from None


def _zip_object(data: bytes, what: str) -> Any:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except zipfile.BadZipFile as exc:
        if "not a zip file" not in str(exc):  # a damaged directory entry: torch's reader may still cope
            raise _Unknown(str(exc)) from None
        # no end-of-central-directory record (a truncated or cut file): torch's reader needs it too
        raise InputError(f"{what}: not a readable PyTorch checkpoint (truncated or not made by torch.save: "
                         "a zip archive without its central directory)") from None
    except Exception as exc:  # zipfile raises NotImplementedError, ValueError, OSError... for odd headers
        raise _Unknown(f"zip directory unreadable here ({type(exc).__name__})") from None
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise InputError(f"{what}: not a readable PyTorch checkpoint (a zip archive without torch.save's "
                         "data.pkl)")
    info = archive.getinfo(pickles[0])
    if info.file_size > MAX_PICKLE_BYTES:
        raise _Unknown("data.pkl too large to read here")
    try:
        raw = archive.read(info)
    except Exception:  # a bad CRC or compression: torch's own reader decides (it may not check CRCs)
        raise _Unknown("data.pkl unreadable by zipfile") from None
    return _unpickle(io.BytesIO(raw))


def _legacy_object(data: bytes, what: str) -> Any:
    stream = io.BytesIO(data)
    try:
        magic = _unpickle(stream) if data[:1] == b"\x80" else None
    except _Unknown:
        magic = None
    if magic != LEGACY_MAGIC:
        raise InputError(f"{what}: not a readable PyTorch checkpoint (truncated or not made by torch.save: "
                         "neither a zip archive nor a legacy torch.save stream)")
    protocol = _unpickle(stream)
    if protocol != LEGACY_PROTOCOL:
        raise _Unknown(f"legacy protocol {protocol!r}")
    _unpickle(stream)  # sys_info: byte order and type sizes
    return _unpickle(stream)


def peek_checkpoint(data: bytes, what: str) -> Any | None:
    """The object a ``torch.save`` file holds, with tensors as :class:`TensorInfo`, read without torch.

    Args:
        data: the file's bytes.
        what: how messages name the file (e.g. ``"--checkpoint run/checkpoint.pt"``).

    Returns:
        The unpickled structure, or None when this reader cannot tell (``torch.load`` decides).

    Raises:
        InputError: the bytes are certainly not a ``torch.save`` file (empty, neither layout, a zip without its
            central directory or ``data.pkl``).
    """
    if not data:
        raise InputError(f"{what} is empty (0 bytes): not a checkpoint")
    try:
        if data[:4] == b"PK\x03\x04":  # torch.load tells the layouts apart by these bytes too
            return _zip_object(data, what)
        if data[257:262] == b"ustar":  # the pre-2018 tar layout: leave it to torch
            return None
        return _legacy_object(data, what)
    except _Unknown:
        return None


def checkpoint_kind(raw: Any) -> str:
    """``ours`` (an e3d checkpoint) or ``released`` (the paper's ``.pth``: a dict with a ``state_dict``, or a
    bare state dict); works on :func:`peek_checkpoint`'s structure and on ``torch.load``'s alike."""
    return "ours" if isinstance(raw, dict) and raw.get("format") == FORMAT else "released"
