"""The pipeline end to end on the tiny configuration: every output is written and follows the schema,
attacks stay inside their budgets, and a rerun in the same folder redoes nothing."""

from __future__ import annotations

import json

import numpy as np

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
    assert smoothed_attacks == {"pgd", "pgdl2", "eotpgd", "art_pgd", "smoothadv"}
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
