"""The ValueServer role: what a value model is (`ValueModel`), the backend registry and the thin Ray
actor around one value model. A new backend is a class with the protocol's methods, registered in
`BACKENDS`; its `config_kwargs` reads its own keys from the `value` config node."""

from __future__ import annotations

from typing import Protocol

import ray
import torch

from rlvr.runtime.logs import redirect_actor_output
from rlvr.value.constant import ConstantValueModel
from rlvr.value.embedded import EmbeddedValueModel
from rlvr.value.hf_classifier import HFClassifierValueModel
from rlvr.value.v0 import V0ValueModel


class ValueModel(Protocol):
    """A value model: a prior success rate and its uncertainty per prompt, read from a context of
    (prompt, success) pairs of the current policy that the run keeps adding to and checkpoints."""

    @staticmethod
    def config_kwargs(value_cfg) -> dict:
        """Its constructor's arguments from the `value` config node, beside `context_size`."""
        ...

    def predict(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def add_context(self, prompts: list[str], success: list[float]) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, d: dict) -> None: ...


BACKENDS: dict[str, type[ValueModel]] = {
    "embedded": EmbeddedValueModel,
    "v0": V0ValueModel,
    "hf-classifier": HFClassifierValueModel,
    "none": ConstantValueModel,
}


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown value backend {backend!r}; known backends: {sorted(BACKENDS)}")


def value_model_kwargs(value_cfg) -> dict:
    """The constructor arguments of ``value_cfg.backend`` from the ``value`` config node."""
    _check_backend(value_cfg.backend)
    return {"context_size": int(value_cfg.context_size), **BACKENDS[value_cfg.backend].config_kwargs(value_cfg)}


def make_value_model(backend: str = "embedded", **kwargs):
    """A value model for ``backend`` (one of :data:`BACKENDS`)."""
    _check_backend(backend)
    return BACKENDS[backend](**kwargs)


@ray.remote(num_cpus=0.1)
class ValueServer:
    """Thin Ray actor around one value model (see :func:`make_value_model`).
    ``num_threads``: torch threads in the actor (Ray sets OMP_NUM_THREADS=1)."""

    def __init__(self, backend: str = "embedded", num_threads: int = 1, **kwargs):
        redirect_actor_output()
        torch.set_num_threads(max(1, int(num_threads)))
        self.backend, self.kwargs = backend, kwargs
        self.model = make_value_model(backend, **kwargs)

    def ready(self) -> bool:
        return True

    def reset(self, log_path: str | None) -> None:
        """The model as it started (an empty context, no cached embeddings), for a new run in
        this process (`cluster.keep_roles`); the process and its imports stay."""
        redirect_actor_output(log_path)
        self.model = None
        self.model = make_value_model(self.backend, **self.kwargs)

    def predict(self, prompts) -> tuple[list[float], list[float]]:
        prior, unc = self.model.predict(list(prompts))
        return prior.tolist(), unc.tolist()

    def add_context(self, prompts, success) -> None:
        self.model.add_context(list(prompts), list(success))

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, d) -> None:
        self.model.load_state_dict(d)


def start_value_server(backend: str = "embedded", num_cpus: float = 0.1, **kwargs):
    """Start a :class:`ValueServer` after checking ``backend`` in the caller
    (an actor's constructor error only shows up at its first call) and wait
    until it is up, so that load errors (a missing checkpoint) raise here."""
    _check_backend(backend)
    actor = ValueServer.options(num_cpus=num_cpus).remote(backend=backend, **kwargs)
    ray.get(actor.ready.remote())
    return actor
