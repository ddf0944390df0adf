"""What makes a run reproducible and resumable: stable hashes of configuration parts (the keys of the model
cache and of the checkpoints), seeds derived from them, and seeding the global generators that
third-party libraries draw from.

Shared by the configuration, storage, models, defences and attacks alike, so it sits below all of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["config_hash", "derive_seed", "seeded"]


def config_hash(part: Any, length: int = 16) -> str:
    """A stable hash of a JSON-able configuration part (keys sorted): the cache and checkpoint key."""
    blob = json.dumps(part, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def derive_seed(seed: int, *parts: Any) -> int:
    """A seed for one unit of work, from the run's seed and the unit's name: stable across runs and
    independent of the order units are computed in (so a resumed run draws what a whole run would)."""
    return int(config_hash([seed, *map(str, parts)], 8), 16) % (2**31 - 1)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's (CPU and every CUDA device's), NumPy's legacy and Python's global generators for a
    library that draws from them or resets them (torchattacks' and ART's random starts; torchattacks'
    AutoAttack components call ``torch.manual_seed``), and restore all of them afterwards, so that nothing
    outside sees a draw or a reset."""
    numpy_state = np.random.get_state()  # noqa: NPY002 - the libraries draw from the legacy global state
    python_state = random.getstate()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        torch.manual_seed(seed)
        np.random.seed(seed % (2**32 - 1))  # noqa: NPY002
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)  # noqa: NPY002
            random.setstate(python_state)
