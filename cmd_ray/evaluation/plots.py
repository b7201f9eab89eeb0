"""Success and precision plots (PNG) of several trackers in one figure.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so plotting works on
head-less workers and never opens a window. Legends carry the score the curve summarises, trackers sorted best
first: the success plot's AUC (= Success, the mean of the curve), the precision plot's value at 20 px, the normalised
precision plot's Norm. Precision under the protocol.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cmd_ray import storage
from cmd_ray.evaluation.metrics import (
    NORM_PRECISION_THRESHOLDS,
    PRECISION_AT_PX,
    PRECISION_THRESHOLDS,
    SUCCESS_THRESHOLDS,
    DatasetScores,
)
from cmd_ray.evaluation.tables import RowSummary

PLOT_FILES = {
    "success": "success_plot.png",
    "precision": "precision_plot.png",
    "norm_precision": "norm_precision_plot.png",
}
"""File name of each plot under the plots folder."""


def _figure() -> Figure:
    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _sort_key(score: float) -> float:
    return -score if not math.isnan(score) else math.inf


def _draw(
    results: Mapping[str, DatasetScores],
    path: Path,
    *,
    thresholds: np.ndarray,
    curve: str,
    score: str,
    title: str,
    xlabel: str,
    ylabel: str,
    score_fmt: str,
    marker_at: float | None = None,
) -> Path:
    if not results:
        raise ValueError("a plot needs at least one tracker")
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    order = sorted(results, key=lambda name: _sort_key(getattr(results[name], score)))
    for name in order:
        r = results[name]
        ax.plot(thresholds, getattr(r, curve), linewidth=2, label=f"{name} [{score_fmt.format(getattr(r, score))}]")
    if marker_at is not None:
        ax.axvline(marker_at, color="0.6", linestyle=":", linewidth=1)
    ax.set_xlim(float(thresholds[0]), float(thresholds[-1]))
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, linestyle="--", alpha=0.4)
    ax.legend(loc="lower right" if curve != "success_curve" else "lower left", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _title(kind: str, protocol: str, dataset: str | None) -> str:
    return f"{kind} plots of OPE" + (f" on {dataset}" if dataset else "") + f" ({protocol})"


def success_plot(results: Mapping[str, DatasetScores], path: Path | str, dataset: str | None = None) -> Path:
    """Success curves (fraction of frames with IoU > t over t ∈ [0, 1]); legend: AUC (= Success)."""
    protocol = next(iter(results.values())).protocol if results else ""
    return _draw(
        results,
        Path(path),
        thresholds=SUCCESS_THRESHOLDS,
        curve="success_curve",
        score="success",
        title=_title("Success", protocol, dataset),
        xlabel="Overlap threshold",
        ylabel="Success rate",
        score_fmt="{:.3f}",
    )


def precision_plot(results: Mapping[str, DatasetScores], path: Path | str, dataset: str | None = None) -> Path:
    """Precision curves (fraction of frames with centre error ≤ t px, t ∈ [0, 50]); legend: value at 20 px."""
    protocol = next(iter(results.values())).protocol if results else ""
    return _draw(
        results,
        Path(path),
        thresholds=PRECISION_THRESHOLDS,
        curve="precision_curve",
        score="precision",
        title=_title("Precision", protocol, dataset),
        xlabel="Location error threshold (pixels)",
        ylabel="Precision",
        score_fmt="{:.3f}",
        marker_at=float(PRECISION_AT_PX),
    )


def norm_precision_plot(results: Mapping[str, DatasetScores], path: Path | str, dataset: str | None = None) -> Path:
    """Normalised precision curves (t ∈ [0, 0.5]); legend: Norm. Precision (AUC for lsotb, value at 0.20 else)."""
    protocol = next(iter(results.values())).protocol if results else ""
    return _draw(
        results,
        Path(path),
        thresholds=NORM_PRECISION_THRESHOLDS,
        curve="norm_precision_curve",
        score="norm_precision",
        title=_title("Normalized precision", protocol, dataset),
        xlabel="Normalized location error threshold",
        ylabel="Precision",
        score_fmt="{:.3f}",
        marker_at=0.2 if protocol == "pytracking" else None,
    )


def write_plots(
    results: Mapping[str, DatasetScores],
    out_dir: Path | str,
    dataset: str | None = None,
    norm_precision: bool = True,
    endpoint_url: str | None = None,
) -> list[str]:
    """Success and precision plots (and the normalised precision plot unless ``norm_precision=False``) as PNG
    files in ``out_dir`` (:data:`PLOT_FILES`); returns their paths (local) or URIs (S3).

    ``out_dir`` may be an ``s3://`` prefix: the plots are then drawn into a local temporary folder and each uploaded
    in one write through :mod:`cmd_ray.storage`.
    """
    target = str(out_dir)
    if not storage.is_s3(target):
        out = Path(storage.resolve(target)[1])
        return [str(p) for p in _draw_all(results, out, dataset, norm_precision)]
    with tempfile.TemporaryDirectory(prefix="cmd-ray-plots-") as tmp:
        uris = []
        for p in _draw_all(results, Path(tmp), dataset, norm_precision):
            uri = storage.join(target.rstrip("/"), p.name)
            storage.write_bytes(uri, p.read_bytes(), endpoint_url)
            uris.append(uri)
    return uris


def _draw_all(results: Mapping[str, DatasetScores], out: Path, dataset: str | None, norm_precision: bool) -> list[Path]:
    paths = [
        success_plot(results, out / PLOT_FILES["success"], dataset),
        precision_plot(results, out / PLOT_FILES["precision"], dataset),
    ]
    if norm_precision:
        paths.append(norm_precision_plot(results, out / PLOT_FILES["norm_precision"], dataset))
    return paths


def table1_plot(
    summaries: Sequence[RowSummary], path: Path | str, *, protocol: str, dataset: str | None = None
) -> Path:
    """Table 1 as bars: each row's mean Success and Precision, error bars ±1 std over its seeds, a line at the first
    row's (the reference's) Success. When the rows carry paired comparisons (:attr:`RowSummary.paired`), a second
    panel shows each row's paired Success difference to the reference with its bootstrap interval, and a line at 0:
    an interval clear of the line is a difference above the noise of sequences and seeds."""
    if not summaries:
        raise ValueError("a Table 1 plot needs at least one row")
    out = Path(path)
    compared = [s for s in summaries if "success" in s.paired]
    fig = _figure()
    if compared:
        fig.set_size_inches(6.4, 8.0)
    ax = fig.add_subplot(2 if compared else 1, 1, 1)
    x = np.arange(len(summaries))
    width = 0.38
    for offset, metric, label in ((-width / 2, "success", "Success"), (width / 2, "precision", "Precision@20px")):
        means = [s.mean[metric] for s in summaries]
        errors = [0.0 if math.isnan(s.std[metric]) else s.std[metric] for s in summaries]
        ax.bar(x + offset, means, width, yerr=errors, capsize=3, label=label)
    ax.axhline(
        summaries[0].mean["success"], color="grey", linestyle="--", linewidth=1, label=f"{summaries[0].row} Success"
    )
    ax.set_xticks(x, [s.row for s in summaries])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (mean ± std over seeds)")
    ax.set_title(f"Table 1 — {protocol}" + (f" — {dataset}" if dataset else ""))
    ax.legend(loc="upper left", fontsize="small")
    if compared:
        diff = fig.add_subplot(2, 1, 2)
        paired = [s.paired["success"] for s in compared]
        means = np.array([p.mean for p in paired])
        spans = np.array([[p.mean - p.low for p in paired], [p.high - p.mean for p in paired]])
        colors = ["tab:green" if p.low > 0 else "tab:red" if p.high < 0 else "tab:gray" for p in paired]
        xs = np.arange(len(compared))
        for i in range(len(compared)):
            diff.errorbar(xs[i], means[i], yerr=spans[:, i : i + 1], fmt="o", capsize=4, color=colors[i])
        diff.axhline(0.0, color="grey", linestyle="--", linewidth=1)
        diff.set_xticks(xs, [s.row for s in compared])
        diff.set_xlim(-0.5, len(compared) - 0.5)
        diff.set_ylabel(f"Success − {summaries[0].row} (paired)")
        diff.set_title(f"paired Δ Success, {paired[0].confidence:.0%} bootstrap interval (seeds × sequences)")
        fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
