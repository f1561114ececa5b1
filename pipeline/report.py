"""Sweep results: one Parquet table, a Markdown report in the layout of the paper's Table 8, and a PNG of
accuracy against MFLOPs with the Pareto front marked. ``e3d report DIR`` rebuilds both from the table."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields

import pyarrow as pa
import pyarrow.parquet as pq

from shards import storage

RESULTS = "results.parquet"
REPORT_MD = "report.md"
REPORT_PNG = "accuracy_vs_mflops.png"


@dataclass(frozen=True)
class TrialResult:
    """One trained and evaluated configuration. Accuracies are fractions in [0, 1]; NaN when not evaluated.

    ``mflops`` is in the paper's convention (Table 8), ``macs_m`` exact multiply-accumulates in millions,
    ``clips_per_s`` inference speed at batch 8 from the model speed bench, ``decode_cpu_s_per_clip`` the CPU
    seconds the loader spent per trained clip (a group's decode cost split over its models), ``wall_s`` the
    wall time of its Ray Train run (a group's, for its members).
    """

    trial: str
    model: str
    dataset: str
    status: str
    params: int
    mflops: float
    macs_m: float
    clips_per_s: float
    video_top1: float
    video_top5: float
    clip_top1: float
    epochs: int
    train_clips: int
    wall_s: float
    decode_cpu_s_per_clip: float
    overrides: str = ""
    decode_group: str = ""  # the shared-decode group it trained in ("" when it trained alone)
    num_classes: int = 0  # the class count params/mflops were counted with (the data's); 0: not recorded
    params_600: int = 0  # the same model with Table 8's 600 classes (Kinetics-600); 0: not recorded
    mflops_600: float = 0.0  # 0: not recorded


SCHEMA = pa.schema([(f.name, {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}[f.type])
                    for f in fields(TrialResult)])


def write_results(root: str, results: Iterable[TrialResult]) -> str:
    """Atomically write ``results.parquet`` below ``root`` (local path or URI); returns its path."""
    rows = sorted(results, key=lambda r: r.trial)
    table = pa.table({f.name: [getattr(r, f.name) for r in rows] for f in fields(TrialResult)}, schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    fs, base = storage.resolve(root)
    path = storage.join(base, RESULTS)
    storage.write_bytes_atomic(fs, path, buf.getvalue())
    return path


def read_results(root: str) -> list[TrialResult]:
    fs, base = storage.resolve(root)
    path = storage.join(base, RESULTS)
    if not storage.exists(fs, path):
        raise FileNotFoundError(f"{path}: no sweep results here")
    with fs.open_input_file(path) as f:
        table = pq.read_table(f)
    return [TrialResult(**row) for row in table.to_pylist()]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated by a cheaper-or-equal, at-least-as-accurate other point.

    Points are ``(cost, accuracy)``; NaN accuracies are never on the front. Returned in increasing cost.
    """
    order = sorted((i for i, (_, a) in enumerate(points) if not math.isnan(a)),
                   key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.2f}"


def markdown_table(results: Sequence[TrialResult]) -> str:
    """Table 8 layout: model, MFLOPs, params, speed, video top-1 and top-5, ordered by family then cost."""
    front = {results[i].trial for i in pareto_front([(r.mflops, r.video_top1) for r in results])}
    lines = [
        "| Model | MFLOPs | Params | Speed (clips/s) | Top-1 (%) | Top-5 (%) | Clip top-1 (%) | Status "
        "| MFLOPs @600 | Params @600 | Table 8: MFLOPs, params |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    paper = _table8()
    for r in sorted(results, key=lambda r: (r.model.split("_")[0], r.mflops, r.trial)):
        name = f"**{r.model}**" if r.trial in front else r.model
        lines.append(f"| {name}{f' ({r.overrides})' if r.overrides else ''} | {r.mflops:.0f} | {r.params / 1e6:.2f}M "
                     f"| {r.clips_per_s:.0f} | {_pct(r.video_top1)} | {_pct(r.video_top5)} | {_pct(r.clip_top1)} "
                     f"| {r.status} | {f'{r.mflops_600:.0f}' if r.mflops_600 else '–'} "
                     f"| {f'{r.params_600 / 1e6:.2f}M' if r.params_600 else '–'} "
                     f"| {paper.get((r.model, r.overrides), '–')} |")
    return "\n".join(lines)


def _table8() -> dict[tuple[str, str], str]:
    """Table 8's printed figures by (registry name, overrides ""): "MFLOPs, params" as the paper prints them."""
    from training.models import TABLE8

    return {(e.name, ""): f"{e.paper_mflops}, {e.paper_params_m:.2f}M" for e in TABLE8}


def class_note(results: Sequence[TrialResult]) -> str:
    """Which class count the MFLOPs/Params columns used, and how the @600 and Table 8 columns relate."""
    counts = sorted({r.num_classes for r in results if r.num_classes})
    used = (f"the {' / '.join(map(str, counts))} classes of this dataset" if counts
            else "this dataset's class count (not recorded in these results)")
    return (f"MFLOPs and Params count each model with {used}: the classifier grows with the class count. "
            "MFLOPs @600 and Params @600 count the same model with Table 8's 600 (Kinetics-600) classes, "
            "comparable with the paper's figures in the last column (Table 8 rows only).")


def build_report(root: str) -> tuple[str, str]:
    """(Re)build ``report.md`` and ``accuracy_vs_mflops.png`` from ``results.parquet``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = read_results(root)
    if not results:
        raise ValueError(f"{root}: the results table is empty")
    dataset = sorted({r.dataset for r in results})
    total_decode = sum(r.decode_cpu_s_per_clip * r.train_clips for r in results)
    total_clips = sum(r.train_clips for r in results)
    md = [f"# Sweep report: {', '.join(dataset)}", "", markdown_table(results), "",
          "Bold: on the Pareto front of video top-1 against MFLOPs (paper convention, 3x16x112x112 input). "
          "Speed: inference clips/s at batch 8, channels_last_3d, measured by the sweep on its driver's device "
          "(the setting of `e3d bench models`).", "", class_note(results), "",
          f"Data cost: {total_decode:.1f} CPU-s of decoding for {total_clips} trained clips "
          f"= {1000 * total_decode / max(total_clips, 1):.2f} CPU-ms per clip."
          + (f" {sum(bool(r.decode_group) for r in results)} of {len(results)} trials trained in "
             f"{len({r.decode_group for r in results if r.decode_group})} shared-decode group(s): one decode pass "
             "fed every model of a group, so each trained clip carries a share of one decode."
             if any(r.decode_group for r in results) else ""), ""]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    pts = [(r.mflops, 100 * r.video_top1) for r in results]
    families = sorted({r.model.split("_")[0] for r in results})
    for fam in families:
        xs = [p for p, r in zip(pts, results, strict=True) if r.model.split("_")[0] == fam]
        ax.scatter([x for x, _ in xs], [y for _, y in xs], label=fam, s=40, zorder=3)
    front = pareto_front(pts)
    # Ringed markers plus a line, so that a one-point front is visible too.
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=1.2, marker="o", ms=11, mfc="none",
            label="Pareto front", zorder=2)
    for p, r in zip(pts, results, strict=True):
        ax.annotate(r.model, p, textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("MFLOPs (paper convention)")
    ax.set_ylabel("video top-1 (%)")
    ax.set_title(f"Accuracy vs complexity — {', '.join(dataset)}")
    ax.margins(x=0.15, y=0.1)  # room for the point labels
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    fs, base = storage.resolve(root)
    md_path, png_path = storage.join(base, REPORT_MD), storage.join(base, REPORT_PNG)
    storage.write_bytes_atomic(fs, md_path, "\n".join(md).encode())
    storage.write_bytes_atomic(fs, png_path, png.getvalue())
    return md_path, png_path


def result_dict(r: TrialResult) -> dict:
    return asdict(r)
