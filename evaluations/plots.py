"""Plots of the report, as PNG files.

Figures are drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure``), never through
pyplot, so importing this module neither needs a display nor changes the caller's matplotlib backend.
Every function writes its PNG atomically (temporary file, then rename) and returns the path written.
"""

from __future__ import annotations

import math
import os
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

__all__ = [
    "CURVE_STYLES",
    "MARKER_SHAPES",
    "attack_strength_figure",
    "certificate_check_figure",
    "certified_accuracy_figure",
    "defence_colours",
    "plot_certificate_check",
    "max_radius_figure",
    "plot_attack_strength",
    "plot_certified_accuracy",
    "plot_max_radius",
    "plot_robust_accuracy",
    "robust_accuracy_figure",
]

#: The colours of defences (and of curves generally), in order of assignment. Red is left out: it marks
#: flagged checks and the allowed rate of the certificate check, and nothing else.
_PALETTE = (
    "#1f77b4",  # blue
    "#ff7f0e",  # orange
    "#2ca02c",  # green
    "#9467bd",  # purple
    "#8c564b",  # brown
    "#e377c2",  # pink
    "#17becf",  # cyan
    "#7f7f7f",  # grey
    "#bcbd22",  # olive
    "#393b79",  # navy
    # Beyond ten (mnist5k runs eleven defences): darker and lighter shades unlike the ten above.
    "#000000",  # black
    "#637939",  # dark olive green
    "#8c6d31",  # dark gold
    "#7b4173",  # plum
    "#ffbb78",  # light orange
    "#98df8a",  # light green
    "#9edae5",  # light cyan
    "#c5b0d5",  # lavender
)
#: Flagged checks and allowed rates.
_ALERT = "#d62728"
_NORM_NAMES = {"l2": "L2", "2": "L2", "linf": "L∞", "inf": "L∞"}


def defence_colours(names: Sequence[str], groups: Mapping[str, str] | None = None) -> dict[str, str]:
    """THE colour map of a report: one colour per defence name, in the order given (distinct up to
    eighteen, then cycling).

    The report builds it once from every defence of the run, in the run's order, and passes it to every
    plot, so a defence has one colour in every figure of a run (and in every run with the same defences).
    Plot functions called without a map build one from the names they draw. ``groups`` maps names to a
    group whose members share one colour (a run comparing training methods: every sigma of a method);
    a group takes its colour where its first member comes in the order."""
    groups = groups or {}
    keys = [groups.get(str(name), f"defence {name}") for name in names]
    colour_of = {key: _PALETTE[i % len(_PALETTE)] for i, key in enumerate(dict.fromkeys(keys))}
    return {str(name): colour_of[key] for name, key in zip(names, keys, strict=True)}


def _colour_map(colours: Mapping[str, str] | None, names: Sequence[str]) -> dict[str, str]:
    """``colours`` completed for any name it lacks (new names take the next free palette colours)."""
    result = dict(colours or {})
    missing = [n for n in dict.fromkeys(names) if n not in result]
    free = [c for c in _PALETTE if c not in result.values()] or list(_PALETTE)
    for i, name in enumerate(missing):
        result[name] = free[i % len(free)]
    return result


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


#: Styles of :func:`certified_accuracy_figure`'s curves: ``solid`` a curve known at every radius (certified
#: accuracy is an exact step function of the radius), ``points`` values measured at a few radii only
#: (empirical accuracy under attack at each epsilon), drawn as markers and never joined by lines.
CURVE_STYLES = ("solid", "points")


def plot_certified_accuracy(
    curves: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    title: str = "Certified accuracy",
    *,
    xlabel: str = "L2 radius r (ε of the empirical points)",
    colours: Mapping[str, str] | None = None,
    note: str = "",
) -> Path:
    """Write :func:`certified_accuracy_figure` to ``path`` (PNG) and return the path."""
    return _save(certified_accuracy_figure(curves, title, xlabel=xlabel, colours=colours, note=note), path)


