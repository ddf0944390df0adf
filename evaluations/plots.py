"""Plots of the report, as PNG files.

Figures are drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure``), never through
pyplot, so importing this module neither needs a display nor changes the caller's matplotlib backend.
Every function writes its PNG atomically (temporary file, then rename) and returns the path written.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "certificate_check_figure",
    "certified_accuracy_figure",
    "plot_certificate_check",
    "plot_certified_accuracy",
    "plot_robust_accuracy",
    "robust_accuracy_figure",
]

_PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)
_NORM_NAMES = {"l2": "L2", "2": "L2", "linf": "L∞", "inf": "L∞"}


def _colours(groups: Sequence[str]) -> dict[str, str]:
    """One colour per group, in order of first appearance (cycling after ten)."""
    ordered = list(dict.fromkeys(groups))
    return {group: _PALETTE[i % len(_PALETTE)] for i, group in enumerate(ordered)}


def _save(figure: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must name a .png file, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _xy(name: str, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if xs.shape != ys.shape:
        raise ValueError(f"{name}: x and y must have the same length, got {xs.shape} and {ys.shape}")
    return xs, ys


def plot_certified_accuracy(
    curves: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    title: str = "Certified accuracy",
    *,
    xlabel: str = "L2 radius r (ε for the dashed empirical curves)",
) -> Path:
    """Write :func:`certified_accuracy_figure` to ``path`` (PNG) and return the path."""
    return _save(certified_accuracy_figure(curves, title, xlabel=xlabel), path)


def certified_accuracy_figure(
    curves: Sequence[Mapping[str, Any]],
    title: str = "Certified accuracy",
    *,
    xlabel: str = "L2 radius r (ε for the dashed empirical curves)",
) -> Figure:
    """Certified accuracy against radius, with the empirical accuracy of the same models under attack.

    Each curve is ``{"label", "radii", "accuracy", "style": "solid"|"dashed", "group"}``: solid curves
    are certified accuracy, dashed ones empirical robust accuracy at epsilon = radius; curves of one
    ``group`` (for example one sigma) share a colour, so each dashed curve sits beside its certified
    one. Accuracy is a fraction in [0, 1]; the axis shows it in %. An optional ``"panel"`` key (for
    example the dataset) splits the curves into side-by-side charts, one per panel, each with its own
    legend.
    """
    if not curves:
        raise ValueError("curves must hold at least one curve dict")
    for curve in curves:
        if curve.get("style", "solid") not in ("solid", "dashed"):
            raise ValueError(f"curve style must be 'solid' or 'dashed', got {curve.get('style')!r}")
        _xy(str(curve.get("label")), curve["radii"], curve["accuracy"])
    panels: dict[str, list[Mapping[str, Any]]] = {}
    for curve in curves:
        panels.setdefault(str(curve.get("panel", "")), []).append(curve)
    figure = Figure(figsize=(7.5 * len(panels), 4.8))
    for position, (panel, members) in enumerate(panels.items(), start=1):
        axes = figure.add_subplot(1, len(panels), position)
        colours = _colours([str(c.get("group", c.get("label", ""))) for c in members])
        for curve in members:
            radii, acc = _xy(str(curve.get("label")), curve["radii"], curve["accuracy"])
            dashed = curve.get("style", "solid") == "dashed"
            axes.plot(
                radii,
                100.0 * acc,
                linestyle="--" if dashed else "-",
                marker="o" if dashed else None,
                markersize=4,
                linewidth=1.6 if dashed else 2.0,
                color=colours[str(curve.get("group", curve.get("label", "")))],
                label=str(curve.get("label", "")),
            )
        axes.set_xlabel(xlabel)
        axes.set_ylabel("accuracy (%)")
        axes.set_ylim(-2, 102)
        axes.set_xlim(left=0)
        axes.grid(True, alpha=0.3)
        axes.set_title(f"{title}: {panel}" if panel else title)
        if len(panels) == 1:
            axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
        else:
            axes.legend(loc="upper right", fontsize=8, framealpha=0.85)
    if any(c.get("style") == "dashed" for c in curves):
        figure.text(
            0.01, -0.02, "solid: certified (CERTIFY)   dashed: empirical under attack (PREDICT)", fontsize=8
        )
    if len(panels) > 1:
        figure.tight_layout()
    return figure


def plot_robust_accuracy(
    series: Mapping[str, Mapping[str, tuple[Any, Any]]],
    path: str | os.PathLike[str],
    title: str = "Robust accuracy under attack",
) -> Path:
    """Write :func:`robust_accuracy_figure` to ``path`` (PNG) and return the path."""
    return _save(robust_accuracy_figure(series, title), path)


def robust_accuracy_figure(
    series: Mapping[str, Mapping[str, tuple[Any, Any]]], title: str = "Robust accuracy under attack"
) -> Figure:
    """Every defence's robust accuracy against epsilon, one chart per norm.

    ``series[norm][defence] = (eps, accuracy)``, norm ``"l2"`` or ``"linf"``; one subplot per norm side by
    side, a defence keeps its colour across them. Accuracy is a fraction in [0, 1].
    """
    if not series or not any(series.values()):
        raise ValueError("series must map at least one norm to at least one defence's (eps, accuracy)")
    norms = [n for n in series if series[n]]
    colours = _colours([d for n in norms for d in series[n]])
    figure = Figure(figsize=(5.2 * len(norms) + 1.8, 4.4))
    for position, norm in enumerate(norms, start=1):
        axes = figure.add_subplot(1, len(norms), position)
        for defence, (eps, acc) in series[norm].items():
            xs, ys = _xy(f"{norm}/{defence}", eps, acc)
            axes.plot(
                xs, 100.0 * ys, marker="o", markersize=4, linewidth=1.8, color=colours[defence], label=defence
            )
        axes.set_xlabel(f"ε ({_NORM_NAMES.get(str(norm).lower(), norm)})")
        axes.set_ylabel("robust accuracy (%)")
        axes.set_ylim(-2, 102)
        axes.set_xlim(left=0)
        axes.grid(True, alpha=0.3)
        axes.set_title(f"{_NORM_NAMES.get(str(norm).lower(), norm)} attacks")
    handles, labels = [], []
    for axes in figure.axes:
        for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.92), fontsize=8, frameon=False)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_certificate_check(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write :func:`certificate_check_figure` to ``path`` (PNG) and return the path."""
    return _save(certificate_check_figure(rows), path)


