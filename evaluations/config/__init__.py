"""Configuration of an evaluation run: presets, config files (JSON or TOML) merged over a preset, and
validation of every key before any long work starts.

A configuration is a two-level mapping ``section -> key -> value`` (plus the top-level ``preset``).
Each section is defined in one place, :mod:`evaluations.config.sections`: its keys (a checker, a one-line
meaning and the value in every preset) and the checks that involve several keys. :data:`SCHEMA`,
:data:`PRESETS`, ``config --keys`` and the docs' table of keys are all generated from there.
:func:`resolve_config` builds the final configuration from a preset, an optional file and
``section.key=value`` overrides, and raises one :class:`ConfigError` naming the key and the expected form
at the first bad value. Everything a config says is in the data's own [0, 1] units: sigma, epsilon and
radii alike.

* :mod:`~evaluations.config.checks`: :class:`ConfigError` and the value checkers;
* :mod:`~evaluations.config.keys`: :class:`Key` and :class:`Section`;
* :mod:`~evaluations.config.sections`: every section;
* :mod:`~evaluations.config.resolve`: presets, files and overrides into one validated configuration.
"""

from .checks import ConfigError
from .keys import PRESET_NAMES, Key, Section
from .resolve import PRESETS, SCHEMA, describe_schema, load_config_file, parse_override, resolve_config
from .sections import DDPM_SCHEDULE, DDPM_TIMESTEPS, SECTIONS, check_budgets, eps_limit

__all__ = [
    "DDPM_SCHEDULE",
    "DDPM_TIMESTEPS",
    "PRESETS",
    "PRESET_NAMES",
    "SCHEMA",
    "SECTIONS",
    "ConfigError",
    "check_budgets",
    "eps_limit",
    "Key",
    "Section",
    "describe_schema",
    "load_config_file",
    "parse_override",
    "resolve_config",
]
