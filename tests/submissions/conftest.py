"""Fixtures of the submission tests: honest submissions in each format, written into temporary folders.

The sandbox tests need bubblewrap (``.ci/setup`` installs it); where this machine cannot build the sandbox
they are skipped with the reason :func:`evaluations.submissions.sandbox.sandbox_support` gives."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from evaluations.submissions.sandbox import Limits, sandbox_support

#: The honest Python submission: a small CNN for 8x8 digits.
HONEST_SOURCE = textwrap.dedent(
    """
    import torch


    class Model(torch.nn.Module):
        def __init__(self, width=4):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Conv2d(1, width, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.Flatten(),
                torch.nn.Linear(width * 64, 10),
            )

        def forward(self, x):
            return self.net(x)
    """
)

#: Tight limits for tests: hostile submissions are stopped within seconds.
TEST_LIMITS = Limits(
    memory_mb=2048, cpu_seconds=120, processes=32, disk_mb=16, output_kb=256, load_timeout=90, call_timeout=8
)


def honest_module(seed: int = 0) -> torch.nn.Module:
    """The honest submission's model, built here (the tests compare the worker's answers with it)."""
    namespace: dict = {}
    exec(compile(HONEST_SOURCE, "honest_model.py", "exec"), namespace)  # the test's own source
    torch.manual_seed(seed)
    return namespace["Model"]().eval()


def write_python_submission(folder: Path, source: str = HONEST_SOURCE, seed: int = 0, toml: str = "") -> Path:
    """``model.py`` + ``weights.pt`` (+ ``submission.toml``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(source)
    torch.save(honest_module(seed).state_dict() if source == HONEST_SOURCE else {}, folder / "weights.pt")
    if toml:
        (folder / "submission.toml").write_text(toml)
    return folder


def write_export_submission(folder: Path, seed: int = 0) -> Path:
    """``model.pt2``: a torch.export program of the honest model with a dynamic batch dimension."""
    folder.mkdir(parents=True, exist_ok=True)
    program = torch.export.export(
        honest_module(seed), (torch.rand(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, folder / "model.pt2")
    return folder


def write_onnx_submission(folder: Path, seed: int = 0) -> Path:
    """``model.onnx``: the honest model through the TorchScript exporter, dynamic batch."""
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            honest_module(seed),
            (torch.rand(1, 1, 8, 8),),
            folder / "model.onnx",
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    return folder


@pytest.fixture
def sandbox():
    """The machine's sandbox support; skips the test (saying why) where there is none."""
    support = sandbox_support()
    if not support.available:
        pytest.skip(f"no sandbox here: {support.reason}")
    return support
