"""What the training methods share, written once.

* :class:`TrainingContext`: the model being trained seen in raw input units (preprocessing applied after
  the noise, as everywhere in the package), its noise generator, ``clip_values`` and loss.
* Noise draws that one input's clean, adversarial and mixed versions reuse
  (:meth:`TrainingContext.noise`, drawn by :func:`art_smoothing_plugin.sampling.gaussian_noise`), and the
  base model's logits on ``x + noise`` laid out ``(N, m, num_classes)``, ready for
  :func:`art_smoothing_plugin.smoothing.mean_softmax`, the smoothed soft output.
* :func:`smoothed_l2_pgd`: L2 PGD on the smoothed soft classifier over fixed noise draws, steps that
  accumulate and are projected onto the ball and into ``clip_values`` (SmoothAdv's and SmoothMix's
  adversary).
* :class:`TrainingMethod`: the interface of a method (its loss on one batch) and its checks;
  :func:`warmup_factor`, the linear warm-up of SmoothAdv and SmoothMix.
* :func:`train` and :func:`train_batches`: the loop (seeded shuffling, a tqdm bar per epoch, one
  optimizer step per batch or per part of a batch, the scheduler once per epoch).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validation import check_batch, check_int_at_least, check_positive_float
from ..classifiers.torch_module import check_logits
from ..sampling import gaussian_noise, make_generator
from ..smoothing import mean_softmax

__all__ = [
    "Batches",
    "TrainingContext",
    "TrainingMethod",
    "project_l2",
    "shuffled_batches",
    "smoothed_l2_pgd",
    "train",
    "train_batches",
    "warmup_factor",
]

#: ``batches(epoch)`` yields one epoch's ``(x, y)`` batches: inputs in raw units, labels as class indices.
Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


class TrainingContext:
    """The model being trained, as the training methods see it: inputs in raw units, noise of standard
    deviation ``sigma`` in those units from a private generator, ``preprocess`` applied after the noise,
    and ``clip_values`` bounding every adversarial or mixed point a method builds (never the noise).

    :param model: the base classifier; returns logits ``(N, num_classes)``.
    :param sigma: standard deviation of the Gaussian noise, in the units of the inputs.
    :param generator: the private generator of every random draw of the methods (noise, mixing weights).
    :param preprocess: maps noisy raw inputs to what ``model`` takes (mean/std, defences); identity if None.
    :param clip_values: ``(low, high)`` of the raw inputs (floats or arrays broadcastable to one input).
    :param criterion: classification loss of the base model on noisy inputs; default cross-entropy.
    :param num_classes: checked against the model's output; taken from the first output when None.
    :param training_mode: the mode the model trains in (``model.train(training_mode)``); attacks run it in
        eval mode.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        sigma: float,
        generator: torch.Generator,
        *,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        clip_values: Any = None,
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        num_classes: int | None = None,
        training_mode: bool = True,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.sigma = check_positive_float("sigma", sigma)
        self.generator = generator
        self.preprocess = preprocess
        self.clip_values = clip_values
        self.criterion = criterion if criterion is not None else torch.nn.CrossEntropyLoss()
        self.num_classes = None if num_classes is None else check_int_at_least("num_classes", num_classes, 2)
        self.training_mode = bool(training_mode)
        self._bounds: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The base model's logits at raw-unit inputs ``z`` (preprocessing inside)."""
        scores = self.model(self.preprocess(z) if self.preprocess is not None else z)
        if self.num_classes is None and isinstance(scores, torch.Tensor) and scores.ndim == 2:
            self.num_classes = int(scores.shape[1])
        return check_logits(scores, z.shape[0], self.num_classes or 0)

    def noise(self, x: torch.Tensor, copies: int) -> torch.Tensor:
        """``copies`` fresh draws of ``N(0, sigma^2 I)`` per input, ``(len(x), copies, *x.shape[1:])``."""
        return gaussian_noise(x, copies, self.sigma, self.generator)

    def noisy_logits(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Logits at ``x[i] + noise[i, j]`` for every input ``i`` and draw ``j``: ``(len(x), m, classes)``."""
        count, copies = noise.shape[:2]
        noisy = (x.unsqueeze(1) + noise).reshape(count * copies, *x.shape[1:])
        return self.logits(noisy).reshape(count, copies, -1)

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` clamped into ``clip_values`` (unchanged when there are none)."""
        if self.clip_values is None:
            return x
        key = (str(x.device), x.dtype)
        if key not in self._bounds:
            low, high = (
                torch.as_tensor(np.asarray(bound, dtype=np.float64), device=x.device).to(x.dtype)
                for bound in self.clip_values
            )
            self._bounds[key] = (low, high)
        low, high = self._bounds[key]
        return torch.minimum(torch.maximum(x, low), high)

    def uniform(self, count: int, like: torch.Tensor) -> torch.Tensor:
        """``count`` draws of U[0, 1) from the private generator, on ``like``'s device and dtype."""
        return torch.rand(count, generator=self.generator, device=like.device, dtype=like.dtype)

    @contextmanager
    def attacking(self) -> Iterator[None]:
        """Run the model in eval mode (an adversary's view of it), then back in its training mode."""
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(self.training_mode)


def _per_input(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def project_l2(delta: torch.Tensor, radius: float | None) -> torch.Tensor:
    """Each ``delta[i]`` scaled down onto the L2 ball of ``radius`` if it lies outside (``None``: no ball)."""
    if radius is None:
        return delta
    norms = delta.flatten(1).norm(dim=1)
    scale = (radius / norms.clamp_min(1e-12)).clamp(max=1.0)
    return delta * _per_input(scale, delta)


def smoothed_l2_pgd(
    context: TrainingContext,
    x: torch.Tensor,
    y: torch.Tensor,
    noise: torch.Tensor,
    *,
    steps: int,
    step_size: float,
    max_norm: float | None,
    keep_step: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """L2 PGD on the smoothed soft classifier (Salman et al. 2019): maximise the cross-entropy of
    ``mean_j softmax(f(x' + noise[:, j]))`` over ``x'``, with the draws ``noise`` fixed for the whole attack.

    From ``x``, each of ``steps`` steps moves the perturbation by ``step_size`` along its gradient normalised
    to unit L2 length, projects it onto the ball of radius ``max_norm`` (``None``: no ball) and clamps
    ``x + delta`` into ``clip_values``. Steps accumulate: the perturbation of step ``t`` starts from that of
    step ``t - 1``. Run it inside :meth:`TrainingContext.attacking`.

    :returns: the final point, and the point after ``keep_step`` steps (SmoothMix's ``mix_step``; ``None``
        unless ``keep_step`` is given), both detached.
    """
    x = x.detach()
    delta = torch.zeros_like(x)
    kept = None
    for step in range(steps):
        if step == keep_step:
            kept = x + delta
        delta.requires_grad_(True)
        probabilities = mean_softmax(context.noisy_logits(x + delta, noise))
        loss = torch.nn.functional.nll_loss(probabilities.clamp_min(1e-20).log(), y, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, delta)
        norms = gradient.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta.detach() + step_size * gradient / _per_input(norms, gradient)
        delta = context.clip(x + project_l2(delta, max_norm)) - x
    return (x + delta).detach(), (None if kept is None else kept.detach())


def warmup_factor(epoch: int, warmup: int) -> float:
    """The linear warm-up of SmoothAdv's radius and SmoothMix's mixing: ``min(1, (epoch + 1) / warmup)``
    at 0-based ``epoch`` (``warmup = 1``: full strength from the first epoch)."""
    return min(1.0, (epoch + 1) / warmup)


class TrainingMethod(abc.ABC):
    """A recipe for training a base classifier to be smoothed: its loss on one batch.

    Subclasses are frozen dataclasses of their hyper-parameters, validated on construction (each error
    names the argument). ``splits_batches``: the method draws ``noise_draws`` copies of each input and,
    as in its authors' code, cuts each batch into that many parts, one optimizer step each, so that a step
    sees about ``batch_size`` noisy samples whatever ``m``.
    """

    name: ClassVar[str]
    splits_batches: ClassVar[bool] = False

    @property
    def noise_draws(self) -> int:
        """Noise draws per input in one loss evaluation (m): the ``num_noise_vec`` hyper-parameter of the
        methods that have one, else 1."""
        return int(getattr(self, "num_noise_vec", 1))

    def params(self) -> dict[str, Any]:
        """The hyper-parameters, by name (what the constructor takes)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}  # type: ignore[arg-type]

    def check_schedule(self, nb_epochs: int) -> None:
        """Refuse a warm-up longer than the training it belongs to."""
        warmup = getattr(self, "warmup", None)
        if warmup is not None and nb_epochs >= 1 and warmup > nb_epochs:
            raise ValueError(
                f"warmup={warmup} epochs is longer than the training (nb_epochs={nb_epochs}); pass "
                f"warmup <= nb_epochs to {type(self).__name__}"
            )

    def split(self, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The parts of a batch that get one optimizer step each (no input is dropped)."""
        if not self.splits_batches or self.noise_draws == 1:
            return [(x, y)]
        return [
            (xp, yp)
            for xp, yp in zip(x.tensor_split(self.noise_draws), y.tensor_split(self.noise_draws), strict=True)
            if len(xp)
        ]

    @abc.abstractmethod
    def batch_loss(
        self, context: TrainingContext, x: torch.Tensor, y: torch.Tensor, epoch: int
    ) -> torch.Tensor:
        """The loss to minimise on clean inputs ``x`` (raw units) with labels ``y`` at 0-based ``epoch``."""


def _labels(y: np.ndarray | torch.Tensor, count: int, device: torch.device) -> torch.Tensor:
    y_t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if y_t.ndim == 2:  # one-hot rows
        y_t = y_t.argmax(dim=1)
    if y_t.shape != (count,) or y_t.is_floating_point() and not bool((y_t == y_t.round()).all()):
        raise ValueError(f"y must hold {count} class indices (or one-hot rows); got shape {tuple(y_t.shape)}")
    if count and int(y_t.min()) < 0:
        raise ValueError(f"y must hold class indices >= 0; got {int(y_t.min())}")
    return y_t.to(device=device, dtype=torch.int64)


def _device_of(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _dtype_of(model: torch.nn.Module) -> torch.dtype:
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def shuffled_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    shuffle_generator: torch.Generator,
    drop_last: bool = False,
) -> tuple[Batches, int]:
    """Mini-batches of ``(x, y)`` in a fresh order each epoch, drawn from ``shuffle_generator`` (on the CPU,
    so a seed gives the same order on every device), and the number of batches per epoch. The last, smaller
    batch is kept unless ``drop_last``."""

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(x), generator=shuffle_generator).to(x.device)
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            if drop_last and len(index) < batch_size:
                break
            yield x.index_select(0, index), y.index_select(0, index)

    return batches, (len(x) // batch_size if drop_last else -(-len(x) // batch_size))


def train(
    method: TrainingMethod | str | Mapping[str, Any],
    model: torch.nn.Module,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    sigma: float,
    optimizer: torch.optim.Optimizer,
    nb_epochs: int = 10,
    batch_size: int = 128,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    clip_values: Any = None,
    num_classes: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    shuffle_generator: torch.Generator | None = None,
    drop_last: bool = False,
    scheduler: Any = None,
    training_mode: bool = True,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` on ``(x, y)`` with a training method for smoothing at noise level ``sigma``.

    :param method: a :class:`TrainingMethod`, a method name (``"gaussian"``, ``"smoothadv"``, ``"macer"``,
        ``"consistency"``, ``"smoothmix"``, with the paper's defaults) or ``{"method": name, **params}``.
    :param x: training inputs in raw units, ``(N, *input_shape)``, inside ``clip_values`` if given.
    :param y: class indices ``(N,)`` or one-hot rows ``(N, num_classes)``.
    :param sigma: noise standard deviation, in the units of ``x``.
    :param batch_size: inputs per batch (methods that split batches cut each into ``m`` parts).
    :param seed: fixes the run: the noise (and mixing) generator is seeded with ``seed``, the shuffling
        generator with ``seed + 1``; ``None`` draws fresh entropy. ``generator`` and ``shuffle_generator``
        replace them. No global random state is read or changed by the method's own draws.
    :param progress: show a tqdm bar per epoch.
    :returns: the mean training loss of each epoch; ``model`` is left in eval mode.

    Example::

        from art_smoothing_plugin.training import SmoothAdv, train
        losses = train(SmoothAdv(epsilon=0.5, num_steps=2, num_noise_vec=2, warmup=2), model, x, y,
                       sigma=0.5, optimizer=torch.optim.Adam(model.parameters()), nb_epochs=10,
                       clip_values=(0.0, 1.0), seed=0)
    """
    from . import as_training_method

    method = as_training_method(method)
    nb_epochs = check_int_at_least("nb_epochs", nb_epochs, 0)
    batch_size = check_int_at_least("batch_size", batch_size, 1)
    method.check_schedule(nb_epochs)
    device = _device_of(model)
    if not isinstance(x, torch.Tensor):
        x = np.asarray(x, dtype=np.float32)
    check_batch(x, tuple(x.shape[1:]), clip_values, name="x")
    x_t = torch.as_tensor(x, device=device).to(_dtype_of(model))
    y_t = _labels(y, len(x_t), device)
    generator = generator if generator is not None else make_generator(seed, device)
    if shuffle_generator is None:
        shuffle_generator = make_generator(None if seed is None else seed + 1, "cpu")
    batches, per_epoch = shuffled_batches(x_t, y_t, batch_size, shuffle_generator, drop_last)
    context = TrainingContext(
        model,
        sigma,
        generator,
        preprocess=preprocess,
        clip_values=clip_values,
        criterion=criterion,
        num_classes=num_classes,
        training_mode=training_mode,
    )
    return train_batches(
        method,
        context,
        optimizer,
        batches,
        nb_epochs=nb_epochs,
        batches_per_epoch=per_epoch,
        scheduler=scheduler,
        progress=progress,
    )


def train_batches(
    method: TrainingMethod,
    context: TrainingContext,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    *,
    nb_epochs: int,
    batches_per_epoch: int | None = None,
    scheduler: Any = None,
    progress: bool = True,
) -> list[float]:
    """The training loop over any source of batches (arrays, ART data generators): ``batches(epoch)``
    yields that epoch's ``(x, y)``; each batch (or each part, see :meth:`TrainingMethod.split`) gets one
    optimizer step on ``method.batch_loss``; ``scheduler.step()`` after each epoch. A non-finite loss stops
    the run with an error naming the epoch. Returns the mean loss of each epoch; the model ends in eval mode.
    """
    nb_epochs = check_int_at_least("nb_epochs", nb_epochs, 0)
    method.check_schedule(nb_epochs)
    history: list[float] = []
    try:
        for epoch in range(nb_epochs):
            total, seen = 0.0, 0
            bar = tqdm(
                batches(epoch),
                total=batches_per_epoch,
                desc=f"{method.name} epoch {epoch + 1}/{nb_epochs}",
                unit="batch",
                disable=not progress,
                leave=False,
            )
            for x_batch, y_batch in bar:
                for x_part, y_part in method.split(x_batch, y_batch):
                    context.model.train(context.training_mode)
                    loss = method.batch_loss(context, x_part, y_part, epoch)
                    value = float(loss.detach())
                    if not np.isfinite(value):
                        raise FloatingPointError(
                            f"{method.name} training loss became {value} in epoch {epoch + 1}; lower the "
                            "learning rate or the method's regularisation weight"
                        )
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total += value * len(x_part)
                    seen += len(x_part)
                bar.set_postfix(loss=f"{total / max(seen, 1):.4f}", refresh=False)
            bar.close()
            if scheduler is not None:
                scheduler.step()
            history.append(total / seen if seen else float("nan"))
    finally:
        context.model.eval()
    return history
