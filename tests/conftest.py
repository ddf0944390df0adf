"""Shared test configuration. Each area of the package has its own folder (tests/core, tests/denoised, ...)
with a conftest.py of session-scoped fixtures that train tiny models once per run."""

import os

import torch

# The test models are tiny: a second intra-op thread gains little on them, and on a shared or busy
# 2-core runner its synchronisation made training 5-30x slower (measured). Override with
# ART_SMOOTHING_TEST_THREADS for larger machines.
torch.set_num_threads(int(os.environ.get("ART_SMOOTHING_TEST_THREADS", "1")))
