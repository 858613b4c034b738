"""The learner's and the engine's bound on oneDNN's kernel caches (`rlvr.runtime.kernel_caches`). oneDNN and
ideep keep a compiled GEMM kernel per shape, 1,024 of each by default, and bf16 GEMMs over rows of
ever-new lengths (a learner's every step) grew a process's heap until they filled. Each setting runs
in a fresh process: both caches read their capacity at the process's first GEMM."""

import json
import os
import subprocess
import sys

import pytest
from helpers import MALLINFO2

from rlvr.learner.actor import _glibc
from rlvr.runtime.kernel_caches import KERNEL_CACHES
from rlvr.runtime.sizing import native_bf16

PROBE = MALLINFO2 + """
import json, torch
torch.set_num_threads(1)
def in_use():
    _libc.malloc_trim(0)
    info = heap_info()
    return (info.uordblks + info.hblkhd) / 2**20
torch.manual_seed(0)
layer = torch.nn.Linear(128, 384)
def step(rows):
    x = torch.randn(rows, 128, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().sum().backward()
step(64)
before = in_use()
for rows in range(300, 600):  # 300 new row counts: 900 kernels (forward and two backward GEMMs)
    step(rows)
print(json.dumps(in_use() - before))
"""


def heap_growth_mb(capacities: dict[str, str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_CACHES} | capacities | {"OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_glibc() is None, reason="the probe reads glibc's mallinfo2; this libc has none")
@pytest.mark.skipif(not native_bf16(None), reason="oneDNN compiles a bf16 GEMM kernel per shape only on a CPU with bf16 "
                    "instructions (avx512_bf16, amx_bf16); this one emulates bf16, keeps no such kernels, and `auto` trains "
                    "it in float32")
def test_the_learners_kernel_cache_bound_stops_the_heap_growing_with_new_gemm_shapes():
    assert set(KERNEL_CACHES) == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"}
    unbounded = heap_growth_mb({name: "1024" for name in KERNEL_CACHES})  # the libraries' defaults
    bounded = heap_growth_mb(KERNEL_CACHES)
    assert unbounded > 2 * bounded + 20, (unbounded, bounded)
