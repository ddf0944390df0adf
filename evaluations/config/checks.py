"""The error every bad configuration value raises, and the value checkers the sections' keys are built from.

A checker is a function ``check(key, value)`` that returns the normalised value or raises
:class:`ConfigError` naming the key and the expected form.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "Checker",
    "ConfigError",
    "boolean",
    "choice",
    "choices",
    "integer",
    "integer_list",
    "module_attribute",
    "number",
    "number_list",
    "optional_int",
    "optional_norm_stats",
    "table",
    "text",
]


class ConfigError(ValueError):
    """A bad configuration value: the message names the key and the expected form."""

    def __init__(self, key: str, expected: str, got: Any = None, hint: str = "", *, show_got: bool = True):
        self.key = key
        what = "argument" if key.startswith("-") else "config key"  # --out, --config: not config keys
        message = f"{what} {key!r}: expected {expected}"
        if show_got:
            message += f"; got {got!r}"
        if hint:
            message += f". {hint}"
        super().__init__(message)


#: ``check(key, value)``: the normalised value, or :class:`ConfigError`.
Checker = Callable[[str, Any], Any]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int = 0) -> Checker:
    """An integer ``>= minimum`` (booleans refused)."""

    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(key, f"an integer >= {minimum}", value)
        return int(value)

    return check


def number(
    low: float = -math.inf, high: float = math.inf, *, open_low: bool = False, open_high: bool = False
) -> Checker:
    """A finite number in ``[low, high]`` (either end open on request), as a float."""
    left, right = "(" if open_low else "[", ")" if open_high else "]"
    expected = f"a number in {left}{low:g}, {high:g}{right}"

    def check(key: str, value: Any) -> float:
        if not _is_number(value):
            raise ConfigError(key, expected, value)
        value = float(value)
        if value < low or value > high or (open_low and value == low) or (open_high and value == high):
            raise ConfigError(key, expected, value)
        return value

    return check


def number_list(
    low: float = 0.0,
    high: float = math.inf,
    *,
    open_low: bool = False,
    open_high: bool = False,
    allow_empty: bool = False,
) -> Checker:
    """A list of numbers in ``[low, high]`` (ends open as asked), returned sorted without repeats."""
    element = number(low, high, open_low=open_low, open_high=open_high)
    left, right = "(" if open_low else "[", ")" if open_high else "]"
    expected = f"a {'' if allow_empty else 'non-empty '}list of numbers in {left}{low:g}, {high:g}{right}"

    def check(key: str, value: Any) -> list[float]:
        if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
            raise ConfigError(key, expected, value)
        try:
            return sorted({element(key, v) for v in value})
        except ConfigError:
            raise ConfigError(key, expected, value) from None

    return check


def integer_list(minimum: int = 1, *, ascending: bool = False) -> Checker:
    """A non-empty list of integers ``>= minimum``, in the given order (``ascending``: sorted, without
    repeats)."""
    expected = f"a non-empty list of integers >= {minimum}"

    def check(key: str, value: Any) -> list[int]:
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(key, expected, value)
        if any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value):
            raise ConfigError(key, expected, value)
        return sorted({int(v) for v in value}) if ascending else [int(v) for v in value]

    return check


def boolean(key: str, value: Any) -> bool:
    """``true`` or ``false``."""
    if not isinstance(value, bool):
        raise ConfigError(key, "true or false", value)
    return value


def text(key: str, value: Any) -> str:
    """A string."""
    if not isinstance(value, str):
        raise ConfigError(key, "a string", value)
    return value


def choice(options: Callable[[], tuple[str, ...]] | tuple[str, ...]) -> Checker:
    """One of ``options`` (or of what ``options()`` returns when the check runs: a registry's names)."""

    def check(key: str, value: Any) -> str:
        names = options() if callable(options) else options
        if not isinstance(value, str) or value not in names:
            raise ConfigError(key, f"one of {', '.join(map(repr, names))}", value)
        return value

    return check


def choices(options: Callable[[], tuple[str, ...]] | tuple[str, ...], allow_empty: bool = True) -> Checker:
    """A list of names from ``options`` (as for :func:`choice`), returned without repeats."""

    def check(key: str, value: Any) -> list[str]:
        names = options() if callable(options) else options
        expected = f"a list of names from {', '.join(map(repr, names))}"
        if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
            raise ConfigError(key, expected, value)
        for item in value:
            if not isinstance(item, str) or item not in names:
                raise ConfigError(key, expected, value, hint=f"unknown name {item!r}")
        return list(dict.fromkeys(value))

    return check


def optional_norm_stats(key: str, value: Any) -> list[float] | None:
    """mean/std of the input normalisation: null, one number, or one number per channel."""
    expected = "null, a number, or a list of numbers (one per channel)"
    if value is None:
        return None
    if _is_number(value):
        return [float(value)]
    if isinstance(value, (list, tuple)) and value and all(_is_number(v) for v in value):
        return [float(v) for v in value]
    raise ConfigError(key, expected, value)


def optional_int(minimum: int) -> Checker:
    """null, or an integer ``>= minimum``."""
    inner = integer(minimum)

    def check(key: str, value: Any) -> int | None:
        return None if value is None else inner(key, value)

    return check


def table(key: str, value: Any) -> dict:
    """A table (mapping of keyword arguments)."""
    if not isinstance(value, Mapping):
        raise ConfigError(key, "a table (mapping of keyword arguments)", value)
    return dict(value)


def module_attribute(key: str, value: Any) -> str:
    """``package.module:attribute`` or ``path/to/file.py:attribute`` (or "" for none)."""
    expected = "'package.module:attribute' or 'path/to/file.py:attribute' (or \"\" for a zoo model)"
    if not isinstance(value, str):
        raise ConfigError(key, expected, value)
    if value and (value.count(":") < 1 or not value.rsplit(":", 1)[1].isidentifier()):
        raise ConfigError(key, expected, value)
    return value
