"""Host memory that XLA's CPU programs reuse from one call to the next (glibc's malloc).

Every call of a compiled XLA CPU program allocates its temporaries as one buffer (245 MB for a
torchvision AlexNet training step at batch 32) and frees it at the end. glibc's ``malloc`` serves
any allocation of 32 MiB or more by a fresh ``mmap`` and returns it to the kernel on ``free``, and
XLA's worker threads allocate from arenas of their own whose heaps are unmapped once empty; so each
step touches its temporaries as new pages: ~90 k minor page faults per step, the kernel zeroing
every page. A weight gradient written into such memory (fc6's, 151 MB) took 55 ms instead of 12.

:func:`retain_host_memory` sets three of glibc's ``mallopt`` parameters so that freed memory stays
in the process and is handed out again: one arena for all threads (``M_ARENA_MAX=1``), no
``mmap`` for large blocks (``M_MMAP_MAX=0``: they come from the heap), and the heap's free top
kept up to 2 GiB (``M_TRIM_THRESHOLD``). A thread that has allocated before keeps the arena it
has (numpy's import starts a BLAS thread that does), so call it first, before numpy or jax::

    from gdjax.host_memory import retain_host_memory  # imports nothing but the standard library
    retain_host_memory()

The ``gdjax`` command calls it first (``GDJAX_RETAIN_HOST_MEMORY=0`` leaves malloc alone). The
cost: memory freed during the run is kept for reuse rather than given back to the system.

Measured by ``experiments/host_memory.py`` on a 2-core AMD Zen 5 (README, "Where the speed comes
from"): the torchvision AlexNet b32 training step 1.23x faster (faults per step 89.8 k -> 0), the
process's peak resident memory +430 MB (of 2.4 GB). PyTorch gains as much (1.21x): the setting is
the process's, not gdjax's.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import warnings

__all__ = ["retain_host_memory", "retained"]

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: the largest, ~2 GiB

_retained = False


def _backend_started() -> bool:
    """Whether JAX has created a backend (and so its threads) in this process."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is None:  # jax not even imported
        return False
    started = getattr(bridge, "backends_are_initialized", None)
    return bool(started()) if started is not None else bool(getattr(bridge, "_backends", None))


def _threads() -> int:
    """The number of threads of this process (Linux)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def retain_host_memory(*, warn: bool = True) -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse, so that XLA's per-call buffers are
    not faulted in afresh on every call (the module docstring says what it sets and why).

    Call it before importing numpy or jax. Returns ``True`` once the settings are made (and on
    later calls); ``False``, changing nothing, where the C library is not glibc or JAX's backend
    has already started. Unless ``warn=False`` it warns when it comes too late for some threads.
    """
    global _retained
    if _retained:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if _backend_started():
        if warn:
            warnings.warn(
                "retain_host_memory() came after JAX started its backend, whose threads keep "
                "their own malloc arenas: nothing was changed. Call it before importing numpy "
                "or jax (the gdjax command does).",
                RuntimeWarning,
                stacklevel=2,
            )
        return False
    others = _threads() - 1
    if warn and others:
        warnings.warn(
            f"retain_host_memory(): {others} other thread(s) already run (numpy's import "
            "starts one); those that have allocated keep their own malloc arenas, so some of "
            "XLA's buffers may still be faulted in afresh. Call it before importing numpy or jax.",
            RuntimeWarning,
            stacklevel=2,
        )
    libc = ctypes.CDLL("libc.so.6")  # glibc's soname (find_library would run ldconfig)
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _retained = all(libc.mallopt(param, value) == 1 for param, value in settings)
    return _retained


def retained() -> bool:
    """Whether :func:`retain_host_memory` has made its settings in this process."""
    return _retained
