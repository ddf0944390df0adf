"""Adapters that give the smoothing core a labels function (and, where differentiable, logits)."""

from .torch_module import check_logits, label_function

__all__ = ["check_logits", "label_function"]
