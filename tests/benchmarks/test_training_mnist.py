"""The statistics benchmarks/training_mnist.py prints: per-point radii, the paired sign-flip test of the
confirmatory run and the paired-bootstrap interval of the ACR gain; and that it confirms nothing that is not
pre-registered."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from art_smoothing_plugin.statistics import binomial_upper_tail

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "benchmark_training_mnist", BENCHMARKS / "training_mnist.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_point_radii_count_only_certified_correct_points(bench) -> None:
    radii = bench.point_radii(np.array([3, -1, 2, 5]), np.array([0.7, 0.0, 0.4, 1.2]), np.array([3, 3, 1, 5]))
    np.testing.assert_array_equal(radii, [0.7, 0.0, 0.0, 1.2])


def test_sign_flip_test_on_three_positive_differences(bench) -> None:
    # Of the 8 sign patterns only all-plus reaches the observed mean: p = 1/8 up to resampling error.
    difference, pvalue = bench.paired_sign_flip_test(np.ones(3), np.zeros(3), resamples=40_000, seed=1)
    assert difference == 1.0
    assert abs(pvalue - 0.125) < 4 * np.sqrt(0.125 * 0.875 / 40_000)


def test_sign_flip_test_holds_its_level_under_the_null_and_detects_a_shift(bench) -> None:
    # H0: differences symmetric about 0 (many exact ties at 0, as for radii of abstaining points).
    generator = np.random.default_rng(0)
    replicates, level = 200, 0.05
    rejections = 0
    for replicate in range(replicates):
        base = generator.exponential(0.5, 100) * (generator.random(100) < 0.7)
        other = base + generator.normal(0.0, 0.2, 100) * (generator.random(100) < 0.5)
        _, pvalue = bench.paired_sign_flip_test(other, base, resamples=2_000, seed=replicate)
        rejections += pvalue <= level
    # A valid test rejects at most 5% of the time: this many rejections must not be a 1-in-1,000 surprise
    # for Binomial(200, 0.05).
    assert binomial_upper_tail(rejections, replicates, level) >= 1e-3
    shifted = generator.exponential(0.5, 200)
    _, pvalue = bench.paired_sign_flip_test(
        shifted + 0.1, shifted + generator.normal(0, 0.05, 200), resamples=2_000
    )
    assert pvalue < 0.01


def test_relative_gain_interval(bench) -> None:
    base = np.linspace(0.1, 1.0, 50)
    gain, low, high = bench.relative_gain_interval(1.1 * base, base)
    assert gain == pytest.approx(0.1) and low == pytest.approx(0.1) and high == pytest.approx(0.1)
    noisy = base + np.random.default_rng(2).normal(0, 0.2, 50)
    gain, low, high = bench.relative_gain_interval(noisy, base)
    assert low < gain < high
    with pytest.raises(ValueError, match="baseline"):
        bench.relative_gain_interval(base, np.zeros(50))


def test_confirm_refuses_without_a_preregistration(bench, capsys, monkeypatch) -> None:
    monkeypatch.setattr(bench, "PREREGISTRATION", None)
    with pytest.raises(SystemExit):
        bench.main(["--confirm"])
    assert "pre-registered" in capsys.readouterr().err


def test_params_are_checked_before_any_work(bench, capsys) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--params", '{"smoothadversarial": {}}'])
    assert "choose one of gaussian" in capsys.readouterr().err
    with pytest.raises(ValueError, match="epsilon"):
        bench.main(["--params", '{"smoothadv": {"epsilon": -1}}'])


def test_shares_split_the_grid_into_disjoint_parts_that_cover_it(bench, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(
        bench, "trained_lenet", lambda data, method, params, sigma, seed, args: (None, "k", 1.0)
    )
    monkeypatch.setattr(
        bench, "certified", lambda model, key, sigma, x, y, first, args: {"point_radii": [0.5, 0.0]}
    )
    data = type("Data", (), {"x_test": np.zeros((4, 1)), "y_test": np.zeros(4, dtype=int)})()

    def jobs(share):
        args = type("Args", (), {"share": share, "params": {}, "epochs": 20, "n": 10, "out": tmp_path})()
        return set(
            bench.run_grid(data, ["gaussian", "consistency"], bench.SIGMAS, bench.SEEDS, 0, 2, args, "t")
        )

    whole = jobs((1, 1))
    assert len(whole) == 2 * len(bench.SIGMAS) * len(bench.SEEDS)
    first, second = jobs((1, 2)), jobs((2, 2))
    assert first.isdisjoint(second) and first | second == whole and abs(len(first) - len(second)) <= 1


@pytest.mark.parametrize("text", ["0/2", "3/2", "1-2", "a/b", "2"])
def test_a_bad_share_is_refused_naming_the_form(bench, capsys, text) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--share", text])
    assert "--share" in capsys.readouterr().err


def test_the_preregistration_names_one_method_and_its_settings_at_every_sigma(bench) -> None:
    registered = bench.PREREGISTRATION
    assert registered["method"] in bench.METHODS and registered["method"] != "gaussian"
    assert set(registered["params"]) == set(bench.SIGMAS)
    for params in registered["params"].values():
        bench.make_training_method(registered["method"], **params)  # valid hyper-parameters
    assert {"epochs", "batch_size", "lr", "date"} <= set(registered)


def test_a_cached_rerun_is_not_logged_as_a_new_attempt(bench, tmp_path) -> None:
    log = tmp_path / "attempts.jsonl"
    attempt = {"phase": "confirm", "method": "consistency", "sigma": 1.0, "seed": 0, "acr": 1.4}
    assert bench.log_attempt(log, attempt) is True
    assert bench.log_attempt(log, attempt) is False  # the same run again, found in the cache
    assert bench.log_attempt(log, {**attempt, "seed": 1}) is True
    assert len(log.read_text().splitlines()) == 2
