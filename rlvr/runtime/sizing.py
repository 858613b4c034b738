"""The engine's KV cache and the learner's micro-batch when the config says `auto`: sized from the
model's shapes and the longest sequence this job makes, instead of fixed numbers.

- `rollout.kv_cache_gb=auto`: room for the largest generate call one engine gets (at most
  `rollout.max_num_seqs` sequences at once), each of the longest prompt plus its answer budget.
- `learner.micro_batch_size=auto`: each micro-batch takes as many sequences as its activations,
  counted at the lengths they have, fit in `learner.activation_memory_gb` (verl's dynamic batch
  size, `ppo_max_token_len_per_gpu`, with the budget in bytes instead of tokens).

The pure functions take numbers; `kv_cache_gb(cfg, ...)` and `micro_batching(cfg, ...)` read the
config and the data (once per process: the longest prompt is rendered from the data itself).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlvr.config import max_response_tokens
from rlvr.types import Trajectory

log = logging.getLogger("rlvr")
ANNOUNCED_CHECK = 10_000  # prompts: a length check of more says so first

# vLLM's KV block on CPU (vllm/platforms/cpu.py sets 128 unless a user chose one): a sequence
# holds whole blocks, so a 155-token sequence takes 256 tokens of cache.
CPU_BLOCK_TOKENS = 128
# Prompts rendered to find the longest: all of a dataset up to this many, else an even sample. A
# longer prompt outside the sample costs the engine some concurrency on that call, nothing more.
PROMPT_SAMPLE = 2048
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def native_bf16(accelerator: str | None, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether bf16 runs as fast as float32 where the roles compute, which `model.*_dtype=auto` asks.
    On a GPU (`cluster.accelerator` set): yes (an Ampere or later; a V100 or T4 needs the dtypes set).
    On a CPU: only with bf16 instructions (x86's avx512_bf16 or amx_bf16, Arm's bf16). Without them
    torch and vLLM emulate bf16: on an AVX2 EPYC a 2048^3 bf16 GEMM ran at under 1 GFLOP/s against
    117 in float32, and the default job's generation went 10x slower (docs/benchmarks.md)."""
    if accelerator:
        return True
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:  # not Linux: no flags to read, float32 is the safe choice
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16|bf16)\b", text) is not None


def resolve_auto_dtypes(model: Any, accelerator: str | None) -> dict[str, str]:
    """``model.dtype``, ``model.train_dtype`` and ``model.rollout_dtype`` set where they are ``auto``:
    bfloat16 where `native_bf16` (the compute dtypes also where the weights are bf16 already),
    float32 otherwise. Returns the keys it set."""
    keys = [k for k in ("dtype", "train_dtype", "rollout_dtype") if not OmegaConf.is_missing(model, k) and model[k] == "auto"]
    if not keys:
        return {}
    native = native_bf16(accelerator)
    chosen = {}
    for key in keys:  # the weights' first: bf16 weights need bf16 compute
        fast = native or (key != "dtype" and model.dtype == "bfloat16")
        model[key] = chosen[key] = "bfloat16" if fast else "float32"
    return chosen


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, model_path: str) -> "ModelShape":
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(model_path)
        heads = c.num_attention_heads
        return cls(
            layers=c.num_hidden_layers,
            hidden=c.hidden_size,
            intermediate=c.intermediate_size,
            kv_heads=getattr(c, "num_key_value_heads", None) or heads,
            head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
            vocab=c.vocab_size,
        )


