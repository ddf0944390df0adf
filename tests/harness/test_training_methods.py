"""The harness's training methods (``smoothing.training``, ``smoothing.training_params``): the keys are
checked, every (method, sigma) is its own randomized smoothing defence on its own cached model trained
through art_smoothing_plugin.training, the report puts the methods side by side with one colour per
method, and the default (Gaussian augmentation alone) leaves names, cache keys and results as they were.

Tiny runs: digits, one epoch, a dozen points, the session's model cache (tests/harness/conftest.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evaluations.config import ConfigError, resolve_config
from evaluations.data import load_dataset
from evaluations.models import ModelStore
from evaluations.reproducibility import config_hash

from .conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

#: A run of Gaussian augmentation and Consistency (the cheapest other method) side by side.
COMPARED = [
    'defences.enabled=["randomized_smoothing"]',
    'smoothing.training=["gaussian", "consistency"]',
    'smoothing.training_params={"consistency": {"lmbda": 5.0}}',
    'attacks.enabled=["pgdl2"]',
    "attacks.points=6",
    "certificate_check.points=6",
    "model.epochs=1",
]
#: The same run with the default training (Gaussian augmentation alone).
DEFAULT = [c for c in COMPARED if not c.startswith("smoothing.training")]


def _model_key(store: ModelStore, method: str, sigma: float) -> str:
    """The cache key of the base model of ``method`` at ``sigma`` (without training it)."""
    recipe, params = store.smoothing_recipe(method, sigma)
    return config_hash(store.training_spec(recipe, **params))


def _run(out, cache, overrides):
    from evaluations.pipeline import Pipeline
    from evaluations.report import run_and_report

    pipeline = Pipeline(tiny_config(*overrides), out, cache_dir=cache, progress=False, log=lambda m: None)
    pipeline.prepare()
    return pipeline, run_and_report(pipeline)


@pytest.fixture(scope="module")
def compared(tmp_path_factory, model_cache):
    return _run(tmp_path_factory.mktemp("compared"), model_cache, COMPARED)


@pytest.fixture(scope="module")
def default(tmp_path_factory, model_cache):
    return _run(tmp_path_factory.mktemp("default"), model_cache, DEFAULT)


# -- the keys -----------------------------------------------------------------------------------------------
def test_the_training_key_takes_a_name_or_a_list_and_lists_the_choices():
    assert resolve_config("quick")["smoothing"]["training"] == ["gaussian"]
    config = resolve_config("quick", None, ['smoothing.training="macer"'])
    assert config["smoothing"]["training"] == ["macer"]
    config = resolve_config("quick", None, ['smoothing.training=["macer", "gaussian", "macer"]'])
    assert config["smoothing"]["training"] == ["macer", "gaussian"]
    for bad in ('"cohen"', '["gaussian", "mixup"]', "[]", "3"):
        with pytest.raises(ConfigError, match="smoothing.training") as error:
            resolve_config("quick", None, [f"smoothing.training={bad}"])
        assert "'gaussian', 'smoothadv', 'macer', 'consistency', 'smoothmix'" in str(error.value)


@pytest.mark.parametrize(
    ("params", "key", "expected"),
    [
        ('{"smoothadv": {"epsilon": -0.5}}', "smoothing.training_params.smoothadv.epsilon", ">= 0"),
        ('{"smoothadv": {"num_noise_vec": 0}}', "smoothing.training_params.smoothadv.num_noise_vec", ">= 1"),
        ('{"consistency": {"lmbda": -1}}', "smoothing.training_params.consistency.lmbda", ">= 0"),
        ('{"macer": {"beta": 0}}', "smoothing.training_params.macer.beta", "positive"),
        ('{"smoothmix": {"num_steps": true}}', "smoothing.training_params.smoothmix.num_steps", "a number"),
        ('{"smoothadv": {"eps": 1.0}}', "smoothing.training_params.smoothadv", "epsilon, num_steps"),
        ('{"smoothmix": {"mix_step": 8}}', "smoothing.training_params.smoothmix.mix_step", "num_steps"),
        (
            '{"smoothmix": {"num_steps": 2, "mix_step": 3}}',
            "smoothing.training_params.smoothmix",
            "fit together",
        ),
        ('{"adversarial": {}}', "smoothing.training_params", "gaussian, smoothadv, macer"),
        ('{"macer": 16}', "smoothing.training_params.macer", "gaussian_samples, beta"),
    ],
)
def test_a_bad_hyper_parameter_is_refused_naming_its_key(params, key, expected):
    with pytest.raises(ConfigError) as error:
        resolve_config("quick", None, [f"smoothing.training_params={params}"])
    assert error.value.key == key
    assert expected in str(error.value)


def test_a_warmup_longer_than_the_training_is_refused_for_a_method_the_run_uses():
    with pytest.raises(ConfigError, match="smoothing.training_params.smoothadv.warmup.*model.epochs = 5"):
        resolve_config("quick", None, ['smoothing.training=["smoothadv"]', "model.epochs=5"])
    # the default warm-up (10 epochs) is fine for a run that does not use the method
    resolve_config("quick", None, ["model.epochs=5"])
    resolve_config(
        "quick",
        None,
        [
            'smoothing.training="smoothadv"',
            "model.epochs=5",
            'smoothing.training_params={"smoothadv": {"warmup": 5}}',
        ],
    )


def test_a_users_model_takes_no_training_method_but_the_default(tmp_path):
    weights = tmp_path / "weights.pt"
    torch.save({}, weights)
    user = [
        "model.module=torch.nn:Linear",
        f"model.weights={weights}",
        'defences.enabled=["randomized_smoothing"]',
    ]
    resolve_config("quick", None, user)
    with pytest.raises(ConfigError, match="smoothing.training.*user's model"):
        resolve_config("quick", None, [*user, 'smoothing.training=["gaussian", "macer"]'])


def test_the_training_preset_compares_all_five_at_three_sigmas_on_mnist5k():
    config = resolve_config("training")
    assert config["smoothing"]["training"] == ["gaussian", "smoothadv", "macer", "consistency", "smoothmix"]
    assert config["smoothing"]["sigmas"] == [0.25, 0.5, 1.0]
    assert config["dataset"]["name"] == "mnist5k" and config["defences"]["enabled"] == [
        "randomized_smoothing"
    ]
    assert (config["smoothing"]["points"], config["smoothing"]["n"]) == (100, 2000)
    # the mnist5k preset is not touched by it
    assert resolve_config("mnist5k")["smoothing"]["training"] == ["gaussian"]


# -- the default is what it was ----------------------------------------------------------------------------
def test_the_default_keeps_the_quick_presets_config_and_model_keys():
    """Regression pins: the cache keys main computed at ff95b45, before smoothing.training existed. With
    the default (Gaussian augmentation, no hyper-parameters) the quick preset's models keep their keys (a
    moved key would retrain every cached model)."""
    for preset in ("quick", "mnist5k"):
        config = resolve_config(preset)
        assert config["smoothing"]["training"] == ["gaussian"]
        assert config["smoothing"]["training_params"] == {}
    config = resolve_config("quick")
    store = ModelStore(config, load_dataset("digits"), "/nonexistent", progress=False)
    assert config_hash(store.training_spec("clean")) == "2c534890866f997a"
    keys = {s: _model_key(store, "gaussian", s) for s in (0.25, 0.5, 1.0)}
    assert keys == {0.25: "82b74254cebcebaa", 0.5: "26dcac65395b48e5", 1.0: "cddfbc043845d295"}


def test_the_default_run_has_todays_names_identities_and_results(default, compared):
    pipeline, results = default
    assert [d.name for d in pipeline.defences] == ["rs_sigma0.25", "rs_sigma0.5"]
    for defence in pipeline.defences:  # checkpoints are keyed by the identity: nothing new in it
        assert set(defence.identity) == {
            "name",
            "kind",
            "model",
            "sigma",
            "n0",
            "n",
            "alpha",
            "predict_n",
            "predict_alpha",
        }
    assert "## Training methods compared" not in (pipeline.out_dir / "report.md").read_text()
    # Gaussian augmentation's defences in the comparison are the same defences, with the same results
    other_pipeline, other = compared
    for name, entry in results["defences"].items():
        twin = other["defences"][name]
        assert entry["training"] == twin["training"] == "gaussian"
        assert entry["certified"]["accuracy"] == twin["certified"]["accuracy"]
        assert entry["certified"]["acr"] == twin["certified"]["acr"]
        mine, theirs = pipeline.data.certified[name], other_pipeline.data.certified[name]
        np.testing.assert_array_equal(mine["radii"], theirs["radii"])
        for norm, table in entry["empirical"].items():
            for attack, values in table.items():
                assert values["accuracy"] == twin["empirical"][norm][attack]["accuracy"]
    assert list(results["envelopes"]) == ["randomized_smoothing"]


# -- two methods, side by side ------------------------------------------------------------------------------
def test_two_methods_give_a_defence_per_method_and_sigma_on_distinct_models(compared, model_cache):
    pipeline, results = compared
    names = [d.name for d in pipeline.defences]
    assert names == ["rs_sigma0.25", "rs_consistency_sigma0.25", "rs_sigma0.5", "rs_consistency_sigma0.5"]
    assert [d.training for d in pipeline.defences] == ["gaussian", "consistency"] * 2
    keys = [d.identity["model"] for d in pipeline.defences]
    assert len(set(keys)) == 4  # one model per (method, sigma)
    for defence in pipeline.defences:
        (weights,) = model_cache.glob(f"*-{defence.identity['model']}.pt")
        spec = json.loads(weights.with_suffix(".json").read_text())["spec"]
        assert spec["recipe"] == defence.training and spec["sigma"] == defence.sigma
        if defence.training == "consistency":  # every hyper-parameter is in the key, not only those set
            assert spec["hyper"] == {"num_noise_vec": 2, "lmbda": 5.0, "eta": 0.5}
    assert {e["training"] for e in results["defences"].values()} == {"gaussian", "consistency"}
    assert all(e["training_seconds"] > 0 for e in results["defences"].values())
    assert set(results["envelopes"]) == {"randomized_smoothing", "randomized_smoothing:consistency"}
    assert results["envelopes"]["randomized_smoothing:consistency"]["sigmas"] == [0.25, 0.5]


def test_a_hyper_parameter_is_part_of_the_model_key():
    dataset = load_dataset("digits")

    def key(*overrides):
        store = ModelStore(tiny_config(*overrides), dataset, "/nonexistent", progress=False)
        return _model_key(store, "consistency", 0.5)

    base = key('smoothing.training="consistency"')
    assert (
        key('smoothing.training="consistency"', 'smoothing.training_params={"consistency": {"lmbda": 10.0}}')
        == base
    )
    assert (
        key('smoothing.training="consistency"', 'smoothing.training_params={"consistency": {"eta": 0.1}}')
        != base
    )
    assert (
        key('smoothing.training="consistency"', 'smoothing.training_params={"macer": {"lmbda": 1.0}}') == base
    )


def test_the_harness_trains_through_the_library(compared, model_cache):
    """The cached Consistency model is what art_smoothing_plugin.training.train gives with the spec's
    seed, epochs, batch size and learning rate: weight for weight."""
    from art_smoothing_plugin.training import Consistency, train
    from evaluations.zoo import build_model

    pipeline, _ = compared
    defence = next(d for d in pipeline.defences if d.training == "consistency")
    (weights,) = model_cache.glob(f"*-{defence.identity['model']}.pt")
    spec = json.loads(weights.with_suffix(".json").read_text())["spec"]
    dataset = pipeline.dataset
    model = build_model(spec["architecture"], dataset.input_shape, spec["nb_classes"], spec["seed"])
    train(
        Consistency(**spec["hyper"]),
        model,
        dataset.x_train,
        dataset.y_train,
        sigma=spec["sigma"],
        optimizer=torch.optim.Adam(model.parameters(), lr=spec["learning_rate"]),
        nb_epochs=spec["epochs"],
        batch_size=spec["batch_size"],
        clip_values=(0.0, 1.0),
        seed=spec["seed"],
        progress=False,
    )
    cached = torch.load(weights, weights_only=True)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, cached[name], rtol=0, atol=0)


def test_one_colour_per_method_in_every_plot_and_a_marker_per_sigma(compared):
    from evaluations.report import run_colours

    pipeline, results = compared
    colours, markers = run_colours(pipeline.defences)
    assert colours["rs_sigma0.25"] == colours["rs_sigma0.5"]
    assert colours["rs_consistency_sigma0.25"] == colours["rs_consistency_sigma0.5"]
    assert colours["rs_sigma0.25"] != colours["rs_consistency_sigma0.25"]
    assert markers["rs_sigma0.25"] == markers["rs_consistency_sigma0.25"] != markers["rs_sigma0.5"]
    plots = pipeline.out_dir / "plots"
    assert (plots / "certified_accuracy.png").is_file() and (plots / "robust_accuracy.png").is_file()


def test_a_single_method_keeps_one_colour_per_defence(default):
    from evaluations.report import run_colours

    colours, markers = run_colours(default[0].defences)
    assert colours["rs_sigma0.25"] != colours["rs_sigma0.5"] and markers == {}


def test_the_report_puts_the_methods_side_by_side(compared):
    pipeline, results = compared
    report = (pipeline.out_dir / "report.md").read_text()
    section = report.split("## Training methods compared", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| 0.")]
    assert [row.split(" | ")[1:3] for row in rows] == [
        ["gaussian", "rs_sigma0.25"],
        ["consistency", "rs_consistency_sigma0.25"],
        ["gaussian", "rs_sigma0.5"],
        ["consistency", "rs_consistency_sigma0.5"],
    ]
    for row in rows:  # ACR from results.json, the larger of each sigma in bold
        name = row.split(" | ")[2]
        acr = results["defences"][name]["certified"]["acr"]
        assert f"{acr:.3f}" in row
    for sigma in ("0.25", "0.5"):
        pair = [r for r in rows if r.startswith(f"| {sigma} |")]
        acrs = [results["defences"][r.split(" | ")[2]]["certified"]["acr"] for r in pair]
        assert ["**" in r for r in pair] == [a == max(acrs) for a in acrs]
    assert "consistency: lmbda = 5.0" in section


def test_a_run_without_attacks_says_so_once_not_per_defence(tmp_path, model_cache):
    """The training preset attacks nothing: the report says so in one line (not two tables of "not
    attacked" rows) and the plot is titled and labelled for certified accuracy alone."""
    overrides = [c for c in DEFAULT if not c.startswith("attacks.enabled")] + ["attacks.enabled=[]"]
    pipeline, results = _run(tmp_path / "run", model_cache, overrides)
    report = (pipeline.out_dir / "report.md").read_text()
    names = ", ".join(results["defences"])
    assert f"No defence was attacked: {names} (not attacked: no attack in attacks.enabled" in report
    assert "### L∞" not in report and "Nothing to compare: no defence was attacked." in report
    assert (pipeline.out_dir / "plots" / "certified_accuracy.png").exists()


def test_the_dry_run_prices_each_methods_passes():
    from evaluations.dryrun import _training_plan

    config = tiny_config(
        'smoothing.training=["gaussian", "smoothadv", "macer", "consistency", "smoothmix"]',
        'smoothing.training_params={"smoothadv": {"num_steps": 4, "warmup": 1}, '
        '"smoothmix": {"num_steps": 3, "warmup": 1}}',
    )
    store = ModelStore(config, load_dataset("digits"), "/nonexistent", progress=False)
    rows = {row["name"]: row for row in _training_plan(config, store)}
    per_sample = config["model"]["epochs"] * len(store.dataset.x_train)
    expected = {
        "gaussian": 1,
        "smoothadv": 4 * (4 + 1),
        "macer": 16,
        "consistency": 2,
        "smoothmix": 4 * (3 + 2),
    }
    for method, passes in expected.items():
        for sigma in (0.25, 0.5):
            assert rows[f"{method}-sigma{sigma}"]["backward"] == passes * per_sample


def test_the_dry_run_of_the_training_preset_plans_every_method_and_sigma(tmp_path, capsys):
    from evaluations.cli import main

    threads = torch.get_num_threads()
    try:
        assert main(["run", "--preset", "training", "--dry-run", "--cache-dir", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)  # the preset sets run.threads = 1
    out = capsys.readouterr().out
    per_sample = 20 * 4000  # epochs x training inputs of the mnist5k split
    passes = {"gaussian": 1, "smoothadv": 4 * 5, "macer": 16, "consistency": 2, "smoothmix": 4 * 6}
    for sigma, suffix in ((0.25, "0.25"), (0.5, "0.5"), (1.0, "1")):
        for method, count in passes.items():
            assert f"| train | {method}-sigma{sigma} (to train) | 1 | | {count * per_sample:,} |" in out
            name = f"rs_sigma{suffix}" if method == "gaussian" else f"rs_{method}_sigma{suffix}"
            assert f"| certify | {name} | 1 | 210,000 |" in out  # 100 points x (100 + 2,000)
    attacks = [line for line in out.splitlines() if line.startswith("| attacks |")]
    assert len(attacks) == 15 and all(line.endswith("| 0 | 0 | 0 | 0 |") for line in attacks)  # no attacks
    assert "| certificate_check |" not in out
    assert not any(tmp_path.iterdir())  # nothing trained or written