def _last_positive(radii: np.ndarray, accuracy: np.ndarray) -> float:
    """The largest radius with accuracy > 0 (0 when there is none)."""
    positive = radii[accuracy > 0]
    return float(positive.max()) if positive.size else 0.0


def certified_accuracy_figure(
    curves: Sequence[Mapping[str, Any]],
    title: str = "Certified accuracy",
    *,
    xlabel: str = "L2 radius r (ε of the empirical points)",
    colours: Mapping[str, str] | None = None,
    note: str = "",
) -> Figure:
    """Certified accuracy against radius, with the empirical accuracy of the same models under attack.

    Each curve is ``{"label", "radii", "accuracy", "style": "solid"|"points", "group"}``: ``solid`` curves
    are certified accuracy (drawn as lines: known at every radius), ``points`` are empirical robust
    accuracy measured at a few epsilons (drawn as markers only: nothing was measured between them, so no
    line suggests a value there). Curves of one ``group`` (a defence name) share the colour ``colours``
    gives it (see :func:`defence_colours`). Accuracy is a fraction in [0, 1]; the axis shows it in %. The
    x axis ends a little past the last radius where any curve is above 0 or any point was measured. An
    optional ``"panel"`` key (for example the dataset) splits the curves into side-by-side charts, each
    with its own legend; ``note`` is printed under the figure.
    """
    if not curves:
        raise ValueError("curves must hold at least one curve dict")
    for curve in curves:
        if curve.get("style", "solid") not in CURVE_STYLES:
            raise ValueError(f"curve style must be one of {CURVE_STYLES}, got {curve.get('style')!r}")
        _xy(str(curve.get("label")), curve["radii"], curve["accuracy"])
    panels: dict[str, list[Mapping[str, Any]]] = {}
    for curve in curves:
        panels.setdefault(str(curve.get("panel", "")), []).append(curve)
    palette = _colour_map(colours, [str(c.get("group", c.get("label", ""))) for c in curves])
    figure = Figure(figsize=(7.5 * len(panels), 4.8))
    for position, (panel, members) in enumerate(panels.items(), start=1):
        axes = figure.add_subplot(1, len(panels), position)
        right = 0.0
        for curve in members:
            radii, acc = _xy(str(curve.get("label")), curve["radii"], curve["accuracy"])
            colour = palette[str(curve.get("group", curve.get("label", "")))]
            if curve.get("style", "solid") == "points":
                right = max(right, float(radii.max(initial=0.0)))
                axes.plot(
                    radii,
                    100.0 * acc,
                    linestyle="none",
                    marker="D",
                    markersize=6,
                    markeredgecolor="black",
                    markeredgewidth=0.6,
                    color=colour,
                    label=str(curve.get("label", "")),
                    zorder=3,
                )
            else:
                right = max(right, _last_positive(radii, acc))
                axes.plot(radii, 100.0 * acc, linewidth=2.0, color=colour, label=str(curve.get("label", "")))
        axes.set_xlabel(xlabel)
        axes.set_ylabel("accuracy (%)")
        axes.set_ylim(-2, 102)
        axes.set_xlim(0, right * 1.08 if right > 0 else 1.0)
        axes.grid(True, alpha=0.3)
        axes.set_title(f"{title}: {panel}" if panel else title)
        if len(panels) == 1:
            axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
        else:
            # lower left: certified accuracy falls with the radius, so that corner is the emptiest
            axes.legend(loc="lower left", fontsize=8, framealpha=0.85)
    lines = []
    if any(c.get("style") == "points" for c in curves):
        lines.append(
            "lines: certified accuracy (CERTIFY), exact at every radius;  ◆ markers: empirical accuracy "
            "under attack (PREDICT), measured at those ε only"
        )
    if note:
        lines.append(note)
    if lines:
        # Wrapped to the figure's width (about 15 characters per inch at this size), so that a long note
        # (every defence not attacked, say) cannot stretch the saved image sideways.
        wrapped = [textwrap.fill(line, width=int(15 * figure.get_figwidth())) for line in lines]
        figure.text(0.01, -0.02, "\n".join(wrapped), fontsize=8, va="top")
    if len(panels) > 1:
        figure.tight_layout()
    return figure


