"""Which format a user's model is in, from its files' names alone.

It imports neither torch nor the loaders, so the command line can ask it before torch loads (a run whose
model computes in a worker sets torch's OpenMP behaviour first, :func:`evaluations.cli.runs_a_worker`);
:mod:`.formats` opens the model by the same rule.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["model_format"]


def model_format(module: str, weights: str) -> str:
    """``onnx``, ``torch_export`` or ``python``, from the weights file's suffix."""
    suffix = Path(weights).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".pt2":
        return "torch_export"
    return "python"
