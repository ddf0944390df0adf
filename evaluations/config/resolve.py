"""From a preset, a config file and ``section.key=value`` overrides to one validated configuration."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomllib

from ..registry import DEFENCE_KINDS
from .checks import ConfigError
from .keys import PRESET_NAMES, Key
from .sections import SECTIONS

__all__ = ["PRESETS", "SCHEMA", "describe_schema", "load_config_file", "parse_override", "resolve_config"]

#: Every key of every section: ``SCHEMA[section][key]`` is its :class:`~evaluations.config.Key`.
SCHEMA: dict[str, dict[str, Key]] = {section.name: section.keys for section in SECTIONS}

#: The built-in presets, ``name -> configuration``, from the keys' preset values (see
#: :data:`~evaluations.config.PRESET_NAMES`).
PRESETS: dict[str, dict[str, Any]] = {
    preset: {
        "preset": preset,
        **{
            section: {key: copy.deepcopy(spec.value(preset)) for key, spec in keys.items()}
            for section, keys in SCHEMA.items()
        },
    }
    for preset in PRESET_NAMES
}


def _merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON (``.json``) or TOML (``.toml``) config file into a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--config", "a path to an existing .toml or .json file", str(path))
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError("--config", "a valid JSON file", str(path), hint=str(error)) from None
    elif path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError("--config", "a valid TOML file", str(path), hint=str(error)) from None
    else:
        raise ConfigError("--config", "a file ending in .toml or .json", str(path))
    if not isinstance(data, dict):
        raise ConfigError("--config", "a file holding a table of sections", type(data).__name__)
    return data


def parse_override(text_value: str) -> tuple[str, str, Any]:
    """``section.key=value`` (value parsed as JSON when it parses, else taken as a string)."""
    if "=" not in text_value or "." not in text_value.split("=", 1)[0]:
        raise ConfigError("--set", "section.key=value, e.g. smoothing.n=1000", text_value)
    dotted, raw = text_value.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return section, key, value


def _validate(config: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"preset": config["preset"]}
    for section, value in config.items():
        if section == "preset":
            continue
        if section not in SCHEMA:
            raise ConfigError(section, f"a section among {', '.join(SCHEMA)} (or 'preset')", show_got=False)
        if not isinstance(value, Mapping):
            raise ConfigError(section, "a table of keys", value)
        for key in value:
            if key not in SCHEMA[section]:
                raise ConfigError(
                    f"{section}.{key}",
                    f"a key of section {section!r}: {', '.join(SCHEMA[section])}",
                    show_got=False,
                    hint="unknown key",
                )
    for section, keys in SCHEMA.items():
        result[section] = {}
        for key, spec in keys.items():
            result[section][key] = spec.check(f"{section}.{key}", config[section][key])
    for section in SECTIONS:
        if section.cross_check is not None:
            section.cross_check(result)
    return result


def resolve_config(
    preset: str | None = None,
    file_config: Mapping[str, Any] | None = None,
    overrides: list[str] | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """The validated configuration: ``preset`` (else the file's ``preset`` key, else ``quick``), the file's
    sections merged over it, then ``section.key=value`` overrides, then ``limit`` capping every count of
    test points. Raises :class:`~evaluations.config.ConfigError` (a ``ValueError``) naming the first bad
    key.

    Defences named by a preset whose dependencies do not import here are dropped; naming one explicitly is
    an error.
    """
    file_config = dict(file_config or {})
    name = preset or file_config.get("preset") or "quick"
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError("preset", f"one of {', '.join(map(repr, PRESETS))}", name)
    config = _merged(PRESETS[name], file_config)
    config["preset"] = name
    explicit_defences = "enabled" in file_config.get("defences", {})
    for override in overrides or []:
        section, key, value = parse_override(override)
        if section not in SCHEMA or key not in SCHEMA[section]:
            raise ConfigError(
                f"{section}.{key}",
                "an existing section.key (the command 'config --keys' lists them all)",
                override,
            )
        config.setdefault(section, {})[key] = value
        explicit_defences |= (section, key) == ("defences", "enabled")
    if "defences" in config and isinstance(config["defences"].get("enabled"), list):
        enabled = config["defences"]["enabled"]
        missing = [d for d in enabled if d in DEFENCE_KINDS and not DEFENCE_KINDS[d].available()]
        if missing and explicit_defences:
            kind = DEFENCE_KINDS[missing[0]]
            raise ConfigError(
                "defences.enabled",
                "defences whose implementation is installed",
                enabled,
                hint=f"{missing[0]!r} needs {kind.requires}, which does not import here",
            )
        config["defences"]["enabled"] = [d for d in enabled if d not in missing]
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError("--limit", "a positive integer", limit)
        for section, key in (
            ("smoothing", "points"),
            ("denoised", "points"),
            ("denoised", "attack_points"),
            ("diffusion", "points"),
            ("diffusion", "attack_points"),
            ("attacks", "points"),
            ("certificate_check", "points"),
            ("study", "points"),
        ):
            value = config.get(section, {}).get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                config[section][key] = min(value, limit)
    return _validate(config)


def describe_schema() -> str:
    """A Markdown table of every key, its meaning and its value in each preset (for the docs and
    ``config --keys``)."""
    lines = [f"| key | meaning | {' | '.join(PRESET_NAMES)} |", "|---" * (2 + len(PRESET_NAMES)) + "|"]
    for section, keys in SCHEMA.items():
        for key, spec in keys.items():
            values = " | ".join(f"`{json.dumps(PRESETS[p][section][key])}`" for p in PRESET_NAMES)
            lines.append(f"| `{section}.{key}` | {spec.doc} | {values} |")
    return "\n".join(lines)
