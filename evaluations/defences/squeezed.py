"""Feature squeezing (Xu et al. 2018) as a defence of the harness: the input transformation (ART classifier
with a squeezer among its preprocessing defences) and the detector, both from
:mod:`evaluations.defences.feature_squeezing`, around the clean-trained model.

``predict`` classifies the squeezed input; ``detect`` flags inputs whose detector score exceeds the
threshold fitted on clean held-out test points (those after every point the run evaluates, so the
threshold never sees an evaluated point). ``differentiable`` is the bare model, so plain gradient attacks
are transfer attacks from the unsqueezed model; the adaptive attacks (BPDA through the squeezer, and the
detector-evading attack) use :attr:`squeeze` and :attr:`detector`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..models import batched_argmax
from . import BuildContext, Defence
from .undefended import art_classifier

__all__ = ["FeatureSqueezingDefence", "build_feature_squeezing", "held_out_clean"]


def held_out_clean(context: BuildContext, minimum: int = 100) -> tuple[np.ndarray, str]:
    """Clean inputs for fitting a detector threshold that no evaluated point is among: the test points
    after the largest number any stage evaluates, or the training set when fewer than ``minimum`` remain."""
    config = context.config
    used = max(
        config["attacks"]["points"],
        config["smoothing"]["points"],
        config["denoised"]["points"],
        config["denoised"]["attack_points"],
    )
    rest = context.dataset.x_test[used:]
    if len(rest) >= minimum:
        return rest, f"test[{used}:]"
    return context.dataset.x_train, "train"


class _Float32:
    """Casts an ART preprocessor's output to float32: ART's FeatureSqueezing returns float64 for float32
    input, which a float32 torch model refuses inside PyTorchClassifier.predict."""

    def __new__(cls, inner: Any) -> Any:
        from art.defences.preprocessor.preprocessor import Preprocessor

        class Float32Squeezer(Preprocessor):
            def __init__(self) -> None:
                super().__init__(is_fitted=True, apply_fit=inner.apply_fit, apply_predict=inner.apply_predict)
                self.inner = inner

            def __call__(self, x, y=None):
                out, y = self.inner(x, y)
                return np.asarray(out, dtype=np.float32), y

            def estimate_gradient(self, x, grad):
                return self.inner.estimate_gradient(x, grad)

            def fit(self, x, y=None, **kwargs) -> None:
                return None

        return Float32Squeezer()


class FeatureSqueezingDefence(Defence):
    has_detector = True
    differentiable_is_defence = False  # the bare model: plain gradient attacks are transfer attacks

    def __init__(self, name, kind, estimator, model, identity, *, detector, squeeze, device) -> None:
        super().__init__(name, kind, estimator, model, identity)
        self.detector = detector
        self.squeeze = squeeze
        self.device = device

    def predict(self, x: np.ndarray, *, seed: int) -> np.ndarray:
        if len(x) == 0:
            return np.zeros(0, np.int64)
        return np.asarray(self.estimator.predict(np.asarray(x, np.float32), batch_size=512)).argmax(axis=1)

    def detect(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros(0, bool)
        return np.asarray(self.detector.detect(np.asarray(x, np.float32), batch_size=512)[1], dtype=bool)

    def differentiable(
        self, *, noise_samples: int, noise_seed: int, fixed_noise: bool = True
    ) -> torch.nn.Module:
        return self.model.eval()

    def base_predict(self, x: np.ndarray) -> np.ndarray:
        return batched_argmax(self.model, x, self.device)


def build_feature_squeezing(context: BuildContext) -> list[FeatureSqueezingDefence]:
    from .feature_squeezing import (
        FeatureSqueezingDetector,
        squeezed_classifier,
        squeezer,
        squeezers,
        torch_squeeze,
    )

    settings = context.config["feature_squeezing"]
    model, key = context.models.classifier("clean")
    options: dict[str, Any] = {"bit_depth": settings["bit_depth"], "median_window": settings["median_window"]}
    transform = squeezer(settings["transform"], **options)
    estimator = squeezed_classifier(
        model,
        _Float32(transform),
        context.dataset.input_shape,
        context.models.nb_classes,
        device_type="gpu" if context.device.type == "cuda" else "cpu",
    )
    detector = FeatureSqueezingDetector(
        art_classifier(model, context),
        squeezers(settings["squeezers"], **options),
        settings["false_positive_rate"],
    )
    clean, source = held_out_clean(context)
    detector.fit(clean)
    identity = {"model": key, **settings, "threshold_fitted_on": source, "threshold": detector.threshold}
    return [
        FeatureSqueezingDefence(
            "feature_squeezing",
            "feature_squeezing",
            estimator,
            model,
            identity,
            detector=detector,
            squeeze=torch_squeeze(transform),
            device=context.device,
        )
    ]
