"""Memory allocator settings for the harness's processes: keep freed memory for the next batch.

A model's forward pass on a batch of noisy inputs allocates the same few megabytes of activations again
and again. glibc's malloc serves a block larger than its *mmap threshold* with a fresh ``mmap`` and gives
the pages back on ``free``, and returns free memory at the top of its heap to the system once it exceeds
the *trim threshold*; both thresholds start small (128 KiB) and only slide upwards as large blocks are
freed. Until they have, every batch's activations are new pages, each one a page fault and a page of
zeroes: measured on the quick preset's randomized-smoothing run (20 points, 1,828 forward passes of
1,000 noisy 8x8 digits), 1.8-5.3 million minor page faults in the evaluator's process and 4.6 million in
a worker, with the thresholds below 0.1 million and 54,000, and the forward passes 22-38% faster
(in process 15.5-19.0 s against 11.8-12.2 s; in a worker 27.7 s against 21.8 s).

So every process of the harness that runs models fixes the thresholds at glibc's own ceiling for the
sliding mmap threshold (32 MiB) and twice that for trimming, the values a long-running process reaches
by itself: the evaluator at start (:func:`keep_freed_memory`), a worker through its environment
(:func:`worker_environment`, read by glibc before the worker's first allocation). The cost is memory a
process keeps after a peak, at most the trim threshold per malloc arena. Elsewhere than glibc (macOS,
musl) both do nothing. A user who sets ``GLIBC_TUNABLES`` or a ``MALLOC_*`` variable keeps their own.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory", "worker_environment"]

#: Bytes from which a block gets its own mmap (glibc's ceiling for its sliding threshold, 64-bit).
MMAP_THRESHOLD = 32 << 20
#: Free bytes at the top of the heap kept before returning them to the system (twice the above, as glibc
#: sets it when the mmap threshold slides).
TRIM_THRESHOLD = 64 << 20

# mallopt's parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _user_has_chosen() -> bool:
    return "malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(
        name.startswith("MALLOC_") for name in os.environ
    )


def _on_glibc() -> bool:
    # The C library this process runs on, asked directly (instant; ``platform.libc_ver`` would read the
    # Python executable, and this runs for every unit of work on a Ray worker).
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


def keep_freed_memory() -> bool:
    """Set this process's malloc thresholds to :data:`MMAP_THRESHOLD` and :data:`TRIM_THRESHOLD`.

    Returns whether it did: only on glibc, and only when the user has not chosen their own settings.
    Blocks allocated before keep their placement; what changes is every allocation after the call."""
    if not _on_glibc() or _user_has_chosen():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def worker_environment() -> dict[str, str]:
    """The environment variable that gives a new process (a submission's worker) the same thresholds from
    its first allocation: ``GLIBC_TUNABLES`` (ignored by other C libraries)."""
    return {
        "GLIBC_TUNABLES": (
            f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}:glibc.malloc.trim_threshold={TRIM_THRESHOLD}"
        )
    }
