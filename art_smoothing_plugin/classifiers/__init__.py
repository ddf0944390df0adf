"""Adapters that give the smoothing core a labels function (and, where differentiable, logits).

* :mod:`.torch_module`: a torch module returning logits.
* :mod:`.art_classifier`: any ART classifier (ART's BlackBoxClassifier included); a differentiable path
  for ART's PyTorchClassifier.
* :mod:`.callable`: any query-only function from a NumPy batch to labels or scores.
* :mod:`.http`: a classifier behind an HTTP prediction API, with retries, a query budget and counts.
"""

from .art_classifier import ARTClassifierAdapter, art_pytorch_logits_module, is_art_classifier
from .callable import QueryBudgetExceeded, QueryCounter, QueryOnlyClassifier, labels_from_output
from .http import HTTPClassifier, PredictionAPIError
from .torch_module import check_logits, label_function

__all__ = [
    "ARTClassifierAdapter",
    "HTTPClassifier",
    "PredictionAPIError",
    "QueryBudgetExceeded",
    "QueryCounter",
    "QueryOnlyClassifier",
    "art_pytorch_logits_module",
    "check_logits",
    "is_art_classifier",
    "label_function",
    "labels_from_output",
]
