"""What every smoothing estimator shares: its validated smoothing parameters, the input handling in front
of the core :class:`~art_smoothing_plugin.smoothing.Smoother`, and adaptive certification.

Each estimator supplies ``_base_labels`` (the base classifier on raw-unit noisy inputs), ``_device``,
``input_shape``, ``nb_classes`` and ``clip_values``, and ``_prepare_call(x, samples_per_input)``, which
checks ``x`` and returns it as a tensor (the denoised estimator also checks its query budget there).
Parameters are validated on every assignment, so ART's ``set_params`` cannot smuggle in bad values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from .._validation import check_batch, check_int_at_least, check_positive_float, check_probability
from ..classifiers.callable import QueryCounter
from ..sampling import NoiseKey
from ..smoothing import ABSTAIN, CertificationResult, SmoothedSoftClassifier, Smoother, predict_from_counts

__all__ = ["ATTACK_SLACK", "NO_ACTIVATIONS", "SmoothingEstimatorMixin"]

#: How far beyond ``clip_values`` (in widths of the clip range, on either side) ``predict`` and the
#: gradient and loss methods accept inputs. ART's attacks evaluate the classifier at points a little
#: outside the box (finite differences, unclipped intermediate iterates, universal perturbations) and
#: clip only what they return; the smoothed classifier is defined there (noise is never clipped). Inputs
#: further out are refused as data in other units. Certification, PREDICT with abstention and training
#: keep the strict check.
ATTACK_SLACK = 3.0

#: Why ``get_activations`` and ``custom_loss_gradient`` refuse.
NO_ACTIVATIONS = (
    "the smoothed classifier has no hidden layers. The base model's activations at the clean input "
    "describe the base model f, not the smoothed classifier g, so an attack built on them (ART's "
    "FeatureAdversaries, feature-collision poisoning) would attack f while reporting on g. For the base "
    "model's features use base_module(), or wrap the base model in its own ART PyTorchClassifier"
)


class SmoothingEstimatorMixin:
    """Smoothing parameters (``sample_size``, ``scale``, ``alpha``, ``n0``, ``batch_size``, ``seed``), the
    core ``smoother`` and :meth:`certify_adaptive`, shared by the randomized and denoised estimators."""

    _smoother: Smoother | None
    _device: torch.device
    nb_classes: int
    verbose: bool

    def _init_smoothing(
        self,
        *,
        sample_size: int,
        scale: float,
        alpha: float,
        n0: int,
        batch_size: int,
        seed: int | None,
    ) -> None:
        self._sample_size = check_int_at_least("sample_size", sample_size, 1)
        self._scale = check_positive_float("scale", scale)
        self._alpha = check_probability("alpha", alpha)
        self._n0 = check_int_at_least("n0", n0, 1)
        self._batch_size = check_int_at_least("batch_size", batch_size, 1)
        self._seed = seed

    def _start_smoother(self) -> None:
        """Create the core smoother once the base classifier can answer (the end of ``__init__``)."""
        self._smoother = Smoother(
            self._base_labels,
            self.nb_classes,
            self._scale,
            self._batch_size,
            seed=self._seed,
            device=self._device,
        )

    def _base_labels(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - each estimator's own
        raise NotImplementedError

    def _prepare_call(
        self, x: np.ndarray | torch.Tensor, samples_per_input: int, slack: float = 0.0
    ) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - each estimator's own

    def _accelerated_modules(self) -> list[torch.nn.Module]:
        """The torch modules that channels-last certification converts."""
        return []

    def _local_labels(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The base classifier's labels computed locally in torch, outside any query count (for the
        batch-size probe of ``certify_adaptive(batch_size="auto")``), or ``None`` where the base
        classifier can only be queried."""
        return self._base_labels

    def _queried_batch_size(self) -> int:
        """The batch size ``"auto"`` means for a base classifier that can only be queried."""
        return self._batch_size

    def _query_counters(self) -> list[QueryCounter]:
        """The counters (and budgets) of the classifier queries this estimator makes, in a fixed order."""
        return []

    # -- parameters ------------------------------------------------------------------------------------
    @property
    def sample_size(self) -> int:
        """Noise draws per input in ``predict`` and the gradients (m)."""
        return self._sample_size

    @sample_size.setter
    def sample_size(self, value: int) -> None:
        self._sample_size = check_int_at_least("sample_size", value, 1)

    @property
    def scale(self) -> float:
        """sigma, in the units of the raw input."""
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        self._scale = check_positive_float("scale", value)
        if self._smoother is not None:
            self._smoother.sigma = self._scale

    @property
    def alpha(self) -> float:
        """Default error probability of each certificate and of PREDICT's test."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        self._alpha = check_probability("alpha", value)

    @property
    def n0(self) -> int:
        """Default number of selection samples of CERTIFY, drawn independently of the estimation samples."""
        return self._n0

    @n0.setter
    def n0(self, value: int) -> None:
        self._n0 = check_int_at_least("n0", value, 1)

    @property
    def batch_size(self) -> int:
        """Default number of noisy samples per forward pass of PREDICT and CERTIFY."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._batch_size = check_int_at_least("batch_size", value, 1)
        if self._smoother is not None:
            self._smoother.batch_size = self._batch_size

    @property
    def seed(self) -> int | None:
        """Seed of the noise stream; ``None`` draws it from OS entropy."""
        return self._seed

    @seed.setter
    def seed(self, value: int | None) -> None:
        # Setting the seed restarts the noise stream: the same seed reproduces the same results.
        self._seed = value
        if self._smoother is not None:
            self._smoother.reseed(value)

    @property
    def smoother(self) -> Smoother:
        """The framework-level core (torch tensors in, counts and certificates out)."""
        assert self._smoother is not None
        return self._smoother

    # -- input handling --------------------------------------------------------------------------------
    # The core always works channels-first. With ``channels_first=False`` inputs arrive channels-last
    # (the channel axis last, ``input_shape`` ``(H, W, C)``): they are moved to channels-first at the
    # boundary, noise is drawn there, and moved back before anything of the user's (model,
    # preprocessing, classifier) sees them. Noise drawn in one fixed layout makes results identical,
    # seed for seed, to a channels-first run on the same data (docs/art-surface.md).
    @property
    def _moves_channels(self) -> bool:
        return not self.channels_first and len(self.input_shape) >= 2  # type: ignore[attr-defined]

    def _to_core_layout(self, t: torch.Tensor) -> torch.Tensor:
        """A batch in the user's layout, channels-first (a differentiable view, made contiguous)."""
        return t.movedim(-1, 1).contiguous() if self._moves_channels else t

    def _to_user_layout(self, t: torch.Tensor) -> torch.Tensor:
        """A channels-first batch back in the user's layout (channels-last if ``channels_first=False``)."""
        return t.movedim(1, -1).contiguous() if self._moves_channels else t

    def _core_layout_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` (taking the core's channels-first batches) as a module taking the user's layout."""
        return _Relayout(module, to_channels_first=True) if self._moves_channels else module

    def _user_layout_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` (taking the user's layout) as a module taking the core's channels-first batches."""
        return _Relayout(module, to_channels_first=False) if self._moves_channels else module

    def _to_tensor(self, x: np.ndarray | torch.Tensor, name: str = "x", slack: float = 0.0) -> torch.Tensor:
        """``x`` checked against ``input_shape`` and ``clip_values`` (widened by ``slack`` range widths),
        as a float32 tensor on the device, in the core's (channels-first) layout."""
        check_batch(x, self.input_shape, self.clip_values, name=name, slack=slack)  # type: ignore[attr-defined]
        if isinstance(x, torch.Tensor):
            return self._to_core_layout(x.detach().to(self._device, torch.float32))
        return self._to_core_layout(torch.from_numpy(np.asarray(x, dtype=np.float32)).to(self._device))

    def _labels_tensor(self, y: np.ndarray | torch.Tensor, count: int) -> torch.Tensor:
        y_np = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        if y_np.ndim == 2:
            if y_np.shape != (count, self.nb_classes):
                raise ValueError(
                    f"y must be class indices of shape ({count},) or one-hot of shape ({count}, "
                    f"{self.nb_classes}); got {y_np.shape}"
                )
            y_np = y_np.argmax(axis=1)
        if y_np.shape != (count,) or (count and (y_np.min() < 0 or y_np.max() >= self.nb_classes)):
            raise ValueError(
                f"y must hold {count} class indices in [0, {self.nb_classes}) (or one-hot rows); got shape "
                f"{y_np.shape}"
            )
        return torch.as_tensor(y_np.astype(np.int64), device=self._device)

    def _call_key(self, seed: int | None, noise_key: NoiseKey | None = None) -> NoiseKey:
        """The noise key of one call: ``noise_key`` as given (a shard of a distributed call), else the
        first key of ``seed`` (a reproducible call), else the next key of the estimator's own noise."""
        if noise_key is not None:
            if seed is not None:
                raise ValueError("give seed or noise_key, not both: noise_key already fixes the call's noise")
            if not isinstance(noise_key, NoiseKey):
                raise ValueError(
                    "noise_key must be an art_smoothing_plugin.sampling.NoiseKey, got "
                    f"{type(noise_key).__name__}"
                )
            return noise_key
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise ValueError(f"seed must be an integer or None, got {seed!r}")
            return NoiseKey(int(seed), 0)
        return self.smoother.next_key()

    def _predict_rows(
        self, x_t: torch.Tensor, batch_size: int, seed: int | None, is_abstain: bool | None
    ) -> np.ndarray:
        """What ``predict`` returns, from ``sample_size`` draws per input, ``batch_size`` inputs per forward
        pass (float32, one row per input):

        * ``is_abstain=None``: the smoothed class frequencies (rows sum to 1, never a zero row);
        * ``is_abstain=True``: ART's rows, one-hot of PREDICT's label at level ``alpha`` on those draws,
          all zero where PREDICT abstains;
        * ``is_abstain=False``: one-hot of the most frequent class (the argmax of the frequencies).
        """
        if is_abstain is not None and not isinstance(is_abstain, (bool, np.bool_)):
            raise ValueError(f"is_abstain must be True, False or None (frequencies), got {is_abstain!r}")
        counts = self.smoother.vote_counts(
            x_t,
            self._sample_size,
            batch_size * self._sample_size,
            progress=self.verbose and "predict",
            key=self._call_key(seed),
        )
        counts_np = counts.cpu().numpy()
        if is_abstain is None:
            return (counts_np / self._sample_size).astype(np.float32)
        labels = predict_from_counts(counts_np, self._alpha) if is_abstain else counts_np.argmax(axis=1)
        rows = np.zeros(counts_np.shape, dtype=np.float32)
        answered = np.flatnonzero(labels != ABSTAIN)
        rows[answered, labels[answered]] = 1.0
        return rows

    # -- Cohen's PREDICT and CERTIFY ------------------------------------------------------------------
    def predict_labels(
        self,
        x: np.ndarray | torch.Tensor,
        n: int | None = None,
        alpha: float | None = None,
        batch_size: int | None = None,
        seed: int | None = None,
        *,
        noise_key: NoiseKey | None = None,
        first_index: int = 0,
    ) -> np.ndarray:
        """Cohen's PREDICT: the smoothed label of each input, or ``-1`` where it abstains. A returned
        label is wrong (not the smoothed classifier's top class) with probability at most ``alpha``.

        :param n: noise draws per input (default ``sample_size``).
        :param alpha: level of the binomial test (default the estimator's ``alpha``).
        :param seed: draw this call's noise from the key ``(seed, 0)`` (reproducible per call).
        :param noise_key, first_index: for one shard of a call cut in pieces
            (:mod:`art_smoothing_plugin.distributed`): the call's key and the global index of ``x[0]``.
        """
        n = check_int_at_least("n", n if n is not None else self._sample_size, 1)
        x_t = self._prepare_call(x, n)
        return self.smoother.predict(
            x_t,
            n,
            alpha if alpha is not None else self._alpha,
            batch_size,
            progress=self.verbose,
            key=self._call_key(seed, noise_key),
            first_index=first_index,
        )

    def certify(
        self, x: np.ndarray | torch.Tensor, n: int, batch_size: int | None = None, **kwargs: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cohen's CERTIFY, with ART's return value ``(labels, radii)``: ``-1`` and ``0.0`` where it
        abstains. Takes the keyword arguments of ``certify_detailed``."""
        result = self.certify_detailed(x, n, batch_size, **kwargs)
        return result.labels, result.radii

    def certify_detailed(
        self, x: np.ndarray | torch.Tensor, n: int, batch_size: int | None = None, **kwargs: Any
    ) -> CertificationResult:  # pragma: no cover - each estimator's own
        raise NotImplementedError

    # -- gradients, losses, activations: the smoothed soft classifier (docs/art-surface.md) ------------
    # Every method of ART's classifier API that carries a gradient, a loss or an activation answers for
    # the smoothed soft classifier: log of the mean softmax of the base classifier over ``sample_size``
    # fresh noise draws around each input (``SmoothedSoftClassifier``), unless a call passes
    # ``sampling=False`` (the base classifier at the clean input). What has no smoothed counterpart
    # (hidden-layer activations) refuses. ART's attacks therefore attack g, never f by accident.

    def _gradient_logits(self, what: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """The base classifier's logits as a differentiable function of inputs in the core's layout;
        raises (naming ``what`` was asked) where the base classifier gives none."""
        raise NotImplementedError  # pragma: no cover - each estimator's own

    def _default_sampling(self) -> bool:
        return True

    def _base_loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str | None) -> torch.Tensor:
        """The loss of the base classifier's logits (``sampling=False``); ``None`` keeps its own reduction."""
        return torch.nn.functional.cross_entropy(logits, labels, reduction=reduction or "mean")

    @contextlib.contextmanager
    def _gradient_mode(self, training_mode: bool) -> Iterator[None]:
        yield

    def _sampling(self, kwargs: dict[str, Any]) -> bool:
        return bool(kwargs.get("sampling", self._default_sampling()))

    def _scores(self, x_t: torch.Tensor, sampling: bool, what: str) -> torch.Tensor:
        """``(N, nb_classes)`` scores whose gradients the methods below take: the smoothed soft classifier's
        log-probabilities over fresh draws from the estimator's noise stream (``sampling``), else the base
        classifier's logits at ``x_t``."""
        logits = self._gradient_logits(what)
        if not sampling:
            return logits(x_t)
        soft = SmoothedSoftClassifier(
            logits, self._scale, self._sample_size, generator=self.smoother.generator(self._device)
        )
        return soft(x_t)

    def _loss_values(
        self, x_t: torch.Tensor, y_t: torch.Tensor, sampling: bool, reduction: str | None, what: str
    ) -> torch.Tensor:
        scores = self._scores(x_t, sampling, what)
        if sampling:
            return torch.nn.functional.nll_loss(scores, y_t, reduction=reduction or "mean")
        return self._base_loss(scores, y_t, reduction)

    def _like_input(self, value: torch.Tensor, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """``value`` (gradients, already in the user's layout) as the type, device and dtype of ``x``."""
        if isinstance(x, torch.Tensor):
            return value.to(x.device, x.dtype)
        return value.detach().cpu().numpy().astype(np.asarray(x).dtype, copy=False)

    def loss_gradient(
        self,
        x: np.ndarray | torch.Tensor,
        y: np.ndarray | torch.Tensor,
        training_mode: bool = False,
        **kwargs: Any,
    ) -> np.ndarray | torch.Tensor:
        """Gradient of the loss with respect to ``x``, of the same type, shape and device as ``x``.

        By default (``sampling=True``) the gradient of the cross-entropy of the smoothed soft classifier:
        the log of the mean softmax of the base classifier over ``sample_size`` fresh noise draws around
        each input (Salman et al. 2019). With ``sampling=False``, that of the base classifier's loss at the
        clean input.
        """
        sampling = self._sampling(kwargs)
        x_t = self._to_tensor(x, slack=ATTACK_SLACK).requires_grad_(True)
        y_t = self._labels_tensor(y, len(x_t))
        with self._gradient_mode(training_mode), torch.enable_grad():
            loss = self._loss_values(x_t, y_t, sampling, None, "loss_gradient")
            (gradient,) = torch.autograd.grad(loss, x_t)
        return self._like_input(self._to_user_layout(gradient), x)

    def class_gradient(
        self,
        x: np.ndarray | torch.Tensor,
        label: int | list[int] | np.ndarray | None = None,
        training_mode: bool = False,
        **kwargs: Any,
    ) -> np.ndarray | torch.Tensor:
        """Per-class gradients of the smoothed soft classifier's log-probabilities with respect to ``x``
        (the scores ART's DeepFool, Carlini-Wagner, JSMA, ElasticNet and NewtonFool differentiate), from one
        set of ``sample_size`` fresh noise draws per input shared by all classes of the call.

        :param label: ``None``: every class, shape ``(N, nb_classes, *input_shape)``; a class index, or one
            per input (``(N,)``): shape ``(N, 1, *input_shape)``.
        :param sampling: ``False`` for the base classifier's logits at the clean input instead.
        :returns: the gradients, NumPy for NumPy ``x`` and torch for torch ``x``.
        """
        sampling = self._sampling(kwargs)
        x_t = self._to_tensor(x, slack=ATTACK_SLACK).requires_grad_(True)
        classes = self._class_indices(label, len(x_t))
        with self._gradient_mode(training_mode), torch.enable_grad():
            scores = self._scores(x_t, sampling, "class_gradient")
            if classes is None:
                gradients = [
                    torch.autograd.grad(scores[:, k].sum(), x_t, retain_graph=k + 1 < self.nb_classes)[0]
                    for k in range(self.nb_classes)
                ]
            else:
                chosen = scores.gather(1, torch.as_tensor(classes, device=scores.device).unsqueeze(1))
                gradients = [torch.autograd.grad(chosen.sum(), x_t)[0]]
        return self._like_input(torch.stack([self._to_user_layout(g) for g in gradients], dim=1), x)

    def _class_indices(self, label: Any, count: int) -> np.ndarray | None:
        if label is None:
            return None
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            if not 0 <= int(label) < self.nb_classes:
                raise ValueError(f"label must be a class index in [0, {self.nb_classes}), got {label}")
            return np.full(count, int(label), dtype=np.int64)
        array = np.asarray(label)
        if (
            array.shape != (count,)
            or not np.issubdtype(array.dtype, np.integer)
            or (count and (array.min() < 0 or array.max() >= self.nb_classes))
        ):
            raise ValueError(
                f"label must be None, a class index or {count} class indices in [0, {self.nb_classes}) "
                f"(one per input); got {label!r}"
            )
        return array.astype(np.int64)

    def compute_loss(
        self,
        x: np.ndarray | torch.Tensor,
        y: np.ndarray | torch.Tensor,
        reduction: str = "none",
        **kwargs: Any,
    ) -> np.ndarray | torch.Tensor:
        """The cross-entropy of the smoothed soft classifier (``-log`` of the mean softmax of the true
        class over ``sample_size`` fresh noise draws), per input by default: what ART's AutoPGD and
        AutoConjugateGradient compare between steps. ``sampling=False``: the base classifier's loss at
        the clean input.

        :param reduction: ``"none"`` (one value per input), ``"mean"`` or ``"sum"``.
        :returns: NumPy for NumPy ``x``, torch for torch ``x``.
        """
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        sampling = self._sampling(kwargs)
        x_t = self._to_tensor(x, slack=ATTACK_SLACK)
        y_t = self._labels_tensor(y, len(x_t))
        with self._gradient_mode(False), torch.no_grad():
            loss = self._loss_values(x_t, y_t, sampling, reduction, "compute_loss")
        if isinstance(x, torch.Tensor):
            return loss.to(x.device)
        return loss.cpu().numpy()

    def compute_losses(
        self,
        x: np.ndarray | torch.Tensor,
        y: np.ndarray | torch.Tensor,
        reduction: str = "none",
        **kwargs: Any,
    ) -> dict[str, np.ndarray | torch.Tensor]:
        """``{"total": compute_loss(x, y, reduction)}``: the smoothed soft classifier's loss is its only
        component."""
        return {"total": self.compute_loss(x, y, reduction=reduction, **kwargs)}

    def _predict_framework(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ART's differentiable forward pass (its PyTorch patch attacks use it): the smoothed soft
        classifier's log-probabilities of the tensor ``x`` (in the caller's layout), with gradients
        flowing to ``x``; ``y`` is passed through."""
        shape = tuple(self.input_shape)  # type: ignore[attr-defined]
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"x must be a torch.Tensor of shape (N, {', '.join(map(str, shape))}), got {got}"
            )
        x_core = self._to_core_layout(x.to(self._device, torch.float32))
        with self._gradient_mode(False):
            return self._scores(x_core, self._default_sampling(), "_predict_framework"), y

    def get_activations(
        self, x: Any, layer: Any = None, batch_size: int = 128, framework: bool = False
    ) -> Any:
        """Refused: the smoothed classifier has no hidden layers (see :data:`NO_ACTIVATIONS`)."""
        raise NotImplementedError(f"get_activations: {NO_ACTIVATIONS}")

    def custom_loss_gradient(
        self, loss_fn: Any, x: Any, y: Any, layer_name: Any, training_mode: bool = False
    ) -> Any:
        """Refused: a loss on hidden-layer activations has no smoothed counterpart (see
        :data:`NO_ACTIVATIONS`)."""
        raise NotImplementedError(f"custom_loss_gradient: {NO_ACTIVATIONS}")

    # -- adaptive certification (art_smoothing_plugin.adaptive; docs/adaptive-certification.md) --------
    def certify_adaptive(
        self,
        x: np.ndarray | torch.Tensor,
        mode: str = "radius",
        *,
        radius: float | None = None,
        max_samples: int = 100_000,
        tolerance: float | None = None,
        alpha: float | None = None,
        n0: int | None = None,
        batch_size: int | str | None = None,
        seed: int | None = None,
        precision: str | None = None,
        channels_last: bool = False,
        first_look: int = 64,
        growth: float = 1.5,
        final_share: float = 0.5,
        noise_key: NoiseKey | None = None,
        first_index: int = 0,
    ) -> CertificationResult:
        """CERTIFY that stops sampling each input as soon as its answer is settled; the certificates have
        the same guarantee as ``certify_detailed`` (each wrong with probability at most ``alpha``).

        :param mode: ``"radius"``: is each input certified at ``radius`` (``result.extras["certified"]``);
            ``"budget"``: the largest radius within ``max_samples``, stopping when more samples cannot
            plausibly raise it by more than ``tolerance``.
        :param max_samples: forward passes per input at most, the ``n0`` selection samples included.
        :param batch_size: noisy samples per forward pass; default the estimator's ``batch_size``.
            ``"auto"`` picks one for this machine (free GPU memory, or a short CPU throughput probe) when
            the base classifier runs locally in torch, through an uncounted copy of it; for a classifier
            that is only queried (callable, HTTP, non-torch ART classifier) it is the classifier's own
            batch size, and nothing is queried outside the certification's counted, budget-checked
            samples.
        :param precision: ``"bf16"``/``"fp16"`` run the base model under autocast (noise stays fp32).
        :param channels_last: convert the torch modules and the noisy batches to channels-last format.
        :param seed: draw this call's noise from the key ``(seed, 0)`` (reproducible per call).
        :param noise_key, first_index: for one shard of a call cut in pieces
            (:mod:`art_smoothing_plugin.distributed`): the call's key and the global index of ``x[0]``.
        :returns: a :class:`CertificationResult` with ``samples_used`` per input; see
            :func:`art_smoothing_plugin.adaptive.certify_adaptive` for the schedule arguments.
        """
        from ..adaptive import certify_adaptive
        from ..performance import accelerated_labels

        max_samples = check_int_at_least("max_samples", max_samples, 1)
        x_t = self._prepare_call(x, max_samples)
        if channels_last:
            for module in self._accelerated_modules():
                module.to(memory_format=torch.channels_last)
        labels = accelerated_labels(self._base_labels, precision=precision, channels_last=channels_last)
        batch_size = self._adaptive_batch_size(batch_size, x_t, precision, channels_last)
        key = self._call_key(seed, noise_key)
        smoother = Smoother(labels, self.nb_classes, self._scale, self._batch_size, device=self._device)
        return certify_adaptive(
            smoother,
            x_t,
            mode=mode,  # type: ignore[arg-type]  # validated inside
            radius=radius,
            max_samples=max_samples,
            tolerance=tolerance,
            alpha=alpha if alpha is not None else self._alpha,
            n0=n0 if n0 is not None else self._n0,
            first_look=first_look,
            growth=growth,
            final_share=final_share,
            batch_size=batch_size,
            key=key,
            first_index=first_index,
            progress=self.verbose,
        )

    def _adaptive_batch_size(
        self, batch_size: int | str | None, x_t: torch.Tensor, precision: str | None, channels_last: bool
    ) -> int | None:
        """``batch_size`` of ``certify_adaptive`` checked, with ``"auto"`` resolved for this machine."""
        from ..performance import accelerated_labels, autotune_batch_size

        if batch_size != "auto":
            return None if batch_size is None else check_int_at_least("batch_size", batch_size, 1)
        local = self._local_labels()
        if local is None:  # only queried: probing would spend queries outside the certification
            return self._queried_batch_size()
        if not len(x_t):
            return None
        probe = accelerated_labels(local, precision=precision, channels_last=channels_last)
        return autotune_batch_size(probe, x_t[:1], sigma=self._scale)


class _Relayout(torch.nn.Module):
    """Runs ``inner`` on its input with the channel axis moved: to position 1 (channels-first) when
    ``to_channels_first``, else to the end."""

    def __init__(self, inner: torch.nn.Module, to_channels_first: bool) -> None:
        super().__init__()
        self.inner = inner
        self.to_channels_first = to_channels_first

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        moved = z.movedim(-1, 1) if self.to_channels_first else z.movedim(1, -1)
        return self.inner(moved.contiguous())
