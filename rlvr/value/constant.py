"""Backend ``none``: the same prior for every prompt, with the largest uncertainty by default."""

from __future__ import annotations

import torch

from rlvr.value.context import PRIOR_MAX, PRIOR_MIN, UNC_MAX, Context, check_pairs, check_prompts


class ConstantValueModel:
    """A constant prior. The context is kept (and checkpointed) but not used."""

    def __init__(self, prior: float = 0.5, uncertainty: float = 0.5, context_size: int = 256):
        if not 0.0 < prior < 1.0:
            raise ValueError(f"prior must lie in (0, 1), got {prior}")
        if not 0.0 < uncertainty <= UNC_MAX:
            raise ValueError(f"uncertainty must lie in (0, {UNC_MAX}], got {uncertainty}")
        self.prior = min(PRIOR_MAX, max(PRIOR_MIN, float(prior)))
        self.uncertainty = float(uncertainty)
        self._ctx = Context(context_size)

    @staticmethod
    def config_kwargs(value_cfg) -> dict:
        return {}  # no keys of its own

    def predict(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(check_prompts(prompts))
        return torch.full((n,), self.prior), torch.full((n,), self.uncertainty)

    def add_context(self, prompts: list[str], success: list[float]) -> None:
        self._ctx.add(*check_pairs(prompts, success))

    def state_dict(self) -> dict:
        return {"backend": "none", **self._ctx.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self._ctx.load_state_dict(d)
