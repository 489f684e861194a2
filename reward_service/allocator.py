"""Make glibc keep freed heap memory in the process instead of handing it back to the kernel.

A reward worker allocates and frees the same few-MB tensors for every sample. With glibc's defaults
many of them are mmap'ed and unmapped, or trimmed off the heap top, each time, and the kernel faults
and zeroes the pages in again: up to 5,000 page faults and 7 ms of kernel time per 256² sample on
one core of the dev box, fewer where transparent huge pages are at hand (docs/benchmarks.md). With a fixed 32 MiB mmap threshold (glibc's largest) and no
trimming, a worker running micro-batches of a few samples faults almost never.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc caps it at HEAP_MAX_SIZE / 2 on 64-bit
NEVER_TRIM = 2**31 - 1  # mallopt takes a C int: trim only beyond 2 GiB of free heap top


def retain_freed_memory() -> bool:
    """Apply the settings to this process; False (and nothing changed) where libc is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
