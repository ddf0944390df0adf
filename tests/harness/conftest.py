"""Fixtures of the harness tests: a tiny configuration of the quick preset (digits, a dozen test points,
few samples and steps, one or two training epochs), a session-wide model cache so every model is trained
once per test session, and one finished pipeline run that several tests inspect.

The tiny numbers make the run take seconds, not minutes; they are far too small for meaningful
robustness figures, which is not what these tests check (plumbing, resume, schema, budgets, soundness
checks on deliberately broken certifiers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from evaluations.config import resolve_config

#: ``section.key=value`` overrides of the quick preset that make a complete run take seconds.
TINY_OVERRIDES = [
    "run.chunk_size=6",
    "model.epochs=3",
    "adversarial_training.epochs=1",
    "adversarial_training.steps=2",
    "smoothing.sigmas=[0.25, 0.5]",
    "smoothing.points=12",
    "smoothing.n0=20",
    "smoothing.n=100",
    "smoothing.predict_n=100",
    "smoothing.batch_size=1000",
    "denoised.sigmas=[0.5]",
    "denoised.denoiser_epochs=1",
    'denoised.denoiser_kwargs={"depth": 3, "width": 8}',
    "denoised.points=12",
    "denoised.n=100",
    "denoised.n0=20",
    "denoised.attack_points=6",
    "diffusion.ddpm_channels=4",
    "diffusion.ddpm_multipliers=[1]",
    "diffusion.ddpm_epochs=1",
    "diffusion.points=12",
    "diffusion.n=60",
    "diffusion.n0=10",
    "diffusion.attack_points=0",
    "attacks.points=12",
    "attacks.enabled="
    '["pgd", "pgdl2", "eotpgd", "art_pgd", "smoothadv", "bpda", "detector_evading", "autoattack"]',
    "attacks.linf_eps=[0.2]",
    "attacks.l2_eps=[1.0]",
    "attacks.steps=3",
    "attacks.noise_samples=4",
    "autoattack.steps=3",
    "autoattack.square_queries=30",
    "autoattack.eot_iter=2",
    "autoattack.points=0",
    "certificate_check.points=12",
    "certificate_check.steps=3",
    "report.radius_grid=[0, 0.25, 0.5]",
]


def tiny_config(*extra: str, limit: int | None = None) -> dict[str, Any]:
    """The tiny configuration, with further ``section.key=value`` overrides."""
    return resolve_config("quick", None, [*TINY_OVERRIDES, *extra], limit)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the whole session: each tiny model is trained once."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, model_cache: Path):
    """A finished pipeline run of :func:`tiny_config`: ``(pipeline, results)``."""
    from evaluations.pipeline import Pipeline
    from evaluations.report import run_and_report

    pipeline = Pipeline(
        tiny_config(),
        tmp_path_factory.mktemp("tiny-run"),
        cache_dir=model_cache,
        progress=False,
        log=lambda m: None,
    )
    pipeline.prepare()
    results = run_and_report(pipeline)
    return pipeline, results


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module whose tests train tiny models (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): a second thread is no faster on them, and far slower when
    other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
