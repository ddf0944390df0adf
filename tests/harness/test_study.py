"""The study of n and alpha: counts are prefixes of one estimation stream that is independent of the
selection samples, certificates are CERTIFY's own (the statistics module's bound and radius), the run
resumes, and the command line reaches it.

The independence and soundness tests use a base classifier whose class probabilities under noise are known
exactly: f(z) = [z > 0] on one coordinate, so P(f(x + noise) = 1) = Phi(x / sigma)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from art_smoothing_plugin import statistics
from evaluations.study import prefix_counts, run_study, study_certificates

from .conftest import tiny_config

SIGMA = 0.5


class Threshold(torch.nn.Module):
    """Class 1 when the input is positive, else class 0 (logits far apart, so argmax is exact)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        value = z.reshape(len(z), -1)[:, :1]
        return torch.cat([-value, value], dim=1) * 1e4


def _counts(x0, n_values, n0=50, seed=0):
    x = np.asarray(x0, dtype=np.float32).reshape(-1, 1, 1, 1)
    return prefix_counts(
        Threshold(),
        x,
        sigma=SIGMA,
        n0=n0,
        n_values=n_values,
        num_classes=2,
        batch_size=4096,
        seeds=[seed * 100_000 + i for i in range(len(x))],
        device="cpu",
    )


def test_counts_are_nested_prefixes_and_independent_of_the_selection():
    # At x = 0 both classes have probability 1/2 and the selection picks one at random. With estimation
    # samples independent of it, the picked class's votes among n are Binomial(n, 1/2), below n/2 about
    # half the time. Had the estimation reused the selection samples, they would never be below n0/2.
    points, n_values = 400, [50, 200, 1000]
    candidates, counts = _counts(np.zeros(points), n_values)
    assert counts.shape == (points, 3) and set(np.unique(candidates)) == {0, 1}
    assert np.all(np.diff(counts, axis=1) >= 0) and np.all(counts <= np.asarray(n_values))
    increments = np.diff(counts, axis=1, prepend=0)
    assert np.all(increments <= np.diff(n_values, prepend=0))
    below = int(np.count_nonzero(counts[:, 0] < 25))  # P(Bin(50, 1/2) < 25) = 0.444
    low, high = stats.binom.ppf([1e-6, 1 - 1e-6], points, stats.binom.cdf(24, 50, 0.5))
    assert low <= below <= high
    # the mean vote share of the picked class is 1/2 at every n (a selection bias would push it up)
    for j, n in enumerate(n_values):
        total = int(counts[:, j].sum())
        low, high = stats.binom.ppf([1e-6, 1 - 1e-6], points * n, 0.5)
        assert low <= total <= high


def test_every_certificate_is_sound_at_its_own_n_and_alpha():
    # Points with known top-class probabilities: a certificate (n, alpha) overstates the true radius
    # sigma * Phi^-1(p) with probability at most alpha; count those over 300 points per (n, alpha).
    rng = np.random.default_rng(0)
    x0 = rng.uniform(0.0, 1.5, 300)
    n_values, alphas = [100, 1000], [0.01, 0.1]
    candidates, counts = _counts(x0, n_values)
    labels = np.ones(len(x0), dtype=np.int64)
    true_radius = SIGMA * stats.norm.ppf(stats.norm.cdf(x0 / SIGMA))  # = x0: the distance to the boundary
    rows = study_certificates(
        candidates,
        counts,
        labels,
        sigma=SIGMA,
        n0=50,
        n_values=n_values,
        alphas=alphas,
        radius_grid=np.array([0.0, 0.5]),
    )
    assert [(r["n"], r["alpha"]) for r in rows] == [(n, a) for n in n_values for a in alphas]
    for row, j in zip(rows, [0, 0, 1, 1], strict=True):
        certified = row["labels"] != -1
        wrong = (row["labels"] != 1) | (row["radii"] > true_radius + 1e-9)  # class 0 is never g's answer
        overstated = int(np.count_nonzero(certified & wrong))
        assert overstated <= stats.binom.ppf(1 - 1e-6, len(x0), row["alpha"])
        # the certificate is CERTIFY's: the statistics module's bound and radius on the same counts
        p_lower = statistics.clopper_pearson_lower(counts[:, j], row["n"], row["alpha"])
        expected = np.where(p_lower > 0.5, statistics.certified_radius(p_lower, SIGMA), 0.0)
        np.testing.assert_allclose(row["radii"], expected)
        assert row["max_certifiable_radius"] == pytest.approx(
            SIGMA * stats.norm.ppf(row["alpha"] ** (1 / row["n"]))
        )
        assert row["largest_certified_radius"] <= row["max_certifiable_radius"] + 1e-12
    # more samples or a larger alpha never certify less on the same counts
    acr = {(r["n"], r["alpha"]): r["acr"] for r in rows}
    assert acr[(100, 0.01)] <= acr[(100, 0.1)] and acr[(1000, 0.01)] <= acr[(1000, 0.1)]


