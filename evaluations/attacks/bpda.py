"""Adaptive attacks on feature squeezing.

* :func:`bpda_pgd`: PGD through a non-differentiable input transformation with the Backward Pass
  Differentiable Approximation of Athalye, Carlini & Wagner (ICML 2018): the forward pass applies the
  squeezer, the backward pass treats it as the identity (straight-through).
* :func:`detector_evading_pgd`: PGD that misclassifies while keeping Xu et al.'s detector score below
  its threshold (in the spirit of He et al., "Adversarial example defenses: ensembles of weak defenses
  are not strong", 2017), with BPDA through every squeezer.

Both are L-inf or L2 PGD with a seeded random start inside the epsilon ball, on inputs in [0, 1], and
return NumPy arrays in [0, 1] within ``eps`` of ``x`` (per example when ``eps`` is an array). Each
returns, per example, the last iterate at which the attack succeeded, or the final iterate if it never
did. ``model`` maps [0, 1] inputs to logits; it is put in eval mode and its parameters get no gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from evaluations.defences.feature_squeezing import FeatureSqueezingDetector

__all__ = ["bpda_pgd", "detector_evading_pgd", "frozen_parameters", "pgd"]

#: Per-example objective to MAXIMISE, and per-example success test, of a batch of candidate inputs.
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Success = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _norm(norm: str | float | int) -> str:
    if norm in ("inf", "linf", np.inf, float("inf")):
        return "linf"
    if norm in ("l2", "2", 2):
        return "l2"
    raise ValueError(f"norm must be 'linf' (or 'inf', np.inf) or 'l2' (or 2), got {norm!r}")


def _per_example(name: str, value: float | np.ndarray, count: int) -> np.ndarray:
    array = np.broadcast_to(np.asarray(value, dtype=np.float64), (count,)).copy()
    if np.any(~np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{name} must be finite and >= 0 (a number or one per example), got {value!r}")
    return array


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _project(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    shape = (-1,) + (1,) * (delta.dim() - 1)
    if norm == "linf":
        bound = eps.view(shape)
        return torch.maximum(torch.minimum(delta, bound), -bound)
    lengths = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * torch.clamp(eps / lengths, max=1.0).view(shape)


def _random_start(x: torch.Tensor, eps: torch.Tensor, norm: str, generator: torch.Generator) -> torch.Tensor:
    shape = (-1,) + (1,) * (x.dim() - 1)
    if norm == "linf":
        noise = torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1
        return noise * eps.view(shape)
    direction = torch.randn(x.shape, generator=generator, device=x.device)
    direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
    dims = x[0].numel()
    radius = eps * torch.rand(len(x), generator=generator, device=x.device) ** (1.0 / dims)
    return direction * radius.view(shape)


def pgd(
    objective: Objective,
    success: Success,
    x: np.ndarray,
    y: np.ndarray,
    *,
    norm: str | float,
    eps: float | np.ndarray,
    step_size: float | np.ndarray,
    steps: int,
    seed: int,
    device: torch.device | str = "cpu",
    random_start: bool = True,
    batch_size: int = 256,
) -> np.ndarray:
    """Generic projected gradient ASCENT of ``objective(x_adv, y)`` (one value per example) in the
    ``norm`` ball of radius ``eps`` around ``x``, clipped to [0, 1]; L-inf steps follow the gradient's
    sign, L2 steps its direction. Keeps per example the last iterate where ``success(x_adv, y)`` held."""
    norm = _norm(norm)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if x.ndim < 2 or len(x) != len(y):
        raise ValueError(f"x must be a batch (N, ...) with one label per input; got {x.shape} and {y.shape}")
    if np.size(x) and (x.min() < 0 or x.max() > 1):
        raise ValueError("x must lie in [0, 1]")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    eps_all = _per_example("eps", eps, len(x))
    step_all = _per_example("step_size", step_size, len(x))
    generator = torch.Generator(device=device).manual_seed(int(seed))
    results = []
    for start in range(0, len(x), batch_size):
        stop = start + batch_size
        x0 = torch.as_tensor(x[start:stop], device=device)
        labels = torch.as_tensor(y[start:stop], device=device)
        eps_t = torch.as_tensor(eps_all[start:stop], dtype=x0.dtype, device=device)
        step_t = torch.as_tensor(step_all[start:stop], dtype=x0.dtype, device=device).view(
            (-1,) + (1,) * (x0.dim() - 1)
        )
        delta = _random_start(x0, eps_t, norm, generator) if random_start else torch.zeros_like(x0)
        x_adv = (x0 + delta).clamp(0.0, 1.0)
        best = x_adv.clone()
        for _ in range(int(steps)):
            x_adv = x_adv.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(objective(x_adv, labels).sum(), x_adv)
            with torch.no_grad():
                if norm == "linf":
                    move = gradient.sign()
                else:
                    lengths = gradient.flatten(1).norm(dim=1).clamp_min(1e-12)
                    move = gradient / lengths.view((-1,) + (1,) * (gradient.dim() - 1))
                delta = _project(x_adv + step_t * move - x0, eps_t, norm)
                x_adv = (x0 + delta).clamp(0.0, 1.0)
                won = success(x_adv, labels)
                best[won] = x_adv[won]
        with torch.no_grad():
            never = ~success(best, labels)
            best[never] = x_adv.detach()[never]
        results.append(best.detach().cpu().numpy())
    return np.concatenate(results).astype(np.float32) if results else x.copy()


def _straight_through(squeeze: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``squeeze(x)`` in the forward pass; in the backward pass the squeezer's own approximation when it
    has one (``squeeze.bpda``, e.g. :class:`~evaluations.defences.feature_squeezing.TorchSqueeze`), else
    the identity (BPDA)."""
    if callable(getattr(squeeze, "bpda", None)):
        return squeeze.bpda(x)  # type: ignore[attr-defined]
    with torch.no_grad():
        squeezed = squeeze(x.detach()).to(dtype=x.dtype, device=x.device)
    return x + (squeezed - x).detach()


