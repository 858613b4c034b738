"""`rlvr.learner.actor.trim_heap`: freed heap memory leaves the resident set (glibc keeps it otherwise)."""

import subprocess
import sys

import pytest
from helpers import MALLINFO2

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


MAPPED = MALLINFO2 + """
import sys, torch
from rlvr.learner.actor import map_large_allocations

if sys.argv[1] == "mapped":
    map_large_allocations(4 << 20)
big = torch.empty(16 << 20, dtype=torch.uint8)
del big  # freeing a mapped 16 MiB block raises glibc's own threshold past 8 MiB
before = heap_info().hblkhd
block = torch.empty(8 << 20, dtype=torch.uint8)
print((heap_info().hblkhd - before) >> 20)
"""


@pytest.mark.skipif(_glibc() is None, reason="mallopt is glibc's; this libc has none")
def test_large_allocations_keep_mappings_of_their_own():
    """After `map_large_allocations` an 8 MiB block is mapped on its own (freed straight back to the OS),
    where glibc's own sliding threshold would have put it on the heap."""
    def mapped_mib(mode: str) -> int:
        return int(subprocess.run([sys.executable, "-c", MAPPED, mode], check=True, capture_output=True, text=True).stdout.split()[-1])

    assert mapped_mib("glibc") == 0
    assert mapped_mib("mapped") >= 8
