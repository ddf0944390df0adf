"""The L2 PGD on the smoothed soft classifier that SmoothAdv and SmoothMix train against."""

from __future__ import annotations

import pytest
import torch

from art_smoothing_plugin.sampling import make_generator
from art_smoothing_plugin.smoothing import mean_softmax
from art_smoothing_plugin.training import SmoothAdv, TrainingContext, smoothed_l2_pgd, train, warmup_factor


def smoothed_loss(context: TrainingContext, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor):
    """Per-input cross-entropy of the smoothed soft classifier over the fixed draws ``noise``."""
    with torch.no_grad():
        probabilities = mean_softmax(context.noisy_logits(x, noise))
    return -probabilities.gather(1, y.unsqueeze(1)).squeeze(1).clamp_min(1e-20).log()


@pytest.fixture(scope="module")
def trained_state(digits, make_mlp) -> dict:
    model = make_mlp(seed=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(
        "gaussian",
        model,
        digits.x_train,
        digits.y_train,
        sigma=0.25,
        optimizer=optimizer,
        nb_epochs=10,
        batch_size=64,
        seed=0,
        progress=False,
    )
    return model.state_dict()


@pytest.fixture
def setting(digits, make_mlp, trained_state):
    model = make_mlp(seed=3)
    model.load_state_dict(trained_state)
    x = torch.as_tensor(digits.x_test[:64])
    y = torch.as_tensor(digits.y_test[:64])
    return model.eval(), x, y


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_perturbation_stays_in_the_ball_and_raises_the_smoothed_loss(setting, steps: int) -> None:
    model, x, y = setting
    epsilon = 0.5
    context = TrainingContext(model, 0.25, make_generator(0), clip_values=(0.0, 1.0), training_mode=False)
    noise = context.noise(x, 4)
    adversarial, kept = smoothed_l2_pgd(
        context, x, y, noise, steps=steps, step_size=2 * epsilon / steps, max_norm=epsilon
    )
    assert kept is None
    norms = (adversarial - x).flatten(1).norm(dim=1)
    assert bool((norms <= epsilon * (1 + 1e-5)).all())
    assert float(adversarial.min()) >= 0.0 and float(adversarial.max()) <= 1.0
    before, after = smoothed_loss(context, x, y, noise), smoothed_loss(context, adversarial, y, noise)
    assert bool((after >= before).all())  # no input's smoothed loss goes down
    assert float(after.mean()) > float(before.mean())
    if steps > 1:  # more steps, at least as strong on average (the steps build on each other)
        one_step, _ = smoothed_l2_pgd(context, x, y, noise, steps=1, step_size=2 * epsilon, max_norm=epsilon)
        assert float(after.mean()) >= float(smoothed_loss(context, one_step, y, noise).mean())


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_steps_accumulate_to_the_boundary_of_the_ball(setting, steps: int) -> None:
    # Without clip_values nothing but the ball limits the perturbation; steps of 2 eps / T that build on
    # each other reach its boundary whatever T (ART 1.20's SmoothAdv restarts each step from the clean
    # point, and its perturbation shrinks as T grows).
    model, x, y = setting
    context = TrainingContext(model, 0.25, make_generator(0), training_mode=False)
    noise = context.noise(x, 2)
    adversarial, _ = smoothed_l2_pgd(context, x, y, noise, steps=steps, step_size=2.0 / steps, max_norm=1.0)
    norms = (adversarial - x).flatten(1).norm(dim=1)
    assert float(norms.min()) > 0.99 and float(norms.max()) <= 1.0 + 1e-5


def test_clip_values_bound_the_adversarial_points(setting) -> None:
    model, x, y = setting
    noise = TrainingContext(model, 0.25, make_generator(0)).noise(x, 2)
    free, _ = smoothed_l2_pgd(
        TrainingContext(model, 0.25, make_generator(0)), x, y, noise, steps=5, step_size=0.4, max_norm=2.0
    )
    assert float(free.min()) < 0.0 or float(free.max()) > 1.0  # the digits' many zero pixels get pushed out
    low, high = torch.full((1, 8, 8), 0.0), torch.full((1, 8, 8), 1.0)
    clipped, _ = smoothed_l2_pgd(
        TrainingContext(model, 0.25, make_generator(0), clip_values=(low, high)),
        x,
        y,
        noise,
        steps=5,
        step_size=0.4,
        max_norm=2.0,
    )
    assert float(clipped.min()) >= 0.0 and float(clipped.max()) <= 1.0


def test_keep_step_returns_the_intermediate_point(setting) -> None:
    model, x, y = setting
    context = TrainingContext(model, 0.25, make_generator(0))
    noise = context.noise(x, 2)
    one, _ = smoothed_l2_pgd(context, x, y, noise, steps=1, step_size=0.3, max_norm=None)
    final, kept = smoothed_l2_pgd(context, x, y, noise, steps=4, step_size=0.3, max_norm=None, keep_step=1)
    torch.testing.assert_close(kept, one)
    _, at_start = smoothed_l2_pgd(context, x, y, noise, steps=4, step_size=0.3, max_norm=None, keep_step=0)
    torch.testing.assert_close(at_start, x)
    assert not torch.allclose(final, one)


def test_smoothadv_warms_its_radius_up_linearly() -> None:
    method = SmoothAdv(epsilon=1.0, warmup=4)
    assert [method.radius(epoch) for epoch in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 1) == 1.0
