"""Plots: the files are real PNGs, and the figures encode what the report promises (solid certified and
dashed empirical curves in one colour per sigma, one chart per norm, alpha drawn on the check)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_hex

from evaluations.plots import (
    certificate_check_figure,
    certified_accuracy_figure,
    plot_certificate_check,
    plot_certified_accuracy,
    plot_robust_accuracy,
    robust_accuracy_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RADII = np.linspace(0, 1.5, 31)


def _curves():
    curves = []
    for sigma, scale in ((0.25, 0.6), (0.5, 1.0)):
        certified = np.clip(0.9 - RADII / (2 * scale), 0, 1)
        curves.append(
            {
                "label": f"σ={sigma} certified",
                "radii": RADII,
                "accuracy": certified,
                "style": "solid",
                "group": f"{sigma}",
            }
        )
        eps = RADII[::5]
        curves.append(
            {
                "label": f"σ={sigma} SmoothAdv",
                "radii": eps,
                "accuracy": np.minimum(certified[::5] + 0.1, 0.95),
                "style": "dashed",
                "group": f"{sigma}",
            }
        )
    return curves


def test_certified_accuracy_styles_and_colours(tmp_path):
    figure = certified_accuracy_figure(_curves(), "digits")
    lines = figure.axes[0].get_lines()
    assert [line.get_linestyle() for line in lines] == ["-", "--", "-", "--"]
    colours = [to_hex(line.get_color()) for line in lines]
    assert colours[0] == colours[1] and colours[2] == colours[3] and colours[0] != colours[2]
    assert figure.axes[0].get_xlabel() and figure.axes[0].get_ylabel() == "accuracy (%)"
    np.testing.assert_allclose(lines[0].get_ydata(), 100 * _curves()[0]["accuracy"])
    path = plot_certified_accuracy(_curves(), tmp_path / "certified.png", "digits")
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def test_robust_accuracy_one_chart_per_norm(tmp_path):
    eps = np.array([0.0, 0.1, 0.2, 0.3])
    series = {
        "l2": {"undefended": (eps, [0.95, 0.6, 0.3, 0.1]), "adv-trained": (eps, [0.9, 0.8, 0.6, 0.4])},
        "linf": {"undefended": (eps, [0.95, 0.2, 0.0, 0.0]), "adv-trained": (eps, [0.9, 0.7, 0.5, 0.2])},
    }
    figure = robust_accuracy_figure(series)
    assert [axes.get_xlabel() for axes in figure.axes] == ["ε (L2)", "ε (L∞)"]
    # A defence keeps its colour across the two charts.
    left, right = (
        {line.get_label(): to_hex(line.get_color()) for line in ax.get_lines()} for ax in figure.axes
    )
    assert left == right and len(set(left.values())) == 2
    path = plot_robust_accuracy(series, tmp_path / "robust.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_certificate_check_plot_marks_alpha_and_flagged_rows(tmp_path):
    common = {"sigma": 0.25, "alpha": 0.001, "trials": 300}
    rows = [
        {**common, "defence": "smoothing", "rate": 0.0, "upper_bound": 0.015, "flips": 0},
        {
            **common,
            "defence": "doubled radii",
            "rate": 0.9,
            "upper_bound": 0.95,
            "flips": 271,
            "flagged": True,
        },
    ]
    figure = certificate_check_figure(rows)
    axes = figure.axes[0]
    bars = axes.patches
    assert len(bars) == 2 and to_hex(bars[1].get_facecolor()) != to_hex(bars[0].get_facecolor())
    assert axes.get_yscale() == "log"
    alpha_marks = axes.collections[-1].get_offsets()
    np.testing.assert_allclose(np.asarray(alpha_marks)[:, 1], [0.001, 0.001])
    path = plot_certificate_check(rows, tmp_path / "check.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: plot_certified_accuracy([], p / "a.png"), "at least one"),
        (lambda p: plot_certified_accuracy(_curves(), p / "a.jpg"), ".png"),
        (lambda p: plot_certified_accuracy([{**_curves()[0], "style": "dotted"}], p / "a.png"), "style"),
        (
            lambda p: plot_certified_accuracy([{**_curves()[0], "accuracy": [1.0]}], p / "a.png"),
            "same length",
        ),
        (lambda p: plot_robust_accuracy({}, p / "a.png"), "at least one"),
        (lambda p: plot_certificate_check([], p / "a.png"), "at least one"),
    ],
)
def test_bad_input_is_refused(tmp_path, call, message):
    with pytest.raises(ValueError, match=message):
        call(tmp_path)
    assert not list(tmp_path.iterdir())
