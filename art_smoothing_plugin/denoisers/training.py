"""Training a denoiser for denoised smoothing at a given noise level (Salman et al. 2020).

The objectives, with ``x`` a clean input, ``delta ~ N(0, sigma^2 I)`` added in the raw units of ``x``
(unclipped, as at certification time) and ``D`` the denoiser:

* ``"mse"``: ``||D(x + delta) - x||^2`` (mean over pixels); needs no classifier.
* ``"stab"``: the Stability objective ``CE(f(D(x + delta)), argmax f(x))``. It asks the classifier to
  say on the denoised noisy input what it says on the clean one, so it needs no labels. White-box:
  ``f`` is the classifier that will be smoothed (``classifier=``). Black-box: the gradient comes from
  one or more *surrogate* classifiers instead (``surrogates=``; the loss is their mean), for a target
  classifier that can only be queried.
* ``"stab+mse"``: MSE pre-training, then Stability fine-tuning (the paper's best recipe).

The classifiers are frozen: eval mode, ``requires_grad`` off for the duration of training (restored
afterwards), and never given to the optimizer; only the denoiser's weights change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._validation import check_int_at_least, check_positive_float
from ..sampling import make_generator

__all__ = ["OBJECTIVES", "DenoiserTrainer", "TrainingHistory", "train_denoiser"]

#: The training objectives :class:`DenoiserTrainer` accepts.
OBJECTIVES = ("mse", "stab", "stab+mse")


@dataclass
class TrainingHistory:
    """Mean training loss of every epoch, in order, with the phase (``"mse"`` or ``"stab"``) it belongs to."""

    objective: str
    sigma: float
    mode: str
    phases: list[str] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def phase_losses(self, phase: str) -> list[float]:
        """The losses of the epochs of one phase (``"mse"`` or ``"stab"``), in order."""
        return [loss for p, loss in zip(self.phases, self.losses, strict=True) if p == phase]


def _as_tensor(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        tensor = x.detach().to(device=device, dtype=torch.float32)
    else:
        array = np.asarray(x)
        if not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"x must be a numeric array of images (N, C, H, W), got dtype {array.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)
    if tensor.ndim < 2 or len(tensor) == 0:
        raise ValueError(f"x must be a non-empty batch of inputs (N, ...), got shape {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError("x contains NaN or infinite values")
    return tensor


class DenoiserTrainer:
    """Trains ``denoiser`` in place at noise level ``sigma`` with one of :data:`OBJECTIVES`.

    :param denoiser: a torch module mapping noisy inputs to denoised inputs of the same shape
        (:class:`DnCNN`, :class:`MemNet`, or any such module).
    :param objective: ``"mse"``, ``"stab"`` or ``"stab+mse"``.
    :param sigma: the noise level, in the units of ``x``; defaults to ``denoiser.sigma``. After
        :meth:`fit`, ``denoiser.sigma`` is set to it, so certification can refuse another sigma.
    :param classifier: white-box Stability: the torch module (inputs in the units of ``x``, logits out)
        that will be smoothed.
    :param surrogates: black-box Stability: one or more torch modules standing in for a classifier that
        can only be queried. Give ``classifier`` or ``surrogates``, not both.
    :param lr: Adam learning rate.
    :param finetune_lr: learning rate of the Stability phase of ``"stab+mse"`` (default ``lr``).
    :param seed: seeds the noise and the shuffling; the same seed reproduces a run.
    :param device: where to train; defaults to the denoiser's device.
    :param progress: show a tqdm bar over epochs with the running loss.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        objective: str = "mse",
        *,
        sigma: float | None = None,
        classifier: nn.Module | None = None,
        surrogates: nn.Module | Sequence[nn.Module] | None = None,
        lr: float = 1e-3,
        finetune_lr: float | None = None,
        seed: int | None = 0,
        device: torch.device | str | None = None,
        progress: bool = True,
    ) -> None:
        if not isinstance(denoiser, nn.Module):
            raise ValueError(f"denoiser must be a torch.nn.Module, got {type(denoiser).__name__}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        own_sigma = getattr(denoiser, "sigma", None)
        if sigma is None and own_sigma is None:
            raise ValueError("sigma is required: the noise level to train for (or set denoiser.sigma)")
        sigma = check_positive_float("sigma", sigma if sigma is not None else own_sigma)
        if own_sigma is not None and not np.isclose(float(own_sigma), sigma):
            raise ValueError(
                f"sigma={sigma} differs from denoiser.sigma={own_sigma}; train a fresh denoiser for a new "
                "sigma, or set denoiser.sigma = None first to retrain this one"
            )
        if classifier is not None and surrogates is not None:
            raise ValueError(
                "give classifier= (white-box Stability) or surrogates= (black-box Stability), not both"
            )
        if isinstance(surrogates, nn.Module):
            surrogates = [surrogates]
        guides = [classifier] if classifier is not None else list(surrogates or [])
        if any(not isinstance(g, nn.Module) for g in guides):
            raise ValueError("classifier and surrogates must be torch.nn.Module instances returning logits")
        if objective != "mse" and not guides:
            raise ValueError(
                f"objective {objective!r} needs a classifier to differentiate through: classifier= for "
                "white-box or surrogates= for black-box Stability"
            )
        self.denoiser = denoiser
        self.objective = objective
        self.sigma = sigma
        self.guides: list[nn.Module] = guides
        self.mode = "mse" if objective == "mse" else ("white-box" if classifier is not None else "black-box")
        self.lr = check_positive_float("lr", lr)
        self.finetune_lr = check_positive_float("finetune_lr", finetune_lr if finetune_lr is not None else lr)
        self.seed = seed
        if device is None:
            first = next(denoiser.parameters(), None)
            device = first.device if first is not None else "cpu"
        self.device = torch.device(device)
        self.progress = bool(progress)
        self.denoiser.to(self.device)
        for guide in self.guides:
            guide.to(self.device)

    # -- losses ------------------------------------------------------------------------------------
    def _mse(self, clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        denoised = self._denoise(noisy)
        return torch.mean((denoised - clean) ** 2)

    def _stab(self, clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        denoised = self._denoise(noisy)
        losses = []
        for guide in self.guides:
            with torch.no_grad():
                target = guide(clean).argmax(dim=1)
            logits = guide(denoised)
            if logits.ndim != 2 or logits.shape[0] != len(clean):
                raise ValueError(
                    "the classifier must return logits of shape (batch, nb_classes); "
                    f"got {tuple(logits.shape)}"
                )
            losses.append(nn.functional.cross_entropy(logits, target))
        return torch.stack(losses).mean()

    def _denoise(self, noisy: torch.Tensor) -> torch.Tensor:
        denoised = self.denoiser(noisy)
        if denoised.shape != noisy.shape:
            raise ValueError(
                f"the denoiser must return denoised inputs of the shape of its input {tuple(noisy.shape)}; "
                f"got {tuple(denoised.shape)}"
            )
        return denoised

    def _loss_fn(self, phase: str):
        return self._mse if phase == "mse" else self._stab

    # -- training ----------------------------------------------------------------------------------
    def fit(
        self,
        x: np.ndarray | torch.Tensor,
        nb_epochs: int = 10,
        batch_size: int = 64,
        pretrain_epochs: int | None = None,
    ) -> TrainingHistory:
        """Train on the clean inputs ``x`` (labels are not needed by any objective).

        :param nb_epochs: epochs of the objective (for ``"stab+mse"``: of the Stability phase).
        :param pretrain_epochs: ``"stab+mse"`` only: epochs of MSE pre-training (default ``nb_epochs``).
        :return: the mean loss of every epoch.
        """
        nb_epochs = check_int_at_least("nb_epochs", nb_epochs, 0)
        batch_size = check_int_at_least("batch_size", batch_size, 1)
        if pretrain_epochs is not None and self.objective != "stab+mse":
            raise ValueError("pretrain_epochs applies to objective 'stab+mse' only")
        x_t = _as_tensor(x, self.device)
        if self.objective == "stab+mse":
            pretrain = (
                nb_epochs
                if pretrain_epochs is None
                else check_int_at_least("pretrain_epochs", pretrain_epochs, 0)
            )
            plan = [("mse", pretrain, self.lr), ("stab", nb_epochs, self.finetune_lr)]
        else:
            plan = [(self.objective, nb_epochs, self.lr)]
        history = TrainingHistory(self.objective, self.sigma, self.mode)
        noise_generator = make_generator(self.seed, self.device)
        shuffle_generator = make_generator(None if self.seed is None else self.seed + 1, "cpu")
        frozen = self._freeze_guides()
        try:
            total = sum(epochs for _, epochs, _ in plan)
            with tqdm(
                total=total, desc=f"denoiser {self.objective}", unit="epoch", disable=not self.progress
            ) as bar:
                for phase, epochs, lr in plan:
                    if epochs == 0:
                        continue
                    optimizer = torch.optim.Adam(self.denoiser.parameters(), lr=lr)
                    loss_fn = self._loss_fn(phase)
                    for _ in range(epochs):
                        self.denoiser.train()
                        order = torch.randperm(len(x_t), generator=shuffle_generator).to(self.device)
                        total_loss, seen = 0.0, 0
                        for start in range(0, len(x_t), batch_size):
                            clean = x_t.index_select(0, order[start : start + batch_size])
                            noisy = clean + self.sigma * torch.randn(
                                clean.shape, generator=noise_generator, device=self.device, dtype=clean.dtype
                            )
                            loss = loss_fn(clean, noisy)
                            optimizer.zero_grad(set_to_none=True)
                            loss.backward()
                            optimizer.step()
                            total_loss += float(loss.detach()) * len(clean)
                            seen += len(clean)
                        history.phases.append(phase)
                        history.losses.append(total_loss / seen)
                        bar.set_postfix(phase=phase, loss=f"{history.losses[-1]:.4f}")
                        bar.update(1)
        finally:
            self._unfreeze_guides(frozen)
            self.denoiser.eval()
        self.denoiser.sigma = self.sigma
        return history

    @torch.no_grad()
    def evaluate(
        self, x: np.ndarray | torch.Tensor, loss: str = "mse", batch_size: int = 256, seed: int = 0
    ) -> float:
        """Mean ``"mse"`` or ``"stab"`` loss of the denoiser (in eval mode) on ``x`` with noise drawn from
        ``seed``: the same seed gives the same noise, so values before and after training compare."""
        if loss not in ("mse", "stab"):
            raise ValueError(f"loss must be 'mse' or 'stab', got {loss!r}")
        if loss == "stab" and not self.guides:
            raise ValueError("the 'stab' loss needs classifier= or surrogates= at construction")
        batch_size = check_int_at_least("batch_size", batch_size, 1)
        x_t = _as_tensor(x, self.device)
        generator = make_generator(seed, self.device)
        frozen = self._freeze_guides()
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            total = 0.0
            for start in range(0, len(x_t), batch_size):
                clean = x_t[start : start + batch_size]
                noisy = clean + self.sigma * torch.randn(
                    clean.shape, generator=generator, device=self.device, dtype=clean.dtype
                )
                total += float(self._loss_fn(loss)(clean, noisy)) * len(clean)
        finally:
            self._unfreeze_guides(frozen)
            self.denoiser.train(was_training)
        return total / len(x_t)

    def _freeze_guides(self) -> list[tuple[bool, list[bool]]]:
        state = []
        for guide in self.guides:
            state.append((guide.training, [p.requires_grad for p in guide.parameters()]))
            guide.eval()
            guide.requires_grad_(False)
        return state

    def _unfreeze_guides(self, state: list[tuple[bool, list[bool]]]) -> None:
        for guide, (training, flags) in zip(self.guides, state, strict=True):
            guide.train(training)
            for parameter, flag in zip(guide.parameters(), flags, strict=True):
                parameter.requires_grad_(flag)


def train_denoiser(
    denoiser: nn.Module,
    x: np.ndarray | torch.Tensor,
    sigma: float | None = None,
    objective: str = "mse",
    *,
    classifier: nn.Module | None = None,
    surrogates: nn.Module | Sequence[nn.Module] | None = None,
    nb_epochs: int = 10,
    batch_size: int = 64,
    pretrain_epochs: int | None = None,
    lr: float = 1e-3,
    finetune_lr: float | None = None,
    seed: int | None = 0,
    progress: bool = True,
) -> TrainingHistory:
    """One-call form of ``DenoiserTrainer(...).fit(...)``; trains ``denoiser`` in place."""
    trainer = DenoiserTrainer(
        denoiser,
        objective,
        sigma=sigma,
        classifier=classifier,
        surrogates=surrogates,
        lr=lr,
        finetune_lr=finetune_lr,
        seed=seed,
        progress=progress,
    )
    return trainer.fit(x, nb_epochs=nb_epochs, batch_size=batch_size, pretrain_epochs=pretrain_epochs)
