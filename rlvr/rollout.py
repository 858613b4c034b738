"""RolloutPool: inference engines that turn prompts into sampled completions.

One Ray actor class, `RolloutEngine`, wraps one engine (vLLM by default, transformers `generate`
as a debugging fallback). `RolloutPool` is the driver-side handle that spreads a batch of
requests over N engines and broadcasts weight updates to all of them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import ray
import torch

from rlvr.faults import gather, node_of
from rlvr.logs import redirect_actor_output
from rlvr.weight_sync import TensorSpec, broadcast, fetch_buckets, open_group, open_shared, sync_weights, unpack

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
    """Built from the config tree by `rlvr.roles.engine_config`: no defaults of its own."""

    backend: str  # vllm | hf
    model_path: str
    dtype: str
    max_model_len: int
    kv_cache_gb: float
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

        self.llm.collective_rpc(reload)
        # Cached prompt prefixes (the system prompt and few-shot turns every request shares) hold KV
        # computed by the old weights; reusing them samples from a mix of old and new policy
        # (measured: log-probs off by up to 1.4 nats on a 942-token prompt).
        self.llm.reset_prefix_cache()

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


@ray.remote
class RolloutEngine:
    """One inference engine. Each sample records the weight version it was generated with."""

    def __init__(self, cfg: EngineConfig):
        redirect_actor_output()
        torch.set_num_threads(cfg.threads)
        if cfg.backend not in ENGINE_BACKENDS:
            raise ValueError(f"unknown rollout backend {cfg.backend!r}; known: {ENGINE_BACKENDS}")
        self.engine = VLLMEngine(cfg) if cfg.backend == "vllm" else HFEngine(cfg)
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        self.model_path = cfg.model_path
        self.version = 0

    def reset(self, log_path: str | None) -> None:
        """Back to the weights on disk, version 0, for a new run in this process (`cluster.keep_roles`)."""
        redirect_actor_output(log_path)
        self._load(0, initial_weights(self.model_path))

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig, seed: int) -> list[Sample]:
        # Reseeding the (in-process) sampler per call makes a resumed run draw the same samples;
        # vLLM's per-request seeds are not supported by its CPU sampler.
        torch.manual_seed(seed)
        groups = self.engine.generate(requests, sampling)
        samples = []
        for req, group in zip(requests, groups):
            for g in group:
                samples.append(
                    Sample(
                        prompt_index=req.prompt_index,
                        truncated=g["finish_reason"] == "length",
                        weight_version=self.version,
                        **g,
                    )
                )
        return samples

    # ---- weight sync (see rlvr/weight_sync.py): one method per backend ------------------------
    def _load(self, version: int, weights: Iterator[tuple[str, torch.Tensor]]) -> float:
        start = time.perf_counter()
        self.engine.load_weights(weights)
        self.version = version
        return time.perf_counter() - start

    def update_weights(self, version: int, buckets: list) -> float:
        """`ray` backend: stream the packed buckets from the object store. Returns seconds."""
        return self._load(version, fetch_buckets(buckets))

    def open_sync_group(self, host: str, port: int, world_size: int, rank: int) -> None:
        self.sync_group = open_group(host, port, world_size, rank, self.device)

    def receive_weights(self, version: int, specs: list[list[TensorSpec]]) -> float:
        """`nccl` backend: receive each packed bucket from learner rank 0's broadcast."""

        def buckets() -> Iterator[tuple[str, torch.Tensor]]:
            for bucket in specs:
                flat = torch.empty(sum(s.nbytes for s in bucket), dtype=torch.uint8, device=self.device)
                broadcast(self.sync_group, flat)
                yield from unpack(flat, bucket)

        return self._load(version, buckets())

    def open_shared_weights(self, version: int, handles: list[bytes], specs: list[list[TensorSpec]]) -> float:
        """`ipc` backend: map the colocated learner's packed buckets, no copy in transit."""
        return self._load(version, (kv for h, bucket in zip(handles, specs) for kv in unpack(open_shared(h), bucket)))

    def sleep(self) -> None:
        """Colocated mode on GPUs: free the accelerator while the learner steps."""
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()

    def weight_version(self) -> int:
        return self.version


