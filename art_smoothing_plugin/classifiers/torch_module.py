"""Adapter from a torch module that returns logits (or any per-class scores) to the core's interface."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["check_logits", "label_function"]


def check_logits(scores: torch.Tensor, batch: int, num_classes: int, who: str = "model") -> torch.Tensor:
    """Refuse per-class scores that are not a ``(batch, num_classes)`` tensor."""
    if not isinstance(scores, torch.Tensor) or scores.shape != (batch, num_classes):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(
            f"the {who} must return per-class scores of shape (batch, nb_classes) = "
            f"({batch}, {num_classes}); "
            f"got {shape}. Check nb_classes and that the {who} returns logits, not features."
        )
    return scores


def label_function(
    logits: Callable[[torch.Tensor], torch.Tensor], num_classes: int, who: str = "model"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap a logits function (a module in eval mode, or any callable) as a labels function that checks
    the width of its output on every batch."""

    def labels(z: torch.Tensor) -> torch.Tensor:
        return check_logits(logits(z), z.shape[0], num_classes, who).argmax(dim=1)

    return labels
