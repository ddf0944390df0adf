"""Feature squeezing (Xu, Evans & Qi, NDSS 2018), as an input transformation and as a detector.

Squeezers are ART's own preprocessors on [0, 1] data:

* ``bit_depth``: :class:`art.defences.preprocessor.FeatureSqueezing`, ``round(x * (2^b - 1)) / (2^b - 1)``
  (Xu et al. use 1 bit on MNIST).
* ``median``: :class:`art.defences.preprocessor.SpatialSmoothing`, a median filter over a
  ``window x window`` neighbourhood of each channel (reflect padding). ART accepts any positive integer
  window; for an even window (Xu et al.'s 2x2) scipy's filter takes the upper of the two middle values,
  which is what Xu et al.'s own scipy-based 2x2 median did.

(Xu et al.'s third squeezer, non-local means, is for colour images and is not in ART; it is left out.)

As an **input transformation**, :func:`squeezed_classifier` is an ART ``PyTorchClassifier`` with the
squeezer as a ``preprocessing_defences`` entry: it classifies ``squeeze(x)``. ART back-propagates
through a NumPy preprocessor as the identity, so ART's gradient attacks on it are already BPDA.

As a **detector**, :class:`FeatureSqueezingDetector` (in the style of ART's ``EvasionDetector``) scores
an input by the largest L1 distance between the classifier's softmax on ``x`` and on each squeezed
``x``, and flags scores above a threshold fitted on clean data for a chosen false-positive rate.
ART 1.20.1 has no such detector. Adaptive attacks that see the squeezers (BPDA, Athalye et al. 2018;
He et al. 2017) defeat both uses: see :mod:`evaluations.attacks.bpda`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from art.defences.detector.evasion import EvasionDetector
from art.defences.preprocessor import FeatureSqueezing, SpatialSmoothing
from art.defences.preprocessor.preprocessor import Preprocessor
from art.estimators.classification import PyTorchClassifier
from torch import nn

__all__ = [
    "BitDepthSqueezer",
    "MedianSqueezer",
    "SQUEEZER_KINDS",
    "FeatureSqueezingDetector",
    "SqueezedClassifier",
    "TorchSqueeze",
    "conformal_threshold",
    "squeezed_classifier",
    "squeezer",
    "squeezers",
    "torch_squeeze",
]

SQUEEZER_KINDS = ("bit_depth", "median")


class _KeepDtype:
    """Mixin: return the squeezed input in the input's dtype. ART's squeezers compute in float64 (NumPy
    promotes by their float64 constants), which a float32 torch model refuses."""

    def __call__(self, x: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        squeezed, y = super().__call__(x, y)  # type: ignore[misc]
        return np.asarray(squeezed).astype(np.asarray(x).dtype, copy=False), y


class BitDepthSqueezer(_KeepDtype, FeatureSqueezing):
    """ART's FeatureSqueezing (bit-depth reduction), keeping the input's dtype."""


class MedianSqueezer(_KeepDtype, SpatialSmoothing):
    """ART's SpatialSmoothing (median filter), keeping the input's dtype."""


def squeezer(
    kind: str,
    *,
    bit_depth: int = 1,
    median_window: int = 2,
    clip_values: tuple[float, float] = (0.0, 1.0),
) -> Preprocessor:
    """One ART squeezer: ``"bit_depth"`` (FeatureSqueezing with ``bit_depth`` bits) or ``"median"``
    (SpatialSmoothing with a ``median_window`` x ``median_window`` window, channels first)."""
    if kind == "bit_depth":
        if (
            isinstance(bit_depth, bool)
            or not isinstance(bit_depth, (int, np.integer))
            or not 1 <= bit_depth <= 64
        ):
            raise ValueError(f"bit_depth must be an integer in [1, 64], got {bit_depth!r}")
        return BitDepthSqueezer(clip_values=clip_values, bit_depth=int(bit_depth))
    if kind == "median":
        if (
            isinstance(median_window, bool)
            or not isinstance(median_window, (int, np.integer))
            or median_window < 1
        ):
            raise ValueError(f"median_window must be a positive integer, got {median_window!r}")
        return MedianSqueezer(window_size=int(median_window), channels_first=True, clip_values=clip_values)
    raise ValueError(f"unknown squeezer kind {kind!r}; expected one of {', '.join(SQUEEZER_KINDS)}")


def _squeezer_name(kind: str, bit_depth: int, median_window: int) -> str:
    return f"bit_depth_{bit_depth}" if kind == "bit_depth" else f"median_{median_window}x{median_window}"


def squeezers(
    kinds: str | Sequence[str] = SQUEEZER_KINDS,
    *,
    bit_depth: int = 1,
    median_window: int = 2,
    clip_values: tuple[float, float] = (0.0, 1.0),
) -> dict[str, Preprocessor]:
    """Named ART squeezers, e.g. ``{"bit_depth_1": FeatureSqueezing, "median_2x2": SpatialSmoothing}``
    (a single kind may be given as a string)."""
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if not kinds:
        raise ValueError(f"kinds must name at least one squeezer of {', '.join(SQUEEZER_KINDS)}")
    return {
        _squeezer_name(kind, bit_depth, median_window): squeezer(
            kind, bit_depth=bit_depth, median_window=median_window, clip_values=clip_values
        )
        for kind in kinds
    }


_named_squeezers = squeezers  # the detector's parameter of the same name shadows the function


class TorchSqueeze:
    """An ART squeezer as a torch function, for attacks.

    Calling it gives the exact squeezed input (through NumPy, no gradient). :meth:`bpda` gives the same
    values in the forward pass with a differentiable approximation in the backward pass (BPDA, Athalye
    et al. 2018): the identity for bit-depth reduction (rounding has zero gradient almost everywhere),
    and the gradient of a torch median filter for median smoothing (a median is differentiable almost
    everywhere: the gradient goes to the selected pixel, which is more faithful than the identity)."""

    def __init__(self, preprocessor: Preprocessor) -> None:
        self.preprocessor = preprocessor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        squeezed, _ = self.preprocessor(x.detach().cpu().numpy())
        return torch.as_tensor(np.asarray(squeezed, dtype=np.float32), device=x.device)

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """A differentiable function close to the squeezer (used only for its gradient)."""
        window = getattr(self.preprocessor, "window_size", None)
        if isinstance(self.preprocessor, SpatialSmoothing) and window and window > 1 and x.dim() == 4:
            # scipy's window for an output pixel i spans i - w//2 ... i - w//2 + w - 1; the median is the
            # element of rank w*w // 2 (the upper middle for an even count), as in scipy.ndimage.
            before, after = window // 2, window - 1 - window // 2
            padded = nn.functional.pad(x, (before, after, before, after), mode="replicate")
            patches = padded.unfold(2, window, 1).unfold(3, window, 1).flatten(-2)
            return patches.sort(dim=-1).values[..., (window * window) // 2]
        return x

    def bpda(self, x: torch.Tensor) -> torch.Tensor:
        """Exact squeezed values forward, the surrogate's gradient backward."""
        approximation = self.surrogate(x)
        return approximation + (self(x) - approximation).detach()


