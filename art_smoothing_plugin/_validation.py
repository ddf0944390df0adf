"""Argument checks shared by the public entry points. Each raises ValueError naming the argument and
the expected form, so that bad input is refused at the boundary, before any sampling starts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def _finite_float(name: str, value: Any, expected: str, accept: Any) -> float:
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {expected}, got {value!r}") from None
    if not math.isfinite(as_float) or not accept(as_float):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return as_float


def check_positive_float(name: str, value: Any) -> float:
    return _finite_float(name, value, "a positive, finite number", lambda v: v > 0)


def check_nonnegative_float(name: str, value: Any) -> float:
    return _finite_float(name, value, "a finite number >= 0", lambda v: v >= 0)


def check_probability(name: str, value: Any) -> float:
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a probability in (0, 1), got {value!r}") from None
    if not 0.0 < as_float < 1.0:
        raise ValueError(f"{name} must be a probability strictly between 0 and 1, got {value!r}")
    return as_float


def check_int_at_least(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_input_shape(input_shape: Any) -> tuple[int, ...]:
    if not isinstance(input_shape, Sequence) or not all(
        isinstance(d, (int, np.integer)) and d > 0 for d in input_shape
    ):
        raise ValueError(f"input_shape must be a tuple of positive integers, got {input_shape!r}")
    return tuple(int(d) for d in input_shape)


def check_batch(
    x: np.ndarray | torch.Tensor,
    input_shape: tuple[int, ...],
    clip_values: tuple[Any, Any] | None = None,
    name: str = "x",
    slack: float = 0.0,
) -> None:
    """Refuse a batch whose shape is not ``(N, *input_shape)``, that holds NaN or infinite values, or
    that lies outside ``clip_values`` (beyond a rounding tolerance, plus ``slack`` times the width of the
    clip range on either side)."""
    shape = tuple(x.shape)
    if len(shape) != len(input_shape) + 1 or shape[1:] != tuple(input_shape):
        raise ValueError(
            f"{name} must have shape (N, {', '.join(map(str, input_shape))}) to match input_shape="
            f"{tuple(input_shape)}; got {shape}"
        )
    if isinstance(x, torch.Tensor):
        finite = bool(torch.isfinite(x).all())
        low, high = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
    else:
        if not np.issubdtype(np.asarray(x).dtype, np.number):
            raise ValueError(f"{name} must be a numeric array, got dtype {np.asarray(x).dtype}")
        finite = bool(np.isfinite(x).all())
        low, high = (float(np.min(x)), float(np.max(x))) if np.size(x) else (0.0, 0.0)
    if not finite:
        raise ValueError(f"{name} contains NaN or infinite values")
    if clip_values is not None and np.size(x):
        clip_low = np.min(np.asarray(clip_values[0], dtype=np.float64))
        clip_high = np.max(np.asarray(clip_values[1], dtype=np.float64))
        width = float(clip_high - clip_low)
        tolerance = 1e-5 * max(width, 1.0) + slack * width
        if low < clip_low - tolerance or high > clip_high + tolerance:
            beyond = f" by more than {slack:g} times its width" if slack else ""
            raise ValueError(
                f"{name} has values in [{low:.6g}, {high:.6g}], outside clip_values=({clip_low:.6g}, "
                f"{clip_high:.6g}){beyond}; scale the data to the range the model was built for"
            )
