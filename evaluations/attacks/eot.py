"""Expectation over transformation (EOT) in one batched pass per attack step.

An EOT attack on a randomized model averages the input gradient over ``draws`` forward passes at the same
point, each drawing fresh noise. torchattacks' APGD does it as a loop of ``draws`` separate forward and
backward passes on the same tensor ``x_adv``::

    for _ in range(eot_iter):
        logits = model(x_adv); loss = criterion(logits, y).sum()
        grad += torch.autograd.grad(loss, [x_adv])[0]

:class:`BatchedEOT` gives that loop the same numbers from one forward pass over ``draws`` copies of
``x_adv`` (one fresh noise draw per copy, as before) and one backward pass. The k-th call on the same
tensor returns the logits of the k-th copy; its backward pass keeps the cotangent and returns zero, and the
last one sends every cotangent through the batched graph at once and returns the sum of the ``draws``
input gradients, which is the sum the loop accumulates (up to the order of floating-point addition).

Why: a model in another process (a sandboxed homework submission, :mod:`evaluations.submissions.remote`)
pays a round trip per forward and per backward pass, and the loop made 2 x ``draws`` of them per step
(40 for AutoAttack's rand version) where this makes 2; in process, one batch of ``draws`` x N inputs also
runs faster than ``draws`` batches of N. The price is memory: the graph of ``draws`` x N inputs at once.

The contract is the loop's: the ``draws`` gradients of one tensor are only used summed. Calls without
gradients, or on a tensor that does not require them, go straight to the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["BatchedEOT"]


@dataclass
class _Step:
    """The batched pass of one attack step: ``x`` (the attack's tensor), its ``draws`` copies ``copies``
    and their ``outputs`` (graph kept), the draws handed out and the cotangents received."""

    x: torch.Tensor
    version: int
    copies: torch.Tensor
    outputs: torch.Tensor
    handed_out: int = 0
    cotangents: dict[int, torch.Tensor] = field(default_factory=dict)


class BatchedEOT(nn.Module):
    """``module`` (a randomized model: fresh noise on every forward pass, one draw per input) seen by an
    EOT loop of ``draws`` iterations, computed in one batched pass per step (see the module docstring).

    :param module: the randomized model.
    :param draws: the EOT loop's iterations per step (torchattacks' ``eot_iter``), at least 1.
    """

    def __init__(self, module: nn.Module, draws: int) -> None:
        super().__init__()
        if not isinstance(draws, int) or isinstance(draws, bool) or draws < 1:
            raise ValueError(f"draws must be an integer >= 1, got {draws!r}")
        self.module = module
        self.draws = draws
        self._step: _Step | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.draws == 1 or not (torch.is_grad_enabled() and x.requires_grad):
            return self.module(x)
        step = self._step
        if step is None or step.x is not x or step.version != x._version or step.handed_out == self.draws:
            copies = x.detach().repeat(self.draws, *[1] * (x.dim() - 1)).requires_grad_(True)
            with torch.enable_grad():
                outputs = self.module(copies)
            step = self._step = _Step(x, x._version, copies, outputs)
        draw = step.handed_out
        step.handed_out += 1
        return _Draw.apply(x, self, step, draw)

    def _gradient(self, step: _Step, draw: int, cotangent: torch.Tensor) -> torch.Tensor:
        """The backward pass of draw ``draw``: zero until the step's last cotangent arrives, then the sum
        over the draws of the input gradients."""
        step.cotangents[draw] = cotangent
        if len(step.cotangents) < self.draws:
            return torch.zeros_like(step.x)
        stacked = torch.cat([step.cotangents[k] for k in range(self.draws)])
        (grad,) = torch.autograd.grad(step.outputs, step.copies, stacked)
        if self._step is step:
            self._step = None  # the graph is spent: free it
        return grad.view(self.draws, *step.x.shape).sum(dim=0)


class _Draw(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, owner: BatchedEOT, step: _Step, draw: int) -> torch.Tensor:  # type: ignore[override]
        ctx.owner, ctx.step, ctx.draw = owner, step, draw
        rows = len(x)
        return step.outputs[draw * rows : (draw + 1) * rows].detach().clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        return ctx.owner._gradient(ctx.step, ctx.draw, grad_output.detach()), None, None, None
