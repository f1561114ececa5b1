"""``e3d export``: a checkpoint (ours, or a released ``.pth`` through the importer) to a self-contained ONNX or
TorchScript file taking uint8 clips, class names in its metadata, checked against eager PyTorch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.predict import load_model


@dataclass(frozen=True)
class ExportConfig:
    """One export. ``batch`` is the example batch (and the fixed batch when not ``dynamic_batch``);
    ``clip_len``/``size`` default to the checkpoint's. ``check`` compares the file with eager PyTorch."""

    checkpoint: str
    format: str
    out: str
    model: str | None = None
    classes: str | None = None
    dataset: str | None = None
    dynamic_batch: bool = True
    batch: int = 1
    clip_len: int | None = None
    size: int | None = None
    check: bool = True

    def __post_init__(self) -> None:
        from training.export import FORMATS

        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {FORMATS}, got {self.format!r}")
        if self.batch < 1 or (self.clip_len is not None and self.clip_len < 1) or (self.size is not None
                                                                                    and self.size < 1):
            raise ValueError("--batch, --clip-len and --size must be >= 1")


def parity(reference: Any, got: Any) -> float:
    """``max |got - reference| / max(max |reference|, 1e-6)``: the error relative to the logits' scale."""

    ref = reference.float()
    return float((got.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6))


def run_export(cfg: ExportConfig) -> dict[str, Any]:
    """Export and (with ``check``) verify; returns what was written and the measured relative difference."""
    import torch

    from training.export import DeployModel, example_input, export, metadata, run_exported

    lm = load_model(cfg.checkpoint, model=cfg.model, classes=cfg.classes, dataset=cfg.dataset)
    model = lm.model.to(memory_format=torch.contiguous_format).float().eval()
    clip_len, size = cfg.clip_len or lm.clip_len, cfg.size or lm.size
    deploy = DeployModel(model, lm.normalization)
    meta = metadata(model=lm.name, classes=lm.classes, clip_len=clip_len, size=size, norm=lm.normalization,
                    dataset=lm.dataset, dynamic_batch=cfg.dynamic_batch,
                    extra={"source_checkpoint": str(cfg.checkpoint)})
    example = example_input(cfg.batch, clip_len, size)
    path = export(deploy, cfg.format, cfg.out, example=example, meta=meta, dynamic_batch=cfg.dynamic_batch)
    info: dict[str, Any] = {"model": lm.name, "out": path, "format": cfg.format, "classes": len(lm.classes),
                            "input_shape": ["N" if cfg.dynamic_batch else cfg.batch, 3, clip_len, size, size]}
    if cfg.check:
        x = example_input(2 if cfg.dynamic_batch else cfg.batch, clip_len, size, seed=1)
        with torch.no_grad():
            ref = deploy(x)
        rel = parity(ref, run_exported(path, x))
        info["max_abs_diff"] = f"{rel:.2e} of the logits' scale"
        if rel > 1e-4:
            raise ValueError(f"{path}: exported logits differ from eager PyTorch by {rel:.2e} of their scale")
    return info
