"""V0.5 adaptive baseline: test the value prior, fuse it with the rollouts, buy more where needed.

Per prompt the ValueServer gives a prior p0 (clipped to [0.02, 0.98]) and n rollouts give k
successes, p̂ = k/n. All functions take float tensors of shape [..., G]: the last dim is the
batch of G prompts, leading dims are independent batches (the calibration pools over the
last dim only).

Two formulations:

**Fixed rule** (``calibrate=False``; DESIGN.md as written). With σ0² = p0(1−p0)/n and
z² = (p̂ − p0)²/σ0²:

    b = p0 + (1 − c/z²)₊ · (p̂ − p0),        c = 1
    z² ≤ c              → accepted, b = p0
    |z| > z_{1−α/2}     → rejected, b = p̂   (α = 0.05)
    MSE(n) = λ²δ² + (1−λ)²σ²,  λ = weight on p0, σ² = p̃(1−p̃)/n, δ² = max(0, (p̂−p0)² − σ²)

where p̃ = (k + ½)/(n + 1) is the smoothed rate used wherever a variance enters a decision.
One c cannot suit both a good prior and a useless one: with a useless prior the accept
region keeps wrong priors, and the baseline's MSE is ~1.25× the plain group mean's at
equal spend (benchmarks/experiments/baseline_mse.py).

**Calibrated rule** (default; empirical Bayes across the batch). Same three steps, with the
prior's reliability learned from the batch instead of fixed constants:

1. *Calibrate* (:func:`fit_calibration`). Two models of a prompt's success rate p:
   - prior valid: p ~ Beta with mean μ = α·p0 + (1−α)·m and variance τ²v/(τ²+v),
     i.e. N(p0, τ²) combined with the batch population N(m, v), α = v/(v+τ²);
   - prior invalid: p ~ the batch population Beta(m, v), unrelated to p0.
   m and v are the moments of p across the batch (v = var(p̂) − mean(p̂(1−p̂)/(n−1)),
   unbiased for binomial noise). The prior's error sd τ and the rate π of invalid priors
   maximise the batch's Beta-binomial marginal likelihood over a grid.
2. *Test*: w = P(prior invalid | k, n), the Bayes factor of the two Beta-binomial marginals
   at prior odds π/(1−π). The level is thus set by the batch. w ≥ 1−α → rejected (w := 1);
   w ≤ α → the prior passes (w := 0), and it is *accepted* if it outweighs the rollouts
   (λ ≥ ½); anything else is *shrunk*.
3. *Fuse*: the posterior mean
       b = (1−w)·(k + s·μ)/(n + s) + w·(k + s_pop·m)/(n + s_pop)
   with s = μ(1−μ)/var − 1 the prior's strength in pseudo-rollouts and s_pop the
   population's. λ = (1−w)·α·s/(n+s) is the weight on p0. The posterior variance is the
   predicted MSE that drives :func:`allocate`.

``pool=False`` drops the batch population from the estimate (μ = p0, b_invalid = p̂), which
restores the fixed rule's limits (b = p0 when p̂ = p0, b = p̂ when rejected) but loses
the pooling gains; see docs/algorithms.md for the measured effect of each change.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import torch

PRIOR_MIN, PRIOR_MAX = 0.02, 0.98
ACCEPTED, SHRUNK, REJECTED = 0, 1, 2
DECISIONS = ("accepted", "shrunk", "rejected")

# Grids for the type-II maximum likelihood of (τ, π): τ from a near-perfect to a useless
# prior, ×1.3 per step; π finer near 0, where a batch of good priors sits.
TAU_GRID = 0.01 * 1.3 ** torch.arange(16, dtype=torch.float64)
INVALID_RATE_GRID = torch.tensor(
    [0.005, 0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9, 1.0], dtype=torch.float64
)
# A log Bayes factor beyond this is decisive either way; clamping it keeps exp() finite.
MAX_LOG_BAYES_FACTOR = 60.0
# Bounds on a Beta's strength a+b (pseudo-rollouts): below S_MIN the prior says nothing.
S_MIN, S_MAX = 0.5, 1e4
POP_VAR_MIN = 1e-3
POP_MEAN_MIN = 0.005


@dataclass(frozen=True)
class V05Calibration:
    """Batch-level hyperparameters, each a tensor of the batch shape (0-dim for one batch)."""

    pop_mean: torch.Tensor  # m: mean success rate across the batch
    pop_var: torch.Tensor  # v: variance of the true success rate across the batch
    prior_err_sd: torch.Tensor  # τ: sd of a valid prior's error p0 − p
    invalid_rate: torch.Tensor  # π: fraction of priors unrelated to p


def _inputs(
    prior: torch.Tensor, successes: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p0, k, n = (torch.as_tensor(x).to(torch.float64) for x in (prior, successes, counts))
    if not (p0.shape == k.shape == n.shape):
        raise ValueError(f"prior, successes, counts must share a shape, got {p0.shape}, {k.shape}, {n.shape}")
    if bool((n < 1).any()) or bool((k < 0).any()) or bool((k > n).any()):
        raise ValueError("need counts >= 1 and 0 <= successes <= counts")
    if not bool(torch.isfinite(p0).all()):  # a NaN made every calibration likelihood NaN, and argmax then trusted the prior
        raise ValueError(f"priors must be finite numbers, got {p0[~torch.isfinite(p0)].tolist()[:4]}")
    return p0.clamp(PRIOR_MIN, PRIOR_MAX), k, n


def _beta_binomial_loglik(
    k: torch.Tensor, n: torch.Tensor, mean: torch.Tensor, strength: torch.Tensor
) -> torch.Tensor:
    """log P(k | n, p ~ Beta(mean·s, (1−mean)·s)), without the binomial coefficient (it cancels)."""
    a, b = mean * strength, (1 - mean) * strength
    return (
        torch.lgamma(k + a) + torch.lgamma(n - k + b) - torch.lgamma(n + strength)
        - torch.lgamma(a) - torch.lgamma(b) + torch.lgamma(strength)
    )


def _beta_strength(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return (mean * (1 - mean) / var - 1).clamp(S_MIN, S_MAX)


def _population(k: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p_hat = k / n
    m = p_hat.mean(-1).clamp(POP_MEAN_MIN, 1 - POP_MEAN_MIN)
    noise = (p_hat * (1 - p_hat) / (n - 1).clamp(min=1)).mean(-1)
    v = (p_hat.var(-1, correction=0) - noise).clamp(min=POP_VAR_MIN)
    return m, v


def _valid_prior(
    p0: torch.Tensor, tau2: torch.Tensor, m: torch.Tensor, v: torch.Tensor, pool: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(μ, s, α): mean and strength of the valid-prior Beta, and α = weight of p0 in μ."""
    if pool:
        alpha = v / (v + tau2)
        mu = alpha * p0 + (1 - alpha) * m
        var = tau2 * alpha
    else:
        alpha, mu, var = torch.ones_like(p0), p0, tau2.expand_as(p0)
    return mu, _beta_strength(mu, var), alpha


