"""The point of the method: a classifier trained on clean digits only certifies significantly more test
points when a diffusion model denoises its noisy inputs than when it sees them raw.

Both are DenoisedSmoothingClassifier estimators (denoiser=None for none), certified on the same test
points with the same seeds; a point counts when
CERTIFY returns its true label (any radius > 0). Significance is an exact one-sided binomial (sign) test
on the discordant pairs: under "the denoiser does not help", a point certified by exactly one of the two
is equally likely to be either's, so P(b or more of b + c go to the denoiser) must fall below 0.01.
"""

from __future__ import annotations

import numpy as np
import pytest

from art_smoothing_plugin.estimators.denoised_smoothing import DenoisedSmoothingClassifier
from evaluations.metrics import discordant_pairs_test

POINTS = 300  # the first 300 of the 500 digits test points
N0, N, ALPHA = 10, 100, 0.001


def smoothed(classifier, denoiser, sigma: float, digits) -> DenoisedSmoothingClassifier:
    return DenoisedSmoothingClassifier(
        classifier,
        denoiser,
        input_shape=digits.input_shape,
        nb_classes=digits.nb_classes,
        scale=sigma,
        alpha=ALPHA,
        n0=N0,
        seed=7,
        batch_size=1100,
    )


@pytest.mark.parametrize("sigma", [0.25, 0.5])
def test_diffusion_denoiser_certifies_significantly_more_points(
    sigma, digits, clean_classifier, tiny_ddpm
) -> None:
    x, y = digits.x_test[:POINTS], digits.y_test[:POINTS]
    denoiser = tiny_ddpm.denoiser(sigma)
    certified = {}
    for name, chosen in {"none": None, "diffusion": denoiser}.items():
        result = smoothed(clean_classifier, chosen, sigma, digits).certify_detailed(x, N)
        certified[name] = result.certified_at(0.0, y)
    b, c, pvalue = discordant_pairs_test(certified["diffusion"], certified["none"])
    summary = (
        f"sigma={sigma}: diffusion certified {certified['diffusion'].mean():.3f}, "
        f"none {certified['none'].mean():.3f}; discordant {b} vs {c}, p={pvalue:.3g}"
    )
    print(summary)  # shown with pytest -s
    assert pvalue < 0.01, summary


def test_estimator_refuses_a_denoiser_built_for_another_sigma(digits, clean_classifier, tiny_ddpm) -> None:
    with pytest.raises(ValueError, match="trained for sigma=0.25 but scale=0.5"):
        smoothed(clean_classifier, tiny_ddpm.denoiser(0.25), 0.5, digits)


def test_gradients_flow_through_the_diffusion_denoiser(digits, clean_classifier, tiny_ddpm) -> None:
    estimator = smoothed(clean_classifier, tiny_ddpm.denoiser(0.5), 0.5, digits)
    estimator.sample_size = 4
    gradient = estimator.loss_gradient(digits.x_test[:3], digits.y_test[:3])
    assert gradient.shape == digits.x_test[:3].shape and np.isfinite(gradient).all()
    assert float(np.abs(gradient).sum()) > 0
