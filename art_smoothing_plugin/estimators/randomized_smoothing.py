"""ART estimator for Gaussian randomized smoothing of a PyTorch model: a thin layer over
:class:`art_smoothing_plugin.smoothing.Smoother`.

What this layer adds to the core is ART's contract (NumPy in and out, ``clip_values``, ``preprocessing``,
``get_params``/``set_params``, ``fit`` and ``loss_gradient`` for ART's attacks and trainers) and one
rule that ART's own ``PyTorchRandomizedSmoothing`` breaks: noise is always added in the units of the raw
input the user passes, and ``preprocessing`` (mean/std) and preprocessing defences are applied after it,
inside the base classifier, in fit, predict, certify and gradients alike.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from art.estimators.certification.randomized_smoothing.randomized_smoothing import RandomizedSmoothingMixin
from art.estimators.classification.pytorch import PyTorchClassifier
from art.preprocessing.standardisation_mean_std.numpy import StandardisationMeanStd
from art.preprocessing.standardisation_mean_std.pytorch import StandardisationMeanStdPyTorch
from art.utils import check_and_transform_label_format

from .._validation import (
    check_input_shape,
    check_int_at_least,
)
from ..classifiers.torch_module import check_logits
from ..sampling import NoiseKey, make_generator
from ..smoothing import CertificationResult, SmoothedSoftClassifier, Smoother
from ..training import TrainingContext, TrainingMethod, as_training_method, shuffled_batches, train_batches
from ._smoothing_estimator import ATTACK_SLACK, SmoothingEstimatorMixin

__all__ = ["RandomizedSmoothingClassifier"]


def _is_identity_standardisation(operation: Any) -> bool:
    return (
        isinstance(operation, (StandardisationMeanStd, StandardisationMeanStdPyTorch))
        and bool(np.all(np.asarray(operation.mean) == 0))
        and bool(np.all(np.asarray(operation.std) == 1))
    )


class _PreprocessedModel(torch.nn.Module):
    """``model(preprocess(z))`` as a module: the base classifier on raw-unit inputs. Holding the model as
    a registered submodule lets torchattacks find its parameters and device."""

    def __init__(self, estimator: RandomizedSmoothingClassifier) -> None:
        super().__init__()
        self.model = estimator.model
        self._estimator = [estimator]  # a list, so that nn.Module does not register it as a child

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        estimator = self._estimator[0]
        logits = self.model(estimator._preprocess_tensor(z))
        return check_logits(logits, z.shape[0], estimator.nb_classes)


class RandomizedSmoothingClassifier(SmoothingEstimatorMixin, PyTorchClassifier):
    """Randomized smoothing (Cohen et al. 2019) of a PyTorch classifier, as an ART estimator.

    A drop-in for ART's ``PyTorchRandomizedSmoothing``: the constructor takes the same arguments under
    the same names, and ``certify(x, n, batch_size)`` returns ART's pair ``(labels, radii)``, with
    ``-1`` and ``0.0`` where it abstains. Guarantees, with the noise as the only source of randomness:

    * ``certify``: with probability at least ``1 - alpha`` per input, the smoothed classifier returns
      the certified label everywhere within the returned L2 radius (in the units of ``x``).
    * ``predict_labels``: a returned label differs from the smoothed classifier's with probability at
      most ``alpha``; ``-1`` is an abstention, never a class.

    ``predict`` returns smoothed class frequencies over ``sample_size`` draws, whose argmax is the
    smoothed prediction (never an all-zero row). ``loss_gradient`` is, by default, the gradient of the
    smoothed soft classifier (Salman et al. 2019), so ART's attacks attack the smoothed model.

    :param model: PyTorch module returning logits (or per-class scores) of shape ``(N, nb_classes)``.
    :param loss: loss for training and base-model gradients; default ``CrossEntropyLoss``.
    :param input_shape: shape of one input, e.g. ``(1, 28, 28)``.
    :param nb_classes: number of classes.
    :param channels_first: ``False`` for channels-last inputs (``input_shape`` ``(H, W, C)``): the model
        receives them channels-last as given; noise is drawn channels-first, so results equal, seed for
        seed, those of the same data channels-first.
    :param sample_size: noise draws per input in ``predict`` and ``loss_gradient``.
    :param scale: sigma, the standard deviation of the Gaussian noise, in the units of ``x``.
    :param alpha: default error probability of ``certify`` and ``predict_labels``.
    :param n0: default number of selection samples of ``certify`` (independent of ``n``).
    :param seed: seeds this estimator's private noise generator; ``None`` for fresh entropy.
    :param smoothed_gradients: gradients and losses (``loss_gradient``, ``class_gradient``,
        ``compute_loss``) of the smoothed soft classifier (``True``) or of the base model (``False``); a
        call can override with ``sampling=``.
    :param batch_size: default number of noisy samples per forward pass in ``certify``.
    :param verbose: show tqdm progress bars while sampling and training.
    :param training: how :meth:`fit` and :meth:`fit_generator` train: ``"gaussian"`` (Cohen's noise
        augmentation, the default), ``"smoothadv"``, ``"macer"``, ``"consistency"``, ``"smoothmix"``, a
        mapping ``{"method": name, **hyper_parameters}`` or a
        :class:`~art_smoothing_plugin.training.TrainingMethod` (docs/training.md).
    """

    estimator_params = PyTorchClassifier.estimator_params + [
        "sample_size",
        "scale",
        "alpha",
        "n0",
        "seed",
        "smoothed_gradients",
        "batch_size",
        "verbose",
        "training",
    ]

    def __init__(
        self,
        model: torch.nn.Module,
        loss: torch.nn.modules.loss._Loss | None = None,
        input_shape: tuple[int, ...] | None = None,
        nb_classes: int | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        channels_first: bool = True,
        clip_values: Any = None,
        preprocessing_defences: Any = None,
        postprocessing_defences: Any = None,
        preprocessing: Any = (0.0, 1.0),
        device_type: str = "gpu",
        sample_size: int = 32,
        scale: float = 0.1,
        alpha: float = 0.001,
        *,
        n0: int = 100,
        seed: int | None = None,
        smoothed_gradients: bool = True,
        batch_size: int = 1000,
        verbose: bool = False,
        training: TrainingMethod | str | Mapping[str, Any] = "gaussian",
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if input_shape is None:
            raise ValueError("input_shape is required: the shape of one input, e.g. (1, 28, 28)")
        if nb_classes is None:
            raise ValueError("nb_classes is required: the number of classes the model outputs")
        input_shape = check_input_shape(input_shape)
        nb_classes = check_int_at_least("nb_classes", nb_classes, 2)
        self._smoother: Smoother | None = None
        super().__init__(
            model=model,
            loss=loss if loss is not None else torch.nn.CrossEntropyLoss(),
            input_shape=input_shape,
            nb_classes=nb_classes,
            optimizer=optimizer,
            channels_first=channels_first,
            clip_values=clip_values,
            preprocessing_defences=preprocessing_defences,
            postprocessing_defences=postprocessing_defences,
            preprocessing=preprocessing,
            device_type=device_type,
        )
        self._init_smoothing(
            sample_size=sample_size, scale=scale, alpha=alpha, n0=n0, batch_size=batch_size, seed=seed
        )
        self.smoothed_gradients = bool(smoothed_gradients)
        self.verbose = bool(verbose)
        self.training = training
        self._start_smoother()

    # -- pickling ----------------------------------------------------------------------------------------
    # ART's PyTorchClassifier pickles by saving the model's weights to a file under ART_DATA_PATH named by
    # the time and loading them back from that path on unpickling, onto cuda:0 when CUDA exists. That
    # leaves files behind, breaks on any machine that does not share the folder (a Ray worker on another
    # node), and ignores device_type. Here the model travels inside the pickle, and the device is kept.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_model"] = self._model._model  # the user's module; ART's wrapper class is local, rebuilt below
        state.pop("_model_wrapper", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        model = state.pop("_model")
        self.__dict__.update(state)
        self._model = self._make_model_wrapper(model)
        self._model.to(self._device)

    # -- the base classifier on raw-unit inputs ------------------------------------------------------
    def _preprocess_tensor(self, z: torch.Tensor, fit: bool = False) -> torch.Tensor:
        # ART always appends a standardisation, even the identity (0, 1); skipping it saves a full pass
        # over every noisy batch.
        operations = [
            op
            for op in self.preprocessing_operations
            if (op.apply_fit if fit else op.apply_predict) and not _is_identity_standardisation(op)
        ]
        if not operations:
            return z
        if self.all_framework_preprocessing:
            for op in operations:
                z, _ = op.forward(z, None)
            return z
        # NumPy preprocessing defences: correct values, but no gradient flows through them.
        if z.requires_grad:
            raise ValueError(
                "gradients need preprocessing and preprocessing_defences that run in PyTorch "
                "(art.defences.preprocessor.PreprocessorPyTorch); got NumPy-only preprocessing"
            )
        out, _ = self._apply_preprocessing(z.detach().cpu().numpy(), None, fit=fit)
        return torch.as_tensor(out, device=z.device, dtype=z.dtype)

    def _base_logits(self, z: torch.Tensor, fit: bool = False) -> torch.Tensor:
        """The base model's logits of a batch in the core's (channels-first) layout: moved back to the
        user's layout, preprocessed (``fit`` selects the training preprocessing), through the model."""
        logits = self.model(self._preprocess_tensor(self._to_user_layout(z), fit=fit))
        return check_logits(logits, z.shape[0], self.nb_classes)

    def _base_labels(self, z: torch.Tensor) -> torch.Tensor:
        return self._base_logits(z).argmax(dim=1)

    def base_module(self) -> torch.nn.Module:
        """The base classifier as a module on raw-unit inputs (preprocessing inside), returning logits."""
        return _PreprocessedModel(self)

    def smoothed_module(
        self, num_samples: int | None = None, noise_seed: int | None = None
    ) -> torch.nn.Module:
        """The smoothed soft classifier as an ``nn.Module`` returning log-probabilities (valid logits), for
        torchattacks and other torch code. ``noise_seed`` fixes the noise draws across calls (SmoothAdv)."""
        self.model.eval()
        module = SmoothedSoftClassifier(
            self._user_layout_module(_PreprocessedModel(self)),
            self._scale,
            self._sample_size if num_samples is None else num_samples,
            noise_seed=noise_seed,
            generator=self.smoother.generator(self._device),
        )
        # torchattacks reads .training; the base model is in eval mode already
        return self._core_layout_module(module).eval()

    def _prepare_call(
        self, x: np.ndarray | torch.Tensor, samples_per_input: int, slack: float = 0.0
    ) -> torch.Tensor:
        x_t = self._to_tensor(x, slack=slack)
        self.model.eval()
        return x_t

    def _accelerated_modules(self) -> list[torch.nn.Module]:
        return [self.model]

    # -- ART classifier API ----------------------------------------------------------------------------
    def predict(
        self, x: np.ndarray, batch_size: int = 128, training_mode: bool = False, **kwargs
    ) -> np.ndarray:
        """Smoothed class frequencies, shape ``(N, nb_classes)``: the fraction of ``sample_size`` noisy
        copies of each input that the base model assigns to each class. Their argmax is the smoothed
        prediction. For PREDICT with abstention use :meth:`predict_labels`.

        ART's keyword ``is_abstain``: not given (the default), the frequencies; ``True``, ART's rows
        (one-hot of PREDICT's label on the ``sample_size`` draws at level ``alpha``, all zero where
        PREDICT abstains); ``False``, one-hot rows of the most frequent class. The keyword ``seed`` draws
        this call's noise from a generator with this seed.

        :param batch_size: inputs per forward pass (each contributes ``sample_size`` noisy copies).
        """
        batch_size = check_int_at_least("batch_size", batch_size, 1)
        x_t = self._to_tensor(x, slack=ATTACK_SLACK)
        self.model.train(mode=training_mode)
        rows = self._predict_rows(x_t, batch_size, kwargs.get("seed"), kwargs.get("is_abstain"))
        return self._apply_postprocessing(preds=rows, fit=False)

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
        """Cohen's CERTIFY with the full per-input result (bounds, counts, samples used).

        :param n: estimation samples per input.
        :param batch_size: noisy samples per forward pass (default the estimator's ``batch_size``).
        :param n0: selection samples per input, drawn independently of the ``n`` (default ``n0``).
        :param alpha: error probability of each certificate (default the estimator's ``alpha``).
        :param seed: draw this call's noise from the key ``(seed, 0)`` (reproducible per call).
        :param noise_key, first_index: for one shard of a call cut in pieces
            (:mod:`art_smoothing_plugin.distributed`): the call's key and the global index of ``x[0]``.
        """
        if batch_size is not None:
            check_int_at_least("batch_size", batch_size, 1)
        x_t = self._to_tensor(x)
        self.model.eval()
        return self.smoother.certify(
            x_t,
            n0 if n0 is not None else self._n0,
            n,
            alpha if alpha is not None else self._alpha,
            batch_size,
            progress=self.verbose,
            key=self._call_key(seed, noise_key),
            first_index=first_index,
        )

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int = 128,
        nb_epochs: int = 10,
        training_mode: bool = True,
        drop_last: bool = False,
        scheduler: Any = None,
        verbose: bool = False,
        **kwargs: Any,
    ) -> None:
        """Train the base model with the estimator's :attr:`training` method at noise level ``scale``
        (default Gaussian noise augmentation, Cohen's recipe: each batch is ``x + N(0, scale^2 I)``). Noise
        is unclipped, in the units of ``x``, from the estimator's noise stream (``seed`` fixes the run);
        preprocessing is applied after it; ``clip_values`` bound the adversarial and mixed points of
        SmoothAdv and SmoothMix. A tqdm bar per epoch when ``verbose``; the model is left in eval mode."""
        nb_epochs = self._check_can_train(nb_epochs, "fit")
        batch_size = check_int_at_least("batch_size", batch_size, 1)
        x_t = self._to_tensor(x)
        y_t = self._labels_tensor(check_and_transform_label_format(y, nb_classes=self.nb_classes), len(x_t))
        shuffle_generator = make_generator(None if self._seed is None else self._seed + 1, "cpu")
        batches, per_epoch = shuffled_batches(x_t, y_t, batch_size, shuffle_generator, drop_last)
        train_batches(
            self._training,
            self._training_context(training_mode),
            self._optimizer,
            batches,
            nb_epochs=nb_epochs,
            batches_per_epoch=per_epoch,
            scheduler=scheduler,
            progress=verbose or self.verbose,
        )

    def fit_generator(
        self, generator: Any, nb_epochs: int = 20, verbose: bool = False, **kwargs: Any
    ) -> None:
        """Train the base model on the batches of an ART ``DataGenerator`` exactly as :meth:`fit` does, with
        the estimator's :attr:`training` method: the same noise (always added, in the units of ``x``, from
        the estimator's noise stream), the same warm-ups (the epoch is kept). An epoch is one pass over a
        ``PyTorchDataGenerator``'s data loader, else ``ceil(size / batch_size)`` batches.

        The keyword ``training_mode`` (default ``True``) trains in train mode; the model is left in eval mode.
        """
        from art.data_generators import DataGenerator, PyTorchDataGenerator

        if not isinstance(generator, DataGenerator):
            raise ValueError(
                "generator must be an ART DataGenerator yielding (x, y) batches, got "
                f"{type(generator).__name__}"
            )
        nb_epochs = self._check_can_train(nb_epochs, "fit_generator")

        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            if isinstance(generator, PyTorchDataGenerator):
                source = iter(generator.iterator)
            else:
                source = (
                    generator.get_batch() for _ in range(math.ceil(generator.size / generator.batch_size))
                )
            for batch in source:
                x_batch, y_batch = (
                    b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else b for b in batch
                )
                x_t = self._to_tensor(x_batch)
                yield (
                    x_t,
                    self._labels_tensor(check_and_transform_label_format(y_batch, self.nb_classes), len(x_t)),
                )

        per_epoch = None
        if not isinstance(generator, PyTorchDataGenerator):
            per_epoch = math.ceil(generator.size / generator.batch_size)
        train_batches(
            self._training,
            self._training_context(bool(kwargs.get("training_mode", True))),
            self._optimizer,
            batches,
            nb_epochs=nb_epochs,
            batches_per_epoch=per_epoch,
            progress=verbose or self.verbose,
        )

    def _check_can_train(self, nb_epochs: int, caller: str) -> int:
        if self._optimizer is None:
            raise ValueError(f"{caller} needs an optimizer: pass optimizer= to the constructor")
        nb_epochs = check_int_at_least("nb_epochs", nb_epochs, 0)
        self._training.check_schedule(nb_epochs)
        return nb_epochs

    def _training_context(self, training_mode: bool) -> TrainingContext:
        """The model as the training methods see it: raw-unit inputs in the core's (channels-first) layout,
        moved back to the user's layout and preprocessed (fit mode) after the noise, exactly as
        ``_base_logits(z, fit=True)``; the estimator's noise stream, ``clip_values`` (in the core's layout)
        and loss."""
        clip_values = self.clip_values
        if (
            clip_values is not None
            and self._moves_channels
            and np.ndim(clip_values[0]) == len(self.input_shape)
        ):
            clip_values = tuple(np.moveaxis(np.asarray(bound), -1, 0) for bound in clip_values)
        return TrainingContext(
            self.model,
            self._scale,
            self.smoother.generator(self._device),
            preprocess=lambda z: self._preprocess_tensor(self._to_user_layout(z), fit=True),
            clip_values=clip_values,
            criterion=self._loss,
            num_classes=self.nb_classes,
            training_mode=training_mode,
        )

    @property
    def training(self) -> TrainingMethod:
        """How :meth:`fit` and :meth:`fit_generator` train the base model: a
        :class:`~art_smoothing_plugin.training.TrainingMethod` (set a name such as ``"smoothadv"``, a
        mapping ``{"method": name, **hyper_parameters}`` or a method; see docs/training.md)."""
        return self._training

    @training.setter
    def training(self, value: TrainingMethod | str | Mapping[str, Any]) -> None:
        self._training = as_training_method(value)

    # -- gradients (the shared methods in SmoothingEstimatorMixin act on the smoothed soft classifier) ---
    def _gradient_logits(self, what: str) -> Callable[[torch.Tensor], torch.Tensor]:
        return self._base_logits

    def _default_sampling(self) -> bool:
        return self.smoothed_gradients

    def _base_loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str | None) -> torch.Tensor:
        """The constructor's ``loss`` on the base model's logits, with ``reduction`` set for this call."""
        if reduction is None:
            return self._loss(logits, labels)
        previous = getattr(self._loss, "reduction", None)
        if previous is None:
            raise ValueError(
                f"compute_loss(sampling=False, reduction={reduction!r}) needs a loss with a reduction "
                f"attribute (a torch loss module); got {type(self._loss).__name__}"
            )
        self._loss.reduction = reduction
        try:
            return self._loss(logits, labels)
        finally:
            self._loss.reduction = previous

    @contextlib.contextmanager
    def _gradient_mode(self, training_mode: bool) -> Iterator[None]:
        self.model.train(mode=training_mode)
        try:
            yield
        finally:
            self.model.eval()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={type(self.model).__name__}, input_shape={self.input_shape}, "
            f"nb_classes={self.nb_classes}, scale={self._scale}, alpha={self._alpha}, "
            f"sample_size={self._sample_size}, n0={self._n0}, clip_values={self.clip_values})"
        )


# ART's type for randomized smoothing: code that checks ``isinstance(estimator, RandomizedSmoothingMixin)``
# treats this estimator as a smoothed classifier (it has the mixin's public contract: ``sample_size``,
# ``scale``, ``alpha``, ``predict``, ``fit``, ``certify(x, n, batch_size)``). Registered as a virtual
# subclass, it inherits none of the mixin's code, so none of its defects (docs/art-surface.md).
RandomizedSmoothingMixin.register(RandomizedSmoothingClassifier)
