"""Adaptive certification: sample in rounds and stop as soon as the answer is statistically settled.

Cohen et al.'s CERTIFY spends the same ``n`` (typically 100,000) forward passes on every input, although
most inputs are settled after a few hundred: their top-class probability ``p_A`` is far above or far
below the threshold that matters. The procedures here keep CERTIFY's selection stage (``n0`` samples
choose the candidate class ``c_A``) and then draw the estimation samples in rounds, examining the
counts at a schedule of looks ``n_1 < ... < n_K`` fixed in advance
(:func:`art_smoothing_plugin.statistics.sequential_looks`). Look ``k`` uses one-sided Clopper-Pearson
bounds at level ``alpha_k`` with ``sum_k alpha_k <= alpha``
(:func:`~art_smoothing_plugin.statistics.sequential_alphas`).

**Guarantee.** With probability at least ``1 - alpha`` over the noise, the lower bounds of all looks
hold simultaneously (union bound), hence the lower bound at the look where the procedure stops holds,
whatever rule chose that look. Every certificate returned (label ``c_A`` and radius
``sigma * Phi^-1(p_lower)``, or "certified at r") is therefore wrong with probability at most ``alpha``,
exactly as for fixed-n CERTIFY. The two modes differ only in when they stop:

* ``mode="radius"`` (target radius ``r``): stop at the first look where the lower bound exceeds
  ``Phi(r / sigma)`` (certified at ``r``) or the upper bound falls below it (not certifiable at ``r``);
  at the budget, undecided counts as not certified.
* ``mode="budget"`` (best radius within a budget): stop at the first look where the radius the final
  look could still plausibly certify
  (:func:`~art_smoothing_plugin.statistics.reachable_radius`) exceeds the radius certified now by at
  most ``tolerance``.

:func:`run_sequential` is the stopping loop on counts alone (tests feed it simulated binomials);
:func:`certify_adaptive` runs it on a :class:`~art_smoothing_plugin.smoothing.Smoother`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from . import statistics
from ._validation import check_int_at_least, check_probability
from .sampling import SELECTION, NoiseKey, look_phase
from .smoothing import ABSTAIN, CertificationResult, Smoother

__all__ = [
    "AdaptiveMode",
    "SequentialOutcome",
    "certify_adaptive",
    "check_adaptive_arguments",
    "run_sequential",
]

AdaptiveMode = Literal["radius", "budget"]

#: Draws ``m`` fresh estimation samples for each input in ``active`` (indices into the batch) and returns
#: the new votes for each input's candidate class, an integer array of ``len(active)``.
CountSource = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class SequentialOutcome:
    """Per-input state of a sequential run at its stopping time (NumPy arrays, one entry per input).

    ``counts_top``: candidate votes among the ``trials`` estimation samples drawn; ``stop_look``: index of
    the look it stopped at; ``look_alpha``: that look's level; ``p_lower``/``p_upper``: the one-sided
    Clopper-Pearson bounds at that level (``p_lower`` is the sound certificate); ``certified``: in radius
    mode, whether ``p_lower`` exceeds the threshold (``None`` in budget mode).
    """

    counts_top: np.ndarray
    trials: np.ndarray
    stop_look: np.ndarray
    look_alpha: np.ndarray
    p_lower: np.ndarray
    p_upper: np.ndarray
    certified: np.ndarray | None
    looks: np.ndarray
    alphas: np.ndarray


def check_adaptive_arguments(
    mode: str,
    radius: float | None,
    max_samples: int,
    tolerance: float | None,
    alpha: float,
    n0: int,
) -> tuple[float | None, int, float | None, float, int]:
    """Refuse bad arguments of the adaptive modes with a ValueError naming the argument; return them
    normalised as ``(radius, max_samples, tolerance, alpha, n0)``."""
    if mode not in ("radius", "budget"):
        raise ValueError(f"mode must be 'radius' (target radius) or 'budget' (best radius), got {mode!r}")
    alpha = check_probability("alpha", alpha)
    n0 = check_int_at_least("n0", n0, 1)
    max_samples = check_int_at_least("max_samples", max_samples, 1)
    if max_samples <= n0:
        raise ValueError(
            f"max_samples (the budget of forward passes per input, selection included) must be greater "
            f"than n0={n0}, got max_samples={max_samples}"
        )
    if mode == "radius":
        if radius is None:
            raise ValueError("radius is required in mode='radius': the target L2 radius, a number > 0")
        try:
            radius = float(radius)
        except (TypeError, ValueError):
            raise ValueError(f"radius must be a number > 0, got {radius!r}") from None
        if not math.isfinite(radius) or radius <= 0:
            raise ValueError(f"radius must be a finite number > 0, got {radius!r}")
        if tolerance is not None:
            raise ValueError("tolerance applies to mode='budget' only; leave it None in mode='radius'")
    else:
        if tolerance is None:
            raise ValueError(
                "tolerance is required in mode='budget': the radius gain worth sampling for, > 0"
            )
        try:
            tolerance = float(tolerance)
        except (TypeError, ValueError):
            raise ValueError(f"tolerance must be a number > 0, got {tolerance!r}") from None
        if not math.isfinite(tolerance) or tolerance <= 0:
            raise ValueError(f"tolerance must be a finite number > 0, got {tolerance!r}")
        if radius is not None:
            raise ValueError("radius applies to mode='radius' only; leave it None in mode='budget'")
    return radius, max_samples, tolerance, alpha, n0


def _bounds_at(counts: np.ndarray, trials: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lower = np.zeros(len(counts))
    upper = np.ones(len(counts))
    for level in np.unique(levels):  # one level per look: a handful of vectorised calls
        rows = levels == level
        lower[rows] = statistics.clopper_pearson_lower(counts[rows], trials[rows], float(level))
        upper[rows] = statistics.clopper_pearson_upper(counts[rows], trials[rows], float(level))
    return lower, upper


def run_sequential(
    draw_counts: CountSource,
    num_inputs: int,
    looks: np.ndarray,
    alphas: np.ndarray,
    sigma: float,
    *,
    mode: AdaptiveMode,
    threshold: float | None = None,
    tolerance: float | None = None,
    on_look: Callable[[int, int, int], None] | None = None,
) -> SequentialOutcome:
    """The stopping loop of adaptive certification, on counts alone (no model, no torch).

    At look ``k`` every input still running gets ``looks[k] - looks[k-1]`` fresh samples from
    ``draw_counts``; then the inputs whose question is settled stop (radius mode:
    :func:`~art_smoothing_plugin.statistics.target_radius_decision` against ``threshold``; budget mode:
    :func:`~art_smoothing_plugin.statistics.best_radius_should_stop` with ``tolerance``); all stop at
    the last look. ``looks`` must be the fixed schedule and ``alphas`` levels summing to at most the
    overall ``alpha``: then ``p_lower`` is a valid (1 - alpha) lower bound at the stopping time.
    ``on_look(k, still_running, samples_drawn_this_look)`` is called after each look (for progress).
    """
    looks = np.asarray(looks, dtype=np.int64)
    alphas = np.asarray(alphas, dtype=np.float64)
    if looks.ndim != 1 or len(looks) == 0 or np.any(np.diff(looks) <= 0) or looks[0] < 1:
        raise ValueError(
            f"looks must be a non-empty, strictly increasing sequence of sizes >= 1, got {looks}"
        )
    if alphas.shape != looks.shape or np.any(alphas <= 0) or alphas.sum() >= 1:
        raise ValueError(f"alphas must hold one positive level per look with a sum below 1, got {alphas}")
    if mode == "radius" and (threshold is None or not 0.0 < threshold < 1.0):
        raise ValueError(f"threshold must lie in (0, 1) in mode='radius', got {threshold!r}")
    if mode == "budget" and (tolerance is None or not tolerance > 0):
        raise ValueError(f"tolerance must be > 0 in mode='budget', got {tolerance!r}")
    if mode not in ("radius", "budget"):
        raise ValueError(f"mode must be 'radius' or 'budget', got {mode!r}")

    counts = np.zeros(num_inputs, dtype=np.int64)
    stop_look = np.full(num_inputs, -1, dtype=np.int64)
    active = np.arange(num_inputs)
    drawn = 0
    last = len(looks) - 1
    for k, size in enumerate(looks):
        if active.size == 0:
            break
        new_votes = np.asarray(draw_counts(active, int(size - drawn)), dtype=np.int64)
        if new_votes.shape != active.shape or np.any(new_votes < 0) or np.any(new_votes > size - drawn):
            raise ValueError(
                f"draw_counts must return one vote count in [0, {size - drawn}] per active input; got shape "
                f"{new_votes.shape}"
            )
        counts[active] += new_votes
        samples_this_look = int(active.size * (size - drawn))
        drawn = int(size)
        if k == last:
            stop = np.ones(active.size, dtype=bool)
        elif mode == "radius":
            assert threshold is not None
            decision = statistics.target_radius_decision(counts[active], drawn, float(alphas[k]), threshold)
            stop = decision != statistics.UNDECIDED
        else:
            assert tolerance is not None
            stop = statistics.best_radius_should_stop(
                counts[active],
                drawn,
                float(alphas[k]),
                int(looks[last]),
                float(alphas[last]),
                sigma,
                tolerance,
            )
        stop_look[active[stop]] = k
        active = active[~stop]
        if on_look is not None:
            on_look(k, int(active.size), samples_this_look)

    trials = looks[stop_look]
    look_alpha = alphas[stop_look]
    p_lower, p_upper = _bounds_at(counts, trials, look_alpha)
    certified = (p_lower > threshold) if mode == "radius" else None
    return SequentialOutcome(
        counts, trials, stop_look, look_alpha, p_lower, p_upper, certified, looks, alphas
    )


def certify_adaptive(
    smoother: Smoother,
    x: torch.Tensor,
    *,
    mode: AdaptiveMode = "radius",
    radius: float | None = None,
    max_samples: int = 100_000,
    tolerance: float | None = None,
    alpha: float = 0.001,
    n0: int = 100,
    first_look: int = 64,
    growth: float = 1.5,
    final_share: float = 0.5,
    batch_size: int | None = None,
    key: NoiseKey | None = None,
    first_index: int = 0,
    progress: bool = False,
) -> CertificationResult:
    """Adaptive CERTIFY: the same certificates as :meth:`Smoother.certify`, from fewer samples.

    ``n0`` selection samples choose the candidate ``c_A`` (as in CERTIFY); then estimation samples are
    drawn in rounds up to ``max_samples - n0`` and examined at the looks of
    ``sequential_looks(max_samples - n0, first_look, growth)``, each at the level of
    ``sequential_alphas(alpha, K, final_share)``.

    :param mode: ``"radius"`` decides per input whether it is certified at ``radius``, stopping as soon as
        either answer is settled; ``"budget"`` seeks the largest radius, stopping when further samples up
        to the budget cannot plausibly raise it by more than ``tolerance`` (see the module docstring).
    :param radius: the target L2 radius (mode ``"radius"``), in the units of ``x``; > 0.
    :param max_samples: the budget of forward passes per input, the ``n0`` selection samples included;
        > ``n0``. ``max_samples = n0 + n`` ends, for undecided inputs, with the ``n`` of fixed CERTIFY.
    :param tolerance: the radius gain worth sampling for (mode ``"budget"``); > 0.
    :param alpha: the probability that a returned certificate is wrong, per input.
    :param first_look: estimation samples at the first look (the schedule of looks,
        :func:`~art_smoothing_plugin.statistics.sequential_looks`, is fixed in advance).
    :param growth: factor between the sample counts of consecutive looks.
    :param final_share: the share of ``alpha`` spent at the last look (the rest split equally over the
        earlier looks).
    :param key: the call's noise key (default the smoother's :meth:`~Smoother.next_key`); the selection
        samples and each look's samples are its phases, so an input's draws do not depend on which other
        inputs are still running, nor on the shard it is in.
    :param first_index: the global index of ``x[0]`` in the call (for shards).
    :returns: a :class:`CertificationResult` whose ``p_lower``/``radii`` are sound at the stopping time,
        ``samples_used`` counts the forward passes per input (``n0`` included), ``n`` is the estimation
        cap; ``extras`` holds ``mode``, ``target_radius``, ``certified`` (radius mode: the decision),
        ``p_upper``, ``stop_look``, ``looks`` and ``look_alphas``.

    Guarantee: per input, with probability at least ``1 - alpha`` over the noise, the smoothed classifier
    returns ``labels[i]`` everywhere within ``radii[i]`` of ``x[i]`` (and, in radius mode, everywhere
    within ``radius`` where ``certified[i]``). Abstentions (label :data:`ABSTAIN`, radius 0) certify nothing.
    """
    radius, max_samples, tolerance, alpha, n0 = check_adaptive_arguments(
        mode, radius, max_samples, tolerance, alpha, n0
    )
    if batch_size is not None:
        check_int_at_least("batch_size", batch_size, 1)
    estimation_cap = max_samples - n0
    looks = statistics.sequential_looks(estimation_cap, first_look, growth)
    alphas = statistics.sequential_alphas(alpha, len(looks), final_share)
    threshold = (
        float(statistics.required_top_probability(radius, smoother.sigma)) if mode == "radius" else None
    )
    if threshold is not None and threshold >= 1.0:
        raise ValueError(
            f"radius={radius} is beyond any certificate at sigma={smoother.sigma} (Phi(r/sigma) == 1)"
        )

    x = smoother._prepare(x)
    first_index = check_int_at_least("first_index", first_index, 0)
    key = smoother.next_key() if key is None else key
    selection = smoother.vote_counts(
        x,
        n0,
        batch_size,
        progress=progress and "adaptive: selection",
        key=key,
        phase=SELECTION,
        first_index=first_index,
    )
    candidates = selection.argmax(dim=1)
    look = [0]

    def draw(active: np.ndarray, m: int) -> np.ndarray:
        rows = torch.as_tensor(active, device=x.device)
        votes = smoother.vote_counts(
            x.index_select(0, rows),
            m,
            batch_size,
            key=key,
            phase=look_phase(look[0]),
            indices=first_index + np.asarray(active, dtype=np.int64),
        )
        look[0] += 1
        return votes.gather(1, candidates.index_select(0, rows).unsqueeze(1)).squeeze(1).cpu().numpy()

    with tqdm(
        total=len(x), unit="input", desc=f"adaptive ({mode})", disable=not progress, leave=False
    ) as bar:
        total_drawn = [len(x) * n0]

        def on_look(k: int, running: int, drawn: int) -> None:
            total_drawn[0] += drawn
            bar.update(len(x) - running - bar.n)
            bar.set_postfix(look=f"{k + 1}/{len(looks)}", samples=total_drawn[0])

        outcome = run_sequential(
            draw,
            len(x),
            looks,
            alphas,
            smoother.sigma,
            mode=mode,
            threshold=threshold,
            tolerance=tolerance,
            on_look=on_look,
        )
    return _result(
        outcome, candidates.cpu().numpy(), n0, estimation_cap, alpha, smoother.sigma, mode, radius, tolerance
    )


def _result(
    outcome: SequentialOutcome,
    candidates: np.ndarray,
    n0: int,
    estimation_cap: int,
    alpha: float,
    sigma: float,
    mode: str,
    radius: float | None,
    tolerance: float | None,
) -> CertificationResult:
    certified_any = outcome.p_lower > 0.5
    radii = np.where(certified_any, np.atleast_1d(statistics.certified_radius(outcome.p_lower, sigma)), 0.0)
    extras: dict = {
        "mode": mode,
        "target_radius": radius,
        "tolerance": tolerance,
        "p_upper": outcome.p_upper,
        "stop_look": outcome.stop_look,
        "looks": outcome.looks,
        "look_alphas": outcome.alphas,
    }
    if outcome.certified is not None:
        assert radius is not None
        extras["certified"] = outcome.certified
        # p_lower == Phi(r / sigma) exactly is "not certified"; keep radii >= r equivalent to the decision.
        radii = np.where(~outcome.certified & (radii >= radius), np.nextafter(radius, 0.0), radii)
    return CertificationResult(
        labels=np.where(certified_any, candidates, ABSTAIN).astype(np.int64),
        radii=radii.astype(np.float64),
        p_lower=outcome.p_lower.astype(np.float64),
        candidates=np.asarray(candidates, dtype=np.int64),
        counts_top=outcome.counts_top,
        samples_used=(n0 + outcome.trials).astype(np.int64),
        n0=n0,
        n=estimation_cap,
        alpha=alpha,
        sigma=sigma,
        extras=extras,
    )
