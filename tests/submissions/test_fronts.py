"""The evaluator's denoiser in a submission's worker (evaluations.models.in_worker_behind): the composed
model answers like the denoiser and the model in this process, normalisation included; its exported
program is cached and reused; denoised smoothing over it certifies what it certifies in this process; a
model that runs here is left alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluations import models as models_module
from evaluations.models import Normalized, in_worker_behind
from evaluations.submissions.remote import RemoteModule, start_worker

from .conftest import TEST_LIMITS, honest_module, write_python_submission

PYTHON_SPEC = {"format": "python", "module": "model.py:Model", "weights": "weights.pt", "kwargs": {}}
MEAN, STD = [0.4], [0.3]


def _denoiser() -> torch.nn.Module:
    from art_smoothing_plugin.denoisers import DENOISER_ARCHITECTURES

    denoiser = DENOISER_ARCHITECTURES["dncnn"](channels=1, depth=3, width=8, seed=0).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # an untrained residual denoiser is close to the identity: make it act
        for parameter in denoiser.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return denoiser


@pytest.fixture
def worker(tmp_path):
    folder = write_python_submission(tmp_path / "bob")
    remote = start_worker(folder, PYTHON_SPEC, isolation="process", limits=TEST_LIMITS, threads=1, outputs=10)
    yield remote
    remote.close()


def test_a_normalised_submission_behind_a_denoiser_answers_like_it_in_process(worker, tmp_path, monkeypatch):
    denoiser, local = _denoiser(), Normalized(honest_module(), MEAN, STD)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    composed = in_worker_behind(
        Normalized(worker, MEAN, STD), denoiser, x[:2], cache_dir=tmp_path / "cache", identity={"id": 1}
    )
    assert isinstance(composed, RemoteModule) and composed.client is worker.client and composed.route
    with torch.no_grad():
        torch.testing.assert_close(composed(x), local(denoiser(x)), rtol=1e-5, atol=1e-6)
    mine, theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    composed(mine).logsumexp(1).sum().backward()
    local(denoiser(theirs)).logsumexp(1).sum().backward()
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-6)

    # The exported program is cached: a second composition with the same identity exports nothing.
    (program,) = (tmp_path / "cache" / "fronts").glob("front-*.pt2")

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the program is cached")

    monkeypatch.setattr(models_module, "export_front", no_export)
    again = in_worker_behind(
        Normalized(worker, MEAN, STD), denoiser, x[:2], cache_dir=tmp_path / "cache", identity={"id": 1}
    )
    with torch.no_grad():
        torch.testing.assert_close(again(x), local(denoiser(x)), rtol=1e-5, atol=1e-6)
    assert list((tmp_path / "cache" / "fronts").iterdir()) == [program]  # no partial file left behind


def test_a_model_in_this_process_keeps_its_denoiser_here():
    example = torch.rand(2, 1, 8, 8)
    assert in_worker_behind(honest_module(), _denoiser(), example) is None
    assert in_worker_behind(Normalized(honest_module(), MEAN, STD), _denoiser(), example) is None


def test_denoised_smoothing_over_the_composed_worker_certifies_as_in_process(worker):
    """The evaluator draws the noise and does the statistics either way: with the denoiser moved into the
    worker, the same seed gives the same counts, hence the same labels and radii."""
    from art_smoothing_plugin.estimators.denoised_smoothing import DenoisedSmoothingClassifier

    denoiser = _denoiser()
    x = np.random.default_rng(4).random((4, 1, 8, 8), dtype=np.float32)
    composed = in_worker_behind(worker, denoiser, torch.from_numpy(x[:2]))
    assert composed is not None
    settings = {"input_shape": (1, 8, 8), "nb_classes": 10, "scale": 0.25, "clip_values": (0.0, 1.0)}
    settings |= {"n0": 20, "sample_size": 4, "seed": 7, "batch_size": 50, "alpha": 0.01}
    here = DenoisedSmoothingClassifier(honest_module(), denoiser, **settings)
    there = DenoisedSmoothingClassifier(composed, None, **settings)
    expected, got = here.certify(x, n=200), there.certify(x, n=200)
    for mine, theirs in zip(got, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
