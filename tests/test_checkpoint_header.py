"""The torch-free checkpoint reader (training/checkpoint_header.py): the same structure as ``torch.load`` for
both ``torch.save`` layouts, fast refusals only for files torch refuses too (fuzzed), and no code run from a
hostile pickle."""

from __future__ import annotations

import io
import pickle
import random
import zipfile

import pytest
import torch

from training.checkpoint_header import TensorInfo, peek_checkpoint
from training.checkpoints import save_checkpoint
from training.errors import InputError
from training.models import get_model


def _plain(x):
    """Tensors as ("T", shape), torch globals (dtypes) as strings: comparable across the two readers."""
    if isinstance(x, torch.Tensor):
        return ("T", tuple(x.shape))
    if isinstance(x, TensorInfo):
        return ("T", x.shape)
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_plain(v) for v in x)
    if isinstance(x, torch.dtype) or type(x).__name__ == "_TorchGlobal":
        return repr(x)
    return x


def _saved(obj, *, legacy: bool) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, bytes]:
    model = get_model("shufflenetv2_0.25x", num_classes=3)
    ours = tmp_path_factory.mktemp("ckpt") / "ours.pt"
    save_checkpoint(ours, model, epoch=2, extra={"classes": ["a", "b", "c"], "train_config": {"lr": 0.1}})
    released = {"epoch": 5, "arch": "shufflenetv2",
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}}
    odd = {"p": torch.nn.Parameter(torch.ones(2, 3)), "b": b"\x00\xffbytes", "s": {1, 2}, "dt": torch.float16,
           "size": torch.Size([4, 5]), "rng": torch.get_rng_state(), "nested": [(1, 2.5, None, "x")]}
    return {"ours": ours.read_bytes(), "released zip": _saved(released, legacy=False),
            "released legacy (PyTorch 1.0 layout)": _saved(released, legacy=True),
            "odd zip": _saved(odd, legacy=False), "odd legacy": _saved(odd, legacy=True)}


def test_both_layouts_read_like_torch_load(samples):
    for name, data in samples.items():
        header = peek_checkpoint(data, name)
        assert header is not None, name
        assert _plain(header) == _plain(torch.load(io.BytesIO(data), weights_only=True)), name
    assert peek_checkpoint(samples["ours"], "ours")["format"] == "e3d-checkpoint"


def test_certain_garbage_is_refused_naming_the_file():
    for data, fragment in [(b"", "is empty"), (b"this is not a checkpoint\n" * 40, "neither a zip"),
                           (b"PK\x03\x04" + b"\x00" * 100, "without its central directory")]:
        with pytest.raises(InputError, match=fragment) as info:
            peek_checkpoint(data, "--checkpoint x.pth")
        assert str(info.value).startswith("--checkpoint x.pth")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes.txt", "hello")
    with pytest.raises(InputError, match="without torch.save's data.pkl"):
        peek_checkpoint(buf.getvalue(), "x.pth")


class _Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_hostile_pickle_runs_nothing(capsys):
    legacy = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {}, {"a": _Boom()}))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"a": _Boom()}, protocol=2))
    for data in (legacy, buf.getvalue()):
        assert peek_checkpoint(data, "x") is None  # an unknown global: torch decides (and refuses it too)
    with pytest.raises(InputError, match="neither a zip"):  # a bare pickle is no torch.save layout
        peek_checkpoint(pickle.dumps(_Boom(), protocol=2), "x")
    assert "must never run" not in capsys.readouterr().out


def _torch_refuses(data: bytes) -> bool:
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception:
        return True
    return False


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:  # bit flips
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncation
        del b[rng.randrange(1, len(b)):]
    elif kind == 2:  # a run of random bytes
        i = rng.randrange(len(b))
        b[i:i + 16] = bytes(rng.randrange(256) for _ in range(16))
    else:  # a chunk cut out of the middle
        i = rng.randrange(len(b))
        del b[i:i + rng.randint(1, 64)]
    return bytes(b)


def test_fuzz_refuses_only_what_torch_refuses(samples):
    """300 seeded mutations of real files: the reader returns, says "don't know" (None) or raises InputError, and
    it raises only for bytes ``torch.load`` refuses as well (a fast refusal is never a wrong one)."""
    rng = random.Random(1234)
    small = {k: v for k, v in samples.items() if len(v) < 200_000} or samples
    refused = 0
    for i in range(300):
        name = sorted(small)[i % len(small)]
        data = _mutate(rng, small[name])
        try:
            peek_checkpoint(data, "x")
        except InputError:
            refused += 1
            assert _torch_refuses(data), f"case {i} ({name}): refused bytes torch.load accepts"
    assert refused > 0  # the mutations do reach the refusal paths
