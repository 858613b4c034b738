"""oneDNN's primitive cache and ideep's cache above it keep a compiled GEMM kernel for up to 1,024
shapes each. The learner (new row lengths every step) and the engine (new batch and prompt sizes
every call, the held-out evaluation's above all) meet new shapes without end, and their resident
sets grew until the caches filled: the learner's about 60 MB a step, the engine's 2.63 → 3.10 GiB
over `make train`'s 20 steps. 256 holds a step's working set at no measured cost in time
(docs/benchmarks.md, "The learner's kernel caches and heap" and "The engine's kernel caches")."""

from __future__ import annotations

import os

KERNEL_CACHES = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256", "LRU_CACHE_CAPACITY": "256"}


def bound_kernel_caches() -> None:
    """Bound both caches in this process. Call it before the process's first GEMM: both read their
    capacity then. A value already in the environment wins."""
    for name, capacity in KERNEL_CACHES.items():
        os.environ.setdefault(name, capacity)
