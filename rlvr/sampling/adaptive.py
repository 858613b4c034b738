"""`algorithm.sampling=adaptive` (V0.5): ask the value server for a prior p0, sample n0, run the
reliability test, buy extra rollouts (OSLA) under the step budget, and fuse prior and data into a
per-prompt baseline, through the controller's `V05Baseline`, which calibrates the prior's reliability
over the last `calibration_window` prompts rather than one step's few. `warm_start` fills that window
and the value context from the initial policy's rollouts before step 1, so the first steps can trust
a prior."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

import torch

from rlvr.algorithms import v05
from rlvr.data import Problem
from rlvr.seeds import round_seed
from rlvr.types import Batch, PromptGroup

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from rlvr.train.controller import BudgetController


def warm_start(ctl: BudgetController, problems: list[Problem], seed: int) -> dict:
    """V0.5 before step 1: n0 rollouts of the initial policy on each warm-up prompt (neither
    training nor held-out) fill the value context and the calibration window.

    A window of priors that never saw a context reads as a useless prior, and the first steps
    reject everything (DESIGN.md, "V0.5 starves at the start of a run"). So each half's priors
    are predicted from the other half's outcomes (two-fold cross-fitting: no prior has seen its
    own prompt's outcome), and those (prior, k, n) enter the window. The context then holds
    every warm-up pair. Returns what it cost and what it found, and (``decisions``) each warm-up pair.
    """
    ctl.timings, ctl.counts = {}, {}
    start = time.perf_counter()
    groups = ctl.sample(problems, [ctl.cfg.n] * len(problems), seed)
    k, n = _successes_and_counts(groups)
    texts, success = [p.question for p in problems], (k / n).tolist()
    empty = ctl.value_server.snapshot()
    prior, unc, real = torch.full_like(k, 0.5), torch.full_like(k, 0.5), torch.ones_like(k, dtype=torch.bool)
    half = len(problems) // 2
    for context, target in ((slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))):
        ctl.value_server.load(empty)
        ctl.value_server.update("add_context", texts[context], success[context])  # a replacement gets this fold's context too
        prior[target], unc[target], real[target] = finite_priors(*ctl.value_server.call("predict", texts[target]))
        if not texts[context]:  # nothing to predict from: the backend's stand-in, which the window must not learn
            real[target] = False
    ctl.value_server.load(empty)
    ctl.value_server.update("add_context", texts, success)
    ctl.value_server.snapshot()
    if bool(real.any()):
        ctl.v05.observe(prior[real], k[real], n[real], unc[real])
    # the warm-up's pairs, logged at step 0: what the value context held before step 1 (`rlvr value-report`
    # replays the context from them; without them its predictors saw 64 fewer items than the run's)
    decisions = [dict(uid=p.uid, prior=float(prior[i]), uncertainty=float(unc[i]), k=int(k[i]), n=int(n[i]), decision="warmup", extra=0)
                 for i, p in enumerate(problems)]
    return {
        "decisions": decisions,
        "warmup/prompts": len(problems),
        "warmup/rollouts": ctl.counts.get("rollouts", 0),
        "warmup/gen_tokens": ctl.counts.get("gen_tokens", 0),
        "warmup/seconds": time.perf_counter() - start,
        "warmup/success": float((k / n).mean()),
        "warmup/prior_brier": float(((prior - k / n) ** 2).mean()),
        "warmup/context_mean_brier": float(((k / n).mean() - k / n).pow(2).mean()),
        "warmup/prior_corr": _corr(prior, k / n),
        "v05/window": len(ctl.v05),
    }


def collect_adaptive(ctl: BudgetController, problems: list[Problem], more_problems: Callable[[int], list[Problem]],
                     seed: int) -> Batch:
    """V0.5: prior, n0 rollouts, the reliability test, OSLA's extra rollouts under the step's budget,
    and the fused baseline of each prompt; every decision is logged."""
    cfg = ctl.cfg
    texts = [p.question for p in problems]
    # A dead value server gives the uninformed prior for this step while its replacement loads.
    uninformed = ([0.5] * len(texts), [0.5] * len(texts))
    answer = ctl.timed("value", lambda: ctl.value_server.call_or(uninformed, "predict", texts))
    prior, unc, real = finite_priors(*answer)
    if answer is uninformed:
        real[:] = False
    groups = ctl.sample(problems, [cfg.n] * len(problems), round_seed(seed, 0))
    budget_left = int(round((cfg.budget_factor - 1.0) * cfg.n * len(problems)))
    bought = torch.zeros(len(problems), dtype=torch.long)
    for round_ in range(cfg.adaptive_rounds):
        if budget_left < cfg.delta:
            break
        k, n = _successes_and_counts(groups)
        extra = ctl.v05.allocate(prior, k, n, budget_left, uncertainty=unc, informed=real)
        if int(extra.sum()) == 0:
            break
        more = ctl.sample(problems, extra.tolist(), round_seed(seed, 1 + round_))
        for g, m in zip(groups, more):
            g.trajectories += m.trajectories
        bought += extra
        budget_left -= int(extra.sum())
    k, n = _successes_and_counts(groups)
    # a stand-in prior (server down, answer not finite) is rejected outright and the window learns
    # only from the value model's own priors (trusted, a stand-in 0.5 gave b ≈ 0.5 for 0/4 and 4/4 alike)
    b, diag = ctl.v05.fuse(prior, k, n, uncertainty=unc, informed=real)
    decisions = []
    for i, g in enumerate(groups):
        g.baseline = float(b[i])
        decisions.append(
            dict(
                uid=g.problem.uid,
                prior=float(prior[i]),
                uncertainty=float(unc[i]),
                k=int(k[i]),
                n=int(n[i]),
                z2=float(diag["z2"][i]),
                lam=float(diag["lam"][i]),
                baseline=float(b[i]),
                decision=("accepted", "shrunk", "rejected")[int(diag["decision"][i])],
                extra=int(bought[i]),
            )
        )
    ctl.timed("value", lambda: ctl.value_server.update("add_context", texts, (k / n).tolist()))
    ctl.timed("value", ctl.value_server.snapshot)  # what a replacement would be restored to
    p_hat = k / n
    stats = {
        "v05/accepted": sum(d["decision"] == "accepted" for d in decisions),
        "v05/shrunk": sum(d["decision"] == "shrunk" for d in decisions),
        "v05/rejected": sum(d["decision"] == "rejected" for d in decisions),
        "v05/extra_mean": float(bought.float().mean()),
        "v05/prior_brier": float(((prior[real] - p_hat[real]) ** 2).mean()) if bool(real.any()) else float("nan"),
        "v05/prior_corr": _corr(prior[real], p_hat[real]),
        "v05/prior_err_sd": float(diag["prior_err_sd"]),
        "v05/invalid_rate": float(diag["invalid_rate"]),
        "v05/window": len(ctl.v05),
        "v05/priors_missing": int((~real).sum()),  # the value server down or not finite: the uninformed prior stood in
    }
    return Batch(groups, decisions=decisions, stats=stats)


def finite_priors(priors: list[float], uncertainties: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The value model's answers as tensors, each prior clamped into V0.5's range, and which of them
    are real: a prior or an uncertainty that is not a finite number (an `hf-classifier` logit or a
    `v0` map gone NaN) becomes the uninformed (0.5, 0.5), which the calibration window does not
    learn from. (A NaN prior made its baseline NaN and, in the window for 256 prompts, every
    likelihood NaN: the prior was then trusted.)"""
    prior = torch.tensor(priors, dtype=torch.float64)
    unc = torch.tensor(uncertainties, dtype=torch.float64)
    bad = ~(torch.isfinite(prior) & torch.isfinite(unc))
    if bool(bad.any()):
        log.warning("value server: %d of %d priors or uncertainties not finite; uninformed (0.5, 0.5) for them", int(bad.sum()), len(prior))
    prior, unc = prior.masked_fill(bad, 0.5), unc.masked_fill(bad, 0.5)
    return prior.clamp(v05.PRIOR_MIN, v05.PRIOR_MAX), unc, ~bad


def _successes_and_counts(groups: list[PromptGroup]) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.tensor([sum(g.correct) for g in groups], dtype=torch.float64)
    n = torch.tensor([len(g.correct) for g in groups], dtype=torch.float64)
    return k, n


def _corr(x: torch.Tensor, y: torch.Tensor) -> float:
    if len(x) < 2 or float(x.std()) == 0 or float(y.std()) == 0:
        return float("nan")
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])
