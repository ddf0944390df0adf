"""ART estimator for denoised smoothing (Salman, Sun, Yang, Kapoor & Kolter 2020), and for randomized
smoothing of any classifier that can only be queried.

Denoised smoothing is randomized smoothing of ``classifier(denoiser(.))``: a denoiser trained for the
noise level sigma is put in front of an unchanged classifier, and the composition is smoothed. This
module adds no sampling or statistics of its own: the base classifier handed to the core
:class:`~art_smoothing_plugin.smoothing.Smoother` is ``labels(classifier(denoiser(z)))``, and the
gradients come from the core :class:`~art_smoothing_plugin.smoothing.SmoothedSoftClassifier` over the
same composition. The certificates therefore carry exactly the guarantees of the core, for the smoothed
version of ``classifier o denoiser``.

The classifier may be a torch module (logits out), any ART classifier (TensorFlow, scikit-learn, ART's
BlackBoxClassifier, ...), a query-only callable from NumPy batches to labels or scores, or an
:class:`~art_smoothing_plugin.classifiers.HTTPClassifier`. Certification needs only labels, so all of
them certify; gradients exist only when the whole chain runs in torch.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from art.estimators.certification.randomized_smoothing.randomized_smoothing import RandomizedSmoothingMixin
from art.estimators.classification.classifier import ClassGradientsMixin, ClassifierMixin
from art.estimators.estimator import BaseEstimator, LossGradientsMixin, NeuralNetworkMixin

from .._validation import (
    check_input_shape,
    check_int_at_least,
)
from ..classifiers.art_classifier import (
    ARTClassifierAdapter,
    art_pytorch_logits_module,
    check_art_classifier,
    is_art_classifier,
)
from ..classifiers.callable import QueryBudgetExceeded, QueryCounter, QueryOnlyClassifier
from ..classifiers.http import HTTPClassifier
from ..classifiers.torch_module import check_logits
from ..sampling import NoiseKey
from ..smoothing import CertificationResult, SmoothedSoftClassifier, Smoother
from ._smoothing_estimator import ATTACK_SLACK, SmoothingEstimatorMixin

__all__ = ["DenoisedClassifierModule", "DenoisedSmoothingClassifier", "NotDifferentiableError"]


_NO_TRAINING = (
    "DenoisedSmoothingClassifier does not train the classifier; train the denoiser with "
    "art_smoothing_plugin.denoisers.DenoiserTrainer"
)


class NotDifferentiableError(NotImplementedError):
    """Gradients were asked of a smoothed classifier whose base classifier gives none (query-only)."""


def _denoise(denoiser: torch.nn.Module | None, z: torch.Tensor) -> torch.Tensor:
    if denoiser is None:
        return z
    denoised = denoiser(z)
    if not isinstance(denoised, torch.Tensor) or denoised.shape != z.shape:
        shape = tuple(denoised.shape) if isinstance(denoised, torch.Tensor) else type(denoised).__name__
        raise ValueError(
            f"the denoiser must return denoised inputs of the same shape as its input, {tuple(z.shape)}; "
            f"got {shape}"
        )
    return denoised


class DenoisedClassifierModule(torch.nn.Module):
    """``classifier(denoiser(z))`` as a frozen module returning logits, on channels-first inputs ``z``.

    Frozen: it stays in eval mode whatever ``train()`` is asked (an attack library switching modes must
    not update the denoiser's batch-norm statistics), and the estimator never trains it. With
    ``classifier_channels_last`` the denoised batch is moved to channels-last before the classifier.
    """

    def __init__(
        self,
        classifier: torch.nn.Module,
        denoiser: torch.nn.Module | None,
        nb_classes: int,
        classifier_channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.denoiser = denoiser
        self.nb_classes = nb_classes
        self.classifier_channels_last = classifier_channels_last
        self.train(False)

    def train(self, mode: bool = True) -> DenoisedClassifierModule:
        """Set the module's own flag only: the classifier and denoiser stay in eval mode."""
        self.training = bool(mode)
        for child in self.children():
            child.eval()
        return self

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        denoised = _denoise(self.denoiser, z)
        if self.classifier_channels_last:
            denoised = denoised.movedim(1, -1).contiguous()
        logits = self.classifier(denoised)
        return check_logits(logits, z.shape[0], self.nb_classes, who="classifier")


class DenoisedSmoothingClassifier(
    SmoothingEstimatorMixin,
    ClassGradientsMixin,
    ClassifierMixin,
    NeuralNetworkMixin,
    LossGradientsMixin,
    BaseEstimator,
):
    """Randomized smoothing of ``classifier o denoiser`` (denoised smoothing), as an ART estimator.

    The same predict/certify contract as
    :class:`~art_smoothing_plugin.RandomizedSmoothingClassifier`, with the noise as the only source of
    randomness:

    * ``certify``: with probability at least ``1 - alpha`` per input, the smoothed classifier of
      ``classifier o denoiser`` returns the certified label everywhere within the returned L2 radius
      (in the units of ``x``); ``-1`` and ``0.0`` where it abstains.
    * ``predict_labels``: a returned label differs from the smoothed classifier's with probability at
      most ``alpha``; ``-1`` is an abstention.
    * A classifier answer that is malformed (wrong length, labels out of range, NaN scores), a denoiser
      output of the wrong shape, or a spent query budget raises an error: no certificate is ever made
      from such answers, and no query past the budget is made.

    :param classifier: a torch module returning logits of shape ``(N, nb_classes)``; an ART classifier
        (any framework, ``BlackBoxClassifier`` included); an
        :class:`~art_smoothing_plugin.classifiers.HTTPClassifier` or
        :class:`~art_smoothing_plugin.classifiers.QueryOnlyClassifier`; or any callable from a float32
        NumPy batch to ``(N,)`` labels or ``(N, nb_classes)`` scores. It receives denoised inputs in the
        units of ``x`` and must do its own preprocessing.
    :param denoiser: a torch module mapping noisy inputs to denoised inputs of the same shape, or ``None``
        for plain randomized smoothing of ``classifier``. If it has a float attribute ``sigma`` (the noise
        level it was trained for) that differs from ``scale``, the constructor and every certification
        refuse unless ``allow_sigma_mismatch``.
    :param input_shape: shape of one input, e.g. ``(1, 28, 28)``, or ``(28, 28, 1)`` channels-last.
    :param nb_classes: number of classes.
    :param channels_first: ``False`` for channels-last inputs: the denoiser (a torch convolutional
        network) receives them channels-first, the classifier channels-last as given; noise is drawn
        channels-first, so results equal, seed for seed, those of the same data channels-first.
    :param scale: sigma, the standard deviation of the Gaussian noise, in the units of ``x``.
    :param clip_values: range of valid inputs; inputs outside it are refused.
    :param alpha: default error probability of ``certify`` and ``predict_labels``.
    :param sample_size: noise draws per input in ``predict`` and ``loss_gradient``.
    :param n0: default number of selection samples of ``certify`` (independent of ``n``).
    :param seed: seeds this estimator's private noise generator; ``None`` for fresh entropy.
    :param batch_size: default number of noisy samples per forward pass (per query batch).
    :param device_type: ``"cpu"`` or ``"gpu"`` (CUDA when available): where noise is drawn and the
        torch modules run; they are moved there.
    :param allow_sigma_mismatch: smooth at ``scale`` even if the denoiser was trained for another sigma.
    :param query_budget: most classifier queries (noisy inputs) this estimator may ever make; a call
        that would need more raises :class:`~art_smoothing_plugin.classifiers.QueryBudgetExceeded`.
    :param verbose: show tqdm progress bars while sampling.
    """

    estimator_params = (
        BaseEstimator.estimator_params
        + ClassifierMixin.estimator_params
        + [
            "input_shape",
            "scale",
            "alpha",
            "sample_size",
            "n0",
            "seed",
            "batch_size",
            "allow_sigma_mismatch",
            "verbose",
        ]
    )

    def __init__(
        self,
        classifier: Any,
        denoiser: torch.nn.Module | None = None,
        *,
        input_shape: tuple[int, ...],
        nb_classes: int,
        scale: float,
        channels_first: bool = True,
        clip_values: Any = (0.0, 1.0),
        alpha: float = 0.001,
        sample_size: int = 32,
        n0: int = 100,
        seed: int | None = None,
        batch_size: int = 1000,
        device_type: str = "cpu",
        allow_sigma_mismatch: bool = False,
        query_budget: int | None = None,
        verbose: bool = False,
    ) -> None:
        input_shape = check_input_shape(input_shape)
        nb_classes = check_int_at_least("nb_classes", nb_classes, 2)
        if device_type not in ("cpu", "gpu"):
            raise ValueError(f"device_type must be 'cpu' or 'gpu', got {device_type!r}")
        if denoiser is not None and not isinstance(denoiser, torch.nn.Module):
            raise ValueError(
                "denoiser must be a torch.nn.Module mapping noisy inputs to denoised inputs of the same "
                f"shape "
                f"(or None), got {type(denoiser).__name__}"
            )
        self._smoother: Smoother | None = None
        self._channels_first = bool(channels_first)
        self._input_shape = input_shape
        self._device = torch.device("cuda" if device_type == "gpu" and torch.cuda.is_available() else "cpu")
        self._device_type = device_type
        self.denoiser = denoiser.to(self._device).eval() if denoiser is not None else None
        self.classifier = classifier
        self._classifier_kind, self._logits_module, self._query_fn, self._no_gradient_reason = self._resolve(
            classifier, nb_classes, input_shape
        )
        composite = (
            DenoisedClassifierModule(self._logits_module, self.denoiser, nb_classes, self._moves_channels)
            if self._logits_module is not None
            else None
        )
        self._composite = composite
        super().__init__(
            channels_first=self._channels_first,
            model=composite if composite is not None else classifier,
            clip_values=clip_values,
            preprocessing_defences=None,
            postprocessing_defences=None,
            preprocessing=None,
        )
        self.nb_classes = nb_classes
        self._init_smoothing(
            sample_size=sample_size, scale=scale, alpha=alpha, n0=n0, batch_size=batch_size, seed=seed
        )
        self.allow_sigma_mismatch = bool(allow_sigma_mismatch)
        self.verbose = bool(verbose)
        self._queries = QueryCounter(query_budget)
        problem = self._sigma_problem()
        if problem is not None:
            if not self.allow_sigma_mismatch:
                raise ValueError(problem + "; pass allow_sigma_mismatch=True to smooth at this scale anyway")
            warnings.warn(problem + "; smoothing anyway (allow_sigma_mismatch=True)", stacklevel=2)
        self._probe()
        self._start_smoother()

    # -- the classifier, whatever its kind -------------------------------------------------------------
    def _resolve(self, classifier: Any, nb_classes: int, input_shape: tuple[int, ...]):
        """(kind, logits module or None, NumPy labels function or None, why no gradients)."""
        if isinstance(classifier, torch.nn.Module):
            return "torch", classifier.to(self._device).eval(), None, ""
        if is_art_classifier(classifier):
            module, reason = art_pytorch_logits_module(classifier)
            if module is not None:
                own_device = getattr(classifier, "_device", self._device)
                if torch.device(own_device).type != self._device.type:
                    raise ValueError(
                        f"the ART PyTorchClassifier runs on {own_device} but "
                        f"device_type={self._device_type!r}; "
                        "use the same device for both"
                    )
                check_art_classifier(classifier, nb_classes, input_shape)
                return "art-pytorch", module.eval(), None, ""
            adapter = ARTClassifierAdapter(classifier, nb_classes, input_shape)
            return (
                "art",
                None,
                adapter,
                reason + "; certification needs only its labels, gradients need torch",
            )
        if isinstance(classifier, (HTTPClassifier, QueryOnlyClassifier)):
            if classifier.nb_classes != nb_classes:
                raise ValueError(
                    f"nb_classes={nb_classes} but the classifier has nb_classes={classifier.nb_classes}"
                )
            kind = "http" if isinstance(classifier, HTTPClassifier) else "query-only"
            return kind, None, classifier, f"the classifier is {kind} (labels only, no gradients)"
        if callable(classifier):
            adapter = QueryOnlyClassifier(classifier, nb_classes)
            return (
                "query-only",
                None,
                adapter,
                "the classifier is a query-only callable (labels only, no gradients)",
            )
        raise ValueError(
            "classifier must be a torch.nn.Module returning logits, an ART classifier, an HTTPClassifier "
            "or a "
            f"callable from a NumPy batch to labels or scores; got {type(classifier).__name__}"
        )

    def _probe(self) -> None:
        """Run the local (torch) part of the chain on two zero inputs, so that a denoiser of the wrong
        shape or a torch classifier that cannot take the denoised inputs is refused here, before any
        sampling. A query-only classifier is not probed: that would spend queries."""
        z = self._to_core_layout(torch.zeros((2, *self._input_shape), device=self._device))
        with torch.no_grad():
            denoised = self._to_user_layout(_denoise(self.denoiser, z))
            if self._logits_module is None:
                return
            try:
                logits = self._logits_module(denoised)
            except RuntimeError as error:
                raise ValueError(
                    f"the classifier failed on (denoised) inputs of shape {tuple(denoised.shape)}; "
                    "check that "
                    f"input_shape={self._input_shape} is the shape the classifier takes: {error}"
                ) from error
            check_logits(logits, 2, self.nb_classes, who="classifier")

    def _base_labels(self, z: torch.Tensor) -> torch.Tensor:
        """The base classifier of the smoothing: labels of ``classifier(denoiser(z))``; counts queries."""
        self._queries._charge(len(z))
        if self._composite is not None:
            return self._composite(z).argmax(dim=1)
        denoised = self._to_user_layout(_denoise(self.denoiser, z))
        labels = self._query_fn(denoised.detach().cpu().numpy())
        return torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(z.device)

    # -- sigma ---------------------------------------------------------------------------------------
    def _sigma_problem(self) -> str | None:
        trained_for = getattr(self.denoiser, "sigma", None) if self.denoiser is not None else None
        if trained_for is None:
            return None
        if not math.isclose(float(trained_for), self._scale, rel_tol=1e-6, abs_tol=1e-12):
            return (
                f"the denoiser was trained for sigma={float(trained_for):g} but scale={self._scale:g}: "
                "it would "
                "remove the wrong amount of noise"
            )
        return None

    def _check_sigma(self) -> None:
        problem = self._sigma_problem()
        if problem is not None and not self.allow_sigma_mismatch:
            raise ValueError(problem + "; pass allow_sigma_mismatch=True to smooth at this scale anyway")

    # -- parameters --------------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input, without the batch dimension."""
        return self._input_shape

    @property
    def device(self) -> torch.device:
        """Where noise is drawn and the torch modules run (as ART's PyTorch estimators name it)."""
        return self._device

    @property
    def layer_names(self) -> list[str]:
        """No names: the smoothed classifier has no hidden layers (``get_activations`` refuses)."""
        return []

    @property
    def classifier_kind(self) -> str:
        """``"torch"``, ``"art-pytorch"``, ``"art"``, ``"query-only"`` or ``"http"``."""
        return self._classifier_kind

    @property
    def is_differentiable(self) -> bool:
        """Whether ``loss_gradient`` and ``smoothed_module`` are available (the chain runs in torch)."""
        return self._composite is not None

    @property
    def query_count(self) -> int:
        """Noisy inputs whose labels this estimator has asked of the classifier so far (one query each:
        ``predict``, ``predict_labels``, ``certify``, ``certify_adaptive``). Gradients and losses of a
        local torch chain, its construction check and the ``"auto"`` batch probe run the torch modules
        directly and are not queries; a classifier that can only be queried gets no such calls."""
        return self._queries.query_count

    @property
    def queries_remaining(self) -> int | None:
        """Queries left before a budget (this estimator's or the classifier adapter's) is spent; ``None``
        without a budget."""
        budgets = [self._queries.queries_remaining]
        budgets.append(getattr(self._query_fn, "queries_remaining", None))
        known = [b for b in budgets if b is not None]
        return min(known) if known else None

    # -- helpers -----------------------------------------------------------------------------------------
    def _require_queries(self, needed: int) -> None:
        remaining = self.queries_remaining
        if remaining is not None and needed > remaining:
            raise QueryBudgetExceeded(
                f"this call needs {needed} classifier queries but only {remaining} remain in the query "
                "budget; "
                "nothing was queried or certified"
            )

    def _accelerated_modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.denoiser, self._logits_module) if m is not None]

    def _local_labels(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        # The torch chain itself, not _base_labels: a probe must not spend the query count or budget.
        if self._composite is None:
            return None
        composite = self._composite
        return lambda z: composite(z).argmax(dim=1)

    def _query_counters(self) -> list[QueryCounter]:
        counters = [self._queries]
        if isinstance(self._query_fn, QueryCounter):
            counters.append(self._query_fn)
        return counters

    def _queried_batch_size(self) -> int:
        # The classifier's own batch size (an HTTP request's, a callable's chunk), else the estimator's.
        own = getattr(self._query_fn, "batch_size", None)
        return int(own) if own else self._batch_size

    def _prepare_call(
        self, x: np.ndarray | torch.Tensor, samples_per_input: int, slack: float = 0.0
    ) -> torch.Tensor:
        self._check_sigma()
        x_t = self._to_tensor(x, slack=slack)
        self._require_queries(len(x_t) * samples_per_input)
        if self.denoiser is not None:
            self.denoiser.eval()
        if self._logits_module is not None:
            self._logits_module.eval()
        return x_t

    # -- ART classifier API ----------------------------------------------------------------------------
    def predict(self, x: np.ndarray, batch_size: int = 128, **kwargs: Any) -> np.ndarray:
        """Smoothed class frequencies, shape ``(N, nb_classes)``: the fraction of ``sample_size`` noisy
        copies of each input that ``classifier o denoiser`` assigns to each class. Their argmax is the
        smoothed prediction; for PREDICT with abstention use :meth:`predict_labels`.

        ART's keyword ``is_abstain``: not given (the default), the frequencies; ``True``, ART's rows
        (one-hot of PREDICT's label on the ``sample_size`` draws at level ``alpha``, all zero where
        PREDICT abstains); ``False``, one-hot rows of the most frequent class. The keyword ``seed`` draws
        this call's noise from a generator with this seed.

        :param batch_size: inputs per forward pass (each contributes ``sample_size`` noisy copies).
        """
        batch_size = check_int_at_least("batch_size", batch_size, 1)
        x_t = self._prepare_call(x, self._sample_size, slack=ATTACK_SLACK)
        return self._predict_rows(x_t, batch_size, kwargs.get("seed"), kwargs.get("is_abstain"))

    def certify_detailed(
        self,
        x: np.ndarray | torch.Tensor,
        n: int,
        batch_size: int | None = None,
        *,
        n0: int | None = None,
        alpha: float | None = None,
        seed: int | None = None,
        noise_key: NoiseKey | None = None,
        first_index: int = 0,
    ) -> CertificationResult:
        """Cohen's CERTIFY with the full per-input result. ``extras`` holds ``queries`` (classifier queries
        this call made), ``classifier`` (its kind), ``denoiser`` (its class name or ``None``) and, for an
        HTTP classifier, ``api`` (its request, retry and failure counters after the call).

        :param n: estimation samples per input.
        :param batch_size: noisy samples per forward pass (default the estimator's ``batch_size``).
        :param n0: selection samples per input, drawn independently of the ``n`` (default ``n0``).
        :param alpha: error probability of each certificate (default the estimator's ``alpha``).
        :param seed: draw this call's noise from the key ``(seed, 0)`` (reproducible per call).
        :param noise_key, first_index: for one shard of a call cut in pieces
            (:mod:`art_smoothing_plugin.distributed`): the call's key and the global index of ``x[0]``.
        """
        n = check_int_at_least("n", n, 1)
        n0 = check_int_at_least("n0", n0 if n0 is not None else self._n0, 1)
        if batch_size is not None:
            check_int_at_least("batch_size", batch_size, 1)
        x_t = self._prepare_call(x, n0 + n)
        before = self.query_count
        result = self.smoother.certify(
            x_t,
            n0,
            n,
            alpha if alpha is not None else self._alpha,
            batch_size,
            progress=self.verbose,
            key=self._call_key(seed, noise_key),
            first_index=first_index,
        )
        extras = {
            "queries": self.query_count - before,
            "classifier": self._classifier_kind,
            "denoiser": type(self.denoiser).__name__ if self.denoiser is not None else None,
        }
        if isinstance(self._query_fn, HTTPClassifier):
            extras["api"] = self._query_fn.counters
        return dataclasses.replace(result, extras={**result.extras, **extras})

    def fit(self, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> None:
        """Not supported: denoised smoothing leaves the classifier unchanged. Train the denoiser with
        :class:`art_smoothing_plugin.denoisers.DenoiserTrainer`, or the classifier itself with
        :meth:`art_smoothing_plugin.RandomizedSmoothingClassifier.fit`."""
        raise NotImplementedError(_NO_TRAINING)

    def fit_generator(self, generator: Any, nb_epochs: int = 20, **kwargs: Any) -> None:
        """Not supported, as :meth:`fit`."""
        raise NotImplementedError(_NO_TRAINING)

    # -- gradients ----------------------------------------------------------------------------------------
    def _require_gradients(self, what: str) -> DenoisedClassifierModule:
        if self._composite is None:
            raise NotDifferentiableError(
                f"{what} needs the classifier's logits in torch (a differentiable classifier o denoiser, "
                f"the smoothed soft classifier averages their softmax), but {self._no_gradient_reason}. "
                "Pass the classifier as a torch.nn.Module (or an ART PyTorchClassifier) for gradients and "
                "losses; certify and predict work as they are"
            )
        return self._composite

    def base_module(self) -> torch.nn.Module:
        """``classifier(denoiser(z))`` as a frozen module on raw-unit inputs (in the layout of ``x``),
        returning logits."""
        return self._core_layout_module(self._require_gradients("base_module"))

    def smoothed_module(
        self, num_samples: int | None = None, noise_seed: int | None = None
    ) -> torch.nn.Module:
        """The smoothed soft classifier of ``classifier o denoiser`` as an ``nn.Module`` returning
        log-probabilities (valid logits), for torchattacks (inputs in the layout of ``x``). ``noise_seed``
        fixes the noise draws."""
        composite = self._require_gradients("smoothed_module")
        self._check_sigma()
        module = SmoothedSoftClassifier(
            composite,
            self._scale,
            num_samples or self._sample_size,
            noise_seed=noise_seed,
            generator=self.smoother.generator(self._device),
        )
        # torchattacks reads .training; the base model is in eval mode already
        return self._core_layout_module(module).eval()

    def _gradient_logits(self, what: str) -> DenoisedClassifierModule:
        composite = self._require_gradients(what)
        self._check_sigma()
        return composite

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(classifier={self._classifier_kind}:{type(self.classifier).__name__}, "
            f"denoiser={type(self.denoiser).__name__ if self.denoiser is not None else None}, "
            f"input_shape={self._input_shape}, nb_classes={self.nb_classes}, scale={self._scale}, "
            f"alpha={self._alpha}, sample_size={self._sample_size}, n0={self._n0})"
        )


# ART's type for randomized smoothing: code that checks ``isinstance(estimator, RandomizedSmoothingMixin)``
# treats this estimator as a smoothed classifier (it has the mixin's public contract: ``sample_size``,
# ``scale``, ``alpha``, ``predict``, ``fit``, ``certify(x, n, batch_size)``). Registered as a virtual
# subclass, it inherits none of the mixin's code, so none of its defects (docs/art-surface.md).
RandomizedSmoothingMixin.register(DenoisedSmoothingClassifier)