def bpda_pgd(
    model: nn.Module,
    squeeze: Callable[[torch.Tensor], torch.Tensor],
    x: np.ndarray,
    y: np.ndarray,
    *,
    norm: str | float,
    eps: float | np.ndarray,
    step_size: float | np.ndarray,
    steps: int,
    seed: int,
    random_start: bool = True,
    batch_size: int = 256,
) -> np.ndarray:
    """PGD on ``model(squeeze(x))`` that maximises the cross-entropy of the true label, differentiating
    ``squeeze`` as the identity (BPDA). ``squeeze`` maps a torch batch in [0, 1] to its squeezed
    version (it needs no gradient; :func:`evaluations.defences.feature_squeezing.torch_squeeze` wraps
    an ART squeezer). Success: ``model(squeeze(x_adv))`` misclassifies."""
    model.eval()
    device = _device(model)

    def objective(x_adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(_straight_through(squeeze, x_adv)), labels, reduction="none")

    def success(x_adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return model(squeeze(x_adv)).argmax(dim=1) != labels

    with frozen_parameters(model):
        return pgd(
            objective,
            success,
            x,
            y,
            norm=norm,
            eps=eps,
            step_size=step_size,
            steps=steps,
            seed=seed,
            device=device,
            random_start=random_start,
            batch_size=batch_size,
        )


def detector_evading_pgd(
    model: nn.Module,
    detector: FeatureSqueezingDetector,
    x: np.ndarray,
    y: np.ndarray,
    *,
    norm: str | float,
    eps: float | np.ndarray,
    step_size: float | np.ndarray,
    steps: int,
    seed: int,
    weight: float = 10.0,
    target: str = "runner_up",
    random_start: bool = True,
    batch_size: int = 256,
) -> np.ndarray:
    """PGD that makes ``model`` misclassify while Xu et al.'s ``detector`` does not flag the input.

    The detector flags inputs whose prediction changes under squeezing, so the attack drives the input
    AND every squeezed view of it to the same wrong class ``t``: it maximises ``-CE(model(x), t) - mean
    over squeezers s of CE(model(s(x)), t) - weight * relu(score(x) - threshold)``, with BPDA (identity
    backward) through the squeezers, both in the squeezed terms and in the score. With ``target =
    "runner_up"`` (default) ``t`` is the most likely wrong class of the clean input; with ``target =
    "none"`` the cross-entropy terms are untargeted (``+CE(., y)``). Success: ``model(x)`` misclassifies
    and ``detector.score(x) <= detector.threshold``. ``model`` must compute the logits of the detector's
    classifier on [0, 1] inputs; the detector must be fitted."""
    if detector.threshold is None:
        raise ValueError("the detector has no threshold yet: call detector.fit(x_clean) first")
    if not float(weight) >= 0:
        raise ValueError(f"weight must be a number >= 0, got {weight!r}")
    if target not in ("runner_up", "none"):
        raise ValueError(f"target must be 'runner_up' or 'none', got {target!r}")
    from evaluations.defences.feature_squeezing import torch_squeeze

    model.eval()
    device = _device(model)
    threshold = float(detector.threshold)
    squeezes = [torch_squeeze(s) for s in detector.squeezers.values()]
    y = np.asarray(y, dtype=np.int64)
    x_array = np.asarray(x, dtype=np.float32)
    # The target class rides along as a second label column: pgd() batches labels with the inputs.
    targets = (
        _runner_up(model, x_array, y, device, batch_size) if target == "runner_up" else np.full(len(y), -1)
    )
    labels_and_targets = np.stack([y, targets], axis=1)

    def objective(x_adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        true, wanted = labels[:, 0], labels[:, 1]
        views = [model(x_adv)] + [model(_straight_through(s, x_adv)) for s in squeezes]
        if target == "runner_up":
            gain = -nn.functional.cross_entropy(views[0], wanted, reduction="none")
            for view in views[1:]:
                gain = gain - nn.functional.cross_entropy(view, wanted, reduction="none") / len(squeezes)
        else:
            gain = nn.functional.cross_entropy(views[0], true, reduction="none")
            for view in views[1:]:
                gain = gain + nn.functional.cross_entropy(view, true, reduction="none") / len(squeezes)
        # The detector term only for inputs already misclassified: before that, its BPDA gradient (taken
        # at the squeezed points) pulls back towards the clean prediction and stalls the attack.
        wrong = (views[0].argmax(dim=1) != true).to(gain.dtype)
        excess = torch.relu(detector.torch_score(model, x_adv) - threshold)
        return gain - float(weight) * wrong * excess

    def success(x_adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        wrong = model(x_adv).argmax(dim=1) != labels[:, 0]
        scores = torch.as_tensor(detector.score(x_adv.detach().cpu().numpy()), device=x_adv.device)
        return wrong & (scores <= threshold)

    with frozen_parameters(model):
        return pgd(
            objective,
            success,
            x_array,
            labels_and_targets,
            norm=norm,
            eps=eps,
            step_size=step_size,
            steps=steps,
            seed=seed,
            device=device,
            random_start=random_start,
            batch_size=batch_size,
        )


def _runner_up(
    model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device, batch_size: int
) -> np.ndarray:
    """The most likely class other than the true one, per clean input."""
    targets = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(torch.as_tensor(x[start : start + batch_size], device=device)).clone()
            labels = torch.as_tensor(y[start : start + batch_size], device=device)
            logits[torch.arange(len(labels), device=device), labels] = -torch.inf
            targets.append(logits.argmax(dim=1).cpu().numpy())
    return np.concatenate(targets) if targets else np.zeros(0, np.int64)


class frozen_parameters:
    """Turn off ``requires_grad`` of the model's parameters for the attack (no parameter gradients are
    computed or accumulated) and restore it afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.parameters = list(model.parameters())
        self.flags = [p.requires_grad for p in self.parameters]

    def __enter__(self) -> None:
        for parameter in self.parameters:
            parameter.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for parameter, flag in zip(self.parameters, self.flags, strict=True):
            parameter.requires_grad_(flag)