def plot_robust_accuracy(
    series: Mapping[str, Mapping[str, tuple[Any, Any]]],
    path: str | os.PathLike[str],
    title: str = "Robust accuracy under attack",
    *,
    colours: Mapping[str, str] | None = None,
    markers: Mapping[str, str] | None = None,
) -> Path:
    """Write :func:`robust_accuracy_figure` to ``path`` (PNG) and return the path."""
    return _save(robust_accuracy_figure(series, title, colours=colours, markers=markers), path)


#: Marker shapes that tell apart defences of one colour (e.g. the sigmas of one training method).
MARKER_SHAPES = ("o", "s", "^", "v", "D", "P", "X", "*")


def robust_accuracy_figure(
    series: Mapping[str, Mapping[str, tuple[Any, Any]]],
    title: str = "Robust accuracy under attack",
    *,
    colours: Mapping[str, str] | None = None,
    markers: Mapping[str, str] | None = None,
) -> Figure:
    """Every defence's robust accuracy against epsilon, one chart per norm.

    ``series[norm][defence] = (eps, accuracy)``, norm ``"l2"`` or ``"linf"``; one subplot per norm side by
    side. Each measured value is a marker; thin dotted lines only join a defence's markers so the eye can
    follow it (the figure says so). A defence has the colour ``colours`` gives it (see
    :func:`defence_colours`) in both charts, and the marker shape ``markers`` gives it (default a dot:
    shapes tell apart defences that share a colour). Accuracy is a fraction in [0, 1].
    """
    figure, panels, palette = _norm_panels(series, colours, legend_width=1.8)
    for norm, axes in panels:
        for defence, (eps, acc) in series[norm].items():
            xs, ys = _xy(f"{norm}/{defence}", eps, acc)
            axes.plot(xs, 100.0 * ys, linestyle=":", linewidth=1.0, alpha=0.6, color=palette[defence])
            axes.plot(
                xs,
                100.0 * ys,
                linestyle="none",
                marker=(markers or {}).get(defence, "o"),
                markersize=5,
                color=palette[defence],
                label=defence,
            )
        _accuracy_axes(axes, norm)
        axes.set_xlim(left=0)
    return _finish_panels(
        figure,
        title,
        "markers: measured (ε = 0 is clean accuracy); dotted lines only join them, nothing was measured "
        "in between",
    )


def _norm_panels(
    series: Mapping[str, Mapping[str, Any]], colours: Mapping[str, str] | None, legend_width: float
) -> tuple[Figure, list[tuple[str, Any]], dict[str, str]]:
    """One chart per norm side by side, and the colour of every defence drawn."""
    if not series or not any(series.values()):
        raise ValueError("series must map at least one norm to at least one defence's curves")
    norms = [n for n in series if series[n]]
    palette = _colour_map(colours, [d for n in norms for d in series[n]])
    figure = Figure(figsize=(5.2 * len(norms) + legend_width, 4.4))
    return figure, [(n, figure.add_subplot(1, len(norms), i)) for i, n in enumerate(norms, start=1)], palette


def _accuracy_axes(axes: Any, norm: str, xlabel_suffix: str = "") -> None:
    name = _NORM_NAMES.get(str(norm).lower(), norm)
    axes.set_xlabel(f"ε ({name}{xlabel_suffix})")
    axes.set_ylabel("robust accuracy (%)")
    axes.set_ylim(-2, 102)
    axes.grid(True, alpha=0.3, which="both")
    axes.set_title(f"{name} attacks")


def _finish_panels(figure: Figure, title: str, note: str, extra: Sequence[tuple[Any, str]] = ()) -> Figure:
    """One legend for every chart (each label once, then ``extra`` handles), the title and a note below."""
    handles, labels = [], []
    for axes in figure.axes:
        for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    handles += [handle for handle, _ in extra]
    labels += [label for _, label in extra]
    figure.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.92), fontsize=8, frameon=False)
    figure.suptitle(title)
    figure.tight_layout()
    figure.text(0.01, -0.01, note, fontsize=8, va="top")
    return figure


