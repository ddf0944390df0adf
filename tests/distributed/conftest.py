"""One local Ray instance for the whole test session (2 logical CPUs, no dashboard, no usage reporting),
started by the first test that asks for it and shut down at the end.

The workers are separate Python processes: they must import this checkout's package, not another copy
installed elsewhere (the pool refuses a worker whose copy differs), so the checkout is put first on the
PYTHONPATH they inherit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_session():
    ray = pytest.importorskip("ray", reason="Ray is in the [distributed] extra (and in [dev])")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *([previous] if previous else [])])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous
