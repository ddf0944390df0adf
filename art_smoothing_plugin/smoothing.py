"""The framework-level core of randomized smoothing, on torch tensors.

:class:`Smoother` is Cohen et al.'s smoothed classifier ``g(x) = argmax_c P(f(x + delta) = c)``,
``delta ~ N(0, sigma^2 I)``, for any base classifier ``f`` given as a function from a batch of inputs
to class indices. Its two public methods are the paper's two algorithms:

* :meth:`Smoother.predict` (PREDICT) returns ``g(x)`` or abstains; a returned label differs from
  ``g(x)`` with probability at most ``alpha``.
* :meth:`Smoother.certify` (CERTIFY) returns a label and an L2 radius; with probability at least
  ``1 - alpha`` over the noise, ``g`` returns that label everywhere in the ball of that radius.

:class:`SmoothedSoftClassifier` is the differentiable surrogate used by attacks (Salman et al. 2019):
the log of the mean softmax of the base model over ``m`` noise draws, as an ``nn.Module``.

Denoised smoothing reuses this core unchanged: the base classifier is then ``classifier(denoiser(.))``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from . import statistics
from ._validation import check_int_at_least, check_positive_float, check_probability
from .sampling import (
    ESTIMATION,
    SELECTION,
    LabelFunction,
    NoiseKey,
    count_votes,
    gaussian_copies,
    make_generator,
)

__all__ = ["ABSTAIN", "CertificationResult", "SmoothedSoftClassifier", "Smoother", "mean_softmax"]

#: The label returned where the smoothed classifier abstains. Never a class index.
ABSTAIN = -1


@dataclass(frozen=True)
class CertificationResult:
    """Per-input outcome of CERTIFY, as NumPy arrays of one entry per input.

    ``labels[i]`` is the certified class or :data:`ABSTAIN`; ``radii[i]`` its certified L2 radius (0.0
    where abstained); ``p_lower[i]`` the (1 - alpha) lower confidence bound on the top-class
    probability; ``candidates[i]`` the class the selection samples picked (also where abstained);
    ``counts_top[i]`` its votes among the ``n`` estimation samples; ``samples_used[i]`` the number of
    noisy forward passes spent on input ``i`` (selection and estimation together).
    """

    labels: np.ndarray
    radii: np.ndarray
    p_lower: np.ndarray
    candidates: np.ndarray
    counts_top: np.ndarray
    samples_used: np.ndarray
    n0: int
    n: int
    alpha: float
    sigma: float
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def abstained(self) -> np.ndarray:
        """Boolean mask: the inputs where CERTIFY abstained (label ``-1``)."""
        return self.labels == ABSTAIN

    def certified_at(self, radius: float, y_true: np.ndarray | None = None) -> np.ndarray:
        """Boolean mask: certified (and correct, when ``y_true`` is given) with radius >= ``radius``."""
        mask = (~self.abstained) & (self.radii >= radius)
        if y_true is not None:
            mask &= self.labels == np.asarray(y_true)
        return mask

    def to_records(self) -> list[dict]:
        """One dict per input, with plain Python values (for JSON and TSV writers)."""
        return [
            {
                "label": int(self.labels[i]),
                "radius": float(self.radii[i]),
                "p_lower": float(self.p_lower[i]),
                "candidate": int(self.candidates[i]),
                "count_top": int(self.counts_top[i]),
                "samples_used": int(self.samples_used[i]),
            }
            for i in range(len(self))
        ]


class Smoother:
    """Gaussian randomized smoothing of a base classifier (Cohen, Rosenfeld & Kolter 2019).

    :param base_classifier: maps a batch of inputs (a tensor on ``device``, in the units noise is added
        in) to one class index per input. For a module returning logits, use
        ``lambda z: model(z).argmax(1)`` or :func:`art_smoothing_plugin.classifiers.label_function`.
    :param num_classes: number of classes of the base classifier.
    :param sigma: standard deviation of the Gaussian noise, in the units of the inputs.
    :param batch_size: noisy samples per forward pass; bounds peak memory.
    :param seed: seeds the noise; ``None`` draws fresh entropy. Successive calls draw fresh, independent
        noise: call ``k`` of this smoother draws from the :class:`~art_smoothing_plugin.sampling.NoiseKey`
        ``(seed, k)`` (:meth:`next_key`), and within a call the noise of each input is a function of its
        global index (``first_index`` + its row), so any split of the inputs draws the same noise.
    :param device: where noise is drawn and votes are counted; defaults to the input's device.
    """

    def __init__(
        self,
        base_classifier: LabelFunction,
        num_classes: int,
        sigma: float,
        batch_size: int = 1000,
        seed: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not callable(base_classifier):
            raise ValueError(f"base_classifier must be callable, got {type(base_classifier).__name__}")
        self.base_classifier = base_classifier
        self.num_classes = check_int_at_least("num_classes", num_classes, 2)
        self.sigma = check_positive_float("sigma", sigma)
        self.batch_size = check_int_at_least("batch_size", batch_size, 1)
        self.device = torch.device(device) if device is not None else None
        self.reseed(seed)

    # -- noise -----------------------------------------------------------------------------------
    def reseed(self, seed: int | None) -> None:
        """Restart the noise: the same seed then reproduces the same results (``None``: fresh entropy)."""
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        self._seed = None if seed is None else int(seed)
        self._root = NoiseKey.fresh().seed if seed is None else int(seed)
        self._calls = 0
        self._generators: dict[str, torch.Generator] = {}

    def next_key(self) -> NoiseKey:
        """The key of the next call's noise; advances, so that every call draws fresh noise. A sharded
        call takes one key on the driver and passes it to every shard (``key=``)."""
        key = NoiseKey(self._root, self._calls)
        self._calls += 1
        return key

    def generator(self, device: torch.device) -> torch.Generator:
        """The noise stream on ``device`` (one per device, created from the seed on first use) for what is
        not certification: the smoothed soft classifier's gradients and training."""
        key = str(device)
        if key not in self._generators:
            self._generators[key] = make_generator(self._seed, device)
        return self._generators[key]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if self.device is not None:
            x = x.to(self.device)
        if not x.is_floating_point():
            x = x.float()
        return x.detach()

    def vote_counts(
        self,
        x: torch.Tensor,
        num_samples: int,
        batch_size: int | None = None,
        progress: bool | str = False,
        *,
        key: NoiseKey | None = None,
        phase: int = ESTIMATION,
        first_index: int = 0,
        indices: np.ndarray | None = None,
    ) -> torch.Tensor:
        """``(len(x), num_classes)`` int64 counts of base-classifier labels over ``num_samples`` noise
        draws per input. ``progress`` shows a tqdm bar (a string is used as its description).

        :param key: the call's noise key (default :meth:`next_key`); ``phase`` separates the draws of one
            call (:data:`~art_smoothing_plugin.sampling.SELECTION`, ``ESTIMATION``, adaptive looks).
        :param first_index: the global index of ``x[0]``: row ``r`` is input ``first_index + r`` of the
            call (or ``indices[r]`` when ``indices`` is given).
        """
        num_samples = check_int_at_least("num_samples", num_samples, 1)
        batch_size = check_int_at_least(
            "batch_size", self.batch_size if batch_size is None else batch_size, 1
        )
        x = self._prepare(x)
        key = self.next_key() if key is None else key
        if indices is None:
            first_index = check_int_at_least("first_index", first_index, 0)
            indices = np.arange(first_index, first_index + x.shape[0], dtype=np.int64)
        total = x.shape[0] * num_samples
        with (
            tqdm(
                total=total,
                unit="sample",
                unit_scale=True,
                disable=not progress,
                desc=progress if isinstance(progress, str) else "sampling",
                leave=False,
            ) as bar,
            torch.inference_mode(),
        ):
            return count_votes(
                self.base_classifier,
                x,
                num_samples,
                self.sigma,
                self.num_classes,
                batch_size,
                key,
                phase,
                indices,
                on_batch=bar.update,
            )

    # -- Cohen's algorithms ----------------------------------------------------------------------
    def predict(
        self,
        x: torch.Tensor,
        n: int,
        alpha: float,
        batch_size: int | None = None,
        progress: bool = False,
        *,
        key: NoiseKey | None = None,
        first_index: int = 0,
    ) -> np.ndarray:
        """PREDICT: the smoothed classifier's label for each input, or :data:`ABSTAIN`.

        Draws ``n`` noisy samples per input, takes the two most frequent classes and abstains unless a
        two-sided binomial test rejects that they are equally likely at level ``alpha``. With
        probability at least ``1 - alpha``, a returned label equals ``g(x)``. ``key`` and ``first_index``
        as in :meth:`vote_counts`.
        """
        n = check_int_at_least("n", n, 1)
        alpha = check_probability("alpha", alpha)
        counts = self.vote_counts(
            x, n, batch_size, progress=progress and "PREDICT", key=key, first_index=first_index
        )
        counts = counts.cpu().numpy()
        return predict_from_counts(counts, alpha)

    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int | None = None,
        progress: bool = False,
        *,
        key: NoiseKey | None = None,
        first_index: int = 0,
    ) -> CertificationResult:
        """CERTIFY: a class and an L2 radius for each input, or :data:`ABSTAIN` with radius 0.

        ``n0`` selection samples pick the candidate class ``c_A``; ``n`` fresh, independent samples
        count its votes ``n_A``; ``p_lower`` is the one-sided (1 - alpha) Clopper-Pearson lower bound
        on ``P(f(x + delta) = c_A)``. If ``p_lower > 1/2`` the result is ``(c_A, sigma *
        Phi^-1(p_lower))``: with probability at least ``1 - alpha`` over the noise, ``g`` predicts
        ``c_A`` at every point within that L2 distance of ``x``. Otherwise it abstains.

        ``key`` and ``first_index`` as in :meth:`vote_counts`: with the same key, the result for the
        input at global index ``i`` does not depend on which other inputs the call holds.
        """
        n0 = check_int_at_least("n0", n0, 1)
        n = check_int_at_least("n", n, 1)
        alpha = check_probability("alpha", alpha)
        key = self.next_key() if key is None else key
        # Two phases of the call's noise: the estimation counts are independent of the choice.
        common = {"key": key, "first_index": first_index}
        selection = self.vote_counts(
            x, n0, batch_size, progress=progress and "CERTIFY: selection", phase=SELECTION, **common
        )
        candidates = selection.argmax(dim=1)
        estimation = self.vote_counts(
            x, n, batch_size, progress=progress and "CERTIFY: estimation", phase=ESTIMATION, **common
        )
        counts_top = estimation.gather(1, candidates.unsqueeze(1)).squeeze(1).cpu().numpy()
        return certificate_from_counts(candidates.cpu().numpy(), counts_top, n0, n, alpha, self.sigma)


