"""The CUDA paths: estimators, keyed noise, mixed precision, the batch-size probe, training, denoisers.

Skipped where torch sees no CUDA GPU (CI has none); on a GPU machine: ``python3 -m pytest tests/gpu``.
Every bound on a random quantity is a binomial or normal tail at a fixed seed, stated where it is used.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from art_smoothing_plugin import DenoisedSmoothingClassifier, DnCNN, RandomizedSmoothingClassifier
from art_smoothing_plugin.denoisers.ddpm import train_ddpm
from art_smoothing_plugin.sampling import NoiseKey, keyed_noise
from art_smoothing_plugin.training import TRAINING_METHODS, make_training_method, train
from evaluations.data import Dataset, load_dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SIGMA = 0.25
CUDA = torch.device("cuda")


def mlp(seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
        )


def estimator(model: torch.nn.Module, device_type: str, **kwargs) -> RandomizedSmoothingClassifier:
    options = dict(
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type=device_type,
        sample_size=32,
        scale=SIGMA,
        seed=0,
    )
    options.update(kwargs)
    return RandomizedSmoothingClassifier(model, **options)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained_state(digits: Dataset) -> dict:
    """The digits MLP after 15 epochs of Gaussian augmentation on the CPU (the reference device)."""
    model = mlp()
    train(
        "gaussian",
        model,
        digits.x_train,
        digits.y_train,
        sigma=SIGMA,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        nb_epochs=15,
        batch_size=64,
        clip_values=(0.0, 1.0),
        seed=0,
        progress=False,
    )
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def trained(state: dict) -> torch.nn.Module:
    model = mlp()
    model.load_state_dict(state)
    return model.eval()


def test_the_estimator_moves_its_model_to_the_gpu_and_answers_in_numpy(digits, trained_state) -> None:
    smoothed = estimator(trained(trained_state), "gpu")
    assert next(smoothed.model.parameters()).device.type == "cuda"
    labels, radii = smoothed.certify(digits.x_test[:8], n=500)
    assert isinstance(labels, np.ndarray) and isinstance(radii, np.ndarray)
    assert labels.shape == radii.shape == (8,)
    assert np.all((labels >= -1) & (labels < 10)) and np.all(radii >= 0)
    assert np.all(radii[labels == -1] == 0)


def test_keyed_noise_on_the_gpu_is_standard_normal_and_the_same_whatever_the_cut() -> None:
    key, shape = NoiseKey(seed=7, call=0), (1, 8, 8)
    whole = keyed_noise(key, phase=1, index=3, samples_per_input=20_000, sample_shape=shape, device=CUDA)
    assert whole.device.type == "cuda" and whole.dtype == torch.float32
    values = whole.double().flatten()
    count = values.numel()  # 1,280,000 draws
    # mean ~ N(0, 1/count) and sample variance ~ N(1, 2/count): 6 standard deviations, two-sided
    # (each false alarm ~2e-9 for a sound generator).
    assert abs(values.mean().item()) < 6 / math.sqrt(count)
    assert abs(values.var().item() - 1) < 6 * math.sqrt(2 / count)
    # The same input's noise, filled through another device and batch cut, is the same draw on the GPU.
    again = keyed_noise(key, phase=1, index=3, samples_per_input=20_000, sample_shape=shape, device=CUDA)
    assert torch.equal(whole, again)
    other = keyed_noise(key, phase=1, index=4, samples_per_input=20_000, sample_shape=shape, device=CUDA)
    assert not torch.equal(whole, other)


def test_gpu_certification_is_reproducible_and_cut_independent_in_its_noise(digits, trained_state) -> None:
    """The same seed gives the same certificates; another batch size draws the same noise per input, so
    the votes can differ only where a forward pass of another shape rounds a near-tie the other way."""
    x = digits.x_test[:12]
    first = estimator(trained(trained_state), "gpu").certify_detailed(x, 2_000, batch_size=512, seed=3)
    second = estimator(trained(trained_state), "gpu").certify_detailed(x, 2_000, batch_size=512, seed=3)
    np.testing.assert_array_equal(first.counts_top, second.counts_top)
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.radii, second.radii)
    cut = estimator(trained(trained_state), "gpu").certify_detailed(x, 2_000, batch_size=333, seed=3)
    np.testing.assert_array_equal(first.candidates, cut.candidates)
    # Float32 matrix products of another batch shape may reorder sums (~1e-6 relative): a vote moves
    # only at a logit margin that small, which noise in [0, 1] units hits on a vanishing share of draws.
    assert np.max(np.abs(first.counts_top - cut.counts_top)) <= 2


def test_gpu_and_cpu_smoothed_frequencies_agree_within_binomial_bounds(digits, trained_state) -> None:
    """Independent noise on the two devices: each class frequency over 4,000 draws has standard deviation
    at most sqrt(0.25 / 4000); their difference at most sqrt(2) times that. 6 of them: false alarm
    ~2e-9 per entry (200 entries)."""
    x = digits.x_test[:20]
    draws = 4_000
    on_gpu = estimator(trained(trained_state), "gpu", sample_size=draws).predict(x)
    on_cpu = estimator(trained(trained_state), "cpu", sample_size=draws).predict(x)
    bound = 6 * math.sqrt(2 * 0.25 / draws)
    assert np.max(np.abs(on_gpu - on_cpu)) < bound


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_runs_the_base_model_in_it_and_keeps_the_noise_in_fp32(
    digits, trained_state, precision, dtype
) -> None:
    model = trained(trained_state)
    seen_inputs, seen_outputs = set(), set()
    model[0].register_forward_pre_hook(lambda module, args: seen_inputs.add(args[0].dtype))
    model[1].register_forward_hook(lambda module, args, output: seen_outputs.add(output.dtype))
    smoothed = estimator(model, "gpu")
    result = smoothed.certify_adaptive(
        digits.x_test[:6], mode="budget", max_samples=2_000, tolerance=0.05, precision=precision, seed=0
    )
    assert seen_inputs == {torch.float32}, "the noisy batches reach the model in fp32"
    assert seen_outputs == {dtype}, f"the model's first layer ran in {seen_outputs}, not {dtype}"
    assert np.all(result.samples_used <= 2_000)
    assert np.all((result.labels >= -1) & (result.labels < 10)) and np.all(result.radii >= 0)


def test_the_auto_batch_size_on_the_gpu_spends_none_of_the_sample_budget(digits, trained_state) -> None:
    smoothed = estimator(trained(trained_state), "gpu")
    result = smoothed.certify_adaptive(
        digits.x_test[:4], mode="budget", max_samples=1_000, tolerance=0.05, batch_size="auto", seed=0
    )
    assert np.all(result.samples_used <= 1_000)
    assert result.labels.shape == (4,)


@pytest.mark.parametrize("method", sorted(TRAINING_METHODS))
def test_every_training_method_trains_on_the_gpu(digits, method) -> None:
    """Three epochs on the GPU: the weights stay there, change, and the model beats chance (10%) by far:
    an untrained model is at ~10%, and 300 test digits at 10% would exceed 25% with probability < 1e-10
    (binomial tail)."""
    model = mlp(seed=1).to(CUDA)
    before = [p.detach().clone() for p in model.parameters()]
    warmup = {"warmup": 1} if method in ("smoothadv", "smoothmix") else {}  # the default 10 > 3 epochs
    losses = train(
        make_training_method(method, **warmup),
        model,
        digits.x_train,
        digits.y_train,
        sigma=SIGMA,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        nb_epochs=3,
        batch_size=128,
        clip_values=(0.0, 1.0),
        seed=0,
        progress=False,
    )
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert all(math.isfinite(loss) for loss in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with torch.no_grad():
        x = torch.as_tensor(digits.x_test[:300], device=CUDA)
        accuracy = (model(x).argmax(1).cpu().numpy() == digits.y_test[:300]).mean()
    assert accuracy > 0.25


def test_denoised_smoothing_runs_denoiser_and_classifier_on_the_gpu(digits, trained_state) -> None:
    denoiser = DnCNN(channels=1, depth=3, width=8, seed=0)
    smoothed = DenoisedSmoothingClassifier(
        trained(trained_state),
        denoiser,
        input_shape=(1, 8, 8),
        nb_classes=10,
        scale=SIGMA,
        seed=0,
        device_type="gpu",
        query_budget=10_000,
    )
    assert next(denoiser.parameters()).device.type == "cuda"
    labels, radii = smoothed.certify(digits.x_test[:3], n=1_000)
    assert labels.shape == radii.shape == (3,)
    # 3 inputs x (n0 = 100 + n = 1,000) noisy queries, counted on the GPU path as on the CPU one.
    assert smoothed.queries_remaining == 10_000 - 3 * 1_100


def test_a_ddpm_trains_and_denoises_on_the_gpu(digits) -> None:
    ddpm = train_ddpm(
        digits.x_train[:256],
        base_channels=8,
        channel_multipliers=(1,),
        max_train_timestep=300,
        epochs=2,
        batch_size=64,
        cache_dir=False,
        device=CUDA,
        progress=False,
    )
    assert next(ddpm.model.parameters()).device.type == "cuda"
    denoiser = ddpm.denoiser(0.25)
    noisy = torch.as_tensor(digits.x_test[:16], device=CUDA) + 0.25 * torch.randn(16, 1, 8, 8, device=CUDA)
    with torch.no_grad():
        clean = denoiser(noisy)
    assert clean.device.type == "cuda" and clean.shape == noisy.shape
    assert torch.isfinite(clean).all() and clean.min() >= 0 and clean.max() <= 1
