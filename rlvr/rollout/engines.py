"""The inference engines themselves, without Ray: what a rollout request and its samples are, and
the two backends that answer them (vLLM by default, transformers `generate` as a debugging
fallback and for GPU boxes without vLLM). `rlvr.rollout.pool` wraps one engine in a Ray actor and
spreads requests over a pool of them; a benchmark or a GPU check can use an engine directly.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch

log = logging.getLogger(__name__)


@dataclass
class GenerationRequest:
    """Sample `n` completions of one prompt: text with the chat template applied, or token ids
    (a multi-turn episode continues from its ids, never from re-tokenized text)."""

    prompt_index: int
    prompt: str | list[int]
    n: int
    max_tokens: int | None = None  # this request's cap, below `SamplingConfig.max_tokens` (a turn of an episode)


@dataclass
class Sample:
    prompt_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    logprobs: list[float]  # log-prob of each sampled token under the engine's weights
    finish_reason: str  # "stop" or "length"
    truncated: bool  # hit max_tokens before an end-of-sequence token
    weight_version: int


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()  # strings that end a completion, kept in it (a tool call's closing tag)


@dataclass
class EngineConfig:
    """Built from the config tree by `rlvr.runtime.roles.engine_config`: no defaults of its own."""

    backend: str  # vllm | hf
    model_path: str
    dtype: str
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


ENGINE_BACKENDS = ("vllm", "hf")


class VLLMEngine:
    """An in-process vLLM engine (`VLLM_ENABLE_V1_MULTIPROCESSING=0` starts in ~4 s instead of 12-26 s)."""

    def __init__(self, cfg: EngineConfig):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        kwargs = dict(
            model=cfg.model_path,
            dtype=cfg.dtype,
            max_model_len=cfg.max_model_len,
            seed=cfg.seed,
            enforce_eager=True,
            # log-probs of the distribution actually sampled from (after temperature), which is
            # what the learner recomputes
            logprobs_mode="processed_logprobs",
            tensor_parallel_size=cfg.tensor_parallel,
        )
        self.tensor_parallel = cfg.tensor_parallel
        if cfg.tensor_parallel > 1:
            # Inside a Ray actor vLLM would pick its Ray executor, which wants a placement-group
            # bundle per GPU; the actor already holds its TP GPUs, so run the workers as processes.
            kwargs["distributed_executor_backend"] = "mp"
        self.sleeps = cfg.sleep_mode and torch.cuda.is_available()
        if self.sleeps:
            kwargs["enable_sleep_mode"] = True
            kwargs["gpu_memory_utilization"] = 0.4  # the colocated learner keeps its weights on the device
        if not torch.cuda.is_available():
            # On CPU this fraction reserves host RAM for the KV cache; the default 0.92 refuses to start
            # whenever anything else (the learners) is resident.
            kwargs["gpu_memory_utilization"] = 0.3
            if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:  # vLLM's own whole-GiB setting wins where a user set it
                kwargs["kv_cache_memory_bytes"] = int(cfg.kv_cache_gb * 2**30)
            # vLLM's CPU defaults (256 sequences, 128-token blocks) decode slower and hold more
            # memory on a small box (docs/benchmarks.md, "Lean by default")
            kwargs.update(max_num_seqs=cfg.max_num_seqs, block_size=cfg.block_size)
        kwargs.update(cfg.extra)
        self.llm = LLM(**kwargs)

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[list[dict]]:
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=r.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=r.max_tokens or sampling.max_tokens,
                logprobs=0,  # the sampled token's own log-prob
                **(dict(stop=list(sampling.stop), include_stop_str_in_output=True) if sampling.stop else {}),
            )
            for r in requests
        ]
        prompts = [r.prompt if isinstance(r.prompt, str) else {"prompt_token_ids": list(r.prompt)} for r in requests]
        # Each call starts with a cold prefix cache (its own requests still share their common
        # prefixes). A prefix cached by an earlier call was computed in another batch shape, so its
        # KV differs in the last bits and a seeded call would sample differently the second time;
        # after a weight load it holds KV of the old weights, and reusing it samples from a mix of
        # old and new policy (measured: log-probs off by up to 1.4 nats on a 942-token prompt).
        self.llm.reset_prefix_cache()
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for out in outputs:
            group = []
            for c in out.outputs:
                lps = [entry[tok].logprob for tok, entry in zip(c.token_ids, c.logprobs)] if c.logprobs else []
                group.append(
                    dict(
                        prompt_ids=list(out.prompt_token_ids),
                        response_ids=list(c.token_ids),
                        text=c.text,
                        logprobs=lps,
                        finish_reason=str(c.finish_reason),
                    )
                )
            results.append(group)
        return results

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        # `model.load_weights` breaks after the CPU backend repacks weights; reload_weights re-runs
        # the loader's post-processing, and works on GPU too.
        if self.tensor_parallel > 1:
            # TP workers are separate processes: the closure is pickled (a generator cannot be), and
            # host tensors let each worker copy onto its own device
            weights = [(n, t.to("cpu")) for n, t in weights]

        def reload(worker, weights=weights):
            worker.reload_weights(weights_iterator=iter(weights))
            # A tied LM head shares the embedding tensor, but the CPU backend keeps a repacked copy
            # of it for the GEMM that reload_weights does not refresh (the head loads no weights of
            # its own). Re-run its post-load step so the logits use the new embedding.
            model = worker.get_model()
            head = getattr(model, "lm_head", None)
            method = getattr(head, "quant_method", None)
            if head is not None and getattr(model.config, "tie_word_embeddings", False) and method is not None:
                method.process_weights_after_loading(head)

        self.llm.collective_rpc(reload)  # generate() drops the prefixes cached under the old weights

    def sleep(self) -> None:
        if self.sleeps:
            self.llm.sleep(level=1)  # weights to host memory, KV cache dropped

    def wake_up(self) -> None:
        if self.sleeps:
            self.llm.wake_up()


class HFEngine:
    """transformers `generate`: slow, but has no moving parts; for debugging and for GPU boxes without vLLM."""

    def __init__(self, cfg: EngineConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.sleeps = cfg.sleep_mode and self.device == "cuda"
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model_path, dtype=getattr(torch, cfg.dtype))
        self.model.to(self.device).eval()
        self.eos_ids = {self.tokenizer.eos_token_id}
        gen_eos = self.model.generation_config.eos_token_id
        self.eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos]) - {None}

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[list[dict]]:
        results = []
        for r in requests:
            if isinstance(r.prompt, str):
                ids = self.tokenizer(r.prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(self.device)
            else:
                ids = torch.tensor([list(r.prompt)], device=self.device)
            out = self.model.generate(
                ids,
                do_sample=sampling.temperature > 0,
                temperature=sampling.temperature if sampling.temperature > 0 else None,
                top_p=sampling.top_p,
                top_k=0,  # the model's generation_config may set top_k=50; the learner's π is the full softmax
                max_new_tokens=r.max_tokens or sampling.max_tokens,
                num_return_sequences=r.n,
                **(dict(stop_strings=list(sampling.stop), tokenizer=self.tokenizer) if sampling.stop else {}),
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
            scores = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
            group = []
            for seq, lp in zip(out.sequences, scores):
                resp = seq[ids.shape[1] :].tolist()
                end = next((i + 1 for i, t in enumerate(resp) if t in self.eos_ids), len(resp))
                stopped = end < len(resp) or (resp and resp[end - 1] in self.eos_ids)
                resp = resp[:end]
                text = self.tokenizer.decode(resp, skip_special_tokens=True)
                stopped = stopped or any(x in text for x in sampling.stop)
                group.append(
                    dict(
                        prompt_ids=ids[0].tolist(),
                        response_ids=resp,
                        text=text,
                        logprobs=lp[:end].float().tolist(),
                        finish_reason="stop" if stopped else "length",
                    )
                )
            results.append(group)
        return results

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights:
                if name in params:
                    params[name].copy_(tensor.to(params[name].device, params[name].dtype))

    def sleep(self) -> None:
        if self.sleeps:
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def wake_up(self) -> None:
        if self.sleeps:
            self.model.to(self.device)


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
