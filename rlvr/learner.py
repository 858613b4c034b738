"""PolicyLearner: one DeepSpeed rank of the policy. R of them form a data-parallel group.

Each step a learner receives its shard of the batch (token ids, per-sequence advantages),
recomputes log-probs, applies the configured policy loss from `rlvr.algorithms`, and takes one
optimizer step. Rank 0 then exports the weights in buckets for the rollout engines.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Iterator

import ray
import torch
import torch.nn.functional as F

from rlvr.algorithms import policy_loss
from rlvr.weight_sync import TensorSpec, broadcast, open_group, pack, plan_buckets, put_bucket, share

log = logging.getLogger(__name__)


@dataclass
class LearnerConfig:
    model_path: str = ""
    zero_stage: int = 0
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    grad_clip: float = 1.0
    micro_batch_size: int = 8
    gradient_checkpointing: bool = False
    threads: int = 2
    seed: int = 0
    dtype: str = "float32"
    bucket_mb: float = 512


@dataclass
class LossConfig:
    name: str = "ppo_clip"
    agg: str = "token-mean"
    loss_kwargs: dict = field(default_factory=lambda: {"eps_low": 0.2, "eps_high": 0.2})  # clip range of the loss
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    max_len: int = 256  # the constant of seq-mean-token-sum-norm (Dr.GRPO)
    temperature: float = 1.0  # the rollout sampling temperature


@dataclass
class Sequence:
    """One rollout as the learner sees it."""

    prompt_ids: list[int]
    response_ids: list[int]
    advantage: float
    rollout_logprobs: list[float] = field(default_factory=list)


def response_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, gather_idx: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(y_j | x, y_<j) of each response token [B, T], and its entropy (no grad).

    The LM head runs on response positions only: on a 135M model with a 49k vocabulary it is a
    fifth of the FLOPs, and full-sequence logits would dominate memory.
    Logits are divided by the sampling temperature, so π is the policy the engine sampled from.
    """
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    h = hidden.gather(1, gather_idx[..., None].expand(-1, -1, hidden.shape[-1]))
    logits = model.get_output_embeddings()(h).float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    targets = input_ids.gather(1, gather_idx + 1)
    logp = logp_all.gather(-1, targets[..., None]).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def collate(seqs: list[Sequence], pad_id: int, device) -> dict:
    """Right-pad prompt+response and cut out the response positions of the shifted log-probs."""
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in seqs]
    width = max(lengths)
    resp_width = max(1, max(len(s.response_ids) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    # position whose output predicts response token j of sequence b
    gather_idx = torch.zeros((len(seqs), resp_width), dtype=torch.long)
    mask = torch.zeros((len(seqs), resp_width))
    rollout_lp = torch.zeros((len(seqs), resp_width))
    for b, s in enumerate(seqs):
        full = s.prompt_ids + s.response_ids
        ids[b, : len(full)] = torch.tensor(full)
        attn[b, : len(full)] = 1
        n_resp = len(s.response_ids)
        gather_idx[b, :n_resp] = torch.arange(len(s.prompt_ids) - 1, len(s.prompt_ids) - 1 + n_resp)
        mask[b, :n_resp] = 1
        if s.rollout_logprobs:
            rollout_lp[b, :n_resp] = torch.tensor(s.rollout_logprobs[:n_resp])
    return dict(
        input_ids=ids.to(device),
        attention_mask=attn.to(device),
        gather_idx=gather_idx.to(device),
        mask=mask.to(device),
        rollout_logprobs=rollout_lp.to(device),
        advantages=torch.tensor([s.advantage for s in seqs], dtype=torch.float32, device=device),
    )


def deepspeed_config(cfg: LearnerConfig) -> dict:
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,
        # The number of micro-batches per step varies (V0.5 and DAPO buy rollouts on demand), so we
        # accumulate ourselves and let step() be the reduction boundary.
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "optimizer": {
            "type": "AdamW",
            # torch_adam avoids JIT-compiling DeepSpeed's fused CPU Adam (~43 s on this box).
            "params": {"lr": cfg.lr, "betas": list(cfg.betas), "weight_decay": cfg.weight_decay, "torch_adam": True},
        },
        "bf16": {"enabled": cfg.dtype == "bfloat16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


@ray.remote
class PolicyLearner:
    def __init__(self, cfg: LearnerConfig, rank: int, world_size: int, master_addr: str, master_port: int):
        torch.set_num_threads(cfg.threads)
        os.environ.update(
            RANK=str(rank),
            LOCAL_RANK="0" if torch.cuda.is_available() else str(rank),
            WORLD_SIZE=str(world_size),
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
        )
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        torch.manual_seed(cfg.seed)
        dtype = getattr(torch, cfg.dtype)
        model = AutoModelForCausalLM.from_pretrained(cfg.model_path, dtype=dtype)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        tok = AutoTokenizer.from_pretrained(cfg.model_path)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=deepspeed_config(cfg))
        self.ref_model = None

    def ensure_reference(self) -> None:
        """Load a frozen copy of the initial policy for the KL term (only when kl_coef > 0)."""
        if self.ref_model is None:
            from transformers import AutoModelForCausalLM

            self.ref_model = AutoModelForCausalLM.from_pretrained(self.cfg.model_path, dtype=getattr(torch, self.cfg.dtype))
            self.ref_model.to(self.device).eval().requires_grad_(False)

    def train_step(self, micro_batches: list[list[Sequence]], loss_cfg: LossConfig, totals: dict) -> dict:
        """One optimizer step over this rank's micro-batches.

        `totals` holds the global token and sequence counts, so each micro-batch's loss is its
        share of the loss over the whole batch, whichever aggregation is used.
        """
        start = time.perf_counter()
        self.engine.train()
        if loss_cfg.kl_coef > 0:
            self.ensure_reference()
        sums: dict[str, float] = {}
        n_tokens = 0.0
        for seqs in micro_batches:
            empty = not seqs
            if empty:  # keep collectives in lockstep across ranks (ZeRO-3 gathers in forward)
                seqs = [Sequence(prompt_ids=[self.pad_id], response_ids=[self.pad_id], advantage=0.0)]
            mb = collate(seqs, self.pad_id, self.device)
            logp, entropy = response_logprobs(
                self.engine.module, mb["input_ids"], mb["attention_mask"], mb["gather_idx"], loss_cfg.temperature
            )
            mask = mb["mask"]
            ref_logp = None
            if loss_cfg.kl_coef > 0:
                with torch.no_grad():
                    ref_logp, _ = response_logprobs(
                        self.ref_model, mb["input_ids"], mb["attention_mask"], mb["gather_idx"], loss_cfg.temperature
                    )
            loss, stats = policy_loss(
                loss_cfg.name,
                logp,
                logp.detach(),  # one on-policy update per batch: π_old is the policy before this step
                mb["advantages"],
                mask,
                agg=loss_cfg.agg,
                ref_logp=ref_logp,
                kl_coef=loss_cfg.kl_coef,
                kl_estimator=loss_cfg.kl_estimator,
                max_len=loss_cfg.max_len,
                **loss_cfg.loss_kwargs,
            )
            tokens = float(mask.sum())
            share = tokens / totals["tokens"] if loss_cfg.agg == "token-mean" else len(seqs) / totals["sequences"]
            # DeepSpeed averages gradients over ranks; the sum over ranks is what the global loss needs.
            weight = 0.0 if empty else share * self.world_size
            self.engine.backward(loss * weight, scale_wrt_gas=False)
            if empty:
                continue
            n_tokens += tokens
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v) * tokens
            sums["entropy"] = sums.get("entropy", 0.0) + float((entropy * mask).sum())
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * tokens
            if mb["rollout_logprobs"].abs().sum() > 0:
                diff = ((logp.detach() - mb["rollout_logprobs"]).abs() * mask).sum()
                sums["rollout_logprob_diff"] = sums.get("rollout_logprob_diff", 0.0) + float(diff)
        local_norm = None
        if self.cfg.zero_stage == 0:
            # ZeRO-0 in fp32 clips without keeping the norm; this is rank 0's norm before the all-reduce.
            grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
            local_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0
        self.engine.step()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # a colocated engine wakes up next and re-allocates on this device
        metrics = {k: v / max(n_tokens, 1.0) for k, v in sums.items()}
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = local_norm if grad_norm is None else grad_norm
        metrics["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        metrics["tokens"] = n_tokens
        metrics["seconds"] = time.perf_counter() - start
        return metrics

    # ---- weight sync (see rlvr/weight_sync.py) ----------------------------------------------
    def bucket_specs(self, bucket_mb: float | None = None) -> list[list[TensorSpec]]:
        """Names, full shapes and dtypes of the parameters, grouped into buckets of ~`bucket_mb` MB."""
        specs = [
            # ZeRO-3 keeps a partition in p; ds_shape is the full shape
            TensorSpec(n, tuple(getattr(p, "ds_shape", p.shape)), p.dtype)
            for n, p in self.engine.module.named_parameters()
        ]
        return plan_buckets(specs, self.cfg.bucket_mb if bucket_mb is None else bucket_mb)

    def _gathered_buckets(self, bucket_mb: float | None = None) -> Iterator[tuple[list[TensorSpec], list[torch.Tensor]]]:
        """Each bucket's full tensors. Under ZeRO-3 every rank must iterate: the gather is collective,
        one bucket at a time, never the whole model."""
        import deepspeed

        params = dict(self.engine.module.named_parameters())
        for bucket in self.bucket_specs(bucket_mb):
            tensors = [params[s.name] for s in bucket]
            with deepspeed.zero.GatheredParameters(tensors, enabled=self.cfg.zero_stage == 3):
                yield bucket, tensors

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
        self.shared, handles = [], []
        for _, tensors in self._gathered_buckets(bucket_mb):
            if self.rank < num_engines:
                flat = pack(tensors)
                self.shared.append(flat)
                handles.append(share(flat))
        return handles

    def release_shared(self) -> None:
        self.shared = []

    def save_checkpoint(self, path: str, tag: str, client_state: dict | None = None) -> None:
        self.engine.save_checkpoint(path, tag=tag, client_state=client_state or {}, save_latest=False)

    def load_checkpoint(self, path: str, tag: str) -> dict:
        _, client_state = self.engine.load_checkpoint(path, tag=tag)
        return client_state or {}

    def save_hf(self, out_dir: str) -> None:
        """Write a plain HF model folder (rank 0 writes; all ranks join the ZeRO-3 gather)."""
        import deepspeed
        from transformers import AutoTokenizer

        module = self.engine.module
        with deepspeed.zero.GatheredParameters(list(module.parameters()), enabled=self.cfg.zero_stage == 3):
            if self.rank == 0:
                module.save_pretrained(out_dir)
                AutoTokenizer.from_pretrained(self.cfg.model_path).save_pretrained(out_dir)
