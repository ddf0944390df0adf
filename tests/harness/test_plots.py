"""Plots: the files are real PNGs, and the figures encode what the report promises (certified curves as
lines and measured empirical points as markers only, one colour per defence in every figure, an x axis
that ends where the curves do, one chart per norm, every zero rate and the allowed rate visible on the
check)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_hex

from evaluations.plots import (
    REFERENCE_LABEL,
    certificate_check_figure,
    certified_accuracy_figure,
    defence_colours,
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
                "style": "points",
                "group": f"{sigma}",
            }
        )
    return curves


def test_certified_accuracy_styles_and_colours(tmp_path):
    figure = certified_accuracy_figure(_curves(), "digits")
    lines = figure.axes[0].get_lines()
    # certified curves are lines; empirical values are markers joined by nothing
    assert [line.get_linestyle() for line in lines] == ["-", "None", "-", "None"]
    assert [line.get_marker() for line in lines][1::2] == ["D", "D"]
    colours = [to_hex(line.get_color()) for line in lines]
    assert colours[0] == colours[1] and colours[2] == colours[3] and colours[0] != colours[2]
    assert figure.axes[0].get_xlabel() and figure.axes[0].get_ylabel() == "accuracy (%)"
    np.testing.assert_allclose(lines[0].get_ydata(), 100 * _curves()[0]["accuracy"])
    path = plot_certified_accuracy(_curves(), tmp_path / "certified.png", "digits")
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def test_a_long_note_is_wrapped_and_does_not_widen_the_image(tmp_path):
    """A run that attacks nothing notes every defence: the note wraps within the figure's width (it once
    stretched a three-chart figure to 7,800 pixels)."""
    import struct

    note = "; ".join(
        f"no empirical points for rs_method{i}_sigma0.5 (not attacked: reason {i})" for i in range(30)
    )
    short = plot_certified_accuracy(_curves(), tmp_path / "short.png", "digits")
    long = plot_certified_accuracy(_curves(), tmp_path / "long.png", "digits", note=note)

    def width_height(path):
        return struct.unpack(">II", path.read_bytes()[16:24])  # the PNG's IHDR chunk

    (short_width, short_height), (long_width, long_height) = width_height(short), width_height(long)
    assert long_width <= short_width * 1.05, (short_width, long_width)
    assert long_height > short_height  # the note is there, on several lines


def test_the_x_axis_ends_where_the_curves_end():
    radii = np.linspace(0, 2.1, 211)
    curve = {"label": "c", "radii": radii, "accuracy": np.where(radii < 0.85, 0.9, 0.0), "style": "solid"}
    right = certified_accuracy_figure([curve]).axes[0].get_xlim()[1]
    assert 0.85 <= right <= 0.85 * 1.1  # not 2.1, where the curve has long been 0
    points = {"label": "e", "radii": [0.0, 0.5, 1.0], "accuracy": [0.9, 0.5, 0.1], "style": "points"}
    right = certified_accuracy_figure([curve, points]).axes[0].get_xlim()[1]
    assert 1.0 <= right <= 1.1  # the last measured point stays in view


def test_one_colour_map_gives_a_defence_one_colour_in_every_figure():
    names = ["undefended", "rs_sigma0.25", "rs_sigma0.5", "feature_squeezing"]
    colours = defence_colours(names)
    assert len(set(colours.values())) == len(names)
    assert "#d62728" not in colours.values()  # red marks flags and allowed rates only
    certified = certified_accuracy_figure(
        [
            {"label": "b", "radii": RADII, "accuracy": 0.5 + 0 * RADII, "group": "rs_sigma0.5"},
            {"label": "a", "radii": RADII, "accuracy": 0.8 + 0 * RADII, "group": "rs_sigma0.25"},
        ],
        colours=colours,
    )
    drawn = [to_hex(line.get_color()) for line in certified.axes[0].get_lines()]
    assert drawn == [colours["rs_sigma0.5"], colours["rs_sigma0.25"]]  # not first-come colours
    robust = robust_accuracy_figure({"l2": {"rs_sigma0.25": ([0, 1], [0.9, 0.2])}}, colours=colours)
    marked = [line for line in robust.axes[0].get_lines() if line.get_marker() == "o"]
    assert [to_hex(line.get_color()) for line in marked] == [colours["rs_sigma0.25"]]
    row = {"defence": "rs_sigma0.25", "sigma": 0.25, "rate": 0.02, "upper_bound": 0.05, "reference": 0.002}
    check = certificate_check_figure([row], colours=colours)
    assert to_hex(check.axes[0].patches[0].get_facecolor()) == colours["rs_sigma0.25"]


def test_robust_accuracy_one_chart_per_norm(tmp_path):
    eps = np.array([0.0, 0.1, 0.2, 0.3])
    series = {
        "l2": {"undefended": (eps, [0.95, 0.6, 0.3, 0.1]), "adv-trained": (eps, [0.9, 0.8, 0.6, 0.4])},
        "linf": {"undefended": (eps, [0.95, 0.2, 0.0, 0.0]), "adv-trained": (eps, [0.9, 0.7, 0.5, 0.2])},
    }
    figure = robust_accuracy_figure(series)
    assert [axes.get_xlabel() for axes in figure.axes] == ["ε (L2)", "ε (L∞)"]
    # A defence keeps its colour across the two charts; its measured values are markers.
    left, right = (
        {line.get_label(): to_hex(line.get_color()) for line in ax.get_lines() if line.get_marker() == "o"}
        for ax in figure.axes
    )
    assert left == right and len(set(left.values())) == 2
    path = plot_robust_accuracy(series, tmp_path / "robust.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_certificate_check_shows_zero_rates_the_allowed_rate_and_flags(tmp_path):
    common = {"sigma": 0.25, "reference": 0.002, "trials": 300}
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
    assert axes.get_yscale() == "log"
    # the zero rate is a marker on the axis's lowest tick, and that tick reads 0
    bottom = axes.get_ylim()[0]
    zero = [line for line in axes.get_lines() if line.get_marker() == "o"]
    assert len(zero) == 1 and zero[0].get_ydata()[0] == bottom and zero[0].get_xdata()[0] == 0
    assert axes.get_yticks()[0] == bottom and axes.get_yticklabels()[0].get_text() == "0"
    # the positive rate is a bar, hatched with a red edge as flagged
    (bar,) = axes.patches
    assert bar.get_hatch() == "//" and to_hex(bar.get_edgecolor()) == "#d62728"
    assert bar.get_y() + bar.get_height() == pytest.approx(0.9)
    # the red ticks sit at alpha + alpha_predict and say so
    reference = axes.collections[-1]
    np.testing.assert_allclose(np.asarray(reference.get_offsets())[:, 1], [0.002, 0.002])
    assert reference.get_label() == REFERENCE_LABEL and "α + α_predict" in REFERENCE_LABEL
    assert "α (allowed)" not in [text.get_text() for text in axes.get_legend().get_texts()]
    path = plot_certificate_check(rows, tmp_path / "check.png", note="not checked: x (not attacked)")
    assert path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: plot_certified_accuracy([], p / "a.png"), "at least one"),
        (lambda p: plot_certified_accuracy(_curves(), p / "a.jpg"), ".png"),
        (lambda p: plot_certified_accuracy([{**_curves()[0], "style": "dashed"}], p / "a.png"), "style"),
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


def test_every_defence_of_the_largest_preset_has_its_own_colour():
    # mnist5k runs eleven defences; a palette of ten gave the first and the eleventh the same colour.
    names = [f"defence{i}" for i in range(18)]
    from evaluations import plots

    colours = plots.defence_colours(names)
    assert len(set(colours.values())) == len(names)
    assert plots._ALERT not in colours.values()  # red stays for flagged checks and allowed rates