def fit_calibration(
    prior: torch.Tensor,
    successes: torch.Tensor,
    counts: torch.Tensor,
    pool: bool = True,
    prior_scale: torch.Tensor | None = None,
    population: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> V05Calibration:
    """Empirical-Bayes estimate of the prior's reliability from one pool of prompts (last dim).

    m, v: moments of p across the pool, v corrected for binomial noise; or across ``population``
    (successes, counts), where more prompts were observed than have a prior to judge. (τ, π): the
    maximiser over ``TAU_GRID`` × ``INVALID_RATE_GRID`` of
        Σ_g log[(1−π)·BB(k_g | n_g, valid prior(τ·r_g)) + π·BB(k_g | n_g, population)],
    with r_g = ``prior_scale`` (1 when None) the prompt's relative prior error sd. The pool
    must be large: :class:`V05Baseline` feeds it the last 256 prompts, not one step's 8.
    """
    p0, k, n = _inputs(prior, successes, counts)
    scale2 = _scale2(prior_scale, p0)
    m, v = _population(k, n) if population is None else _population(*(torch.as_tensor(x).to(torch.float64) for x in population))
    m_, v_ = m.unsqueeze(-1), v.unsqueeze(-1)
    ll_invalid = _beta_binomial_loglik(k, n, m_, _beta_strength(m_, v_))
    pi = INVALID_RATE_GRID.to(k.device).view(-1, *([1] * k.ndim))  # [Π, ..., 1]
    totals = []
    for tau in TAU_GRID.tolist():
        mu, s, _ = _valid_prior(p0, tau**2 * scale2, m_, v_, pool)
        # log[(1−π)·e^LG + π·e^LJ] = LJ + log[π + (1−π)·e^(LG−LJ)]: one log per (π, prompt).
        log_bayes = _beta_binomial_loglik(k, n, mu, s) - ll_invalid
        ratio = torch.exp(log_bayes.clamp(-MAX_LOG_BAYES_FACTOR, MAX_LOG_BAYES_FACTOR))
        totals.append(torch.log(pi + (1 - pi) * ratio).sum(-1) + ll_invalid.sum(-1))  # [Π, ...]
    total = torch.stack(totals)  # [T, Π, ...]
    best = total.flatten(0, 1).argmax(0)
    tau_idx, pi_idx = best // len(INVALID_RATE_GRID), best % len(INVALID_RATE_GRID)
    return V05Calibration(
        pop_mean=m,
        pop_var=v,
        prior_err_sd=TAU_GRID.to(k.device)[tau_idx],
        invalid_rate=INVALID_RATE_GRID.to(k.device)[pi_idx],
    )


def _scale2(prior_scale: torch.Tensor | None, p0: torch.Tensor) -> torch.Tensor:
    if prior_scale is None:
        return torch.ones_like(p0)
    r = torch.as_tensor(prior_scale).to(p0.device, torch.float64)
    if r.shape != p0.shape or not bool((r > 0).all()):
        raise ValueError(f"prior_scale must be positive with the prior's shape {tuple(p0.shape)}, got {tuple(r.shape)}")
    return r**2


def _eb_posterior(
    p0: torch.Tensor,
    k: torch.Tensor,
    n: torch.Tensor,
    cal: V05Calibration,
    pool: bool,
    alpha_test: float,
    w: torch.Tensor | None = None,
    scale2: torch.Tensor | None = None,
    informed: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Calibrated fuse; with ``w`` given, re-evaluate at new (k, n) holding the test's outcome.
    ``scale2``: per-prompt multiplier of the prior's error variance τ² (None: 1). ``informed``
    (bool[G], None: all): where false the prior is a stand-in, rejected outright (w = 1)."""
    m, v, tau, pi = (
        torch.as_tensor(x).to(k.device, torch.float64).unsqueeze(-1)
        for x in (cal.pop_mean, cal.pop_var, cal.prior_err_sd, cal.invalid_rate)
    )
    tau2 = tau**2 if scale2 is None else tau**2 * scale2
    mu, s, alpha = _valid_prior(p0, tau2, m, v, pool)
    s_pop = _beta_strength(m, v)
    out: dict[str, torch.Tensor] = {}
    if w is None:
        log_odds = (
            torch.log(pi) + _beta_binomial_loglik(k, n, m, s_pop)
            - torch.log1p(-pi) - _beta_binomial_loglik(k, n, mu, s)
        )
        p_invalid = torch.sigmoid(log_odds)
        # Snap a decided test, so a rejected prior is ignored outright and a passed one fully used.
        w = torch.where(p_invalid >= 1 - alpha_test, 1.0, torch.where(p_invalid <= alpha_test, 0.0, p_invalid))
        if informed is not None:
            w, p_invalid = w.masked_fill(~informed, 1.0), p_invalid.masked_fill(~informed, 1.0)
        out["p_invalid"] = p_invalid
    b_valid = (k + s * mu) / (n + s)
    var_valid = b_valid * (1 - b_valid) / (n + s + 1)
    if pool:
        b_invalid = (k + s_pop * m) / (n + s_pop)
        var_invalid = b_invalid * (1 - b_invalid) / (n + s_pop + 1)
    else:
        b_invalid = k / n
        p_smooth = (k + 0.5) / (n + 1)
        var_invalid = p_smooth * (1 - p_smooth) / n
    out.update(
        w=w,
        b=(1 - w) * b_valid + w * b_invalid,
        lam=(1 - w) * alpha * s / (n + s),
        b_valid=b_valid,
        b_invalid=b_invalid,
        mse=(1 - w) * var_valid + w * var_invalid + w * (1 - w) * (b_valid - b_invalid) ** 2,
    )
    return out


def _fixed_rule(
    p0: torch.Tensor, k: torch.Tensor, n: torch.Tensor, c: float, alpha: float, informed: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    p_hat = k / n
    z2 = (p_hat - p0) ** 2 / (p0 * (1 - p0) / n)
    z_crit2 = NormalDist().inv_cdf(1 - alpha / 2) ** 2
    lam = torch.where(z2 <= c, 1.0, c / z2.clamp(min=1e-300))
    lam = torch.where(z2 > z_crit2, 0.0, lam)
    p_smooth = (k + 0.5) / (n + 1)
    sigma2 = p_smooth * (1 - p_smooth) / n
    delta2 = ((p_hat - p0) ** 2 - sigma2).clamp(min=0)
    decision = torch.where(z2 <= c, ACCEPTED, torch.where(z2 > z_crit2, REJECTED, SHRUNK))
    if informed is not None:  # a stand-in prior is rejected outright
        lam, decision = lam.masked_fill(~informed, 0.0), decision.masked_fill(~informed, REJECTED)
    return dict(
        b=p0 + (1 - lam) * (p_hat - p0),
        lam=lam,
        z2=z2,
        decision=decision,
        mse=lam**2 * delta2 + (1 - lam) ** 2 * sigma2,
    )


def fuse(
    prior: torch.Tensor,
    successes: torch.Tensor,
    counts: torch.Tensor,
    c: float = 1.0,
    alpha: float = 0.05,
    *,
    calibrate: bool = True,
    pool: bool = True,
    calibration: V05Calibration | None = None,
    prior_scale: torch.Tensor | None = None,
    informed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Fused baseline b float[..., G] and per-prompt diagnostics.

    ``calibrate=True`` (default): the empirical-Bayes rule (module docstring), with
    ``calibration`` from :func:`fit_calibration` on this batch unless given; ``c`` is unused;
    ``prior_scale`` r_g makes a prompt's prior error sd τ·r_g.
    ``calibrate=False``: the fixed rule b = p0 + (1 − c/z²)₊(p̂ − p0), rejected at level α.
    ``informed`` bool[G] (None: every prior): false where the prior is a stand-in (the value server
    down, its answer not finite): that prior is rejected outright, whatever the test would say, so b
    is the prompt's own (or population-shrunk) estimate and OSLA may buy it rollouts.

    diag (float64 tensors): ``z2`` = (p̂−p0)²/(p0(1−p0)/n); ``lam`` = weight on p0;
    ``decision`` (long: 0 accepted, 1 shrunk, 2 rejected); ``mse`` = predicted MSE of b;
    ``p_hat``; calibrated only: ``p_invalid``, ``b_valid``, ``b_invalid`` and the batch's
    ``prior_err_sd``, ``invalid_rate``, ``pop_mean``, ``pop_var`` (batch shape).
    """
    p0, k, n = _inputs(prior, successes, counts)
    p_hat = k / n
    if not calibrate:
        diag = _fixed_rule(p0, k, n, c, alpha, informed)
        b = diag.pop("b")
        diag["p_hat"] = p_hat
        return b.to(_out_dtype(prior)), diag
    scale2 = _scale2(prior_scale, p0)
    cal = calibration if calibration is not None else fit_calibration(p0, k, n, pool, prior_scale)
    post = _eb_posterior(p0, k, n, cal, pool, alpha, scale2=scale2, informed=informed)
    passed = post["w"] == 0
    decision = torch.where(
        post["w"] == 1, REJECTED, torch.where(passed & (post["lam"] >= 0.5), ACCEPTED, SHRUNK)
    )
    diag = {
        "z2": (p_hat - p0) ** 2 / (p0 * (1 - p0) / n),
        "lam": post["lam"],
        "decision": decision,
        "mse": post["mse"],
        "p_hat": p_hat,
        "p_invalid": post["p_invalid"],
        "b_valid": post["b_valid"],
        "b_invalid": post["b_invalid"],
        "prior_err_sd": cal.prior_err_sd,
        "invalid_rate": cal.invalid_rate,
        "pop_mean": cal.pop_mean,
        "pop_var": cal.pop_var,
    }
    return post["b"].to(_out_dtype(prior)), diag


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if isinstance(x, torch.Tensor) and x.is_floating_point() else torch.get_default_dtype()


def allocate(
    prior: torch.Tensor,
    successes: torch.Tensor,
    counts: torch.Tensor,
    delta: int = 4,
    n_max: int = 16,
    kappa: float = 1e-3,
    budget: int | torch.Tensor | None = None,
    *,
    max_chunks: int | None = None,
    c: float = 1.0,
    alpha: float = 0.05,
    calibrate: bool = True,
    pool: bool = True,
    calibration: V05Calibration | None = None,
    prior_scale: torch.Tensor | None = None,
    informed: torch.Tensor | None = None,
) -> torch.Tensor:
    """OSLA allocation: extra rollouts long[..., G], each a multiple of ``delta``.

    The predicted MSE(n+jΔ) is the fuse's MSE re-evaluated with p̂ held fixed (and, for the
    calibrated rule, the test's outcome held fixed). A prompt's j-th chunk of Δ gains
    MSE(n+(j−1)Δ) − MSE(n+jΔ); it is a candidate while that gain exceeds κ·Δ, n+jΔ ≤ n_max,
    and its earlier chunks are candidates. Prompts whose prior is accepted get nothing.
    Candidates are bought greedily, largest gain first, up to ``budget`` extra rollouts per
    batch (None: unlimited). ``max_chunks`` caps the chunks per prompt in this call: 1 is
    the sequential form (buy Δ, observe, call again with the remaining budget). ``informed``: as
    in :func:`fuse`.
    """
    if delta < 1:
        raise ValueError(f"delta must be >= 1, got {delta}")
    p0, k, n = _inputs(prior, successes, counts)
    chunks = max(0, (n_max - int(n.min())) // delta)
    if max_chunks is not None:
        chunks = min(chunks, max_chunks)
    if chunks == 0:
        return torch.zeros(n.shape, dtype=torch.long, device=n.device)
    p_hat = k / n
    if calibrate:
        scale2 = _scale2(prior_scale, p0)
        cal = calibration if calibration is not None else fit_calibration(p0, k, n, pool, prior_scale)
        now = _eb_posterior(p0, k, n, cal, pool, alpha, scale2=scale2, informed=informed)
        accepted = (now["w"] == 0) & (now["lam"] >= 0.5)

        def predicted_mse(n_next: torch.Tensor) -> torch.Tensor:
            return _eb_posterior(p0, p_hat * n_next, n_next, cal, pool, alpha, w=now["w"], scale2=scale2)["mse"]
    else:
        now = _fixed_rule(p0, k, n, c, alpha, informed)
        accepted = now["decision"] == ACCEPTED

        def predicted_mse(n_next: torch.Tensor) -> torch.Tensor:
            return _fixed_rule(p0, p_hat * n_next, n_next, c, alpha, informed)["mse"]

    mse = [now["mse"]] + [predicted_mse(n + j * delta) for j in range(1, chunks + 1)]
    mse_t = torch.stack(mse, -1)  # [..., G, J+1]
    gains = mse_t[..., :-1] - mse_t[..., 1:]
    steps = torch.arange(1, chunks + 1, dtype=torch.float64, device=n.device)
    ok = (gains > kappa * delta) & (n.unsqueeze(-1) + steps * delta <= n_max) & ~accepted.unsqueeze(-1)
    ok = ok.to(torch.int64).cumprod(-1).bool()  # a chunk only after the earlier ones
    # Diminishing returns make greedy-by-gain respect each prompt's chunk order.
    gains = gains.cummin(-1).values.masked_fill(~ok, -torch.inf)

    flat_gain, flat_ok = gains.flatten(-2), ok.flatten(-2)
    order = torch.sort(flat_gain, dim=-1, descending=True, stable=True).indices
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    if budget is None:
        bought = flat_ok
    else:
        budget_t = torch.as_tensor(budget, device=n.device)
        affordable = torch.div(budget_t, delta, rounding_mode="floor").clamp(min=0)
        bought = flat_ok & (rank < affordable.unsqueeze(-1))
    return bought.view(ok.shape).sum(-1) * delta


class V05Baseline:
    """V0.5 as the trainer runs it: calibration pooled over a rolling window of recent steps.

    One step holds too few prompts to learn the prior's reliability from: fitted on the 8
    prompts of a default step, (τ, π) are noise, and a useless prior costs more than it saves
    (benchmarks/experiments/baseline_mse.py, section ``stateful``). This estimator keeps each finished
    step's (p0, k, n) and calibrates on the last ``window`` prompts, the current step's
    included: its own prompts come first, then the most recent history fills the rest.

    With ``use_uncertainty`` the value model's per-prompt uncertainty u_g sets the prior's
    error sd to τ·r_g, r_g = u_g / rms(u over the window): a prompt the model is unsure of
    gets a wider prior. Tensors are [..., G]; leading dims are independent runs (the
    benchmark drives many at once), the controller passes one step of shape [G].

    Per step: ``allocate`` once per OSLA round, then ``fuse`` once, which records the step.
    """

    def __init__(
        self,
        *,
        delta: int,
        n_max: int,
        kappa: float,
        window: int,
        calibrate: bool = True,
        pool: bool = True,
        use_uncertainty: bool = False,
        alpha: float = 0.05,
        c: float = 1.0,
    ):
        if window < 1:
            raise ValueError(f"window must be >= 1 prompt, got {window}")
        self.delta, self.n_max, self.kappa, self.window = delta, n_max, kappa, window
        self.calibrate, self.pool, self.use_uncertainty = calibrate, pool, use_uncertainty
        self.alpha, self.c = alpha, c
        self.history: dict[str, torch.Tensor] | None = None  # prior, k, n, unc: [..., H], oldest first

    def _pool(self, prior, k, n, unc, informed=None) -> dict[str, torch.Tensor]:
        """The current step's informed prompts followed by the most recent history, at most ``window``."""
        current = dict(zip(("prior", "k", "n"), _inputs(prior, k, n)))
        current["unc"] = self._unc(unc, current["prior"])
        if informed is not None:  # a stand-in prior says nothing of the value model's reliability
            current = {key: x[..., informed] for key, x in current.items()}
        room = max(0, self.window - current["prior"].shape[-1])
        if self.history is None or room == 0:
            return {key: x[..., : self.window] for key, x in current.items()}
        return {key: torch.cat([x, self.history[key][..., -room:]], -1) for key, x in current.items()}

    def _unc(self, unc, p0: torch.Tensor) -> torch.Tensor:
        if unc is None or not self.use_uncertainty:
            return torch.ones_like(p0)
        u = torch.as_tensor(unc).to(p0.device, torch.float64)
        if u.shape != p0.shape:
            raise ValueError(f"uncertainty must have the prior's shape {tuple(p0.shape)}, got {tuple(u.shape)}")
        if not bool(torch.isfinite(u).all()):
            raise ValueError(f"the value model's uncertainties must be finite numbers, got {u[~torch.isfinite(u)].tolist()[:4]}")
        return u.clamp(min=1e-3)

    def _rule(self, prior, k, n, unc, informed=None) -> dict:
        """Keyword arguments for :func:`fuse`/:func:`allocate`: this step's calibration and scales."""
        if informed is not None:
            informed = torch.as_tensor(informed, dtype=torch.bool)
        if not self.calibrate:
            return dict(calibrate=False, c=self.c, alpha=self.alpha, informed=informed)
        pooled = self._pool(prior, k, n, unc, informed)
        pooled_scale = step_scale = None
        if self.use_uncertainty:
            pooled_scale = pooled["unc"] / pooled["unc"].square().mean(-1, keepdim=True).sqrt()
            g = torch.as_tensor(prior).shape[-1]
            step = torch.ones(g, dtype=torch.bool) if informed is None else informed
            step_scale = torch.ones(*pooled_scale.shape[:-1], g, dtype=pooled_scale.dtype)  # a stand-in's is never read
            step_scale[..., step] = pooled_scale[..., : int(step.sum())]  # the step's informed prompts come first
        # The outcomes of every prompt, stand-ins' included, give the population's moments: with no
        # informed prompt and an empty window, the informed pool alone would give m, v = NaN.
        everyone = self._pool(prior, k, n, unc) if informed is not None else pooled
        cal = fit_calibration(pooled["prior"], pooled["k"], pooled["n"], self.pool, pooled_scale, (everyone["k"], everyone["n"]))
        return dict(calibration=cal, pool=self.pool, alpha=self.alpha, prior_scale=step_scale, informed=informed)

    def allocate(
        self,
        prior: torch.Tensor,
        successes: torch.Tensor,
        counts: torch.Tensor,
        budget: int | torch.Tensor | None,
        *,
        uncertainty: torch.Tensor | None = None,
        max_chunks: int | None = 1,
        informed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Extra rollouts long[..., G] for one OSLA round (see :func:`allocate`)."""
        return allocate(
            prior, successes, counts, self.delta, self.n_max, self.kappa, budget,
            max_chunks=max_chunks, **self._rule(prior, successes, counts, uncertainty, informed),
        )

    def fuse(
        self,
        prior: torch.Tensor,
        successes: torch.Tensor,
        counts: torch.Tensor,
        *,
        uncertainty: torch.Tensor | None = None,
        record: bool = True,
        informed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The step's baselines and diagnostics (see :func:`fuse`); then remember the step's
        informed prompts (``informed`` as in :func:`fuse`)."""
        b, diag = fuse(prior, successes, counts, **self._rule(prior, successes, counts, uncertainty, informed))
        if record:
            if informed is None:
                self.observe(prior, successes, counts, uncertainty)
            elif bool(torch.as_tensor(informed).any()):
                keep = torch.as_tensor(informed, dtype=torch.bool)
                pick = lambda x: None if x is None else torch.as_tensor(x)[..., keep]  # noqa: E731
                self.observe(pick(prior), pick(successes), pick(counts), pick(uncertainty))
        return b, diag

    def observe(self, prior, successes, counts, uncertainty=None) -> None:
        """Append a finished step to the window (``fuse`` does this itself)."""
        p0, k, n = _inputs(prior, successes, counts)
        step = {"prior": p0, "k": k, "n": n, "unc": self._unc(uncertainty, p0)}
        if self.history is not None:
            step = {key: torch.cat([self.history[key], x], -1) for key, x in step.items()}
        self.history = {key: x[..., -self.window :].clone() for key, x in step.items()}

    def __len__(self) -> int:
        return 0 if self.history is None else self.history["prior"].shape[-1]

    def state_dict(self) -> dict:
        return {"window": self.window, "history": None if self.history is None else {k: v.clone() for k, v in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        history = state.get("history")
        self.history = None if history is None else {k: torch.as_tensor(v, dtype=torch.float64)[..., -self.window :] for k, v in history.items()}
