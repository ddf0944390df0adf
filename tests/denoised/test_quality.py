"""How good denoised smoothing is on the digits, with a classifier trained on clean data only.

Asserted: at sigma = 0.25 and 0.5, every denoiser (MSE, white-box Stab+MSE, black-box Stab+MSE through
surrogates) certifies significantly more of the 500 held-out digits than no denoiser, correctly and
at radius 0.25 or more. The test is the exact one-sided binomial test on the discordant pairs
(McNemar's exact test): on the same points, the certificates of the two chains disagree on ``b + c``
points, ``b`` of them certified only with the denoiser; under "the denoiser does not help", ``b`` is at
most Binomial(b + c, 1/2), and the assertion is p < 0.01.

Reported, not asserted (printed at the end of the run): the certified accuracy curves, and whether the
paper's finer ordering none < black-box <= white-box <= noise-trained holds here.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from art_smoothing_plugin.statistics import max_certifiable_radius

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def mcnemar_greater(ours: np.ndarray, baseline: np.ndarray) -> tuple[int, int, float]:
    """(b, c, p): points certified only by ``ours``, only by ``baseline``, and the exact one-sided p-value
    of ``b`` against Binomial(b + c, 1/2)."""
    only_ours = int(np.sum(ours & ~baseline))
    only_baseline = int(np.sum(~ours & baseline))
    if only_ours + only_baseline == 0:
        return 0, 0, 1.0
    p = stats.binomtest(only_ours, only_ours + only_baseline, 0.5, alternative="greater").pvalue
    return only_ours, only_baseline, float(p)


@pytest.mark.parametrize("sigma", [0.25, 0.5])
@pytest.mark.parametrize("denoiser", ["mse", "white-box", "black-box"])
def test_every_denoiser_certifies_more_points_than_none(
    sigma, denoiser, certifications, digits, certify_settings
):
    radius = certify_settings["radius"]
    with_denoiser = certifications[sigma, denoiser].certified_at(radius, digits.y_test)
    without = certifications[sigma, "none"].certified_at(radius, digits.y_test)
    only_denoised, only_plain, p = mcnemar_greater(with_denoiser, without)
    assert p < 0.01, (
        f"sigma={sigma}, {denoiser}: certified at r>={radius} {with_denoiser.sum()} vs {without.sum()} "
        f"of {len(without)}; discordant {only_denoised}/{only_plain}, p={p:.2g}"
    )


def test_report_certified_accuracy_and_ordering(certifications, digits, certify_settings, quality_report):
    """Checks that every certificate respects the largest radius ``n`` samples can prove, then reports."""
    y = digits.y_test
    quality_report.append(
        f"{len(y)} held-out digits, n={certify_settings['n']}, n0={certify_settings['n0']}, "
        f"alpha={certify_settings['alpha']}; certified accuracy (%) at r = {', '.join(map(str, RADII))}; "
        f"p: exact binomial test on discordant pairs vs none at r = {certify_settings['radius']}"
    )
    for sigma in certify_settings["sigmas"]:
        cap = max_certifiable_radius(certify_settings["n"], certify_settings["alpha"], sigma)
        accuracy = {}
        for config in certify_settings["configs"]:
            result = certifications[sigma, config]
            assert len(result) == len(y)
            assert np.all(result.radii <= cap + 1e-12)
            assert np.all((result.labels == -1) == (result.radii == 0.0))
            accuracy[config] = [100.0 * result.certified_at(r, y).mean() for r in RADII]
            _, _, p = mcnemar_greater(
                result.certified_at(certify_settings["radius"], y),
                certifications[sigma, "none"].certified_at(certify_settings["radius"], y),
            )
            quality_report.append(
                f"  sigma={sigma:<4} {config:<14}"
                + " ".join(f"{a:5.1f}" for a in accuracy[config])
                + ("" if config == "none" else f"   p={p:.1g}")
            )
        area = {config: float(np.sum(values)) for config, values in accuracy.items()}
        order = ["none", "black-box", "white-box", "noise-trained"]
        holds = all(area[a] <= area[b] for a, b in zip(order, order[1:], strict=False))
        quality_report.append(
            f"  sigma={sigma}: none < black-box <= white-box <= noise-trained (sum over radii) "
            f"{'holds' if holds else 'does NOT hold'}: "
            + " / ".join(f"{config} {area[config]:.1f}" for config in order)
        )
