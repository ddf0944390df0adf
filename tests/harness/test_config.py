"""Configuration: presets, files, overrides, and one clear error naming the key for every kind of bad
input, raised before any long work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluations.cli import main
from evaluations.config import (
    PRESET_NAMES,
    PRESETS,
    SCHEMA,
    SECTIONS,
    ConfigError,
    Key,
    describe_schema,
    load_config_file,
    resolve_config,
)
from evaluations.config.checks import integer

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_presets_validate_and_differ_where_the_issue_says():
    quick = resolve_config("quick")
    mnist = resolve_config("mnist5k")
    assert quick["dataset"]["name"] == "digits" and mnist["dataset"]["name"] == "mnist5k"
    assert quick["smoothing"]["n"] >= 1000 and quick["smoothing"]["points"] >= 100
    assert quick["attacks"]["noise_samples"] >= 16
    assert mnist["model"]["architecture"] == "lenet"
    assert mnist["smoothing"]["sigmas"] == [0.25, 0.5, 1.0]
    assert mnist["smoothing"]["points"] >= 500 and mnist["smoothing"]["n"] == 10_000
    assert mnist["denoised"]["points"] == 100 and mnist["denoised"]["n"] == 2000
    assert resolve_config() == quick  # the default preset is quick
    for preset in PRESETS.values():  # every key of the schema has a preset value, and nothing else does
        assert {s: set(k) for s, k in SCHEMA.items()} == {s: set(preset[s]) for s in SCHEMA}


def test_file_merges_over_its_preset_and_overrides_win(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('preset = "mnist5k"\n[smoothing]\nsigmas = [0.5]\nn = 2000\n')
    config = resolve_config(None, load_config_file(toml), ["smoothing.n=3000"], limit=50)
    assert config["preset"] == "mnist5k" and config["dataset"]["name"] == "mnist5k"
    assert config["smoothing"]["sigmas"] == [0.5] and config["smoothing"]["n"] == 3000
    assert config["smoothing"]["points"] == 50 and config["attacks"]["points"] == 50  # --limit caps counts
    as_json = tmp_path / "c.json"
    as_json.write_text(json.dumps({"attacks": {"steps": 7}}))
    assert resolve_config("quick", load_config_file(as_json))["attacks"]["steps"] == 7


@pytest.mark.parametrize(
    ("overrides", "key", "expected"),
    [
        (['smoothing.n="many"'], "smoothing.n", "an integer >= 1"),
        (["smoothing.sigmas=[0.25, -1]"], "smoothing.sigmas", "list of numbers in (0"),
        (["smoothing.alpha=1.5"], "smoothing.alpha", "a number in (0, 1)"),
        (['dataset.name="imagenet"'], "dataset.name", "one of 'digits'"),
        (['defences.enabled=["undefended", "magic"]'], "defences.enabled", "unknown name 'magic'"),
        (['attacks.enabled=["cw"]'], "attacks.enabled", "unknown name 'cw'"),
        (["attacks.linf_eps=[0.1, 2]"], "attacks.linf_eps", "[0, 1]"),
        (["adversarial_training.warmup_epochs=15"], "adversarial_training.warmup_epochs", "below"),
        (["certificate_check.enabled=1"], "certificate_check.enabled", "true or false"),
        (['model.architecture="resnet"'], "model.architecture", "'small_cnn'"),
        (['model.module="no_colon"'], "model.module", "package.module:attribute"),
        (["model.mean=[0.5]"], "model.mean", "set together"),
        (['dataset.name="npz"'], "dataset.path", "existing .npz file"),
    ],
)
def test_bad_values_name_the_key_and_the_expected_form(overrides, key, expected):
    with pytest.raises(ConfigError) as error:
        resolve_config("quick", None, overrides)
    assert error.value.key == key
    assert f"config key {key!r}" in str(error.value) and expected in str(error.value)


def test_unknown_preset_section_and_key():
    with pytest.raises(ConfigError, match="config key 'preset': expected one of 'quick', 'mnist5k'"):
        resolve_config("cifar")
    with pytest.raises(ConfigError, match="config key 'smoothin'"):
        resolve_config("quick", {"smoothin": {"n": 10}})
    with pytest.raises(ConfigError, match="config key 'smoothing.nn'.*unknown key"):
        resolve_config("quick", {"smoothing": {"nn": 10}})
    with pytest.raises(ConfigError, match="config key 'smoothing.nn'"):
        resolve_config("quick", None, ["smoothing.nn=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        resolve_config("quick", None, ["n=3"])


def test_weights_of_a_missing_file_and_trained_defences_with_a_user_model(tmp_path):
    with pytest.raises(ConfigError, match="config key 'model.weights': expected a path to an existing"):
        resolve_config("quick", None, ['model.module="m.py:Net"', f'model.weights="{tmp_path / "none.pt"}"'])
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    with pytest.raises(ConfigError, match="adversarial_training_linf.*train their own classifier"):
        resolve_config("quick", None, ['model.module="m.py:Net"', f'model.weights="{weights}"'])


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[smoothing\n")
    with pytest.raises(ConfigError, match="a valid TOML file"):
        load_config_file(bad)
    with pytest.raises(ConfigError, match=r"a file ending in \.toml or \.json"):
        (tmp_path / "c.yaml").write_text("a: 1")
        load_config_file(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="existing .toml or .json"):
        load_config_file(tmp_path / "missing.toml")


def test_cli_reports_one_message_and_exit_status_2(capsys):
    assert main(["run", "--set", "smoothing.n=0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config key 'smoothing.n': expected an integer >= 1; got 0")
    assert err.count("\n") == 1  # one line, no traceback
    assert main(["config", "--set", "attacks.steps=4"]) == 0
    assert json.loads(capsys.readouterr().out)["attacks"]["steps"] == 4


def test_describe_lists_every_key():
    table = describe_schema()
    for section, keys in SCHEMA.items():
        for key in keys:
            assert f"`{section}.{key}`" in table


def test_the_docs_table_of_keys_is_the_generated_one():
    """docs/evaluation-harness.md carries a copy of ``config --keys``: it must not drift from the schema."""
    page = (DOCS / "evaluation-harness.md").read_text()
    assert describe_schema() in page


def test_a_key_is_defined_once_with_its_value_in_every_preset():
    key = Key(integer(1), "test points", 100, mnist5k=500)
    assert [key.value(p) for p in PRESET_NAMES] == [100, 500, 500]  # training: as mnist5k unless it differs
    assert Key(integer(1), "test points", 100).value("mnist5k") == 100  # as quick unless it differs
    assert Key(integer(1), "test points", 100, mnist5k=500, training=50).value("training") == 50
    for section in SECTIONS:  # the presets are generated from the sections' keys, nothing else
        for name in PRESET_NAMES:
            assert PRESETS[name][section.name] == {k: spec.value(name) for k, spec in section.keys.items()}


def test_checks_across_sections_run_on_the_checked_values():
    with pytest.raises(ConfigError, match="adversarial_training.warmup_epochs"):
        resolve_config("quick", None, ["adversarial_training.warmup_epochs=15"])
    config = resolve_config("quick", None, ['defences.enabled=["undefended"]'])
    assert config["certificate_check"]["enabled"] is False  # nothing smoothed: nothing to check