def plot_attack_strength(
    series: Mapping[str, Mapping[str, Mapping[str, tuple[Any, Any]]]],
    path: str | os.PathLike[str],
    *,
    colours: Mapping[str, str] | None = None,
    flagged: Sequence[str] = (),
    markers: Mapping[str, str] | None = None,
) -> Path:
    """Write :func:`attack_strength_figure` to ``path`` (PNG) and return the path."""
    return _save(attack_strength_figure(series, colours=colours, flagged=flagged, markers=markers), path)


def attack_strength_figure(
    series: Mapping[str, Mapping[str, Mapping[str, tuple[Any, Any]]]],
    *,
    colours: Mapping[str, str] | None = None,
    flagged: Sequence[str] = (),
    markers: Mapping[str, str] | None = None,
) -> Figure:
    """AutoAttack against the other attacks, and its eps sweep, one chart per norm.

    ``series[norm][defence]`` maps ``"autoattack"`` to AutoAttack's ``(eps, accuracy)`` (the grid and the
    sweep's unbounded budget) and ``"others"`` to the worst case of the other attacks at the grid's budgets.
    AutoAttack's values are filled markers, the others' open ones, each a measured value (thin lines only
    join a defence's markers); the x axis is logarithmic so that the grid and the unbounded budget both
    show. Defences in ``flagged`` (the checklist flagged them) are named so in the legend; ``markers``
    gives a defence its marker shape (default a dot), as in :func:`robust_accuracy_figure`."""
    figure, panels, palette = _norm_panels(series, colours, legend_width=2.4)
    for norm, axes in panels:
        for defence, curves in series[norm].items():
            colour = palette[defence]
            name = f"{defence} (flagged)" if defence in flagged else defence
            for key, fill, style in (("autoattack", "full", "-"), ("others", "none", "--")):
                if key not in curves:
                    continue
                xs, ys = _xy(f"{norm}/{defence}/{key}", *curves[key])
                keep = xs > 0
                axes.plot(xs[keep], 100.0 * ys[keep], linestyle=style, linewidth=0.8, alpha=0.5, color=colour)
                axes.plot(
                    xs[keep],
                    100.0 * ys[keep],
                    linestyle="none",
                    marker=(markers or {}).get(defence, "o"),
                    fillstyle=fill,
                    markersize=6,
                    color=colour,
                    label=name if key == "autoattack" else None,
                )
        axes.set_xscale("log")
        measured = sorted(
            {float(e) for curves in series[norm].values() for eps, _ in curves.values() for e in eps}
        )
        axes.set_xticks([e for e in measured if e > 0], [f"{e:g}" for e in measured if e > 0])
        axes.xaxis.set_minor_formatter(NullFormatter())
        _accuracy_axes(axes, norm, ", log scale")
    return _finish_panels(
        figure,
        "AutoAttack against the other attacks, to the budget where every input is reachable",
        "markers: measured; lines only join them. The rightmost AutoAttack marker is the eps sweep's "
        "unbounded budget (L∞ 1, L2 √d), where accuracy must be about 0",
        extra=[
            (Line2D([], [], linestyle="-", marker="o", color="black"), "AutoAttack (filled)"),
            (
                Line2D([], [], linestyle="--", marker="o", fillstyle="none", color="black"),
                "other attacks, worst case (open)",
            ),
        ],
    )


#: The label of the certificate check's reference tick: a sound certifier's flip rate is at most
#: alpha (CERTIFY's error) + alpha_predict (PREDICT's error).
REFERENCE_LABEL = "α + α_predict: the most a sound certifier allows"


def plot_certificate_check(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    colours: Mapping[str, str] | None = None,
    reference_label: str = REFERENCE_LABEL,
    note: str = "",
) -> Path:
    """Write :func:`certificate_check_figure` to ``path`` (PNG) and return the path."""
    figure = certificate_check_figure(rows, colours=colours, reference_label=reference_label, note=note)
    return _save(figure, path)


