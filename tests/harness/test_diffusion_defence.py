"""Diffusion denoised smoothing as a harness defence: certified, attacked and reported like the others, its
DDPM trained once and cached, and settings it cannot honour refused before any work."""

from __future__ import annotations

import pytest

from evaluations.config import ConfigError
from evaluations.pipeline import Pipeline
from evaluations.report import run_and_report

from .conftest import tiny_config

#: Over the tiny configuration (whose DDPM is already tiny): both sigmas, and attacked this time.
DIFFUSION = [
    'defences.enabled=["diffusion_smoothing"]',
    "diffusion.sigmas=[0.25, 0.5]",
    "diffusion.points=6",
    "diffusion.attack_points=4",
    'attacks.enabled=["pgdl2"]',
    "certificate_check.points=4",
]


def run(tmp_path, name):
    # A model cache of this test's own: the session's already holds the tiny DDPM (the tiny run trains it).
    cache = tmp_path / "models"
    pipeline = Pipeline(tiny_config(*DIFFUSION), tmp_path / name, cache_dir=cache, progress=False, log=print)
    pipeline.prepare()
    return pipeline, run_and_report(pipeline)


def test_diffusion_defence_runs_end_to_end_and_reuses_its_ddpm(tmp_path):
    pipeline, results = run(tmp_path, "first")
    defences = results["defences"]
    assert set(defences) == {"diffusion_sigma0.25", "diffusion_sigma0.5"}
    timesteps = {d.name: d.identity["timestep"] for d in pipeline.defences}
    # the denoiser starts at the timestep whose noise level matches sigma (linear schedule, T = 1000)
    assert timesteps == {"diffusion_sigma0.25": 144, "diffusion_sigma0.5": 258}
    for name, defence in defences.items():
        assert defence["kind"] == "diffusion_smoothing" and defence["smoothed"]
        assert defence["certified"]["points"] == 6 and defence["certified"]["n"] == 60
        certify = (tmp_path / "first" / f"certify-{name}.tsv").read_text().splitlines()
        assert len(certify) == 1 + 6  # header and one row per certified point
        assert defence["empirical"]["l2"]["pgdl2"]["eps"] == [1.0]
    assert [e["status"] for e in pipeline.models.events if e["name"] == "ddpm"] == ["trained"]

    again, rerun = run(tmp_path, "second")
    assert [e["status"] for e in again.models.events if e["name"] == "ddpm"] == ["cached"]
    for name in defences:  # same models, same seeds: the same certificates
        assert rerun["defences"][name]["certified"] == defences[name]["certified"] | {
            "seconds_per_point": rerun["defences"][name]["certified"]["seconds_per_point"]
        }


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("diffusion.max_train_timestep=100", "diffusion.max_train_timestep"),
        ("diffusion.sigmas=[50.0]", "diffusion.sigmas"),
        ("diffusion.ddpm_multipliers=[1, 0]", "diffusion.ddpm_multipliers"),
        ('diffusion.ddpm_multipliers="12"', "diffusion.ddpm_multipliers"),
        ("diffusion.denoising_steps=0", "diffusion.denoising_steps"),
    ],
)
def test_settings_the_ddpm_cannot_honour_are_refused_by_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        tiny_config(*DIFFUSION, override)