class RolloutPool:
    """Driver-side handle over N `RolloutEngine` actors: splits prompts across them.

    With ``start`` (``start(i)`` makes engine i again, in its bundle), an engine that dies or does
    not answer a generate call within ``timeout_s`` (stopped, or hung in a kernel) is replaced, up
    to ``max_restarts`` times in the run: ``reload(engine)`` gives the replacement the current
    weights, and its share of the requests is issued again with the same seed, so on CPU the step's
    samples are those the dead engine would have drawn.  The other engines keep serving meanwhile.
    An engine lost during a weight sync is replaced the same way (`replace_failed`).
    """

    name = "rollout"

    def __init__(self, engines: list, start: Callable[[int], Any] | None = None, max_restarts: int = 0,
                 timeout_s: float | None = None, ready_timeout_s: float | None = None):
        self.engines = engines
        self.start, self.max_restarts, self.timeout_s = start, int(max_restarts), timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.reload: Callable[[Any], None] | None = None  # set by the trainer once the learners exist
        self.restarts, self.seconds_lost = 0, 0.0
        self.version = 0  # of the weights the engines hold: what a replacement is given
        self._nodes = [node_of(e) for e in engines] if start is not None else []
        self._lock = threading.Lock()

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig, seed: int) -> list[Sample]:
        if not requests:
            return []
        shards = [requests[i :: len(self.engines)] for i in range(len(self.engines))]

        def issue(i: int) -> tuple[Any, ray.ObjectRef]:  # the engine asked, so a replacement is not replaced again
            return self.engines[i], self.engines[i].generate.remote(shards[i], sampling, seed * 1000 + i)

        pending = {i: issue(i) for i, shard in enumerate(shards) if shard}
        parts: dict[int, list[Sample]] = {}
        failed_at = None
        while pending:
            answers, failures = gather({i: ref for i, (_, ref) in pending.items()}, self.timeout_s, "rollout.timeout_s")
            parts.update(answers)
            for i, error in failures.items():
                failed_at = failed_at or time.perf_counter()
                self._replace(i, error, pending[i][0])
            pending = {i: issue(i) for i in failures}
        if failed_at is not None:
            self.seconds_lost += time.perf_counter() - failed_at
        samples = [s for i in sorted(parts) for s in parts[i]]
        order = {r.prompt_index: i for i, r in enumerate(requests)}
        samples.sort(key=lambda s: order[s.prompt_index])
        return samples

    def load_weights(self, backend: str, learners: list, version: int) -> dict:
        """The learners' weights into every engine as `version` (`cluster.weight_sync` names the
        backend); an engine lost or silent past ``timeout_s`` is replaced, so the sync never hangs."""
        self.version = version  # what a replacement made during the sync is given
        return sync_weights(backend, learners, self.engines, version, timeout_s=self.timeout_s, on_failure=self.replace_failed)

    def replace_failed(self, failures: dict[int, BaseException], since: float) -> None:
        """Engines lost during a weight sync (`load_weights`): each is replaced and
        given the current weights, so the sync completes; the time since ``since`` counts as lost."""
        engines = list(self.engines)
        for i, error in failures.items():
            self._replace(i, error, engines[i])
        self.seconds_lost += time.perf_counter() - since

    def _replace(self, i: int, error: BaseException, engine: Any) -> None:
        from rlvr.faults import RoleFailed, node_name

        with self._lock:  # an async run's generating thread and the sync may both find it lost
            if self.engines[i] is not engine:
                return  # already replaced
            where = node_name(self._nodes[i]) if self._nodes else "an unknown node"
            if self.start is None or self.restarts >= self.max_restarts:
                raise RoleFailed(
                    f"rollout engine {i} on {where} failed ({type(error).__name__}); engines failed {self.restarts + 1} times in this run, more than "
                    f"trainer.max_restarts={self.max_restarts} allows; last error: {str(error).strip().splitlines()[0]}"
                ) from error
            self.restarts += 1
            log.warning("rollout engine %d on %s failed (%s); starting a replacement (%d of at most %d)",
                        i, where, type(error).__name__, self.restarts, self.max_restarts)
            ray.kill(self.engines[i])  # a stopped process too: Ray's kill is a SIGKILL
            self.engines[i] = self.start(i)
            self._nodes[i] = node_of(self.engines[i])
            try:
                ray.get(self.engines[i].__ray_ready__.remote(), timeout=self.ready_timeout_s)
            except ray.exceptions.GetTimeoutError as e:
                raise RoleFailed(
                    f"no replacement for rollout engine {i} started within cluster.placement_timeout_s={self.ready_timeout_s}: "
                    "no node has room for its bundle (was its node lost?)"
                ) from e
            if self.reload is not None:
                self.reload(self.engines[i])

    def sleep(self) -> None:
        ray.get([e.sleep.remote() for e in self.engines])

    def wake_up(self) -> None:
        ray.get([e.wake_up.remote() for e in self.engines])
