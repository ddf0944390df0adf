"""ART estimators: thin layers over the framework-level core in :mod:`art_smoothing_plugin.smoothing`."""

from .denoised_smoothing import DenoisedSmoothingClassifier, NotDifferentiableError
from .randomized_smoothing import RandomizedSmoothingClassifier

__all__ = ["DenoisedSmoothingClassifier", "NotDifferentiableError", "RandomizedSmoothingClassifier"]
