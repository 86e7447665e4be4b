"""Freed memory kept in the process while a CPU extraction runs, so that batches stop paying page faults (glibc).

Why by hand: glibc serves an allocation above its mmap threshold (at most 32 MiB)
with a fresh ``mmap`` and unmaps it on free, and PyTorch's CPU allocator keeps
no cache of its own. A CNN's activations on a batch of 64 images at 224 px are
blocks of 50–200 MiB, so every batch faults about 2 GB of zeroed pages back in:
~500,000 page faults per batch for a ResNet-18, a third of the extraction's time
on 2 cores (``python -m benchmarks.extraction``). Whether a given run paid them
depended on what ran before it in the process (freed blocks below the threshold
stay in the heap), which is why the same benchmark measured 0.92 on one machine
and 1.36 on another. :func:`retained_heap` turns ``mmap`` off for large blocks
and trimming off, so the heap keeps what a batch freed for the next one, and
restores glibc's defaults and returns the memory when the outermost one ends.

Large blocks only come from the heap in the main thread (glibc's per-thread arenas
hold at most 64 MiB), so a scan in a worker thread gains about half as much.
Elsewhere (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# mallopt's parameter numbers and glibc's defaults (malloc.h, malloc/malloc.c).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int

_lock = threading.Lock()
_depth = 0


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


@contextmanager
def retained_heap() -> Iterator[None]:
    """While inside, freed memory stays in the process for the next allocation; nested uses share one setting."""
    global _depth
    if _LIBC is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            _LIBC.mallopt(_M_MMAP_MAX, 0)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _LIBC.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                _LIBC.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                _LIBC.malloc_trim(0)