def certificate_check_figure(
    rows: Sequence[Mapping[str, Any]],
    *,
    colours: Mapping[str, str] | None = None,
    reference_label: str = REFERENCE_LABEL,
    note: str = "",
) -> Figure:
    """The certificate check: per defence (and sigma or radius bin), the observed rate at which attacks
    inside certified radii flipped a non-abstained PREDICT, with its one-sided upper confidence bound as
    an error bar and the rate a sound certifier allows as a red tick (labelled ``reference_label``).

    Each row: ``{"defence", "sigma" or "radius_bin", "rate", "upper_bound", "reference"}`` (``"alpha"``
    is read where ``"reference"`` is missing), optionally ``"flips"``, ``"trials"`` (annotated above the
    bar) and ``"flagged"`` (a hatched bar with a red edge, and the word FLAGGED). Bars take the defence's
    colour from ``colours`` (see :func:`defence_colours`). A log y axis keeps the allowed rate (e.g.
    0.002) and rates of a few percent readable in one chart; its lowest tick is labelled 0, and a rate of
    0 is drawn there as a marker, so no zero vanishes. ``note`` is printed under the figure (e.g. which
    certified defences were not checked, and why).
    """
    if not rows:
        raise ValueError("rows must hold at least one certificate-check row")
    names, rates, uppers, references, flagged, notes, defences = [], [], [], [], [], [], []
    for row in rows:
        detail = row.get("sigma", row.get("radius_bin"))
        key = "σ" if "sigma" in row else "r"
        names.append(f"{row['defence']}\n{key}={detail}" if detail is not None else str(row["defence"]))
        defences.append(str(row["defence"]))
        rate = float(row["rate"])
        rates.append(0.0 if math.isnan(rate) else rate)
        uppers.append(float(row["upper_bound"]))
        references.append(float(row["reference"] if "reference" in row else row["alpha"]))
        flagged.append(bool(row.get("flagged", False)))
        notes.append(f"{row['flips']}/{row['trials']}" if "flips" in row and "trials" in row else "")
    positive = [v for v in rates + uppers + references if v > 0]
    floor = min(positive) / 10.0 if positive else 1e-4
    palette = _colour_map(colours, defences)
    # room for each bar's name under it (about 0.075 inch per character at font size 8)
    per_bar = max(1.3, 0.075 * max(len(name) for name in defences))
    figure = Figure(figsize=(max(5.0, per_bar * len(rows) + 2.0), 4.4))
    axes = figure.add_subplot(1, 1, 1)
    positions = np.arange(len(rows))
    heights = [max(r, floor) for r in rates]
    for x, rate, height, defence, flag in zip(positions, rates, heights, defences, flagged, strict=True):
        colour = palette[defence]
        if rate > 0:
            axes.bar(
                x,
                height - floor,
                bottom=floor,
                width=0.55,
                color=colour,
                alpha=0.8,
                edgecolor=_ALERT if flag else colour,
                linewidth=2.5 if flag else 0.5,
                hatch="//" if flag else None,
            )
        else:  # a zero rate: a marker on the axis's 0, which a zero-height bar on a log axis would hide
            axes.plot(x, floor, marker="o", markersize=9, color=colour, clip_on=False, zorder=4)
        if flag:
            axes.annotate(
                "FLAGGED",
                (x, height),
                xytext=(0, -14),
                textcoords="offset points",
                ha="center",
                color=_ALERT,
                fontsize=8,
                fontweight="bold",
            )
    axes.errorbar(
        positions,
        heights,
        yerr=[np.zeros(len(rows)), np.maximum(np.asarray(uppers) - np.asarray(heights), 0.0)],
        fmt="none",
        ecolor="black",
        capsize=5,
        label="upper confidence bound on the flip rate",
    )
    axes.scatter(
        positions,
        references,
        marker="_",
        s=900,
        color=_ALERT,
        linewidths=2.5,
        label=reference_label,
        zorder=3,
    )
    for x, upper, count in zip(positions, uppers, notes, strict=True):
        if count:
            axes.annotate(
                f"{count} flipped",
                (x, upper),
                textcoords="offset points",
                xytext=(0, 4),
                ha="center",
                fontsize=8,
            )
    axes.set_yscale("log")
    top = max(heights + uppers + references) * 6.0  # room above for the labels
    axes.set_ylim(bottom=floor, top=top)
    decades = [10.0**e for e in range(math.ceil(math.log10(floor * 3)), math.floor(math.log10(top)) + 1)]
    axes.set_yticks([floor, *decades], ["0", *(f"$10^{{{round(math.log10(d))}}}$" for d in decades)])
    axes.minorticks_off()
    axes.set_xticks(positions, names, fontsize=8)
    axes.set_xlim(-0.6, len(rows) - 0.4)
    axes.set_ylabel("flip rate inside the certified radius")
    axes.set_title(
        "Certificate check: PREDICT after SmoothAdv inside each certified radius\n"
        "(a hatched, red-edged bar is flagged: its rate is statistically above the allowed rate)",
        fontsize=9,
    )
    axes.grid(True, axis="y", alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    handles.append(Line2D([], [], linestyle="none", marker="o", markersize=8, color="#555555"))
    labels.append("observed rate 0 (no flip)")
    handles.append(Line2D([], [], linestyle="none", marker="s", markersize=8, color="#555555"))
    labels.append("observed rate (bar)")
    if note:
        figure.text(0.01, -0.02, note, fontsize=8, va="top")
    axes.legend(
        handles,
        labels,
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        frameon=False,
        markerscale=0.6,
    )
    return figure


def plot_max_radius(
    exact: Mapping[str, tuple[Any, Any]],
    measured: Mapping[str, tuple[Any, Any]],
    path: str | os.PathLike[str],
    title: str = "Largest certifiable radius",
    *,
    colours: Mapping[str, str] | None = None,
) -> Path:
    """Write :func:`max_radius_figure` to ``path`` (PNG) and return the path."""
    return _save(max_radius_figure(exact, measured, title, colours=colours), path)


def max_radius_figure(
    exact: Mapping[str, tuple[Any, Any]],
    measured: Mapping[str, tuple[Any, Any]],
    title: str = "Largest certifiable radius",
    *,
    colours: Mapping[str, str] | None = None,
) -> Figure:
    """The largest radius n samples can certify, against n (log axis), one colour per series (e.g. per
    alpha): ``exact[series] = (n, radius)`` is the formula evaluated on a fine grid of n, drawn as a line;
    ``measured[series] = (n, radius)`` the largest radius actually certified at the studied n, drawn as
    markers only (nothing was measured between them)."""
    if not exact:
        raise ValueError("exact must map at least one series to its (n, radius) curve")
    palette = _colour_map(colours, list(exact) + list(measured))
    figure = Figure(figsize=(7.5, 4.6))
    axes = figure.add_subplot(1, 1, 1)
    for name, (ns, radii) in exact.items():
        xs, ys = _xy(name, ns, radii)
        axes.plot(xs, ys, linewidth=2.0, color=palette[name], label=f"{name}: σ·Φ⁻¹(α^(1/n))")
    for name, (ns, radii) in measured.items():
        xs, ys = _xy(name, ns, radii)
        axes.plot(
            xs,
            ys,
            linestyle="none",
            marker="D",
            markersize=6,
            markeredgecolor="black",
            markeredgewidth=0.6,
            color=palette[name],
            label=f"{name}: largest radius certified (measured)",
            zorder=3,
        )
    axes.set_xscale("log")
    axes.set_xlabel("estimation samples n (log scale)")
    axes.set_ylabel("L2 radius")
    axes.set_ylim(bottom=0)
    axes.grid(True, which="both", alpha=0.3)
    axes.set_title(title)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    figure.text(
        0.01,
        -0.02,
        "lines: the formula (all n votes for one class); ◆ markers: the largest radius certified on the "
        "test points at the studied n",
        fontsize=8,
        va="top",
    )
    return figure
