"""The pipeline end to end on the tiny configuration: every output is written and follows the schema,
attacks stay inside their budgets, and a rerun in the same folder redoes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evaluations import metrics
from evaluations.cohen_logs import read_certify_log
from evaluations.pipeline import Pipeline, read_events
from evaluations.report import run_and_report
from evaluations.schema import CERTIFY_COLUMNS, CHECK_COLUMNS, EMPIRICAL_COLUMNS, validate_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_every_output_is_written_and_follows_the_schema(tiny_run):
    pipeline, results = tiny_run
    out = pipeline.out_dir
    on_disk = json.loads((out / "results.json").read_text())
    validate_results(on_disk)
    assert on_disk["config"] == pipeline.config
    assert set(on_disk["timings"]) >= {"data", "models", "clean", "certify", "attacks", "certificate_check"}
    assert {"torch", "art", "torchattacks", "python"} <= set(on_disk["versions"])
    expected = {
        "undefended",
        "rs_sigma0.25",
        "rs_sigma0.5",
        "denoised_dncnn_sigma0.5",
        "diffusion_sigma0.5",
        "adversarial_training_linf",
        "adversarial_training_l2",
        "feature_squeezing",
    }
    assert set(on_disk["defences"]) == expected
    report = (out / "report.md").read_text()
    for heading in (
        "## Clean accuracy",
        "## Certified accuracy",
        "## Empirical robust accuracy",
        "## Certificate check",
        "## Stage timings",
        "OPTIMISTIC",
        "α/k-corrected",
    ):
        assert heading in report
    for name in ("certified_accuracy", "robust_accuracy", "certificate_check"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
        assert f"plots/{name}.png" in report


def test_certify_tsv_reproduces_the_summary(tiny_run):
    pipeline, results = tiny_run
    for name in ("rs_sigma0.25", "rs_sigma0.5", "denoised_dncnn_sigma0.5", "diffusion_sigma0.5"):
        path = pipeline.out_dir / f"certify-{name}.tsv"
        assert tuple(path.read_text().splitlines()[0].split("\t")) == CERTIFY_COLUMNS
        log = read_certify_log(path)
        summary = results["defences"][name]["certified"]
        accuracy = metrics.certified_accuracy(
            log["predict"], log["radius"], log["label"], summary["radius_grid"]
        )
        np.testing.assert_allclose(accuracy, summary["accuracy"])
        assert len(log["idx"]) == summary["points"] == 12
        # abstentions carry radius 0, certified points a positive radius
        assert np.all((log["predict"] == -1) == (log["radius"] == 0))


def test_empirical_rows_cover_every_unit_and_respect_budgets(tiny_run):
    pipeline, results = tiny_run
    lines = (pipeline.out_dir / "empirical.tsv").read_text().splitlines()
    assert tuple(lines[0].split("\t")) == EMPIRICAL_COLUMNS
    rows = [dict(zip(EMPIRICAL_COLUMNS, line.split("\t"), strict=True)) for line in lines[1:]]
    attacked = [r for r in rows if r["attack"] != "none"]
    assert len(attacked) == sum(len(e["label"]) for e in pipeline.data.empirical)
    for row in attacked:
        eps = float(row["eps"])
        measured = float(row["l2_distance"] if row["norm"] == "l2" else row["linf_distance"])
        assert measured <= eps * (1 + 1e-4) + 1e-5, row
        assert int(row["correct"]) == int(row["predict"] == row["label"])
        assert int(row["abstained"]) == int(row["predict"] == "-1")
    smoothed_attacks = {r["attack"] for r in attacked if r["defence"] == "rs_sigma0.25"}
    assert smoothed_attacks == {"pgd", "pgdl2", "eotpgd", "art_pgd", "smoothadv", "autoattack"} | {
        "autoattack/apgd-ce",
        "autoattack/apgd-ce-restarts",
    }
    squeezing_attacks = {r["attack"] for r in attacked if r["defence"] == "feature_squeezing"}
    assert {"bpda", "detector_evading"} <= squeezing_attacks
    assert {r["detected"] for r in attacked if r["defence"] == "feature_squeezing"} <= {"0", "1"}
    assert {r["detected"] for r in attacked if r["defence"] == "undefended"} == {"-1"}
    check_lines = (pipeline.out_dir / "certificate_check.tsv").read_text().splitlines()
    assert tuple(check_lines[0].split("\t")) == CHECK_COLUMNS
    for line in check_lines[1:]:
        row = dict(zip(CHECK_COLUMNS, line.split("\t"), strict=True))
        assert float(row["l2_distance"]) <= float(row["eps"]) * (1 + 1e-4) + 1e-5


def test_worst_case_is_no_better_than_any_attack(tiny_run):
    _, results = tiny_run
    for entry in results["defences"].values():
        for table in entry["empirical"].values():
            worst = table["worst_case"]
            for attack, values in table.items():
                if attack == "worst_case":
                    continue
                for eps, accuracy in zip(values["eps"], values["accuracy"], strict=True):
                    assert worst["accuracy"][worst["eps"].index(eps)] <= accuracy + 1e-12


def test_rerun_in_the_same_folder_redoes_nothing(tiny_run):
    pipeline, results = tiny_run
    before = len(read_events(pipeline.out_dir))
    again = Pipeline(
        pipeline.config, pipeline.out_dir, cache_dir=pipeline.cache_dir, progress=False, log=lambda m: None
    )
    again.prepare()
    rerun = run_and_report(again)
    assert again.store.count("computed") == 0
    assert again.store.count("reused") == pipeline.store.count("computed") > 50
    assert {e["status"] for e in again.models.events} == {"cached"}
    assert json.dumps(rerun["defences"], sort_keys=True) == json.dumps(results["defences"], sort_keys=True)
    new_events = read_events(pipeline.out_dir)[before:]
    assert new_events and all(e["status"] == "reused" for e in new_events)


def test_a_defence_that_is_certified_but_not_attacked_says_why(tiny_run):
    pipeline, results = tiny_run
    reason = "not attacked: diffusion.attack_points = 0"  # the tiny configuration's diffusion setting
    assert results["defences"]["diffusion_sigma0.5"]["not_attacked"] == reason
    assert all("not_attacked" not in e for n, e in results["defences"].items() if n != "diffusion_sigma0.5")
    report = (pipeline.out_dir / "report.md").read_text()
    assert f"| diffusion_sigma0.5 | diffusion_smoothing | 0 ({reason}) |" in report  # clean table
    assert report.count(f"| diffusion_sigma0.5 | {reason} |") == 2  # the L-inf and L2 tables
    assert f"| diffusion_sigma0.5 | not checked ({reason}) |" in report
    header = next(line for line in report.splitlines() if line.startswith("| defence | trials |"))
    row = next(line for line in report.splitlines() if "not checked (" in line)
    assert row.count("|") == header.count("|")  # as many cells as the table has columns
    assert "Why PREDICT (the clean table) abstains far less often than CERTIFY" in report


def test_every_plot_takes_the_one_colour_map_of_the_run(tiny_run, monkeypatch, tmp_path):
    from evaluations import plots, report

    pipeline, results = tiny_run
    seen = {}

    def spy(name):
        original = getattr(plots, name)

        def wrapper(*args, **kwargs):
            seen[name] = kwargs
            return original(*args, **kwargs)

        return wrapper

    for name in ("plot_certified_accuracy", "plot_robust_accuracy", "plot_certificate_check"):
        monkeypatch.setattr(plots, name, spy(name))
    monkeypatch.setattr(pipeline, "out_dir", tmp_path)
    report.write_plots(pipeline, results)
    expected = plots.defence_colours([d.name for d in pipeline.defences])
    assert len(seen) == 3 and all(kwargs["colours"] == expected for kwargs in seen.values())
    assert "diffusion_sigma0.5 (not attacked" in seen["plot_certificate_check"]["note"]
    assert "diffusion_sigma0.5" in seen["plot_certified_accuracy"]["note"]


def test_the_time_column_splits_each_chunk_by_samples(tiny_run):
    from evaluations.pipeline import apportion_seconds

    shares = apportion_seconds(6.0, np.array([100, 300, 200]))
    np.testing.assert_allclose(shares, [1.0, 3.0, 2.0])
    np.testing.assert_allclose(apportion_seconds(1.5, np.zeros(3, np.int64)), [0.5, 0.5, 0.5])
    pipeline, _ = tiny_run
    log = read_certify_log(pipeline.out_dir / "certify-rs_sigma0.25.tsv")
    size = pipeline.config["run"]["chunk_size"]
    chunk_seconds = []
    for path in sorted((pipeline.out_dir / "checkpoints" / "certify").glob("rs_sigma0.25-*.npz")):
        with np.load(path) as unit:
            chunk_seconds.append((int(path.name.split("-")[1]), float(unit["_seconds"])))
    for start, unit_seconds in chunk_seconds:
        times = log["time"][start : start + size]
        assert 0 < times.sum() <= unit_seconds  # the chunk's certify time, within its unit's time


def test_the_best_smoothed_defence_is_chosen_at_alpha_over_k(tiny_run):
    pipeline, results = tiny_run
    selection = results["selection"]
    smoothed = [n for n, e in results["defences"].items() if "certified" in e]
    assert selection["k"] == len(smoothed) == 4 and set(selection["defences"]) == set(smoothed)
    for name, entry in selection["defences"].items():
        assert entry["alpha"] == pytest.approx(results["defences"][name]["certified"]["alpha"] / 4)
        # the same counts at a smaller alpha never certify more
        assert entry["acr"] <= entry["acr_uncorrected"] + 1e-12
        assert entry["acr_uncorrected"] == pytest.approx(results["defences"][name]["certified"]["acr"])
        assert all(
            c <= u + 1e-12
            for c, u in zip(
                entry["accuracy"], results["defences"][name]["certified"]["accuracy"], strict=True
            )
        )
    assert selection["best"] == max(selection["defences"], key=lambda n: selection["defences"][n]["acr"])
    assert f"**{selection['best']}**" in (pipeline.out_dir / "report.md").read_text()
