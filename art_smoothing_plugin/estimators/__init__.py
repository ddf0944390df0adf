"""ART estimators: thin layers over the framework-level core in :mod:`art_smoothing_plugin.smoothing`."""

from .randomized_smoothing import RandomizedSmoothingClassifier

__all__ = ["RandomizedSmoothingClassifier"]
