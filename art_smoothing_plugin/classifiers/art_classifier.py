"""Adapter from any ART classifier (of any framework, ART's BlackBoxClassifier included) to a checked
labels function, and, for an ART PyTorchClassifier, to a differentiable logits module.

Smoothing needs only labels, so the generic path calls the classifier's own ``predict`` (its
preprocessing, defences and postprocessing included) on NumPy batches and reads the argmax of the
``(batch, nb_classes)`` answer. A plain ``PyTorchClassifier`` whose preprocessing runs in PyTorch also
gives a torch path: ``model(preprocess(z))`` with gradients, the same function its ``predict`` computes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._validation import check_int_at_least
from .callable import QueryCounter, labels_from_output

__all__ = ["ARTClassifierAdapter", "art_pytorch_logits_module", "check_art_classifier", "is_art_classifier"]


def is_art_classifier(obj: Any) -> bool:
    """Whether ``obj`` is an ART classifier (an instance of ART's ``ClassifierMixin``)."""
    from art.estimators.classification.classifier import ClassifierMixin

    return isinstance(obj, ClassifierMixin)


class ARTClassifierAdapter(QueryCounter):
    """Labels of an ART classifier: ``argmax classifier.predict(x)``, checked, with every input counted.

    :param classifier: any ART classifier whose ``predict`` returns ``(batch, nb_classes)`` scores.
    :param nb_classes: expected number of classes (checked against the classifier's own).
    :param input_shape: expected shape of one input (checked against the classifier's, where it has one).
    :param batch_size: ``batch_size`` passed to ``classifier.predict``.
    :param query_budget: most inputs ever sent (see :class:`QueryCounter`).
    """

    def __init__(
        self,
        classifier: Any,
        nb_classes: int,
        input_shape: tuple[int, ...] | None = None,
        batch_size: int = 128,
        query_budget: int | None = None,
    ) -> None:
        check_art_classifier(classifier, nb_classes, input_shape)
        super().__init__(query_budget)
        self.classifier = classifier
        self.nb_classes = int(nb_classes)
        self.batch_size = check_int_at_least("batch_size", batch_size, 1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Labels ``(len(x),)`` int64 of a NumPy batch."""
        x = np.asarray(x, dtype=np.float32)
        self._charge(len(x))
        scores = self.classifier.predict(x, batch_size=self.batch_size)
        return labels_from_output(
            scores, len(x), self.nb_classes, "scores", who=f"ART {type(self.classifier).__name__}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.classifier).__name__}, queries={self.query_count})"


def check_art_classifier(
    classifier: Any, nb_classes: int, input_shape: tuple[int, ...] | None = None
) -> None:
    """Refuse a non-ART object, or an ART classifier whose number of classes or input shape (where it
    declares one) differs from the expected ones."""
    if not is_art_classifier(classifier):
        raise ValueError(
            f"classifier must be an ART classifier (ClassifierMixin), got {type(classifier).__name__}"
        )
    nb_classes = check_int_at_least("nb_classes", nb_classes, 2)
    own_classes = getattr(classifier, "nb_classes", None)
    if isinstance(own_classes, (int, np.integer)) and own_classes >= 2 and own_classes != nb_classes:
        raise ValueError(f"nb_classes={nb_classes} but the ART classifier has nb_classes={own_classes}")
    own_shape = _own_input_shape(classifier)
    if input_shape is not None and own_shape is not None and tuple(own_shape) != tuple(input_shape):
        raise ValueError(
            f"the ART classifier takes inputs of shape {tuple(own_shape)}, but input_shape="
            f"{tuple(input_shape)}: the (denoised) inputs must have the shape the classifier expects"
        )


def _own_input_shape(classifier: Any) -> tuple[int, ...] | None:
    try:
        shape = classifier.input_shape
    except Exception:  # some ART estimators raise when the shape is unknown
        return None
    if shape is None:
        return None
    try:
        return tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        return None


class _ARTPyTorchLogits(torch.nn.Module):
    """``model(preprocess(z))`` of an ART PyTorchClassifier, differentiable in ``z``."""

    def __init__(self, classifier: Any) -> None:
        super().__init__()
        self.model = classifier.model  # registered: .eval() and parameter lookups reach it
        self._classifier = [classifier]  # a list, so that nn.Module does not register the estimator

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        classifier = self._classifier[0]
        preprocessed, _ = classifier._apply_preprocessing(z, None, fit=False, no_grad=False)
        return self.model(preprocessed)


def art_pytorch_logits_module(classifier: Any) -> tuple[torch.nn.Module | None, str]:
    """A differentiable logits module for ``classifier``, or ``(None, why not)``.

    Given for an ART ``PyTorchClassifier`` (not a subclass that changes ``predict``) whose preprocessing
    and defences all run in PyTorch and that has no postprocessing defences: then the module computes
    exactly the scores ``predict`` returns, with gradients.
    """
    from art.estimators.classification.pytorch import PyTorchClassifier

    name = type(classifier).__name__
    if not isinstance(classifier, PyTorchClassifier):
        return None, f"the ART {name} has no PyTorch graph to differentiate (only predict)"
    if type(classifier).predict is not PyTorchClassifier.predict:
        return None, f"the ART {name} overrides predict, so its model alone is not what it predicts"
    if not classifier.all_framework_preprocessing:
        return None, f"the ART {name} has preprocessing or defences that run in NumPy, not PyTorch"
    if classifier.postprocessing_defences:
        return None, f"the ART {name} has postprocessing defences, which give no gradients"
    return _ARTPyTorchLogits(classifier), ""
