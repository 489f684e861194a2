"""reward_service.allocator: freed blocks stay in the process's heap instead of going back to the kernel."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from reward_service.config import RewardConfig
from reward_service.worker import RewardWorker

BLOCK_BYTES = 8 << 20

# Allocate and free one 8 MiB tensor; report glibc's own accounting (mallinfo2): bytes in mmap'ed
# chunks while it is held, and free bytes kept in the heap after it is freed.
PROBE = f"""
import ctypes, json, sys
import torch
from reward_service.allocator import retain_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                     "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = retain_freed_memory() if sys.argv[1] == "1" else False
block = torch.ones({BLOCK_BYTES} // 4)
held = libc.mallinfo2()
del block
freed = libc.mallinfo2()
print(json.dumps({{"applied": applied, "mmapped_while_held": held.hblkhd, "heap_free_after": freed.fordblks}}))
"""


def probe(retain: bool) -> dict:
    run = subprocess.run([sys.executable, "-c", PROBE, "1" if retain else "0"], capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting tunes glibc's allocator")
def test_a_freed_block_stays_in_the_heap_instead_of_being_unmapped():
    """Each case in its own process: the setting is process-wide and cannot be undone."""
    retained, default = probe(True), probe(False)
    assert retained["applied"] and not default["applied"]
    assert default["mmapped_while_held"] - retained["mmapped_while_held"] >= 0.9 * BLOCK_BYTES
    assert retained["heap_free_after"] - default["heap_free_after"] >= 0.9 * BLOCK_BYTES


def test_the_worker_applies_the_setting_only_when_configured():
    assert not RewardWorker(RewardConfig(res=64, retain_freed_memory=False)).retains_freed_memory
    glibc = platform.libc_ver()[0] == "glibc"
    assert RewardWorker(RewardConfig(res=64)).retains_freed_memory == glibc