@pytest.fixture(scope="module")
def study_run(tmp_path_factory, model_cache):
    config = tiny_config(
        "study.points=12",
        "study.n_values=[300, 30, 100]",
        "study.alphas=[0.1, 0.001]",
        "study.n0=20",
        "study.chunk_size=6",
    )
    out = tmp_path_factory.mktemp("study")
    summary = run_study(config, out, cache_dir=model_cache, progress=False, log=lambda m: None)
    return config, out, summary


def test_the_study_writes_its_tables_and_plots(study_run):
    config, out, summary = study_run
    assert summary["study"]["n_values"] == [30, 100, 300]  # sorted by the config check
    assert [(r["n"], r["alpha"]) for r in summary["results"]] == [
        (n, a) for n in (30, 100, 300) for a in (0.001, 0.1)
    ]
    assert summary["units_computed"] == 2 and summary["units_reused"] == 0  # chunks of 6 points
    lines = (out / "study.tsv").read_text().splitlines()
    assert lines[0].split("\t") == [
        "idx",
        "label",
        "candidate",
        "count_top_n30",
        "count_top_n100",
        "count_top_n300",
    ]
    assert len(lines) == 13
    report = (out / "study.md").read_text()
    assert "| 300 | 0.001 |" in report and "one estimation stream per point" in report
    for name in ("study_certified_accuracy", "study_max_radius"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((out / "study.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(summary["results"]))


def test_the_results_do_not_depend_on_how_the_points_are_cut(study_run, model_cache, tmp_path):
    config, _, summary = study_run
    other = {**config, "study": {**config["study"], "chunk_size": 5}}  # units of 5, 5 and 2 points
    again = run_study(other, tmp_path, cache_dir=model_cache, progress=False, log=lambda m: None)
    assert again["units_computed"] == 3
    assert again["results"] == summary["results"]


def test_a_rerun_of_the_study_resumes_and_computes_nothing(study_run, model_cache):
    config, out, summary = study_run
    again = run_study(config, out, cache_dir=model_cache, progress=False, log=lambda m: None)
    assert again["units_computed"] == 0 and again["units_reused"] == 2
    assert again["results"] == summary["results"]


def test_the_study_command_and_its_config_checks(tmp_path, capsys):
    from evaluations.cli import main

    out = tmp_path / "study"
    assert main(["study", "--dry-run", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    assert "50 points x (100 + 100,000) samples = 5,005,000 forward passes" in printed
    assert "estimated total" in printed and not out.exists()
    assert main(["study", "--dry-run", "--set", "study.alphas=[0.01, 1]"]) == 2
    assert "config key 'study.alphas'" in capsys.readouterr().err
    assert main(["study", "--dry-run", "--set", "study.n_values=[]"]) == 2
    assert "config key 'study.n_values'" in capsys.readouterr().err
