"""Metrics stage: pure functions from per-example arrays to the numbers the report prints.

Conventions shared by every function here (and by the results schema):

* Labels are integers; ``-1`` is an abstention (``art_smoothing_plugin.smoothing.ABSTAIN``) and always
  counts as wrong, never as "no answer, skip it".
* Certified accuracy at radius ``r`` is the fraction of *all* test points whose prediction is correct,
  not abstained, and certified with radius ``>= r`` (Cohen et al. 2019; this is the convention that
  reproduces the authors' published tables from their logs exactly, see docs/analyze-cohen-logs.md).
* Radii, epsilons and sigmas are in the data's own [0, 1] units.

Nothing here samples or touches a model, so every function is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from art_smoothing_plugin.statistics import binomial_upper_tail, clopper_pearson_upper

__all__ = [
    "ABSTAIN",
    "abstain_rate",
    "accuracy",
    "average_certified_radius",
    "certificate_check",
    "certified_accuracy",
    "certified_empirical_gaps",
    "corrected_alpha",
    "discordant_pairs_test",
    "optimistic_envelope",
]

#: The label that means "the smoothed classifier abstained" (same value as the core's ``ABSTAIN``).
ABSTAIN = -1


def _labels(name: str, values: ArrayLike) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integer labels, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        as_float = array.astype(np.float64)
        if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
            raise ValueError(f"{name} must hold integer labels (-1 for an abstention), got {array[:5]!r}...")
        array = as_float.astype(np.int64)
    return array.astype(np.int64, copy=False)


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"arrays must have the same length, got {lengths}")
    length = next(iter(lengths.values()))
    if length == 0:
        raise ValueError(f"arrays must not be empty, got {lengths}")
    return length


def _radii(radii: ArrayLike) -> np.ndarray:
    array = np.asarray(radii, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"radii must be a 1-D array, got shape {array.shape}")
    if np.any(np.isnan(array)) or np.any(array < 0):
        raise ValueError(
            "radii must be non-negative numbers (0 for an abstention), got NaN or a negative value"
        )
    return array


def _correct(labels: ArrayLike, y_true: ArrayLike) -> np.ndarray:
    predicted, truth = _labels("labels", labels), _labels("y_true", y_true)
    _same_length(labels=predicted, y_true=truth)
    return (predicted == truth) & (predicted != ABSTAIN)


def certified_accuracy(
    labels: ArrayLike, radii: ArrayLike, y_true: ArrayLike, radius_grid: ArrayLike
) -> np.ndarray:
    """Certified accuracy at each radius of ``radius_grid``: the fraction of all points whose label is
    correct (an abstention, -1, is wrong) and whose certified radius is ``>= r``.

    Returns a float64 array shaped like ``radius_grid`` (a scalar grid gives a 0-d array); non-increasing
    in ``r``."""
    correct = _correct(labels, y_true)
    radius = _radii(radii)
    _same_length(labels=correct, radii=radius)
    grid = np.asarray(radius_grid, dtype=np.float64)
    if np.any(np.isnan(grid)):
        raise ValueError(f"radius_grid must hold numbers, got {radius_grid!r}")
    certified_at = correct[:, None] & (radius[:, None] >= grid.reshape(1, -1))
    return certified_at.mean(axis=0).reshape(grid.shape)


def average_certified_radius(labels: ArrayLike, radii: ArrayLike, y_true: ArrayLike) -> float:
    """Average certified radius (ACR, Zhai et al. 2020): the mean over all points of the certified radius
    where the label is correct and 0 elsewhere (abstentions and wrong labels contribute 0)."""
    correct = _correct(labels, y_true)
    radius = _radii(radii)
    _same_length(labels=correct, radii=radius)
    return float(np.mean(np.where(correct, radius, 0.0)))


def accuracy(pred_labels: ArrayLike, y_true: ArrayLike) -> float:
    """Fraction of points whose predicted label equals the true one; an abstention (-1) is wrong."""
    return float(np.mean(_correct(pred_labels, y_true)))


def abstain_rate(pred_labels: ArrayLike) -> float:
    """Fraction of points where the classifier abstained (label -1)."""
    predicted = _labels("pred_labels", pred_labels)
    if predicted.size == 0:
        raise ValueError("pred_labels must not be empty")
    return float(np.mean(predicted == ABSTAIN))


def certificate_check(flipped: ArrayLike, alpha: float, confidence: float = 0.99) -> dict[str, Any]:
    """Is the rate of broken certificates statistically above ``alpha``?

    ``flipped`` has one entry per point given to CERTIFY (every attempted point, a trial), True where
    CERTIFY certified it and an attack that stayed inside its certified radius then made a non-abstained
    PREDICT return a class other than the certified one; False elsewhere, abstentions included.
    ``alpha`` is the flip probability per attempted point that a sound certifier meets: with CERTIFY at
    level ``alpha_certify`` and PREDICT at ``alpha_predict``, ``alpha = alpha_certify + alpha_predict``
    (CERTIFY bounds P(certified and wrong) <= alpha_certify per attempted point; given a right
    certificate, PREDICT answers another class with probability <= alpha_predict). Under that null the
    number of flips is stochastically at most Binomial(trials, alpha). Trials must not be the certified
    points alone: CERTIFY does not bound P(wrong | certified), and a sound certifier that abstains on
    most points would be flagged.

    Returns ``{"trials", "flips", "rate", "upper_bound", "p_value", "flagged", "alpha", "confidence"}``:
    ``upper_bound`` is the one-sided Clopper-Pearson upper bound on the flip rate at ``confidence``;
    ``p_value`` is ``P(Binomial(trials, alpha) >= flips)``; ``flagged`` is ``p_value < 1 - confidence``,
    so a sound certifier is flagged with probability at most ``1 - confidence``. With no trials nothing
    can be concluded: rate is NaN, upper_bound 1, p_value 1, not flagged.
    """
    flags = np.asarray(flipped)
    if flags.ndim != 1 or (flags.size and flags.dtype != np.bool_ and not np.isin(flags, (0, 1)).all()):
        raise ValueError(
            f"flipped must be a 1-D array of booleans, got shape {flags.shape}, dtype {flags.dtype}"
        )
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be a probability strictly between 0 and 1, got {alpha!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be a probability strictly between 0 and 1, got {confidence!r}")
    trials, flips = int(flags.size), int(np.count_nonzero(flags))
    if trials == 0:
        rate, upper, p_value = float("nan"), 1.0, 1.0
    else:
        rate = flips / trials
        upper = float(clopper_pearson_upper(flips, trials, 1.0 - float(confidence)))
        p_value = binomial_upper_tail(flips, trials, float(alpha))
    return {
        "trials": trials,
        "flips": flips,
        "rate": rate,
        "upper_bound": upper,
        "p_value": p_value,
        "flagged": bool(p_value < 1.0 - float(confidence)),
        "alpha": float(alpha),
        "confidence": float(confidence),
    }


def optimistic_envelope(curves: Mapping[Any, ArrayLike]) -> np.ndarray:
    """The best certified accuracy over several sigmas at each radius (pointwise maximum of curves on the
    same radius grid).

    OPTIMISTIC: choosing sigma per radius after seeing the results spends the error budget once per
    sigma tried; a report must label this curve as optimistic, or instead certify every sigma at
    :func:`corrected_alpha` ``(alpha, len(curves))`` so that the envelope holds at level ``alpha``."""
    if not curves:
        raise ValueError("curves must map at least one sigma to a certified-accuracy array")
    stacked = [np.asarray(c, dtype=np.float64) for c in curves.values()]
    shapes = {c.shape for c in stacked}
    if len(shapes) != 1:
        raise ValueError(
            f"every curve must be on the same radius grid (same shape), got shapes {sorted(shapes)}"
        )
    return np.max(np.stack(stacked), axis=0)


def corrected_alpha(alpha: float, k: int) -> float:
    """Bonferroni-corrected error level ``alpha / k`` for certifying with ``k`` sigmas and reporting the
    best per radius: by the union bound every certificate then holds jointly with probability
    ``>= 1 - alpha``."""
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be a probability strictly between 0 and 1, got {alpha!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer (the number of sigmas tried), got {k!r}")
    return float(alpha) / int(k)


def discordant_pairs_test(
    first: ArrayLike, second: ArrayLike, alternative: str = "greater"
) -> tuple[int, int, float]:
    """Exact sign test (McNemar's exact test) of two methods on the same points: ``(b, c, p)``.

    ``first`` and ``second`` are booleans per point (e.g. certified correct at a radius); ``b`` counts the
    points only ``first`` gets, ``c`` those only ``second`` gets. If the two methods were equally good, each
    of the ``b + c`` discordant points would go either way with probability 1/2, so ``p`` is the exact
    binomial p-value of ``b`` in ``b + c`` trials: ``"greater"`` tests "first is better" (P(Bin >= b)),
    ``"less"`` the reverse, ``"two-sided"`` either. 1.0 when no point is discordant."""
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    hits = {"first": np.asarray(first), "second": np.asarray(second)}
    for name, values in hits.items():
        if values.dtype != np.bool_ or values.ndim != 1:
            raise ValueError(
                f"{name} must be a 1-D boolean array (one entry per point), got {values.dtype} of shape "
                f"{values.shape}"
            )
    _same_length(**hits)
    only_first = int(np.sum(hits["first"] & ~hits["second"]))
    only_second = int(np.sum(~hits["first"] & hits["second"]))
    if only_first + only_second == 0:
        return 0, 0, 1.0
    pvalue = stats.binomtest(only_first, only_first + only_second, 0.5, alternative=alternative).pvalue
    return only_first, only_second, float(pvalue)


def certified_empirical_gaps(
    radius_grid: Sequence[float] | np.ndarray,
    certified: ArrayLike,
    empirical: ArrayLike,
    empirical_abstain: ArrayLike,
    *,
    tolerance: float = 0.0,
) -> list[dict[str, Any]]:
    """Radii where empirical accuracy under attack falls below certified accuracy, and whether
    abstentions explain it.

    A certificate promises that the smoothed classifier g is constant near x; it does not promise that
    Monte Carlo PREDICT answers (PREDICT may abstain where g's margin is thin, and abstentions count as
    wrong). So ``empirical < certified`` is expected up to the abstentions: a gap is ``explained`` when
    ``empirical + empirical_abstain >= certified - tolerance``. An unexplained gap means non-abstained
    answers were wrong inside certified radii, which the certificate check must then investigate.

    All arrays are on the same ``radius_grid`` (epsilon = radius); returns one dict per gap with keys
    ``radius, certified, empirical, abstain, gap, explained_by_abstentions``.
    """
    grid = np.asarray(radius_grid, dtype=np.float64)
    cert = np.asarray(certified, dtype=np.float64)
    emp = np.asarray(empirical, dtype=np.float64)
    abst = np.asarray(empirical_abstain, dtype=np.float64)
    if not (grid.shape == cert.shape == emp.shape == abst.shape) or grid.ndim != 1:
        raise ValueError(
            "radius_grid, certified, empirical and empirical_abstain must be 1-D arrays of one length, got "
            f"shapes {grid.shape}, {cert.shape}, {emp.shape}, {abst.shape}"
        )
    gaps = []
    for radius, c, e, a in zip(grid, cert, emp, abst, strict=True):
        if e < c - tolerance:
            gaps.append(
                {
                    "radius": float(radius),
                    "certified": float(c),
                    "empirical": float(e),
                    "abstain": float(a),
                    "gap": float(c - e),
                    "explained_by_abstentions": bool(e + a >= c - tolerance),
                }
            )
    return gaps
