"""RolloutPool: inference engines that turn prompts into sampled completions.

One Ray actor class, `RolloutEngine`, wraps one engine of `rlvr.rollout.engines` (vLLM by default,
transformers `generate` as a debugging fallback). `RolloutPool` is the driver-side handle that spreads a batch of
requests over N engines and broadcasts weight updates to all of them.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from typing import Any, Callable, Iterator

import ray
import torch

from rlvr.rollout.engines import EngineConfig, SamplingConfig, initial_weights, make_engine
from rlvr.runtime.faults import RestartPolicy, gather, node_name, node_of
from rlvr.runtime.kernel_caches import bound_kernel_caches
from rlvr.runtime.logs import redirect_actor_output
from rlvr.seeds import engine_seed
from rlvr.types import GenerationRequest, Sample
from rlvr.weight_sync import Deadlines, sync_weights
from rlvr.weight_sync.buckets import TensorSpec, unpack
from rlvr.weight_sync.ipc import open_shared
from rlvr.weight_sync.nccl import broadcast, open_group
from rlvr.weight_sync.ray_objects import fetch_buckets

log = logging.getLogger(__name__)


def resident_mb() -> float:
    """This process's resident memory now (Linux; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


@ray.remote
class RolloutEngine:
    """One inference engine. Each sample records the weight version it was generated with."""

    def __init__(self, cfg: EngineConfig):
        redirect_actor_output()
        bound_kernel_caches()
        torch.set_num_threads(cfg.threads)
        self.engine = make_engine(cfg)
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        self.model_path = cfg.model_path
        self.version = 0
        self.asleep = False  # colocated mode: between sleep() and wake_up(), on any device

    def reset(self, log_path: str | None) -> None:
        """Back to the weights on disk, version 0, for a new run in this process (`cluster.keep_roles`)."""
        redirect_actor_output(log_path)
        self._load(0, initial_weights(self.model_path))

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig, seed: int) -> list[Sample]:
        # Reseeding the (in-process) sampler per call makes a resumed run draw the same samples;
        # vLLM's per-request seeds are not supported by its CPU sampler. With tensor parallelism
        # (cluster.tensor_parallel > 1) vLLM samples in worker processes this does not reach, and a
        # GPU's kernels are not bitwise run to run: there a resume is exact in its state, not its draws.
        self._check_awake("generate")
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

    # ---- weight sync (see rlvr/weight_sync/): one method per backend ------------------------
    def _load(self, version: int, weights: Iterator[tuple[str, torch.Tensor]]) -> dict[str, float]:
        """Load `weights` as `version`. The reply is what every sync logs of the engines (whose memory
        is otherwise unseen): the load's seconds, this process's resident memory now and its high-water mark."""
        self._check_awake("load weights")
        start = time.perf_counter()
        self.engine.load_weights(weights)
        self.version = version
        return {"load_s": time.perf_counter() - start, "rss_mb": resident_mb(),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    def update_weights(self, version: int, buckets: list) -> dict[str, float]:
        """`ray` backend: stream the packed buckets from the object store."""
        return self._load(version, fetch_buckets(buckets))

    def open_sync_group(self, host: str, port: int, world_size: int, rank: int) -> None:
        self.sync_group = open_group(host, port, world_size, rank, self.device)

    def receive_weights(self, version: int, specs: list[list[TensorSpec]]) -> dict[str, float]:
        """`nccl` backend: receive each packed bucket from learner rank 0's broadcast."""

        def buckets() -> Iterator[tuple[str, torch.Tensor]]:
            for bucket in specs:
                flat = torch.empty(sum(s.nbytes for s in bucket), dtype=torch.uint8, device=self.device)
                broadcast(self.sync_group, flat)
                yield from unpack(flat, bucket)

        return self._load(version, buckets())

    def open_shared_weights(self, version: int, handles: list[bytes], specs: list[list[TensorSpec]]) -> dict[str, float]:
        """`ipc` backend: map the colocated learner's packed buckets, no copy in transit."""
        return self._load(version, (kv for h, bucket in zip(handles, specs) for kv in unpack(open_shared(h), bucket)))

    def sleep(self) -> None:
        """Colocated mode: free the accelerator while the learner steps (on GPUs; on CPU only the state)."""
        if not self.asleep:
            self.engine.sleep()
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.engine.wake_up()
            self.asleep = False

    def _check_awake(self, what: str) -> None:
        # a sleeping vLLM engine has no KV cache and its weights offloaded: asked anyway, it fails
        # deep inside vLLM, or (the HF engine) on tensors left on the CPU
        if self.asleep:
            raise RuntimeError(f"a rollout engine asked to {what} while asleep (colocated mode): wake_up() first")

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
                 timeout_s: float | None = None, ready_timeout_s: float | None = None, learner_timeout_s: float | None = None):
        self.engines = engines
        self.start, self.timeout_s = start, timeout_s
        self.learner_timeout_s = learner_timeout_s  # the learners' side of a sync (trainer.role_timeout_s)
        self.policy = RestartPolicy(self.name, max_restarts if start is not None else 0, ready_timeout_s)
        self.reload: Callable[[Any], None] | None = None  # set by the trainer once the learners exist
        # taken before the pool's own lock when an engine is replaced: the trainer's `learners_busy`,
        # which its update and sync hold, so the two threads take the two locks in one order
        self.reload_lock: Any = threading.RLock()
        self.version = 0  # of the weights the engines hold: what a replacement is given
        self._nodes = [node_of(e) for e in engines] if start is not None else []

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig, seed: int) -> list[Sample]:
        if not requests:
            return []
        shards = [requests[i :: len(self.engines)] for i in range(len(self.engines))]
        parts = self._ask([i for i, shard in enumerate(shards) if shard],
                          lambda engine, i: engine.generate.remote(shards[i], sampling, engine_seed(seed, i)))
        samples = [s for i in sorted(parts) for s in parts[i]]
        order = {r.prompt_index: i for i, r in enumerate(requests)}
        samples.sort(key=lambda s: order[s.prompt_index])
        return samples

    def load_weights(self, backend: str, learners: list, version: int) -> dict:
        """The learners' weights into every engine as `version` (`cluster.weight_sync` names the
        backend); an engine lost or silent past ``timeout_s`` is replaced, and a learner rank silent
        past ``learner_timeout_s`` raises ``GetTimeoutError`` (the loop restarts the learners), so
        the sync never hangs."""
        self.version = version  # what a replacement made during the sync is given
        engines = list(self.engines)  # the handles this sync waits on: a failure names one of these
        return sync_weights(backend, learners, engines, version, deadlines=Deadlines(self.timeout_s, self.learner_timeout_s),
                            on_failure=lambda failures, since: self.replace_failed(failures, since, engines))

    def replace_failed(self, failures: dict[int, BaseException], since: float, engines: list) -> None:
        """Engines lost during a weight sync (`load_weights`): each is replaced and given the
        current weights, so the sync completes; the time since ``since`` counts as lost. ``engines``:
        the handles the sync waited on. (Looked up in the pool at failure time instead, an engine an
        async run's generating thread had already replaced was taken for the lost one: killed, and
        charged as a second death.)"""
        for i, error in failures.items():
            self._replace(i, error, engines[i])
        self.policy.lost(since)

    def _replace(self, i: int, error: BaseException, engine: Any) -> None:
        with self.reload_lock, self.policy.lock:  # an async run's generating thread and the sync may both find it lost
            if self.engines[i] is not engine:
                return  # already replaced
            what = f"rollout engine {i}"
            self.policy.charge(what, node_name(self._nodes[i]) if self._nodes else "an unknown node", error)
            self.engines[i] = self.policy.replace([engine], lambda: self.start(i))
            self._nodes[i] = node_of(self.engines[i])
            self.policy.await_ready([self.engines[i]], what)
            if self.reload is not None:
                self.reload(self.engines[i])

    def sleep(self) -> None:
        self._on_every_engine("sleep")

    def wake_up(self) -> None:
        self._on_every_engine("wake_up")

    def _on_every_engine(self, method: str) -> None:
        """`method` (colocated mode's sleep or wake_up) on every engine (a stopped engine hung the run here)."""
        self._ask(range(len(self.engines)), lambda engine, i: getattr(engine, method).remote())

    def _ask(self, indices, call: Callable[[Any, int], ray.ObjectRef]) -> dict[int, Any]:
        """``call(engine, i)`` on engine i for each of ``indices``; their answers. One lost or silent
        past ``timeout_s`` is replaced and asked again; the time since the first loss counts as lost.
        The handle asked is kept, so a replacement made meanwhile is not replaced again."""
        def issue(i: int) -> tuple[Any, ray.ObjectRef]:
            return self.engines[i], call(self.engines[i], i)

        pending = {i: issue(i) for i in indices}
        answers: dict[int, Any] = {}
        failed_at = None
        while pending:
            got, failures = gather({i: ref for i, (_, ref) in pending.items()}, self.timeout_s, "rollout.timeout_s")
            answers.update(got)
            for i, error in failures.items():
                failed_at = failed_at or time.perf_counter()
                self._replace(i, error, pending[i][0])
            pending = {i: issue(i) for i in failures}
        if failed_at is not None:
            self.policy.lost(failed_at)
        return answers
