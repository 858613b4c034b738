"""What every value backend shares: the context FIFO, its prompts' embeddings, input checks, bounds.

The policy's capability reaches a value model only through the context: the last ``size``
(prompt, empirical success) pairs of the current policy.  Backends that embed prompts keep the
context's embeddings aligned with it (:class:`EmbeddedContext`), so that a prompt is encoded once:
predicted in one step, added to the context after it, and reused from then on.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable, Sequence

import torch

PRIOR_MIN, PRIOR_MAX = 0.02, 0.98
UNC_MIN, UNC_MAX = 1e-3, 0.5


def check_pairs(prompts: Sequence[str], success: Sequence[float]) -> tuple[list[str], list[float]]:
    prompts, success = list(prompts), [float(s) for s in success]
    if len(prompts) != len(success):
        raise ValueError(f"add_context: {len(prompts)} prompts but {len(success)} success values")
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"add_context: prompts must be strings, got {type(p).__name__}")
    for s in success:
        if not (0.0 <= s <= 1.0):  # also rejects NaN
            raise ValueError(f"add_context: success values must lie in [0, 1], got {s}")
    return prompts, success


def check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("predict takes a list of prompts, not a single string")
    prompts = list(prompts)
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"predict: prompts must be strings, got {type(p).__name__}")
    return prompts


def clip_prior(p: torch.Tensor) -> torch.Tensor:
    return p.clamp(PRIOR_MIN, PRIOR_MAX)


def device() -> str:
    # A ValueServer given an accelerator (cluster.value_accelerators > 0) runs its model on it.
    return "cuda" if torch.cuda.is_available() else "cpu"


def offline() -> None:
    """Never reach for a model hub: every value model loads from local files."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class Context:
    """FIFO of (prompt, success) pairs, the last ``size`` kept."""

    def __init__(self, size: int):
        if int(size) <= 0:
            raise ValueError(f"context_size must be positive, got {size}")
        self.size = int(size)
        self.prompts: list[str] = []
        self.success: list[float] = []

    def add(self, prompts: list[str], success: list[float]) -> None:
        self.prompts = (self.prompts + prompts)[-self.size :]
        self.success = (self.success + success)[-self.size :]

    def __len__(self) -> int:
        return len(self.prompts)

    def state_dict(self) -> dict:
        return {"prompts": list(self.prompts), "success": list(self.success)}

    def load_state_dict(self, d: dict) -> None:
        prompts, success = check_pairs(d.get("prompts", []), d.get("success", []))
        self.prompts, self.success = prompts[-self.size :], success[-self.size :]


class EmbeddedContext(Context):
    """The context plus each of its prompts' embedding (``emb``, [len, dim], aligned with
    ``prompts``), and an LRU cache of the last ``cache_size`` prompts seen, so that predicting a
    batch and then adding it to the context encodes it once.

    ``encode(texts) -> float tensor [len(texts), dim]`` is the backend's frozen encoder; ``tag``
    names it in checkpoints, whose embeddings are reused only when the tag and the width match.
    """

    def __init__(self, size: int, encode: Callable[[list[str]], torch.Tensor], dim: int, tag: str, cache_size: int = 4096):
        super().__init__(size)
        self.encode, self.dim, self.tag = encode, int(dim), str(tag)
        self.cache_size = max(int(cache_size), self.size)
        self.emb = torch.zeros(0, self.dim)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def embed(self, prompts: list[str]) -> torch.Tensor:
        """Embeddings [len(prompts), dim], through the cache."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            for p, e in zip(missing, self.encode(missing)):
                self._cache[p] = e
        out = torch.stack([self._cache[p] for p in prompts]) if prompts else torch.zeros(0, self.dim)
        for p in prompts:
            self._cache.move_to_end(p)
        keep = set(self.prompts)
        while len(self._cache) > self.cache_size:
            # evict the least recently used prompt that is not in the context
            victim = next((k for k in self._cache if k not in keep), None)
            if victim is None:
                break
            del self._cache[victim]
        return out

    def add(self, prompts: list[str], success: list[float]) -> None:
        new_emb = self.embed(prompts)
        super().add(prompts, success)
        self.emb = torch.cat([self.emb, new_emb])[-len(self) :]
        # The cache keeps the context's prompts only, as a checkpoint does: an encoder's output
        # depends (by 1e-7) on the batch it is padded with, so a prompt that had left the context
        # but was still cached here came back encoded differently after a resume.
        keep = set(self.prompts)
        for prompt in [p for p in self._cache if p not in keep]:
            del self._cache[prompt]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "embeddings": self.emb.clone(), "encoder": self.tag, "dim": self.dim}

    def load_state_dict(self, d: dict) -> None:
        """The context; its embeddings from ``d`` when they came from this encoder, else encoded anew."""
        super().load_state_dict(d)
        n = len(self)
        emb = d.get("embeddings")
        if emb is not None and d.get("encoder") == self.tag:
            emb = torch.as_tensor(emb, dtype=torch.float32)
            if emb.ndim == 2 and emb.shape[1] == self.dim and emb.shape[0] >= n:
                self.emb = emb[emb.shape[0] - n :].clone()
                for p, e in zip(self.prompts, self.emb):
                    self._cache[p] = e
                return
        self.emb = self.embed(self.prompts) if n else torch.zeros(0, self.dim)
