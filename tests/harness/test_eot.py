"""BatchedEOT: torchattacks' EOT loop gets the same logits and the same summed gradient from one batched
pass per step as from one pass per draw, and calls that need no gradient go straight to the model."""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn

from evaluations.attacks.eot import BatchedEOT


class TableNoise(nn.Module):
    """A randomized model whose noise is read from a table, row after row across calls: ``draws``
    calls on N inputs and one call on ``draws`` x N inputs see the same noise, so the two ways of
    running an EOT loop can be compared number for number."""

    def __init__(self, base: nn.Module, table: torch.Tensor) -> None:
        super().__init__()
        self.base, self.table, self.next_row, self.calls = base, table, 0, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(x))
        noise = self.table[self.next_row : self.next_row + len(x)]
        self.next_row += len(x)
        return self.base(x + noise)


def _base() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 5)).eval()


def _eot_loop(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, draws: int):
    """torchattacks' APGD loop (apgd.py, attack_single_run), as the attack runs it."""
    x_adv.requires_grad_()
    grad, every_logits = torch.zeros_like(x_adv), []
    for _ in range(draws):
        with torch.enable_grad():
            logits = model(x_adv)
            loss = nn.functional.cross_entropy(logits, y, reduction="none").sum()
        grad += torch.autograd.grad(loss, [x_adv])[0].detach()
        every_logits.append(logits.detach())
    return grad / draws, every_logits


@pytest.mark.parametrize("draws", [1, 3, 20])
def test_the_loop_gets_the_same_logits_and_summed_gradient_from_one_pass(draws):
    base, points, steps = _base(), 7, 3
    table = torch.randn(draws * points * (steps + 1), 1, 4, 4, generator=torch.Generator().manual_seed(1))
    x = torch.rand(points, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = torch.arange(points) % 5
    one_by_one, batched_noise = TableNoise(base, table), TableNoise(base, table)
    batched = BatchedEOT(batched_noise, draws)
    for step in range(steps + 1):  # several steps: each new x_adv starts a new batch
        x_step = (x + 0.05 * step).detach()
        expected_grad, expected_logits = _eot_loop(one_by_one, x_step.clone(), y, draws)
        grad, logits = _eot_loop(batched, x_step.clone(), y, draws)
        for mine, theirs in zip(logits, expected_logits, strict=True):
            assert torch.allclose(mine, theirs, atol=1e-6)
        assert torch.allclose(grad, expected_grad, atol=1e-6), (grad - expected_grad).abs().max()
        assert grad.abs().sum() > 0
    # The loop called the model draws times per step; the batch once, on draws copies of the points.
    assert one_by_one.calls == [points] * (draws * (steps + 1))
    assert batched_noise.calls == [draws * points] * (steps + 1)


def test_calls_without_gradients_go_straight_to_the_model():
    noisy = TableNoise(_base(), torch.zeros(100, 1, 4, 4))
    batched = BatchedEOT(noisy, 20)
    x = torch.rand(5, 1, 4, 4)
    with torch.no_grad():
        batched(x.clone().requires_grad_(True))
    batched(x)  # a tensor that does not require gradients
    assert noisy.calls == [5, 5]


def test_a_tensor_changed_in_place_starts_a_new_batch():
    noisy = TableNoise(_base(), torch.zeros(400, 1, 4, 4))
    batched = BatchedEOT(noisy, 4)
    x = torch.rand(5, 1, 4, 4).requires_grad_(True)
    batched(x)
    with torch.no_grad():
        x.add_(0.1)  # the attack moved the point: the draws left over are stale
    batched(x)
    assert noisy.calls == [20, 20]


@pytest.mark.parametrize("draws", [0, -1, 2.0, True, "20"])
def test_bad_draws_are_refused_naming_the_argument(draws):
    with pytest.raises(ValueError, match=r"draws must be an integer >= 1"):
        BatchedEOT(_base(), draws)


def test_apgd_with_eot_attacks_through_the_batch_like_through_the_loop():
    """torchattacks' APGD itself (the code the rand version runs): with the same noise table, batched and
    looped EOT end at the same adversarial points."""
    base, points, draws, steps = _base(), 6, 5, 4
    rows = 50 * draws * points * (steps + 2)
    table = torch.randn(rows, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    x = torch.rand(points, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = base(x).argmax(dim=1)
    results = []
    for model in (TableNoise(base, 0.1 * table), BatchedEOT(TableNoise(base, 0.1 * table), draws)):
        attack = torchattacks.APGD(model, norm="L2", eps=0.5, steps=steps, eot_iter=draws, seed=0, loss="ce")
        results.append(attack(x, y))
    assert torch.allclose(results[0], results[1], atol=1e-5)
    assert not torch.equal(results[0], x)
