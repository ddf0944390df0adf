"""AutoAttack in the harness (the tiny run, at a few steps and queries): its rows and parts for every
defence it applies to, the eps sweep, the worst case (parts and sweep excluded, on the points every attack
covered), each attack's time, the checklist and the comparison with single attacks in results.json and the
report, the attack-strength figure, the dry run, and bad configuration refused naming the key."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluations.config import ConfigError, check_budgets, eps_limit
from evaluations.pipeline import Pipeline

from .conftest import tiny_config


def test_autoattack_rows_parts_and_sweep_for_every_attacked_defence(tiny_run):
    pipeline, results = tiny_run
    rows = [e for e in pipeline.data.empirical if e["attack"].startswith("autoattack")]
    dims = math.prod(pipeline.dataset.input_shape)
    for defence in pipeline.defences:
        mine = [e for e in rows if e["defence"] == defence.name]
        if pipeline.attack_points(defence) == 0:
            assert not mine
            continue
        ensemble = {(e["norm"], e["eps"], e["sweep"]) for e in mine if e["attack"] == "autoattack"}
        assert ensemble == {("linf", 0.2, False), ("l2", 1.0, False), ("linf", 1.0, True), ("l2", 8.0, True)}
        assert eps_limit("l2", dims) == 8.0
        parts = {e["attack"] for e in mine if e.get("part_of") == "autoattack"}
        expected = {"autoattack/apgd-ce", "autoattack/apgd-ce-restarts"}
        if not defence.randomized:
            expected |= {"autoattack/gradient", "autoattack/square"}
        assert parts == expected, defence.name
        for entry in mine:
            # Every part is judged by the defence like any attack: same points, same labels.
            assert len(entry["predict"]) == len(entry["label"]) == len(entry["idx"])
        main = [e for e in mine if e["attack"] == "autoattack"]
        assert all(e["seconds"] > 0 and e["units"] == 1 for e in main)  # one unit for all its points
        if not defence.randomized:
            assert all(set(e["component_seconds"]) >= {"apgd-ce", "square"} for e in main)
        else:
            assert all(set(e["component_seconds"]) >= {"apgd-ce", "apgd-dlr"} for e in main)
    # Plain PGD on feature squeezing differentiates the bare model: a transfer attack.
    threats = {(e["defence"], e["attack"]): e["threat"] for e in pipeline.data.empirical}
    assert threats[("feature_squeezing", "pgd")] == "transfer"
    assert threats[("feature_squeezing", "bpda")] == "white-box"
    assert threats[("undefended", "pgd")] == "white-box"


def test_worst_case_takes_autoattack_but_not_its_parts_nor_the_sweep(tiny_run):
    pipeline, results = tiny_run
    for name, entry in results["defences"].items():
        for norm, table in entry["empirical"].items():
            worst = table["worst_case"]
            assert "autoattack" in worst["attacks"], (name, norm)
            assert not any("/" in attack for attack in worst["attacks"])
            assert worst["eps"] == [0.2] if norm == "linf" else [1.0]  # the sweep's budget is not a column
            rows = [
                e
                for e in pipeline.data.empirical
                if e["defence"] == name and e["norm"] == norm and not e.get("part_of") and not e.get("sweep")
            ]
            count = min(len(e["label"]) for e in rows)
            robust = np.logical_and.reduce([e["predict"][:count] == e["label"][:count] for e in rows])
            assert worst["accuracy"] == [pytest.approx(robust.mean())]
            assert worst["accuracy"][0] <= table["autoattack"]["accuracy"][0] + 1e-12
            assert table["autoattack"]["seconds"][0] > 0


def test_checklist_comparisons_and_times_in_results_and_report(tiny_run):
    pipeline, results = tiny_run
    report = (pipeline.out_dir / "report.md").read_text()
    assert "## Are the attacks strong enough? AutoAttack and the gradient-masking checklist" in report
    assert "No flag is not a claim of robustness" in report
    assert "### Time per attack" in report
    for name, entry in results["defences"].items():
        if not entry["empirical"]:
            continue
        audit = entry["audit"]
        kinds = {c["check"] for c in audit["checks"]}
        assert "more_effort" in kinds and "eps_sweep" in kinds
        assert ("square_beats_gradient" in kinds) is (not entry["smoothed"])
        assert all(c["p_value"] <= 1 for c in audit["checks"])
        assert {r["attack"] for r in audit["autoattack"]} >= {"pgd"} or entry["smoothed"]
        assert {"autoattack"} <= set(audit["times"]) and all(
            t["seconds"] > 0 for t in audit["times"].values()
        )
        assert f"| {name} | autoattack |" in report
        for flag in audit["flags"]:
            assert flag["message"].startswith("possible gradient masking")
    assert (pipeline.out_dir / "plots" / "attack_strength.png").is_file()


def test_bad_autoattack_settings_are_refused_naming_the_key():
    with pytest.raises(
        ConfigError, match=r"'autoattack.version': expected one of 'auto', 'standard', 'rand'"
    ):
        tiny_config('autoattack.version="plus"')
    with pytest.raises(ConfigError, match=r"'autoattack.norms': expected a list of names from 'linf', 'l2'"):
        tiny_config('autoattack.norms=["linf", "l1"]')
    with pytest.raises(ConfigError, match=r"'attacks.linf_eps'"):
        tiny_config("attacks.linf_eps=[0.1, 2]")
    # An L2 budget above sqrt(d) is refused once the data's size is known (8x8 digits: 8).
    config = tiny_config("attacks.l2_eps=[1.0, 9.0]")
    with pytest.raises(ConfigError, match=r"'attacks.l2_eps': expected numbers in \[0, 8\].*sqrt\(64\)"):
        check_budgets(config, (1, 8, 8))
    check_budgets(tiny_config("attacks.l2_eps=[8.0]"), (1, 8, 8))
    pipeline = Pipeline(config, "/nonexistent/never-created", progress=False, log=lambda m: None)
    with pytest.raises(ConfigError, match="attacks.l2_eps"):
        pipeline.prepare()


def test_dry_run_prices_autoattack(model_cache):
    from evaluations.dryrun import dry_run

    text = dry_run(tiny_config(), cache_dir=model_cache)
    assert "undefended: autoattack (standard, 12 points)" in text
    assert "rs_sigma0.25: autoattack (rand, 12 points)" in text


def test_attack_strength_figure_names_flagged_defences(tmp_path):
    from evaluations import plots

    series = {
        "linf": {
            "undefended": {"autoattack": ([0.1, 1.0], [0.2, 0.0]), "others": ([0.1], [0.3])},
            "rounded": {"autoattack": ([0.1, 1.0], [0.4, 0.1]), "others": ([0.1], [0.9])},
        }
    }
    figure = plots.attack_strength_figure(series, flagged=["rounded"])
    labels = figure.legends[0].get_texts()
    assert [t.get_text() for t in labels][:2] == ["undefended", "rounded (flagged)"]
    assert figure.axes[0].get_xscale() == "log"
    assert plots.plot_attack_strength(series, tmp_path / "strength.png").is_file()
    with pytest.raises(ValueError, match="at least one norm"):
        plots.attack_strength_figure({})