def predict_from_counts(counts: np.ndarray, alpha: float) -> np.ndarray:
    """PREDICT's answer from vote counts ``(N, num_classes)``: the most frequent class (the lowest index
    among ties) where the two-sided binomial test rejects, at level ``alpha``, that the top two counts are
    equally likely; :data:`ABSTAIN` elsewhere."""
    counts = np.asarray(counts)
    top_two = np.argsort(-counts, axis=1, kind="stable")[:, :2]
    rows = np.arange(len(counts))
    count_top, count_second = counts[rows, top_two[:, 0]], counts[rows, top_two[:, 1]]
    pvalues = np.atleast_1d(statistics.predict_test_pvalue(count_top, count_second))
    return np.where(pvalues <= alpha, top_two[:, 0], ABSTAIN).astype(np.int64)


def certificate_from_counts(
    candidates: np.ndarray,
    counts_top: np.ndarray,
    n0: int,
    n: int,
    alpha: float,
    sigma: float,
    samples_used: np.ndarray | None = None,
) -> CertificationResult:
    """Turn estimation counts of the selected candidates into certificates (labels, radii, bounds)."""
    counts_top = np.asarray(counts_top, dtype=np.int64)
    p_lower = np.atleast_1d(statistics.clopper_pearson_lower(counts_top, n, alpha)).astype(np.float64)
    certified = p_lower > 0.5
    radii = np.where(certified, np.atleast_1d(statistics.certified_radius(p_lower, sigma)), 0.0)
    used = np.full(len(counts_top), n0 + n, dtype=np.int64) if samples_used is None else samples_used
    return CertificationResult(
        labels=np.where(certified, candidates, ABSTAIN).astype(np.int64),
        radii=radii.astype(np.float64),
        p_lower=p_lower,
        candidates=np.asarray(candidates, dtype=np.int64),
        counts_top=counts_top,
        samples_used=np.asarray(used, dtype=np.int64),
        n0=n0,
        n=n,
        alpha=alpha,
        sigma=sigma,
    )