def kv_bytes_per_token(shape: ModelShape, dtype: str) -> int:
    """K and V of every layer for one token: 2 · layers · kv_heads · head_dim · bytes(dtype)."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * DTYPE_BYTES[dtype]


def kv_cache_bytes(bytes_per_token: int, sequences: int, tokens_per_sequence: int, max_model_len: int,
                   block_tokens: int = CPU_BLOCK_TOKENS) -> int:
    """sequences · ⌈tokens_per_sequence / block⌉ blocks, and never less than one sequence of
    max_model_len (vLLM refuses to start with less)."""
    blocks = max(sequences * math.ceil(tokens_per_sequence / block_tokens), math.ceil(max_model_len / block_tokens))
    return blocks * block_tokens * bytes_per_token


def activation_bytes_per_position(shape: ModelShape, train_dtype: str, checkpointing: bool = False) -> tuple[float, float]:
    """What one position holds for backward, as (every position, more per response position).

    Per decoder layer, from what autograd saves in a Llama-style block: the two RMSNorms in float32
    (input and normalized output, 16·h bytes) and, in the training dtype, the normed inputs cast for
    the projections, q, k, v (after GQA's repeat), the attention output, o_proj's input, the MLP's
    gate, up, silu(gate) and their product (7·h + 4·f elements). A response position also holds the
    LM head's float32 log-softmax and its backward temporaries (about 16 bytes a vocabulary entry).
    On smollm2-135m this predicts the learner's measured peak growth from micro-batch 8 to 16 as
    631 MB (measured 633) and from 4 to 8 as 315 MB (measured 276): benchmarks/micro/learner_memory.py.
    With gradient checkpointing only each layer's float32 input stays, and one layer's full set
    while it is recomputed.
    """
    act = DTYPE_BYTES[train_dtype]
    per_layer = 16 * shape.hidden + act * (7 * shape.hidden + 4 * shape.intermediate)
    held = shape.layers * 4 * shape.hidden + per_layer if checkpointing else shape.layers * per_layer
    return held, 16 * shape.vocab


@dataclass(frozen=True)
class ActivationBudget:
    """`learner.micro_batch_size=auto`: a rank's shard cut into micro-batches whose activations fit
    `budget_bytes`, counted at the sequences' own lengths.

    The positions are counted as `rlvr.learner.forward` lays the micro-batch out (`rlvr.learner.forward.positions`
    counts the same from a collated one): with shared prompts and packed, the distinct prompts' tokens
    and the fed response tokens, no padding; shared and unpacked, the G distinct prompts padded to
    the longest P and B rows of the longest response T less its last token; without, B rows of P + T − 1.
    The LM head runs on the real response tokens when packed, on B · T positions otherwise, and
    with `head_chunk` holds its logits for that many at a time (`rlvr.learner.forward._token_logprobs`).
    """

    budget_bytes: float
    per_position: float
    per_response_position: float
    shared_prompts: bool
    packed: bool
    head_chunk: int  # 0: the whole micro-batch at once

    def bytes(self, seqs: list[Trajectory]) -> float:
        layout = _Layout()
        for size in _sizes(seqs):
            layout.add(size)
        return self._bytes(*layout.shape())

    def _bytes(self, groups: int, prompt: int, prompt_tokens: int, fed_tokens: int, sequences: int, response: int, response_tokens: int) -> float:
        if self.shared_prompts and self.packed:
            run, head = prompt_tokens + fed_tokens, response_tokens
        elif self.shared_prompts:
            run, head = groups * prompt + sequences * (response - 1), sequences * response
        else:
            run, head = sequences * (prompt + response - 1), sequences * response
        if self.head_chunk:
            head = min(head, self.head_chunk)
        return run * self.per_position + head * self.per_response_position

    def __call__(self, shard: list[Trajectory]) -> list[list[Trajectory]]:
        """The shard, in its order, cut into the fewest micro-batches that fit (a sequence over the
        budget goes alone), then as evenly as that count allows: the tightest budget (to 0.1 %) that
        still cuts no more. Even cuts lower the peak at the same number of forwards."""
        sizes = _sizes(shard)
        greedy = self._cut(sizes, self.budget_bytes)
        if len(greedy) <= 1 or len(greedy) == len(sizes):  # one micro-batch, or one a sequence: nothing to even out
            return [shard[a:b] for a, b in greedy]
        fewest, low, high = len(greedy), 0.0, self.budget_bytes
        while high - low > 1e-3 * self.budget_bytes:  # each cut is a pass in Python over the shard: 10 of them, not 30
            mid = (low + high) / 2
            low, high = (low, mid) if len(self._cut(sizes, mid)) <= fewest else (mid, high)
        return [shard[a:b] for a, b in self._cut(sizes, high)]

    def _cut(self, sizes: list[tuple[int, int, int, int]], budget: float) -> list[tuple[int, int]]:
        """[start, end) of each micro-batch."""
        bounds: list[tuple[int, int]] = []
        layout, start = _Layout(), 0
        for i, size in enumerate(sizes):
            if i and self._bytes(*layout.shape(size)) > budget:
                bounds.append((start, i))
                layout, start = _Layout(), i
            layout.add(size)
        return bounds + [(start, len(sizes))] if sizes else bounds


def _sizes(seqs: list[Trajectory]) -> list[tuple[int, int, int, int]]:
    """Each sequence's (prompt number, prompt tokens, fed tokens, response tokens); equal prompts share a
    number (a set of small ints, not of 300-token tuples hashed at every look)."""
    numbers: dict[tuple, int] = {}
    return [(numbers.setdefault(s.prompt_key, len(numbers)), len(s.prompt_ids), _fed(s), len(s.response_ids)) for s in seqs]


class _Layout:
    """A micro-batch's shape as sequences join it: distinct prompts, the longest prompt, the
    distinct prompts' tokens, the fed response tokens, sequences, the longest response and the
    response tokens."""

    def __init__(self) -> None:
        self.prompts: set[int] = set()
        self.prompt = self.prompt_tokens = self.fed_tokens = self.sequences = self.response = self.response_tokens = 0

    def shape(self, size: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int, int, int, int]:
        """The shape now, or with a sequence of `size` (`_sizes`) added."""
        if size is None:
            return (len(self.prompts), self.prompt, self.prompt_tokens, self.fed_tokens, self.sequences, max(self.response, 1),
                    self.response_tokens)
        number, prompt, fed, response = size
        new = number not in self.prompts
        return (len(self.prompts) + new, max(self.prompt, prompt), self.prompt_tokens + new * prompt, self.fed_tokens + fed,
                self.sequences + 1, max(self.response, response, 1), self.response_tokens + response)

    def add(self, size: tuple[int, int, int, int]) -> None:
        _, self.prompt, self.prompt_tokens, self.fed_tokens, self.sequences, self.response, self.response_tokens = self.shape(size)
        self.prompts.add(size[0])


def _fed(s: Trajectory) -> int:
    """The response tokens fed to the decoder: all but the last (which nothing after it predicts from)."""
    return max(len(s.response_ids) - 1, 0)


# ---- from the config ---------------------------------------------------------------------------
_longest_prompt: dict[tuple[str, str], int] = {}


def longest_prompt_tokens(cfg: DictConfig, model_path: str) -> int:
    """The longest rendered prompt (chat template, system prompt, few-shot turns; an episode's first
    messages with the tool block) over the training and evaluation data, or an even sample of
    PROMPT_SAMPLE of them; once per process per data."""
    key = (model_path, OmegaConf.to_yaml(cfg.data, resolve=True) + OmegaConf.to_yaml(cfg.env, resolve=True))
    if key not in _longest_prompt:
        from rlvr.data import load_problems
        from rlvr.generation import first_prompt_ids

        problems = []
        for split in ("train", "eval"):
            rows = load_problems(OmegaConf.to_container(cfg.data[split], resolve=True))
            step = max(1, len(rows) // PROMPT_SAMPLE)
            problems += rows[::step]
        render = first_prompt_ids(cfg, model_path)
        _longest_prompt[key] = max((len(render(p)) for p in problems), default=0)
    return _longest_prompt[key]


def largest_generate_call(cfg: DictConfig) -> int:
    """Sequences in the largest generate call the job makes: a training batch (V0.5 up to n_max a
    prompt), the held-out evaluation, the warm-up prompts, the oracle's samples."""
    a = cfg.algorithm
    per_prompt = a.n_max if a.sampling == "adaptive" else a.n
    calls = [cfg.trainer.batch_size * per_prompt, a.warmup_prompts * a.n, cfg.trainer.batch_size * cfg.eval.oracle.samples]
    if cfg.trainer.eval_every > 0 or cfg.eval.at_start:
        calls.append(cfg.eval.size * cfg.eval.n_samples)
    return max(calls)


def kv_cache_gb(cfg: DictConfig, model_path: str) -> float:
    """`rollout.kv_cache_gb`, with `auto` worked out for this job (see the module's docstring)."""
    if cfg.rollout.kv_cache_gb != "auto":
        return float(cfg.rollout.kv_cache_gb)
    sequences = min(cfg.rollout.max_num_seqs, math.ceil(largest_generate_call(cfg) / cfg.cluster.num_engines))
    answer = max(max_response_tokens(cfg), cfg.eval.max_tokens if cfg.env.name == "none" else 0)
    tokens = min(cfg.model.max_model_len, longest_prompt_tokens(cfg, model_path) + answer)
    per_token = kv_bytes_per_token(ModelShape.of(model_path), cfg.model.rollout_dtype)
    return kv_cache_bytes(per_token, sequences, tokens, cfg.model.max_model_len, cfg.rollout.block_size) / 2**30


def micro_batching(cfg: DictConfig, model_path: str) -> int | ActivationBudget:
    """How `rlvr.learner.plan.plan_mini_batches` cuts micro-batches: `learner.micro_batch_size` sequences,
    or with `auto` an `ActivationBudget` of `learner.activation_memory_gb`."""
    if cfg.learner.micro_batch_size != "auto":
        return int(cfg.learner.micro_batch_size)
    checkpointing = cfg.learner.gradient_checkpointing
    per_position, per_response = activation_bytes_per_position(ModelShape.of(model_path), cfg.model.train_dtype, checkpointing)
    shared = cfg.learner.share_prompts and not checkpointing  # HF turns the prompt cache off under checkpointing
    return ActivationBudget(cfg.learner.activation_memory_gb * 2**30, per_position, per_response, shared, shared and cfg.learner.pack_responses,
                            cfg.learner.head_chunk)


def check_model_length(cfg: DictConfig, model_path: str) -> None:
    """model.max_model_len within the model's positions (`max_position_embeddings`, where no rope
    scaling stretches them): the engine refused a longer one only once its actor started, as an
    ActorDiedError around vLLM's own message. And within its sliding window, where it has one; and
    the tensor-parallel size dividing its attention heads."""
    from transformers import AutoConfig

    from rlvr.config import ConfigError

    c = AutoConfig.from_pretrained(model_path).get_text_config()
    window = getattr(c, "sliding_window", None) if getattr(c, "use_sliding_window", True) else None
    if getattr(c, "layer_types", None) and "sliding_attention" not in c.layer_types:
        window = None  # every layer attends in full (Qwen2's max_window_layers can leave none sliding)
    if window and window < cfg.model.max_model_len:
        # the learner's forward masks full causal attention (its own masks, a prompt cache HF would cut
        # at the window): past the window its log-probs were another policy's, or it crashed
        raise ConfigError(f"model.max_model_len={cfg.model.max_model_len}: {model_path} attends within a sliding window of "
                          f"{window} tokens, which the learner does not model; set model.max_model_len <= {window}")
    heads, tp = getattr(c, "num_attention_heads", None), int(cfg.cluster.tensor_parallel)
    if heads and tp > 1 and heads % tp:  # vLLM refused it inside every engine actor, after the placement
        raise ConfigError(f"cluster.tensor_parallel={tp}: must divide {model_path}'s {heads} attention heads, "
                          "which vLLM splits across an engine's devices")
    positions = getattr(c, "max_position_embeddings", None)
    rope = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    if positions and rope.get("rope_type", rope.get("type", "default")) == "default" and cfg.model.max_model_len > positions:
        raise ConfigError(f"model.max_model_len={cfg.model.max_model_len} is more than {model_path} has positions for "
                          f"(max_position_embeddings={positions}): lower it")


def check_prompt_lengths(cfg: DictConfig, model_path: str, splits: dict[str, list]) -> None:
    """Every prompt of each split (``{"data.train": problems, ...}``), rendered, leaves its answer's
    max_tokens within model.max_model_len; else a DataError naming the split, how many and which.
    (vLLM refused such a prompt mid-run with a traceback that named no row, or, with the prompt
    just short of the limit, cut its answers silently.) An episode budgets its own turns: its first
    prompt (the environment's messages, the tool block) needs room for one token (it was found only
    when first sampled, steps into the run)."""
    from rlvr.data import DataError
    from rlvr.generation import first_prompt_ids

    render = first_prompt_ids(cfg, model_path)
    length = cfg.model.max_model_len
    for split, problems in splits.items():
        if len(problems) >= ANNOUNCED_CHECK:  # about 0.15 ms a prompt: minutes for a million
            log.info("%s: checking that each of %d prompts, rendered, fits model.max_model_len=%d", split, len(problems), length)
        if cfg.env.name != "none":
            answer, less = 1, f"less 1 token to answer in; env={cfg.env.name}'s first messages and tool block included"
        else:
            key, answer = ("eval.max_tokens", cfg.eval.max_tokens) if split != "data.train" else ("rollout.max_tokens", cfg.rollout.max_tokens)
            less = f"less {key}={answer}"
        room = length - answer
        too_long = [(p.uid, n) for p in problems if (n := len(render(p))) > room]
        if too_long:
            uid, n = max(too_long, key=lambda x: x[1])
            raise DataError(
                f"{split}: {len(too_long)} of {len(problems)} prompts render to more than {room} tokens "
                f"(model.max_model_len={length} {less}), the longest {uid} with {n}: "
                "raise model.max_model_len, lower the max_tokens, or leave those rows out"
            )
