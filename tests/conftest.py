"""Shared test configuration. Each area of the package has its own folder (tests/core, tests/denoised, ...)
with a conftest.py of session-scoped fixtures that train tiny models once per run."""

import torch

# CI has 2 cores; torch's default may oversubscribe them when pytest-xdist is not used.
torch.set_num_threads(2)
