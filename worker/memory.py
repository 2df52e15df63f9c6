"""glibc's allocator, set for a long-running worker process (`python -m worker run`).

Python's own allocator serves objects up to 512 bytes; everything larger (numpy arrays, big
dicts and lists, buffers) comes from glibc's malloc. Its default mmap threshold is dynamic:
each freed mmapped block raises it (up to 32 MiB), after which blocks of that size come from
the heap instead, where a freed block stays with the process unless it lies at the heap's top.
A paper worker frees many such blocks while it starts (the simulated day is built from
temporary arrays) and so kept several MiB it no longer used. A fixed threshold keeps every
block from 128 KiB up in a mapping of its own, returned to the system when it is freed:
bench/footprint.py's paper worker 120 -> 114 MB RSS (USS 102 -> 95). The price is a fresh
mapping per large array: the 2,500-symbol scan of bench/scan.py 0.46 -> 0.57 ms.

Only where glibc is the C library (musl or macOS are left as they are); `MALLOC_MMAP_THRESHOLD_`
in the environment (glibc's own tunable, e.g. for an experiment) takes precedence.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

#: mallopt's parameter for the mmap threshold (malloc.h)
M_MMAP_THRESHOLD = -3
#: blocks from this size up are mapped on their own: the default's starting value, kept fixed
MMAP_THRESHOLD = 128 * 1024


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
    except (OSError, AttributeError):
        return None
    return libc


def tune_allocator(environ: Mapping[str, str] | None = None) -> bool:
    """Fix glibc's mmap threshold at `MMAP_THRESHOLD`; True when set. Not set (False) off
    glibc or when the environment already says (`MALLOC_MMAP_THRESHOLD_`)."""
    env = os.environ if environ is None else environ
    libc = _glibc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in env:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
