"""PolicyLearner: one DeepSpeed rank of the policy. R of them form a data-parallel group.

Each step a learner receives its shard of the batch as mini-batches of `Trajectory` records (token
ids, loss mask, the engine's log-probs, advantages), fixes π_old, and takes one optimizer step per
mini-batch for `epochs` passes, with the policy loss and the rollout correction from
`rlvr.algorithms`. Rank 0 then exports the weights in buckets for the rollout engines.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
import os
import resource
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import ray
import torch

from rlvr.algorithms import policy_loss, rollout_correction, rollout_mismatch
from rlvr.learner.forward import Collated, check_head_matches, collate, dot64, loss_share, padding_share, positions, response_logprobs
from rlvr.learner.schedule import lr_factor
from rlvr.lora import LoraSettings, add_adapters, sync_tensors
from rlvr.runtime.kernel_caches import bound_kernel_caches
from rlvr.runtime.logs import redirect_actor_output
from rlvr.types import MiniBatch, Trajectory
from rlvr.weight_sync import ipc
from rlvr.weight_sync.buckets import TensorSpec, pack, plan_buckets
from rlvr.weight_sync.nccl import broadcast, open_group
from rlvr.weight_sync.ray_objects import put_bucket

# Stats aggregated by `agg` like the loss itself: a micro-batch contributes its share of the
# mini-batch's value (as its gradient does), not a token-weighted mean, which for the seq-mean
# aggregations would depend on how sequences fall into micro-batches.
LOSS_STATS = ("pg_loss", "kl", "loss")

log = logging.getLogger(__name__)


@dataclass
class LearnerConfig:
    """Built from the config tree by `rlvr.runtime.roles.learner_config`: no defaults of its own."""

    model_path: str
    zero_stage: int
    lr: float
    weight_decay: float
    grad_clip: float
    gradient_checkpointing: bool
    share_prompts: bool  # one forward per distinct prompt (cached); HF's cache is off under checkpointing
    pack_responses: bool  # with share_prompts: prompts in one row, responses in another, no padding (rlvr.learner.forward.packed_logprobs)
    head_chunk: int  # response positions per LM-head chunk under checkpointing when training (0: all at once)
    threads: int
    seed: int
    dtype: str  # the weights' dtype (model.dtype)
    train_dtype: str  # the forward's: float32, or bfloat16 autocast over float32 weights and optimizer state
    bucket_mb: float
    mmap_threshold_mb: float  # CPU: glibc maps allocations this large on their own (`map_large_allocations`); 0: glibc's sliding
    # threshold. Process-wide, set when the actor starts: a kept actor (`cluster.keep_roles`) keeps its first run's setting
    lora: LoraSettings  # rank 0: full fine-tuning
    lr_warmup_steps: int
    lr_schedule: str  # a name in rlvr.learner.schedule.LR_SCHEDULES
    min_lr_ratio: float
    total_optimizer_steps: int  # the run's: the schedule's T
    betas: tuple = (0.9, 0.999)


@dataclass
class UpdateConfig:
    """One rollout batch's update: the loss and how π_old and μ enter it.

    Built from the config tree by `rlvr.train.loop.update_config`: no defaults of its own.
    """

    loss: str  # a name in rlvr.algorithms.POLICY_LOSSES
    agg: str
    loss_kwargs: dict  # the loss's clip range
    kl_coef: float
    kl_estimator: str
    max_len: int  # the constant of seq-mean-token-sum-norm (Dr.GRPO)
    temperature: float  # the rollout sampling temperature
    epochs: int  # passes over the batch's mini-batches
    old_logprobs: str  # recompute | rollout
    rollout_correction: str  # none | tis | mask
    correction_threshold: float


def _clips_itself(cfg: LearnerConfig) -> bool:
    """ZeRO-0 over float32 weights: a plain torch optimizer, whose gradient norm nobody keeps."""
    return cfg.zero_stage == 0 and cfg.dtype != "bfloat16"


def deepspeed_config(cfg: LearnerConfig) -> dict:
    return {
        # The number and size of micro-batches per step vary (V0.5 and DAPO buy rollouts on demand;
        # `learner.micro_batch_size=auto` cuts them by memory), so we accumulate ourselves and let
        # step() be the reduction boundary. DeepSpeed's batch size enters only its own logging.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        # ZeRO-0 over float32 weights clips in PolicyLearner._clip_reduced instead: DeepSpeed's
        # clip there drops the norm it computes
        "gradient_clipping": 0.0 if _clips_itself(cfg) else cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "optimizer": {
            "type": "AdamW",
            # torch_adam avoids JIT-compiling DeepSpeed's fused CPU Adam (~43 s on this box); torch's
            # fused kernel steps smollm2-135m in 0.05 s on 2 cores against 0.44 s for its per-tensor
            # loop (the CPU default), with no parameter-sized temporaries (docs/benchmarks.md).
            "params": {"lr": cfg.lr, "betas": list(cfg.betas), "weight_decay": cfg.weight_decay, "torch_adam": True, "fused": True},
        },
        "bf16": {"enabled": cfg.dtype == "bfloat16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def lr_scheduler(cfg: LearnerConfig) -> Callable | None:
    """What DeepSpeed steps after each optimizer step (and keeps in a checkpoint): the schedule of
    `rlvr.learner.schedule` over the run's optimizer steps; None for a constant lr without warm-up,
    which has nothing to step. (A checkpoint's own scheduler state is not loaded: `load_checkpoint`.)"""
    if cfg.lr_schedule == "constant" and cfg.lr_warmup_steps == 0:
        return None
    from torch.optim.lr_scheduler import LambdaLR

    return lambda optimizer: LambdaLR(optimizer, lr_schedule_factor(cfg))


def lr_schedule_factor(cfg: LearnerConfig) -> Callable[[int], float]:
    """`learner.lr`'s multiplier for the optimizer step after a given count of steps: `rlvr.learner.schedule`."""
    return functools.partial(lr_factor, warmup_steps=cfg.lr_warmup_steps, total_steps=cfg.total_optimizer_steps,
                             schedule=cfg.lr_schedule, min_ratio=cfg.min_lr_ratio)


@functools.cache
def _glibc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl)
        return None


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def map_large_allocations(threshold: int) -> None:
    """Serve allocations of `threshold` bytes and up from mappings of their own, which free() hands
    back to the OS at once (glibc's M_MMAP_THRESHOLD). glibc otherwise raises its threshold to the
    largest block freed, up to 32 MiB, so a step's activations come from the heap and the next
    step's, of other sizes, fragment it. 4 MiB (`learner.mmap_threshold_mb`) cut the learner's
    6-step peak by 190-310 MB for 3-9 % of its step time, in page faults (docs/benchmarks.md,
    "The learner's kernel caches and heap")."""
    if (libc := _glibc()) is not None:
        libc.mallopt(M_MMAP_THRESHOLD, threshold)


