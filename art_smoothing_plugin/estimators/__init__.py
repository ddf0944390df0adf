"""ART estimators: thin layers over the framework-level core in :mod:`art_smoothing_plugin.smoothing`."""

from .denoised_smoothing import DenoisedSmoothingClassifier, NotDifferentiableError
from .randomized_smoothing import RandomizedSmoothingClassifier
from .smoothing_trainers import MACERClassifier, SmoothAdvClassifier, SmoothMixClassifier

__all__ = [
    "DenoisedSmoothingClassifier",
    "MACERClassifier",
    "NotDifferentiableError",
    "RandomizedSmoothingClassifier",
    "SmoothAdvClassifier",
    "SmoothMixClassifier",
]