class SmoothedSoftClassifier(torch.nn.Module):
    """The smoothed soft classifier as a module: ``log mean_j softmax(base(x + delta_j))`` over
    ``num_samples`` Gaussian draws per input (Salman et al. 2019's surrogate for attacking ``g``).

    Its output are log-probabilities, which are valid logits: torchattacks and cross-entropy losses use
    them directly. With ``noise_seed`` set, every call draws the same noise for the same batch shape,
    so an iterative attack sees a fixed, deterministic objective (SmoothAdv's fixed draws).

    :param base_logits: maps inputs (in the units noise is added in) to logits; differentiable for
        gradient-based attacks.
    """

    def __init__(
        self,
        base_logits: Callable[[torch.Tensor], torch.Tensor],
        sigma: float,
        num_samples: int = 32,
        noise_seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if isinstance(base_logits, torch.nn.Module):
            self.base = base_logits  # registered, so .to()/.eval() reach it
        else:
            self._base_fn = base_logits
        self.sigma = check_positive_float("sigma", sigma)
        self.num_samples = check_int_at_least("num_samples", num_samples, 1)
        self.noise_seed = noise_seed
        self._generator = generator

    def _logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.base(z) if hasattr(self, "base") else self._base_fn(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.noise_seed is not None:
            generator = make_generator(self.noise_seed, x.device)
        else:
            generator = self._generator if self._generator is not None else make_generator(None, x.device)
            if generator.device != x.device:
                generator = make_generator(None, x.device)
        noisy = gaussian_copies(x, self.num_samples, self.sigma, generator)
        logits = self._logits(noisy).reshape(x.shape[0], self.num_samples, -1)
        return mean_softmax(logits).clamp_min(1e-12).log()


def mean_softmax(logits: torch.Tensor) -> torch.Tensor:
    """The smoothed soft classifier's output from the base model's logits on ``m`` noisy copies of each
    input: ``logits`` of shape ``(N, m, num_classes)`` in, the mean over the copies of their softmax,
    ``(N, num_classes)``, out, in float32. Differentiable."""
    return torch.softmax(logits.float(), dim=-1).mean(dim=1)