def trim_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc's `malloc_trim`). A training step frees
    1.0-1.7 GiB of activations that glibc would otherwise keep resident, and each later step's peak
    grew on top of what the last left behind (docs/benchmarks.md)."""
    if (libc := _glibc()) is not None:
        libc.malloc_trim(0)


@ray.remote
class PolicyLearner:
    def __init__(self, cfg: LearnerConfig, rank: int, world_size: int, master_addr: str, master_port: int):
        redirect_actor_output()
        bound_kernel_caches()
        if not torch.cuda.is_available() and cfg.mmap_threshold_mb > 0:
            map_large_allocations(int(cfg.mmap_threshold_mb * 2**20))
        os.environ.update(
            RANK=str(rank),
            LOCAL_RANK="0" if torch.cuda.is_available() else str(rank),
            WORLD_SIZE=str(world_size),
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
        )
        import deepspeed

        self.rank, self.world_size = rank, world_size
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        self.engine = None
        self.shared: list[ipc.Shared] = []  # the `ipc` backend's buckets, between share and release
        self._build(cfg)

    def _build(self, cfg: LearnerConfig) -> None:
        """The model, its optimizer and the reference slot, as of the initial weights on disk."""
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.engine is not None:  # a kept actor's previous run: free it before loading again
            self.engine.destroy()
            self.engine = self.sync = self.ref_model = None
            gc.collect()
        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        dtype = getattr(torch, cfg.dtype)
        model = AutoModelForCausalLM.from_pretrained(cfg.model_path, dtype=dtype)
        check_head_matches(model)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if cfg.lora.enabled:
            model = add_adapters(model, cfg.lora)
            if cfg.gradient_checkpointing:
                model.enable_input_require_grads()  # the frozen embeddings' output must carry grad into the recomputed blocks
        tok = AutoTokenizer.from_pretrained(cfg.model_path)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=deepspeed_config(cfg),
                                               lr_scheduler=lr_scheduler(cfg))
        if self.world_size == 1 and cfg.zero_stage == 0:
            # Over one rank the all-reduce is the identity, but DeepSpeed still flattens every
            # gradient into one buffer and copies it back: a second copy of the gradients at the
            # step's peak (0.5 GiB on smollm2-135m).
            self.engine.enable_backward_allreduce = False
        self._grad_norm = float("nan")
        if _clips_itself(cfg):
            self.engine.optimizer.register_step_pre_hook(self._clip_reduced)
        self.sync = sync_tensors(self.engine.module)  # what the engines load: merged weights under LoRA
        # bf16 matmuls with fp32 master weights, Adam state and loss (torch.autocast keeps softmax,
        # norms and reductions in fp32); with bf16 weights DeepSpeed's bf16 mode does the rest
        self.autocast = cfg.train_dtype == "bfloat16" and cfg.dtype == "float32"
        self.ref_model = None

    def reset(self, cfg: LearnerConfig, log_path: str | None) -> None:
        """Start over for a new run in this process (`cluster.keep_roles`): the initial weights, a
        new optimizer, `cfg`'s settings; the process group and the weight-sync group stay."""
        redirect_actor_output(log_path)
        self._build(cfg)

    def _set_lr_at(self, steps: int) -> None:
        """Every param group at `learner.lr` × the schedule's factor after ``steps`` optimizer steps, and
        the scheduler there, so that its next step computes the factor after ``steps`` + 1."""
        cfg = self.cfg
        lr = cfg.lr * lr_schedule_factor(cfg)(steps)
        for group in self.engine.optimizer.param_groups:
            group["lr"], group["initial_lr"] = lr, cfg.lr
        scheduler = self.engine.lr_scheduler
        if scheduler is not None:
            scheduler.base_lrs = [cfg.lr] * len(scheduler.base_lrs)
            scheduler.last_epoch, scheduler._last_lr = steps, [lr] * len(scheduler.base_lrs)

    def ensure_reference(self) -> None:
        """Load a frozen copy of the initial policy for the KL term (only when kl_coef > 0). Under
        LoRA the reference is the base model with the adapters switched off: no second copy."""
        if self.ref_model is None and not self.cfg.lora.enabled:
            from transformers import AutoModelForCausalLM

            self.ref_model = AutoModelForCausalLM.from_pretrained(self.cfg.model_path, dtype=getattr(torch, self.cfg.dtype))
            self.ref_model.to(self.device).eval().requires_grad_(False)

    def _logprobs(self, mb: Collated, temperature: float, module=None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logp, entropy = response_logprobs(self.engine.module if module is None else module, mb, temperature, self.cfg.share_prompts,
                                              self.cfg.pack_responses, self.cfg.head_chunk, lockstep=self.cfg.zero_stage == 3 and self.world_size > 1)
        return logp, entropy  # fp32 under autocast too: the LM head's logits are cast up first

    def _collated(self, mini_batches: list[MiniBatch]) -> list[list[tuple[Collated, bool]]]:
        """Each micro-batch collated once, for every epoch. An empty one (this rank has fewer
        sequences) becomes a zero-weight dummy, so collectives stay in lockstep across ranks."""
        dummy = [Trajectory(prompt_ids=[self.pad_id], response_ids=[self.pad_id])]
        return [[(collate(seqs or dummy, self.pad_id, self.device), not seqs) for seqs in mini.micro_batches] for mini in mini_batches]

    def _padding_share(self, collated: list[list[tuple[Collated, bool]]]) -> float:
        """The share of the positions this rank's forwards run on that are padding (shared-prompt
        paths; NaN for one forward per sequence, whose rows hold whole sequences)."""
        if not self.cfg.share_prompts or self.cfg.gradient_checkpointing:
            return float("nan")
        return padding_share([positions(mb, self.cfg.pack_responses) for mini in collated for mb, empty in mini if not empty])

    @torch.no_grad()
    def _eval_logprobs(self, mb: Collated, temperature: float) -> torch.Tensor:
        """log π without dropout (LoRA dropout): π_old is the policy the engine sampled from."""
        self.engine.eval()
        try:
            return self._logprobs(mb, temperature)[0]
        finally:
            self.engine.train()

    def logprobs(self, seqs: list[Trajectory], temperature: float) -> list[list[float]]:
        """log π(y_t) of each response token under the current weights (what `recompute` uses as π_old)."""
        logp = self._eval_logprobs(collate(seqs, self.pad_id, self.device), temperature)
        return [logp[b, : len(s.response_ids)].tolist() for b, s in enumerate(seqs)]

    def train_step(self, mini_batches: list[MiniBatch], update: UpdateConfig) -> dict:
        """`update.epochs` passes over this rank's mini-batches, one optimizer step per mini-batch.

        π_old: with one mini-batch and one epoch it is the detached current log-prob (the same
        numbers, no extra forward) unless LoRA dropout makes that a noisy one; otherwise `recompute`
        runs one no-grad forward over the batch before the first update, and `rollout` uses the
        engine's μ. The rollout correction weighs or masks tokens by π_old/μ. Each mini-batch's
        `tokens`/`sequences` are the global counts, so a micro-batch's loss is its share of the
        mini-batch's loss whichever aggregation is used.
        """
        start = time.perf_counter()
        lr = self.engine.get_lr()[0]  # this step's first optimizer step's: the scheduler moves it after each
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.engine.train()
        if update.kl_coef > 0:
            self.ensure_reference()
        collated = self._collated(mini_batches)
        padding = self._padding_share(collated)
        old: list[list[torch.Tensor]] | None = None
        # Under LoRA dropout the train-mode log-prob is a noisy π, not the policy the engine sampled
        # from, and the rollout correction would weigh tokens by that noise: π_old needs its own forward.
        if update.old_logprobs == "recompute" and (update.epochs > 1 or len(mini_batches) > 1 or (self.cfg.lora.enabled and self.cfg.lora.dropout > 0)):
            old = [[self._eval_logprobs(mb, update.temperature) for mb, _ in mini] for mini in collated]
        sums: dict[str, float] = {}
        ratio_min, ratio_max, first_dev, grad_norms = float("inf"), 0.0, 0.0, []
        for epoch in range(update.epochs):
            for i, (mini, plan) in enumerate(zip(collated, mini_batches)):
                for j, (mb, empty) in enumerate(mini):
                    out = self._micro_step(mb, empty, plan, update, None if old is None else old[i][j], first_epoch=epoch == 0)
                    if out is None:
                        continue
                    micro_sums, extremes = out
                    for k, v in micro_sums.items():
                        sums[k] = sums.get(k, 0.0) + v
                    ratio_min, ratio_max = min(ratio_min, extremes["ratio_min"]), max(ratio_max, extremes["ratio_max"])
                    if epoch == 0 and i == 0:
                        first_dev = max(first_dev, extremes["ratio_dev"])
                grad_norms.append(self._optimizer_step())
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # a colocated engine wakes up next and re-allocates on this device
        else:
            trim_heap()
        if self.world_size > 1:
            # every rank's sums, summed: a rank holds its micro-batches' shares of the loss (rank 0's
            # alone, times the world size, logged -0.75 for a batch loss of -0.05) and the
            # token-weighted sums of its tokens only (entropy, clip_frac, tokens were rank 0's)
            import torch.distributed as dist

            ranks: list = [None] * self.world_size
            dist.all_gather_object(ranks, (sums, ratio_min, ratio_max, first_dev))
            sums = {k: sum(r[0].get(k, 0.0) for r in ranks) for k in sorted({k for r in ranks for k in r[0]})}
            ratio_min, ratio_max = min(r[1] for r in ranks), max(r[2] for r in ranks)
            first_dev = max(r[3] for r in ranks)
        tokens, first_pass = sums.pop("tokens", 0.0), sums.pop("first_pass_tokens", 0.0)
        clipped, clipped_grad = sums.pop("clipped_tokens", 0.0), sums.pop("clipped_grad_tokens", 0.0)
        passes = max(len(grad_norms), 1)  # the shares of each optimizer step's mini-batch sum to 1
        metrics = {
            k: v / (passes if k in LOSS_STATS else max(first_pass if k.startswith("rollout_") else tokens, 1.0))
            for k, v in sums.items()
        }
        metrics.update(
            ratio_min=ratio_min if ratio_min <= ratio_max else 1.0,  # no token trained on: the neutral 1
            ratio_max=ratio_max if ratio_min <= ratio_max else 1.0,
            ratio_dev_first_minibatch=first_dev,  # max |ρ − 1| before any update: 0 when π_old is right
            clipped_grad_frac=clipped_grad / clipped if clipped else float("nan"),
            grad_norm=float(sum(grad_norms) / len(grad_norms)) if grad_norms else float("nan"),
            optimizer_steps=len(grad_norms),
            padding_share=padding,
            micro_batches=sum(len(mini.micro_batches) for mini in mini_batches),  # a pass's forwards on this rank (empty ones included)
            micro_batch_sequences_max=max((len(mb) for mini in mini_batches for mb in mini.micro_batches), default=0),
            tokens=first_pass,
            lr=lr,
            seconds=time.perf_counter() - start,
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # this process's high-water mark (Linux: KiB)
        )
        if self.device.type == "cuda":  # this step's, where the RSS is the process's whole life
            metrics["cuda_peak_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return metrics

    def _micro_step(
        self, mb: Collated, empty: bool, plan: MiniBatch, update: UpdateConfig, old_logp: torch.Tensor | None, first_epoch: bool
    ) -> tuple[dict[str, float], dict[str, float]] | None:
        """Forward, loss and backward of one micro-batch: token-weighted stat sums and ratio extremes."""
        from deepspeed.runtime.base_optimizer import ZeROOptimizer

        if isinstance(self.engine.optimizer, ZeROOptimizer):
            # what DeepSpeed's engine.forward does first, which this forward (the decoder, not the
            # module's forward) bypasses: ZeRO-3 counts its micro-steps here, and without it each
            # micro-batch's gradient replaced the one before instead of adding to it
            self.engine.optimizer.clear_backward_seen_flag()
        logp, entropy = self._logprobs(mb, update.temperature)
        logp.retain_grad()  # ∂L/∂log π per token: shows which clipped tokens keep a gradient
        mask, mu, has_mu = mb.mask, mb.rollout_logprobs, mb.has_rollout_logprobs
        if update.old_logprobs == "rollout" and has_mu:
            old_logp = mu
        elif old_logp is None:
            old_logp = logp.detach()
        weights, kept, corrected = None, mask, None
        if has_mu:
            weights, kept, corrected = rollout_correction(update.rollout_correction, old_logp, mu, mask, update.correction_threshold)
            # a dropped sequence (`mask` correction) weighs 0 in the loss and stays in its denominator:
            # the global counts this micro-batch's share comes from (`loss_share`) are known before any
            # forward, so a sequence counts the same whichever micro-batch it lands in
            weights = weights * kept
        ref_logp = None
        if update.kl_coef > 0:
            ref_logp = self._reference_logprobs(mb, update.temperature)
        loss, stats = policy_loss(
            update.loss,
            logp,
            old_logp,
            mb.advantages,
            mask,
            agg=update.agg,
            ref_logp=ref_logp,
            kl_coef=update.kl_coef,
            kl_estimator=update.kl_estimator,
            max_len=update.max_len,
            token_weights=weights,
            kept=None if kept is mask else kept,
            **update.loss_kwargs,
        )
        tokens = float(mask.sum())
        share = loss_share(mb, plan, update.agg)
        # DeepSpeed averages gradients over ranks; the sum over ranks is what the global loss needs.
        self.engine.backward(loss * (0.0 if empty else share * self.world_size), scale_wrt_gas=False)
        if empty:
            return None
        on = mask > 0
        # the tokens the loss clipped, and how many of them still carry a gradient (CISPO: all; PPO: none)
        clipped = stats.pop("clipped") & on
        stats["loss"] = loss.detach()
        # over the tokens the loss trains on; none (the rollout correction masked them all): no extremes
        extremes = {k: float(stats.pop(k)) for k in ("ratio_min", "ratio_max", "ratio_dev")}
        if not bool((kept > 0).any()):
            extremes = {"ratio_min": float("inf"), "ratio_max": 0.0, "ratio_dev": 0.0}
        sums = {k: float(v) * (share if k in LOSS_STATS else tokens) for k, v in stats.items()}
        sums.update(entropy=float((entropy * mask).sum()), tokens=tokens)
        sums["clipped_tokens"] = float(clipped.sum())
        sums["clipped_grad_tokens"] = float((clipped & (logp.grad != 0)).sum()) if logp.grad is not None else 0.0
        if first_epoch:
            sums["first_pass_tokens"] = tokens
            if has_mu:
                gap = rollout_mismatch(old_logp, mu, mask)
                sums["rollout_logprob_diff"] = float(gap["abs_diff"])  # mean |log π_old − log μ|
                sums["rollout_kl"] = float(gap["kl"])  # KL(μ‖π_old), k3 under μ's samples
                sums["rollout_corrected_frac"] = float((corrected & on).sum())  # truncated (tis) or masked (mask)
                sums["rollout_weight_mean"] = float((weights * mask).sum())
        return sums, extremes

    def gradient_cosines(self, plans: list[list[MiniBatch]], update: UpdateConfig) -> list[float]:
        """cos(g_k, g*) for each plan but the last, g* being the last plan's gradient (the oracle's
        advantages): policy gradients at the current weights with π_old = π (the update's first
        micro-steps), summed over the ranks. Nothing steps and no gradient is kept. The plans hold
        the same sequences in the same micro-batches; only their advantages differ, so one forward
        per micro-batch serves them all. NaN under ZeRO-3 (partitioned parameters) or gradient
        checkpointing (reentrant: no torch.autograd.grad)."""
        if self.cfg.zero_stage == 3 or self.cfg.gradient_checkpointing:
            return [float("nan")] * (len(plans) - 1)
        import torch.distributed as dist

        params = [p for p in self.engine.module.parameters() if p.requires_grad]
        sums = [[torch.zeros_like(p, dtype=torch.float32) for p in params] for _ in plans]
        collated = [self._collated(plan) for plan in plans]
        for i, mini in enumerate(plans[0]):
            for j, (mb, empty) in enumerate(collated[0][i]):
                if empty:
                    continue
                logp, _ = self._logprobs(mb, update.temperature)
                share = loss_share(mb, mini, update.agg)
                for k, acc in enumerate(sums):
                    loss, _ = policy_loss(update.loss, logp, logp.detach(), collated[k][i][j][0].advantages, mb.mask, agg=update.agg,
                                          max_len=update.max_len, **update.loss_kwargs)
                    grads = torch.autograd.grad(loss * share, params, allow_unused=True, retain_graph=k < len(sums) - 1)
                    for a, g in zip(acc, grads):
                        if g is not None:
                            a += g
        flat = [torch.cat([a.reshape(-1) for a in acc]) for acc in sums]
        del sums
        for total in flat:
            dist.all_reduce(total)  # the ranks' shares sum to the batch's gradient
        g_star = flat[-1]
        star_sq = dot64(g_star, g_star)
        cosines = []
        for g in flat[:-1]:
            norms = (dot64(g, g) * star_sq) ** 0.5
            cosines.append(dot64(g, g_star) / norms if norms > 0 else float("nan"))
        return cosines

    @torch.no_grad()
    def _reference_logprobs(self, mb: Collated, temperature: float) -> torch.Tensor:
        if self.cfg.lora.enabled:
            with self.engine.module.disable_adapter():
                return self._logprobs(mb, temperature)[0]
        return self._logprobs(mb, temperature, self.ref_model)[0]

    def _clip_reduced(self, optimizer, args, kwargs) -> None:
        """Before a ZeRO-0 float32 optimizer step, once DeepSpeed has reduced the ranks' gradients:
        keep their norm, and clip to `grad_clip`. (Measured before `engine.step()`, the norm was
        rank 0's own gradient, times the world size the loss is scaled by: 16.7 where the batch's
        was 9.6 over two ranks.)"""
        params = [p for p in self.engine.module.parameters() if p.grad is not None]
        limit = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        self._grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit)) if params else 0.0

    def _optimizer_step(self) -> float:
        """One optimizer step; returns the gradient norm before clipping."""
        self.engine.step()
        grad_norm = self._grad_norm if _clips_itself(self.cfg) else self.engine.get_global_grad_norm()
        return float(grad_norm) if grad_norm is not None else float("nan")

    # ---- weight sync (see rlvr/weight_sync/) ----------------------------------------------
    def bucket_specs(self, bucket_mb: float | None = None) -> list[list[TensorSpec]]:
        """Names, full shapes and dtypes of what the engines load, grouped into buckets of ~`bucket_mb` MB."""
        specs = [
            # ZeRO-3 keeps a partition in p; ds_shape is the full shape
            TensorSpec(t.name, tuple(getattr(t.params[0], "ds_shape", t.params[0].shape)), t.params[0].dtype)
            for t in self.sync
        ]
        return plan_buckets(specs, self.cfg.bucket_mb if bucket_mb is None else bucket_mb)

    def _gathered_buckets(self, bucket_mb: float | None = None) -> Iterator[tuple[list[TensorSpec], list[torch.Tensor]]]:
        """Each bucket's full tensors (merged under LoRA). Under ZeRO-3 every rank must iterate: the
        gather is collective, one bucket at a time, never the whole model."""
        import deepspeed

        by_name = {t.name: t for t in self.sync}
        for bucket in self.bucket_specs(bucket_mb):
            sources = [by_name[s.name] for s in bucket]
            params = [p for t in sources for p in t.params]
            with deepspeed.zero.GatheredParameters(params, enabled=self.cfg.zero_stage == 3):
                yield bucket, [t.value() for t in sources]

    def export_weights(self, bucket_mb: float | None = None) -> tuple[list, int]:
        """`ray` backend: one object-store entry per packed bucket.

        Rank 0 returns ([(ref, specs) per bucket], bytes); other ranks ([], 0).
        """
        buckets, total = [], 0
        for bucket, tensors in self._gathered_buckets(bucket_mb):
            if self.rank == 0:
                buckets.append(put_bucket([(s.name, t) for s, t in zip(bucket, tensors)]))
                total += sum(s.nbytes for s in bucket)
        return buckets, total

    def open_sync_group(self, host: str, port: int, world_size: int, rank: int) -> None:
        self.sync_group = open_group(host, port, world_size, rank, self.device)

    def broadcast_weights(self, bucket_mb: float | None = None) -> int:
        """`nccl` backend: rank 0 broadcasts each packed bucket to the engines. Returns bytes sent."""
        total = 0
        for _, tensors in self._gathered_buckets(bucket_mb):
            if self.rank == 0:
                flat = pack(tensors)
                broadcast(self.sync_group, flat)
                total += flat.numel()
        return total

    def share_weights(self, num_engines: int, bucket_mb: float | None = None) -> list[bytes]:
        """`ipc` backend: ranks below `num_engines` share packed buckets with their colocated engine.

        The buffers stay alive until `release_shared`, after the engine has loaded them.
        """
        self.release_shared()
        ipc.remove_orphans()
        for _, tensors in self._gathered_buckets(bucket_mb):
            if self.rank < num_engines:
                self.shared.append(ipc.share(pack(tensors)))
        return [bucket.handle for bucket in self.shared]

    def release_shared(self) -> None:
        ipc.release(self.shared)
        self.shared = []

    def save_checkpoint(self, path: str, tag: str, client_state: dict | None = None) -> None:
        """DeepSpeed's shards of this rank, with the rank's torch RNG (LoRA dropout draws from it; on a
        GPU from the CUDA generator). Under LoRA only the adapters and their optimizer state are
        written: the base is `model_path`."""
        state = {**(client_state or {}), "learner_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["learner_cuda_rng"] = torch.cuda.get_rng_state(self.device)
        self.engine.save_checkpoint(path, tag=tag, client_state=state, save_latest=False, exclude_frozen_parameters=self.cfg.lora.enabled)

    def load_checkpoint(self, path: str, tag: str) -> dict:
        # The lr is this run's config's at the steps taken, not the checkpoint's: a resume may change
        # learner.lr, the schedule or trainer.steps (the schedule's T); DeepSpeed's loaded param groups
        # kept the old lr, and a checkpoint without a scheduler failed to load into one.
        _, client_state = self.engine.load_checkpoint(path, tag=tag, load_module_strict=not self.cfg.lora.enabled,
                                                      load_lr_scheduler_states=False)
        self._set_lr_at(self.engine.global_steps)
        client_state = dict(client_state or {})
        if "learner_rng" in client_state:
            torch.set_rng_state(client_state.pop("learner_rng"))
        cuda_rng = client_state.pop("learner_cuda_rng", None)
        if cuda_rng is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng, self.device)
        return client_state
