"""Certified L2 robustness by randomized smoothing, as estimators for the Adversarial Robustness Toolbox.

Layers, bottom to top (each imports only those below it):
``statistics`` (pure functions of counts) -> ``sampling`` (noise and vote counting) -> ``smoothing``
(PREDICT, CERTIFY, the smoothed soft classifier, on torch tensors) -> ``classifiers`` (adapters) ->
``training`` (training methods for smoothing) -> ``estimators`` (ART glue).
"""

from .denoisers import DiffusionDenoiser, DnCNN, MemNet
from .estimators import (
    DenoisedSmoothingClassifier,
    MACERClassifier,
    RandomizedSmoothingClassifier,
    SmoothAdvClassifier,
    SmoothMixClassifier,
)
from .smoothing import ABSTAIN, CertificationResult, SmoothedSoftClassifier, Smoother

__version__ = "0.1.0"

__all__ = [
    "ABSTAIN",
    "CertificationResult",
    "DenoisedSmoothingClassifier",
    "DiffusionDenoiser",
    "DnCNN",
    "MACERClassifier",
    "MemNet",
    "RandomizedSmoothingClassifier",
    "SmoothAdvClassifier",
    "SmoothMixClassifier",
    "SmoothedSoftClassifier",
    "Smoother",
    "__version__",
]
