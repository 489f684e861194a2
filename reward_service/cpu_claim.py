"""Give each reward worker process on a host a CPU of its own, without a coordinator.

A process claims the first of its allowed CPUs whose lock file (one per CPU, in the host's temp
directory) no live process holds, and pins itself there. The kernel drops the lock when the process
dies, so a restarted worker can take the CPU again. Unpinned, the scheduler migrates busy workers
between CPUs and each move refills the caches (docs/benchmarks.md, "Third session").
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

LOCK_DIR = Path(tempfile.gettempdir()) / "matrl-cpu-claims"
_held: dict[int, int] = {}  # cpu -> open lock file descriptor, kept for the life of the process


def claim_cpu(lock_dir: Path = LOCK_DIR) -> int | None:
    """Pin this process to an unclaimed allowed CPU and return it; None (nothing changed) if every
    allowed CPU is claimed or the platform has no CPU affinity."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    if _held:
        return next(iter(_held))
    lock_dir.mkdir(parents=True, exist_ok=True)
    for cpu in sorted(os.sched_getaffinity(0)):
        fd = os.open(lock_dir / f"cpu{cpu}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.sched_setaffinity(0, {cpu})
        _held[cpu] = fd
        return cpu
    return None
