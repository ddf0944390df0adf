"""Resume after an interruption: a run that dies in the middle of a stage, rerun with the same output
folder, reuses every unit it had finished, computes only the rest, and ends with exactly the numbers of
an uninterrupted run (each unit's randomness comes from its own derived seed)."""

from __future__ import annotations

import json

import pytest

from evaluations.attacks.smoothadv import SmoothAdv
from evaluations.pipeline import Pipeline, read_events
from evaluations.report import run_and_report

from .conftest import tiny_config


class Interrupted(RuntimeError):
    pass


def test_interrupted_run_resumes_without_redoing_work(tiny_run, model_cache, tmp_path, monkeypatch):
    _, uninterrupted = tiny_run
    out = tmp_path / "run"
    original = SmoothAdv.perturb
    calls = {"count": 0}

    def dies_on_third_call(self, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 3:
            raise Interrupted("simulated interruption in the middle of the attacks stage")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SmoothAdv, "perturb", dies_on_third_call)
    first = Pipeline(tiny_config(), out, cache_dir=model_cache, progress=False, log=lambda m: None)
    first.prepare()
    with pytest.raises(Interrupted):
        run_and_report(first)
    finished = {e["file"] for e in first.store.events if e["status"] == "computed"}
    assert any(e["stage"] == "attacks" for e in first.store.events)
    assert not (out / "results.json").exists()  # nothing half-written claims to be a result
    assert not list(out.rglob("*.tmp*"))  # no temporary file left behind

    monkeypatch.setattr(SmoothAdv, "perturb", original)
    second = Pipeline(tiny_config(), out, cache_dir=model_cache, progress=False, log=lambda m: None)
    second.prepare()
    resumed = run_and_report(second)
    reused = {e["file"] for e in second.store.events if e["status"] == "reused"}
    recomputed = {e["file"] for e in second.store.events if e["status"] == "computed"}
    assert reused == finished  # every finished unit is reused...
    assert not recomputed & finished  # ...and none is computed twice
    assert {e["status"] for e in second.models.events} == {"cached"}  # models are not retrained either
    assert len(read_events(out)) == len(first.store.events) + len(second.store.events)  # both runs logged
    assert _numbers(resumed) == _numbers(uninterrupted)


def _numbers(results: dict) -> str:
    """Every number of the defences' summaries except wall-clock timings, as canonical JSON."""
    defences = json.loads(json.dumps(results["defences"]))
    for entry in defences.values():
        entry.get("certified", {}).pop("seconds_per_point", None)
        entry.get("audit", {}).pop("times", None)
        for table in entry["empirical"].values():
            for values in table.values():
                values.pop("seconds", None)
    return json.dumps(defences, sort_keys=True)