def certificate_check_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """The certificate check: per defence (and sigma or radius bin), the observed rate at which attacks
    inside certified radii flipped a non-abstained PREDICT, with its one-sided upper confidence bound as
    an error bar and the allowed ``alpha`` as a red tick.

    Each row: ``{"defence", "sigma" or "radius_bin", "rate", "upper_bound", "alpha"}``, optionally
    ``"flips"``, ``"trials"`` (annotated above the bar) and ``"flagged"`` (drawn in red). A log y axis
    keeps alpha (e.g. 0.001) and rates of a few percent readable in one chart; a rate of 0 is drawn at
    the bottom of the axis.
    """
    if not rows:
        raise ValueError("rows must hold at least one certificate-check row")
    names, rates, uppers, alphas, flagged, notes = [], [], [], [], [], []
    for row in rows:
        detail = row.get("sigma", row.get("radius_bin"))
        key = "σ" if "sigma" in row else "r"
        names.append(f"{row['defence']}\n{key}={detail}" if detail is not None else str(row["defence"]))
        rate = float(row["rate"])
        rates.append(0.0 if math.isnan(rate) else rate)
        uppers.append(float(row["upper_bound"]))
        alphas.append(float(row["alpha"]))
        flagged.append(bool(row.get("flagged", False)))
        notes.append(f"{row['flips']}/{row['trials']}" if "flips" in row and "trials" in row else "")
    positive = [v for v in rates + uppers + alphas if v > 0]
    floor = min(positive) / 10.0 if positive else 1e-4
    figure = Figure(figsize=(max(5.0, 1.3 * len(rows) + 2.0), 4.4))
    axes = figure.add_subplot(1, 1, 1)
    positions = np.arange(len(rows))
    heights = [max(r, floor) for r in rates]
    colours = ["#d62728" if f else "#1f77b4" for f in flagged]
    axes.bar(positions, heights, width=0.55, color=colours, alpha=0.75, label="observed flip rate")
    axes.errorbar(
        positions,
        heights,
        yerr=[np.zeros(len(rows)), np.maximum(np.asarray(uppers) - np.asarray(heights), 0.0)],
        fmt="none",
        ecolor="black",
        capsize=5,
        label="upper confidence bound",
    )
    axes.scatter(
        positions, alphas, marker="_", s=900, color="#d62728", linewidths=2.5, label="α (allowed)", zorder=3
    )
    for x, upper, note in zip(positions, uppers, notes, strict=True):
        if note:
            axes.annotate(
                note, (x, upper), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8
            )
    axes.set_yscale("log")
    axes.set_ylim(bottom=floor, top=max(heights + uppers + alphas) * 6.0)  # a decade above: room for labels
    axes.set_xticks(positions, names, fontsize=8)
    axes.set_ylabel("flips of PREDICT inside certified radius (rate)")
    axes.set_title("Certificate check (a red bar is flagged: rate statistically above α)", fontsize=10)
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, markerscale=0.4)
    return figure
