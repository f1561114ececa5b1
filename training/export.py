"""Self-contained deployment models: uint8 clips in, logits out, normalisation inside the graph.

:class:`DeployModel` wraps a trained network with its input convention (channel order, scale, mean, std), so
an exported file takes the ``(N, 3, T, H, W)`` uint8 RGB clip the loader yields and needs nothing from this
project. :func:`export_onnx` writes ONNX (the TorchScript-based ``torch.onnx`` exporter, ``dynamo=False``:
it runs offline, needs no ``onnxscript``, and gave eager parity on every registered model) and
:func:`export_torchscript` a traced TorchScript archive. Class names and the input description go into the
file's metadata (ONNX ``metadata_props``; TorchScript ``_extra_files``), read back by :func:`read_metadata`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from training.data import InputConvention

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "clips"
OUTPUT_NAME = "logits"
#: The name of the TorchScript extra file / the ONNX metadata key holding :func:`metadata`'s JSON.
META_KEY = "e3d.json"
ONNX_OPSET = 17


class DeployModel(nn.Module):
    """``(N, 3, T, H, W)`` uint8 RGB clips → ``(N, num_classes)`` float32 logits.

    Computes ``model((reorder(x) * scale - mean) / std)`` as one multiply-add, like
    :class:`training.data.ClipNormalizer` (which the evaluation uses), so exported logits match evaluation.
    """

    def __init__(self, model: nn.Module, norm: InputConvention):
        super().__init__()
        self.model = model.eval()
        std = torch.tensor(norm.std, dtype=torch.float32)
        self.register_buffer("mul", (norm.value_scale / 255.0 / std).view(1, 3, 1, 1, 1))
        self.register_buffer("add", (-torch.tensor(norm.mean, dtype=torch.float32) / std).view(1, 3, 1, 1, 1))
        order = [2, 1, 0] if norm.channel_order == "BGR" else [0, 1, 2]
        self.register_buffer("order", torch.tensor(order, dtype=torch.int64))
        self.reorder = norm.channel_order == "BGR"

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = clips.index_select(1, self.order) if self.reorder else clips
        return self.model(torch.addcmul(self.add, x.to(torch.float32), self.mul))


def metadata(*, model: str, classes: Sequence[str], clip_len: int, size: int, norm: InputConvention,
             dataset: str | None = None, dynamic_batch: bool = True, extra: Mapping[str, Any] | None = None
             ) -> dict[str, Any]:
    """What a deployment needs to know, stored in the exported file."""
    return {
        "format": "e3d-deploy", "version": 1, "model": model, "dataset": dataset, "classes": list(classes),
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "N,3,T,H,W", "channels": "RGB",
                  "clip_len": clip_len, "size": size, "batch": "dynamic" if dynamic_batch else "fixed",
                  "range": "0-255, normalised inside the model"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "layout": "N,num_classes", "kind": "logits"},
        "normalization": {"mean": list(norm.mean), "std": list(norm.std), "value_scale": norm.value_scale,
                          "channel_order": norm.channel_order},
        **dict(extra or {}),
    }


def example_input(batch: int, clip_len: int, size: int, seed: int = 0) -> torch.Tensor:
    """A random ``(batch, 3, clip_len, size, size)`` uint8 clip (deterministic for ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, clip_len, size, size), dtype=torch.uint8, generator=g)


def _atomic_path(path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return f"{path}.tmp{os.getpid()}"


def export_onnx(deploy: DeployModel, path: str | os.PathLike, *, example: torch.Tensor, meta: Mapping[str, Any],
                dynamic_batch: bool = True) -> str:
    """Write ``deploy`` as an ONNX file (weights embedded) with ``meta`` in ``metadata_props``; atomic."""
    import onnx

    path = os.fspath(path)
    tmp = _atomic_path(path)
    dyn = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of the dynamo one, which needs onnxscript;
        # this one runs offline and matched eager PyTorch on every registered model (tests/test_export.py).
        warnings.simplefilter("ignore")
        torch.onnx.export(deploy.eval(), (example,), tmp, dynamo=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=dyn, opset_version=ONNX_OPSET,
                          do_constant_folding=True)
    proto = onnx.load(tmp)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(dict(meta), sort_keys=True)
    proto.producer_name = "efficient3d"
    onnx.save(proto, tmp)
    os.replace(tmp, path)
    return path


def export_torchscript(deploy: DeployModel, path: str | os.PathLike, *, example: torch.Tensor,
                       meta: Mapping[str, Any]) -> str:
    """Write ``deploy`` as a traced TorchScript archive with ``meta`` as the extra file :data:`META_KEY`."""
    path = os.fspath(path)
    tmp = _atomic_path(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape arithmetic in the pools is traced
        traced = torch.jit.trace(deploy.eval(), (example,), check_trace=False)
    traced = torch.jit.freeze(traced)
    torch.jit.save(traced, tmp, _extra_files={META_KEY: json.dumps(dict(meta), sort_keys=True)})
    os.replace(tmp, path)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The :func:`metadata` dict stored in an exported ONNX or TorchScript file."""
    path = os.fspath(path)
    if path.endswith(".onnx"):
        import onnx

        proto = onnx.load(path, load_external_data=False)
        for p in proto.metadata_props:
            if p.key == META_KEY:
                return json.loads(p.value)
        raise ValueError(f"{path}: no {META_KEY} metadata (not exported by e3d?)")
    files = {META_KEY: ""}
    torch.jit.load(path, map_location="cpu", _extra_files=files)
    if not files[META_KEY]:
        raise ValueError(f"{path}: no {META_KEY} extra file (not exported by e3d?)")
    return json.loads(files[META_KEY])


def onnx_session(path: str | os.PathLike, *, threads: int | None = None, providers: Sequence[str] | None = None):
    """An ONNX Runtime session on ``path`` (CPU provider unless ``providers``), ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(os.fspath(path), sess_options=opts,
                                providers=list(providers or ["CPUExecutionProvider"]))


def run_exported(path: str | os.PathLike, clips: torch.Tensor) -> torch.Tensor:
    """Logits of an exported file (ONNX through ONNX Runtime, else TorchScript) on uint8 ``clips``."""
    path = os.fspath(path)
    if path.endswith(".onnx"):
        sess = onnx_session(path)
        return torch.from_numpy(sess.run([OUTPUT_NAME], {INPUT_NAME: clips.numpy()})[0])
    with torch.no_grad():
        return torch.jit.load(path, map_location="cpu")(clips)


def export(deploy: DeployModel, fmt: str, path: str | os.PathLike, *, example: torch.Tensor,
           meta: Mapping[str, Any], dynamic_batch: bool = True) -> str:
    """Export in ``fmt`` (``onnx`` or ``torchscript``)."""
    if fmt == "onnx":
        return export_onnx(deploy, path, example=example, meta=meta, dynamic_batch=dynamic_batch)
    if fmt == "torchscript":
        return export_torchscript(deploy, path, example=example, meta=meta)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
