"""`rlvr.learner.actor.trim_heap`: freed heap memory leaves the resident set (glibc keeps it otherwise)."""

import subprocess
import sys

import pytest

from rlvr.learner.actor import _glibc

PROBE = """
import torch
from rlvr.learner.actor import trim_heap

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

held = [torch.ones(25_000) for _ in range(4_000)]  # 100 KB each: below glibc's mmap threshold, so on the heap
pin = torch.ones(25_000)  # allocated last, kept: the heap's top is in use, so free() alone cannot shrink it
del held
before = rss_mb()
trim_heap()
print(before, rss_mb())
"""


@pytest.mark.skipif(_glibc() is None, reason="malloc_trim is glibc's; this libc has none")
def test_freed_heap_pages_leave_the_resident_set():
    before, after = map(float, subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True).stdout.split())
    assert before - after > 200, f"{before:.0f} MB -> {after:.0f} MB"