def torch_squeeze(preprocessor: Preprocessor) -> TorchSqueeze:
    """The squeezer as a torch function (see :class:`TorchSqueeze`): ``torch_squeeze(s)(x)`` is exact and
    has no gradient; ``torch_squeeze(s).bpda(x)`` is its BPDA version for gradient attacks."""
    return TorchSqueeze(preprocessor)


def squeezed_classifier(
    model: nn.Module,
    squeeze: Preprocessor,
    input_shape: tuple[int, ...],
    nb_classes: int,
    *,
    device_type: str = "cpu",
    loss: nn.Module | None = None,
) -> PyTorchClassifier:
    """Feature squeezing as an input transformation: an ART classifier on [0, 1] inputs that classifies
    ``squeeze(x)`` (the squeezer is a ``preprocessing_defences`` entry, applied at predict time only).
    Its ``loss_gradient`` treats the squeezer as the identity (ART's default), i.e. BPDA."""
    return PyTorchClassifier(
        model,
        loss=loss if loss is not None else nn.CrossEntropyLoss(),
        input_shape=tuple(input_shape),
        nb_classes=int(nb_classes),
        clip_values=(0.0, 1.0),
        preprocessing_defences=[squeeze],
        device_type=device_type,
    )


#: The name of the contract: feature squeezing as an input transformation is an ART classifier.
SqueezedClassifier = squeezed_classifier


def conformal_threshold(clean_scores: np.ndarray, false_positive_rate: float) -> float:
    """The ``k``-th smallest clean score, ``k = ceil((1 - fpr) (n + 1))`` (``inf`` when ``k > n``).

    For a new clean input exchangeable with the ``n`` fitting inputs, ``P(score > threshold) <= fpr``
    (split-conformal guarantee), and about ``fpr`` when scores have no ties: this is Xu et al.'s
    "threshold at 5% false positives on clean data" with a guarantee for held-out data, not only for
    the data it was fitted on."""
    scores = np.sort(np.asarray(clean_scores, dtype=np.float64).ravel())
    if scores.size == 0 or np.any(np.isnan(scores)):
        raise ValueError("clean_scores must be a non-empty array of numbers")
    if not 0.0 < float(false_positive_rate) < 1.0:
        raise ValueError(
            f"false_positive_rate must lie strictly between 0 and 1, got {false_positive_rate!r}"
        )
    k = math.ceil((1.0 - float(false_positive_rate)) * (scores.size + 1))
    return float(scores[k - 1]) if k <= scores.size else math.inf


