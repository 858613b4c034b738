"""The inference engines without Ray: the sampling and engine settings, and the registry of backends
that answer a `rlvr.types.GenerationRequest`, one module each (`vllm_engine.py`: vLLM, the default; `hf_engine.py`:
transformers `generate`, a debugging fallback and for GPU boxes without vLLM). A backend is a class
with `generate(requests, sampling)`, `load_weights(named tensors)`, `sleep()` and `wake_up()`; a new
one is a module and an entry in `ENGINES` (plus, for a weight transport of its own, `rlvr/weight_sync/`).
`rlvr.rollout.pool` wraps one engine in a Ray actor and spreads requests over a pool of them; a
benchmark or a GPU check can use an engine directly (its answer is plain dicts; the pool makes them
`rlvr.types.Sample`s).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch


@dataclass
class SamplingConfig:
    """One generate call's sampling: from `rollout.*` (training), `eval.*` (greedy evaluation); no
    defaults of its own, so none can drift from the config tree's."""

    temperature: float
    top_p: float
    max_tokens: int
    stop: tuple[str, ...] = ()  # strings that end a completion, kept in it (a tool call's closing tag)


@dataclass
class EngineConfig:
    """Built from the config tree by `rlvr.runtime.roles.engine_config`: no defaults of its own."""

    backend: str  # vllm | hf
    model_path: str
    dtype: str  # the weights and KV cache (model.rollout_dtype)
    max_model_len: int
    kv_cache_gb: float  # vLLM on CPU: the KV cache (rlvr.runtime.sizing works out `auto`)
    max_num_seqs: int  # vLLM on CPU: sequences decoded at once
    block_size: int  # vLLM on CPU: tokens per KV block
    seed: int
    threads: int
    tensor_parallel: int
    # colocated with a learner: give the accelerator back between generations (GPU only; on CPU
    # the two share host memory and there is nothing to free)
    sleep_mode: bool
    extra: dict = field(default_factory=dict)  # more vLLM engine arguments (benchmarks)


# backend name -> (module, class), imported only when chosen: vLLM is not on every machine (the GPU check's)
ENGINES = {"vllm": ("rlvr.rollout.vllm_engine", "VLLMEngine"), "hf": ("rlvr.rollout.hf_engine", "HFEngine")}


def make_engine(cfg: EngineConfig):
    """The engine `cfg.backend` names."""
    import importlib

    if cfg.backend not in ENGINES:
        raise ValueError(f"unknown rollout backend {cfg.backend!r}; known: {', '.join(ENGINES)}")
    module, cls = ENGINES[cfg.backend]
    return getattr(importlib.import_module(module), cls)(cfg)


def initial_weights(model_path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The (name, tensor) pairs of a model folder's safetensors files, as its config names them."""
    from safetensors import safe_open

    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_path} holds no .safetensors file to reload the initial weights from")
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                yield name, st.get_tensor(name)