class FeatureSqueezingDetector(EvasionDetector):
    """Xu et al.'s feature-squeezing detector, as an ART evasion detector.

    ``score(x) = max over squeezers s of || softmax(f(x)) - softmax(f(s(x))) ||_1`` (in [0, 2]); ``fit``
    on clean inputs sets ``threshold`` by :func:`conformal_threshold`, so a held-out clean input is
    flagged with probability at most ``false_positive_rate``; ``detect`` flags ``score > threshold``.

    :param classifier: an ART classifier on [0, 1] inputs WITHOUT the squeezers among its own
        preprocessing defences (its ``predict`` must see the raw input). Its outputs may be logits or
        probabilities (``outputs="auto"`` tells them apart by whether rows are non-negative and sum to 1).
    :param squeezers: the squeezers, as :func:`squeezers` returns them (default: 1-bit depth and 2x2
        median, Xu et al.'s MNIST configuration).
    :param false_positive_rate: the clean false-positive rate the threshold targets (Xu et al.: 5%).
    """

    defence_params = ["classifier", "squeezers", "false_positive_rate", "threshold", "outputs"]

    def __init__(
        self,
        classifier: Any,
        squeezers: Mapping[str, Preprocessor] | None = None,
        false_positive_rate: float = 0.05,
        *,
        outputs: str = "auto",
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.squeezers = dict(squeezers) if squeezers is not None else _named_squeezers()
        self.false_positive_rate = false_positive_rate
        self.outputs = outputs
        self.threshold: float | None = None
        self._check_params()

    def _check_params(self) -> None:
        if not hasattr(self.classifier, "predict"):
            raise ValueError("classifier must be an ART classifier with a predict(x) method")
        if not self.squeezers or not all(callable(s) for s in self.squeezers.values()):
            raise ValueError("squeezers must map names to ART preprocessors (callables); see squeezers()")
        if not 0.0 < float(self.false_positive_rate) < 1.0:
            raise ValueError(
                f"false_positive_rate must lie strictly between 0 and 1, got {self.false_positive_rate!r}"
            )
        if self.outputs not in ("auto", "logits", "probabilities"):
            raise ValueError(f"outputs must be 'auto', 'logits' or 'probabilities', got {self.outputs!r}")

    # -- scores ------------------------------------------------------------------------------------
    def _probabilities(self, outputs: np.ndarray) -> np.ndarray:
        outputs = np.asarray(outputs, dtype=np.float64)
        as_probabilities = self.outputs == "probabilities" or (
            self.outputs == "auto"
            and np.all(outputs >= 0)
            and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-4)
        )
        if as_probabilities:
            return outputs
        shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def scores_per_squeezer(self, x: np.ndarray, batch_size: int = 128) -> dict[str, np.ndarray]:
        """``{squeezer name: L1 distance between softmax(f(x)) and softmax(f(squeeze(x)))}``."""
        x = np.asarray(x, dtype=np.float32)
        reference = self._probabilities(self.classifier.predict(x, batch_size=batch_size))
        distances = {}
        for name, squeeze in self.squeezers.items():
            squeezed, _ = squeeze(x)
            probabilities = self._probabilities(
                self.classifier.predict(np.asarray(squeezed, np.float32), batch_size=batch_size)
            )
            distances[name] = np.abs(reference - probabilities).sum(axis=1)
        return distances

    def score(self, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """The detector's score of each input: the largest L1 distance over the squeezers (in [0, 2])."""
        return np.max(np.stack(list(self.scores_per_squeezer(x, batch_size).values())), axis=0)

    def torch_score(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The score as a differentiable torch function of ``x`` for adaptive attacks: ``model`` must
        compute the classifier's logits on [0, 1] inputs; each squeezer is applied exactly in the forward
        pass and approximated in the backward pass (:meth:`TorchSqueeze.bpda`)."""
        reference = torch.softmax(model(x), dim=1)
        distances = []
        for squeeze in self.squeezers.values():
            squeezed = torch_squeeze(squeeze).bpda(x)
            distances.append((reference - torch.softmax(model(squeezed), dim=1)).abs().sum(dim=1))
        return torch.stack(distances).max(dim=0).values

    # -- ART's detector interface ------------------------------------------------------------------
    def fit(
        self, x: np.ndarray, y: np.ndarray | None = None, batch_size: int = 128, nb_epochs: int = 0, **kwargs
    ) -> None:
        """Set ``threshold`` from CLEAN inputs ``x`` (labels unused; nothing is trained)."""
        x = np.asarray(x)
        if x.ndim < 2 or len(x) < 1:
            raise ValueError(f"x must be a non-empty batch of clean inputs, got shape {x.shape}")
        self.threshold = conformal_threshold(self.score(x, batch_size), self.false_positive_rate)

    def detect(self, x: np.ndarray, batch_size: int = 128, **kwargs) -> tuple[dict, np.ndarray]:
        """``(report, is_adversarial)``: report holds ``scores``, ``scores_per_squeezer`` and
        ``threshold``; ``is_adversarial`` is ``score > threshold`` per input."""
        if self.threshold is None:
            raise ValueError("the detector has no threshold yet: call fit(x_clean) first")
        per_squeezer = self.scores_per_squeezer(x, batch_size)
        scores = np.max(np.stack(list(per_squeezer.values())), axis=0)
        report = {"scores": scores, "scores_per_squeezer": per_squeezer, "threshold": self.threshold}
        return report, scores > self.threshold
