"""Baseline MSE at equal rollout spend: GRPO group mean vs value prior vs V0.5 vs Bayes oracle.

Simulation (seeded):
  - true success rates p ~ Beta(0.7, 0.7), one per prompt;
  - value prior p0 = clip(p + N(0, sd²), 0.02, 0.98); a fraction h of the prompts get a
    "hallucinated" prior instead, p0 = clip(U(0, 1), 0.02, 0.98), unrelated to p;
  - binary rollouts; every method reads the same pre-drawn outcome stream per prompt, so
    comparisons are paired.

Baselines (MSE against the true p):
  grpo_n4          group mean at n = 4
  group_mean_equal group mean at V0.5's average spend (each prompt gets floor or ceil of it)
  prior            p0 alone
  v05              rlvr.algorithms.v05: fuse + sequential OSLA, calibrated per batch (default)
  v05_fixed        the fixed-constant rule of DESIGN.md (c = 1, α = 0.05), same OSLA loop
  v05_nopool       calibrated, without pooling toward the batch population (ablation)
  oracle           posterior mean E[p | p0, k, n] knowing h, sd and Beta(0.7, 0.7), given
                   exactly the rollouts V0.5 drew (the limit for any baseline on that data);
                   each variant is also compared with the oracle on its own rollouts
  oracle_equal     the same posterior mean at uniform equal spend

Targets (pass/fail in the JSON):
  1. v05 ≤ 0.5 × group_mean_equal for h ≤ 0.1 and sd ≤ 0.1
  2. v05 ≤ 1.05 × group_mean_equal for h = 1.0
  3. v05 ≤ 1.25 × oracle over the whole grid (and, reported, × oracle_equal)

Section ``stateful`` (the trainer's own setting): ``--steps`` steps of ``--step-prompts`` = 8
prompts each, in ``--chains`` independent runs, driven through ``v05.V05Baseline`` exactly as the
BudgetController drives it (n0 = 4, ``--rounds`` = 2 OSLA rounds of one chunk, budget 1.5× a
step). Per cell: ``v05`` (V05Baseline, window 256), ``v05_step`` (calibrated on the step's own 8
prompts: the trainer before V05Baseline), ``v05_fixed`` (calibrate=False), the group mean at each
one's equal spend and the oracle on each one's rollouts. Targets: v05 ≤ 0.5× group mean for
h = 0.1, sd = 0.1; ≤ 1.0× for h = 1; ≤ 1.25× oracle over the grid.

Section ``uncertainty``: the prior's error sd varies per prompt (sd·r, r log-normal) and the value
model reports u = r·noise (``informative``) or an unrelated u (``uninformative``); V05Baseline
with and without ``use_uncertainty`` (τ_g = τ·u_g/rms(u)), against the group mean.

Usage: python -m benchmarks.experiments.baseline_mse [--out benchmarks/out/baseline_mse.json] [--sections ...]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rlvr.algorithms import v05

PRIOR_LO, PRIOR_HI = v05.PRIOR_MIN, v05.PRIOR_MAX
BETA_A = BETA_B = 0.7


def simulate(num_prompts: int, h: float, sd: float, n_max: int, rng: np.random.Generator):
    """True p, prior p0, and cumulative successes cum[g, n] after the first n rollouts."""
    p = rng.beta(BETA_A, BETA_B, num_prompts)
    p0 = p + rng.normal(0.0, sd, num_prompts)
    hallucinated = rng.random(num_prompts) < h
    p0[hallucinated] = rng.random(int(hallucinated.sum()))
    p0 = np.clip(p0, PRIOR_LO, PRIOR_HI)
    outcomes = rng.random((num_prompts, n_max)) < p[:, None]
    cum = np.concatenate([np.zeros((num_prompts, 1)), np.cumsum(outcomes, 1)], 1)
    return (torch.from_numpy(x) for x in (p, p0, cum))


def successes_at(cum: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return cum.gather(-1, n.long().unsqueeze(-1)).squeeze(-1)


def run_v05(p0, cum, args, **rule) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Sequential OSLA per batch (rows): buy Δ where the gain pays, observe, re-test; then fuse."""
    rows = p0.numel() // args.batch_size
    p0_b = p0.view(rows, args.batch_size)
    cum_b = cum.view(rows, args.batch_size, -1)
    n = torch.full_like(p0_b, float(args.n0))
    remaining = torch.full((rows,), round((args.budget_factor - 1) * args.n0 * args.batch_size))
    for _ in range((args.n_max - args.n0) // args.delta):
        extra = v05.allocate(
            p0_b, successes_at(cum_b, n), n, args.delta, args.n_max, args.kappa, remaining, max_chunks=1, **rule
        )
        if extra.sum() == 0:
            break
        n = n + extra
        remaining = remaining - extra.sum(-1)
    k = successes_at(cum_b, n)
    b, diag = v05.fuse(p0_b, k, n, **rule)
    info = {
        "decision_frac": {
            name: float((diag["decision"] == i).double().mean()) for i, name in enumerate(v05.DECISIONS)
        },
    }
    if "prior_err_sd" in diag:
        info["mean_prior_err_sd"] = float(diag["prior_err_sd"].mean())
        info["mean_invalid_rate"] = float(diag["invalid_rate"].mean())
    return b.flatten(), n.flatten(), info


def oracle_posterior_mean(p0, k, n, h, sd, grid_size, chunk=4096) -> torch.Tensor:
    """E[p | p0, k, n] on a midpoint grid over p, with the exact generative model.

    Posterior ∝ Beta(p; 0.7, 0.7) · p^k (1−p)^(n−k) · [(1−h)·N(p0; p, sd²) + h·U(p0)], where a
    prior at a clip bound is a point mass: P(p + e ≤ 0.02) for the Gaussian, 0.02 for U.
    Prompts are grouped by (k, n), so the rollout term is one row per group; the big
    buffers are float32 and reused (a fresh [chunk, grid] tensor per step page-faults).
    """
    grid = (torch.arange(grid_size, dtype=torch.float64) + 0.5) / grid_size
    log_pop = (BETA_A - 1) * grid.log() + (BETA_B - 1) * torch.log1p(-grid)
    at_lo_like = ((1 - h) * torch.special.ndtr((PRIOR_LO - grid) / sd) + h * PRIOR_LO).float()
    at_hi_like = ((1 - h) * torch.special.ndtr((grid - PRIOR_HI) / sd) + h * PRIOR_LO).float()
    density_scale = (1 - h) / (sd * math.sqrt(2 * math.pi))
    grid32 = grid.float()
    grid_and_one = torch.stack([grid32, torch.ones_like(grid32)], 1)  # [M, 2]: Σ w·p and Σ w at once
    buffer = torch.empty(chunk * grid_size, dtype=torch.float32)
    out = torch.empty_like(p0)
    key = (n * (n + 1) / 2 + k).long()  # unique per (k, n)
    for value in key.unique():
        members = (key == value).nonzero().squeeze(-1)
        kk, nn = k[members[0]], n[members[0]]
        log_lik = log_pop + kk * grid.log() + (nn - kk) * torch.log1p(-grid)
        rollout_term = (log_lik - log_lik.max()).exp().float()
        for s in range(0, members.numel(), chunk):
            idx = members[s : s + chunk]
            q0 = p0[idx]
            w = buffer[: idx.numel() * grid_size].view(idx.numel(), grid_size)
            torch.sub(q0.float().unsqueeze(-1), grid32, out=w)
            w.square_().mul_(-0.5 / sd**2).exp_().mul_(density_scale).add_(h)
            w[q0 <= PRIOR_LO + 1e-12] = at_lo_like
            w[q0 >= PRIOR_HI - 1e-12] = at_hi_like
            sums = w.mul_(rollout_term) @ grid_and_one
            out[idx] = (sums[:, 0] / sums[:, 1]).double()
    return out


def equal_spend_counts(avg: float, num_prompts: int, rng: np.random.Generator) -> torch.Tensor:
    """floor(avg) or ceil(avg) rollouts per prompt, averaging to ``avg``."""
    lo = math.floor(avg)
    return torch.from_numpy(np.where(rng.random(num_prompts) < avg - lo, lo + 1, lo).astype(np.float64))


def mse(estimate: torch.Tensor, p: torch.Tensor) -> float:
    return float(((estimate - p) ** 2).mean())


def run_cell(h: float, sd: float, seed: int, args) -> dict:
    rng = np.random.default_rng(seed)
    p, p0, cum = simulate(args.prompts, h, sd, args.n_max, rng)
    n4 = torch.full_like(p, float(args.n0))
    cell: dict = {"h": h, "sd": sd, "mse": {}, "avg_rollouts": {}}
    cell["mse"]["grpo_n4"] = mse(successes_at(cum, n4) / n4, p)
    cell["mse"]["prior"] = mse(p0, p)

    variants = {"v05": {}, "v05_fixed": {"calibrate": False}, "v05_nopool": {"pool": False}}
    for name, rule in variants.items():
        b, n, info = run_v05(p0, cum, args, **rule)
        avg = float(n.mean())
        n_eq = equal_spend_counts(avg, args.prompts, rng)
        cell["mse"][name] = mse(b, p)
        cell["mse"][f"group_mean_equal_{name}"] = mse(successes_at(cum, n_eq) / n_eq, p)
        cell["avg_rollouts"][name] = avg
        cell[f"{name}_info"] = info
        oracle = oracle_posterior_mean(p0, successes_at(cum, n), n, h, sd, args.oracle_grid)
        cell["mse"][f"oracle_{name}"] = mse(oracle, p)
        if name == "v05":
            cell["mse"]["oracle_equal"] = mse(
                oracle_posterior_mean(p0, successes_at(cum, n_eq), n_eq, h, sd, args.oracle_grid), p
            )
    cell["mse"]["group_mean_equal"] = cell["mse"].pop("group_mean_equal_v05")
    cell["mse"]["oracle"] = cell["mse"].pop("oracle_v05")
    m = cell["mse"]
    cell["ratios"] = {
        "v05_over_group_mean_equal": m["v05"] / m["group_mean_equal"],
        "v05_over_oracle": m["v05"] / m["oracle"],
        "v05_over_oracle_equal": m["v05"] / m["oracle_equal"],
        "v05_over_grpo_n4": m["v05"] / m["grpo_n4"],
        "v05_fixed_over_its_group_mean_equal": m["v05_fixed"] / m["group_mean_equal_v05_fixed"],
        "v05_fixed_over_its_oracle": m["v05_fixed"] / m["oracle_v05_fixed"],
        "v05_nopool_over_its_group_mean_equal": m["v05_nopool"] / m["group_mean_equal_v05_nopool"],
        "v05_nopool_over_its_oracle": m["v05_nopool"] / m["oracle_v05_nopool"],
    }
    return cell


def run_steps(p0, cum, unc, args, baseline: v05.V05Baseline | None, **rule):
    """Drive one estimator over [chains, steps, G] as the controller does; returns (b, n) flat.

    ``baseline`` None: calibrate on each step's own prompts (plain ``v05.allocate``/``fuse``)."""
    chains, steps, g = p0.shape
    b_all, n_all = torch.empty(chains, steps, g, dtype=torch.float64), torch.empty(chains, steps, g, dtype=torch.float64)
    decisions = torch.zeros(3)
    for t in range(steps):
        prior, c, u = p0[:, t], cum[:, t], unc[:, t]
        n = torch.full_like(prior, float(args.n0))
        remaining = torch.full((chains,), round((args.budget_factor - 1) * args.n0 * g))
        for _ in range(args.rounds):
            k = successes_at(c, n)
            if baseline is None:
                extra = v05.allocate(prior, k, n, args.delta, args.n_max, args.kappa, remaining, max_chunks=1, **rule)
            else:
                extra = baseline.allocate(prior, k, n, remaining, uncertainty=u)
            if extra.sum() == 0:
                break
            n, remaining = n + extra, remaining - extra.sum(-1)
        k = successes_at(c, n)
        if baseline is None:
            b, diag = v05.fuse(prior, k, n, **rule)
        else:
            b, diag = baseline.fuse(prior, k, n, uncertainty=u)
        decisions += torch.bincount(diag["decision"].flatten(), minlength=3)
        b_all[:, t], n_all[:, t] = b, n
    frac = {name: float(decisions[i] / decisions.sum()) for i, name in enumerate(v05.DECISIONS)}
    return b_all.flatten(), n_all.flatten(), frac


def simulate_steps(args, h: float, sd: float, rng: np.random.Generator, uncertainty: str | None = None):
    """[chains, steps, G] draws; ``uncertainty`` makes the prior's error sd vary per prompt."""
    shape = (args.chains, args.steps, args.step_prompts)
    p = rng.beta(BETA_A, BETA_B, shape)
    r = np.ones(shape)
    unc = np.ones(shape)
    if uncertainty is not None:
        r = rng.lognormal(0.0, args.unc_spread, shape)
        r /= np.sqrt((r**2).mean())
        unc = r * rng.lognormal(0.0, 0.3, shape) if uncertainty == "informative" else rng.permutation(r.flatten()).reshape(shape)
    p0 = p + rng.normal(0.0, 1.0, shape) * sd * r
    hallucinated = rng.random(shape) < h
    p0[hallucinated] = rng.random(int(hallucinated.sum()))
    p0 = np.clip(p0, PRIOR_LO, PRIOR_HI)
    outcomes = rng.random((*shape, args.n_max)) < p[..., None]
    cum = np.concatenate([np.zeros((*shape, 1)), np.cumsum(outcomes, -1)], -1)
    return (torch.from_numpy(x) for x in (p, p0, cum, unc))


def stateful_baseline(args, **kw) -> v05.V05Baseline:
    return v05.V05Baseline(delta=args.delta, n_max=args.n_max, kappa=args.kappa, window=args.window, **kw)


def _equal_spend_mse(name: str, b, n, p, cum_flat, rng, cell: dict) -> None:
    avg = float(n.mean())
    n_eq = equal_spend_counts(avg, p.numel(), rng)
    cell["mse"][name] = mse(b, p)
    cell["mse"][f"group_mean_equal_{name}"] = mse(successes_at(cum_flat, n_eq) / n_eq, p)
    cell["avg_rollouts"][name] = avg
    cell["ratios"][f"{name}_over_group_mean_equal"] = cell["mse"][name] / cell["mse"][f"group_mean_equal_{name}"]


def run_stateful_cell(h: float, sd: float, seed: int, args) -> dict:
    rng = np.random.default_rng(seed)
    p, p0, cum, unc = simulate_steps(args, h, sd, rng)
    p_flat, p0_flat, cum_flat = p.flatten(), p0.flatten(), cum.flatten(0, 2)
    cell: dict = {"h": h, "sd": sd, "mse": {}, "avg_rollouts": {}, "ratios": {}, "decision_frac": {}}
    variants = {
        "v05": (stateful_baseline(args), {}),
        "v05_step": (None, {}),
        "v05_fixed": (stateful_baseline(args, calibrate=False), {}),
    }
    for name, (baseline, rule) in variants.items():
        b, n, frac = run_steps(p0, cum, unc, args, baseline, **rule)
        _equal_spend_mse(name, b, n, p_flat, cum_flat, rng, cell)
        cell["decision_frac"][name] = frac
        oracle = oracle_posterior_mean(p0_flat, successes_at(cum_flat, n), n, h, sd, args.oracle_grid)
        cell["mse"][f"oracle_{name}"] = mse(oracle, p_flat)
        cell["ratios"][f"{name}_over_oracle"] = cell["mse"][name] / cell["mse"][f"oracle_{name}"]
    return cell


def run_uncertainty_cell(h: float, sd: float, kind: str, seed: int, args) -> dict:
    rng = np.random.default_rng(seed)
    p, p0, cum, unc = simulate_steps(args, h, sd, rng, uncertainty=kind)
    p_flat, cum_flat = p.flatten(), cum.flatten(0, 2)
    cell: dict = {"h": h, "sd": sd, "uncertainty": kind, "mse": {}, "avg_rollouts": {}, "ratios": {}}
    for name, baseline in {"v05": stateful_baseline(args), "v05_unc": stateful_baseline(args, use_uncertainty=True)}.items():
        b, n, _ = run_steps(p0, cum, unc, args, baseline)
        _equal_spend_mse(name, b, n, p_flat, cum_flat, rng, cell)
    cell["ratios"]["v05_unc_over_v05"] = cell["mse"]["v05_unc"] / cell["mse"]["v05"]
    return cell


def target(description: str, selected: list[dict], key: str, limit: float) -> dict:
    """The worst ratio ``key`` over the selected cells, against its limit (None: no cell of the grid run)."""
    if not selected:
        return {"description": description, "limit": limit, "worst_ratio": None, "pass": None}
    worst = max(c["ratios"][key] for c in selected)
    return {"description": description, "limit": limit, "worst_ratio": worst, "pass": worst <= limit}


def check_stateful_targets(cells: list[dict]) -> dict:
    return {
        "1_good_prior_halves_mse": target(
            "V05Baseline MSE <= 0.5 x group mean at equal spend, h = 0.1 and sd = 0.1, 8 prompts a step",
            [c for c in cells if c["h"] == 0.1 and c["sd"] == 0.1],
            "v05_over_group_mean_equal",
            0.5,
        ),
        "2_useless_prior_costs_nothing": target(
            "V05Baseline MSE <= 1.0 x group mean at equal spend, h = 1.0, 8 prompts a step",
            [c for c in cells if c["h"] == 1.0],
            "v05_over_group_mean_equal",
            1.0,
        ),
        "3_near_oracle": target(
            "V05Baseline MSE <= 1.25 x Bayes oracle on the same rollouts, whole grid",
            cells,
            "v05_over_oracle",
            1.25,
        ),
    }


def check_targets(cells: list[dict]) -> dict:
    return {
        "1_good_prior_halves_mse": target(
            "v05 MSE <= 0.5 x group mean at equal spend, for h <= 0.1 and sd <= 0.1",
            [c for c in cells if c["h"] <= 0.1 and c["sd"] <= 0.1],
            "v05_over_group_mean_equal",
            0.5,
        ),
        "2_useless_prior_costs_nothing": target(
            "v05 MSE <= 1.05 x group mean at equal spend, for h = 1.0",
            [c for c in cells if c["h"] == 1.0],
            "v05_over_group_mean_equal",
            1.05,
        ),
        "3_near_oracle": target(
            "v05 MSE <= 1.25 x Bayes oracle (posterior mean on the same rollouts), whole grid",
            cells,
            "v05_over_oracle",
            1.25,
        ),
        "3b_near_oracle_equal_spend": target(
            "v05 MSE <= 1.25 x Bayes oracle at uniform equal spend, whole grid",
            cells,
            "v05_over_oracle_equal",
            1.25,
        ),
    }


def plot(cells: list[dict], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hs = sorted({c["h"] for c in cells})
    methods = ["grpo_n4", "group_mean_equal", "prior", "v05_fixed", "v05", "oracle"]
    fig, axes = plt.subplots(1, len(hs), figsize=(4 * len(hs), 3.6), sharey=True)
    for ax, h in zip(np.atleast_1d(axes), hs):
        row = sorted((c for c in cells if c["h"] == h), key=lambda c: c["sd"])
        sds = [c["sd"] for c in row]
        for method in methods:
            ax.plot(sds, [c["mse"][method] for c in row], marker="o", label=method)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(sds, [str(s) for s in sds])
        ax.set_title(f"hallucinated fraction h = {h}")
        ax.set_xlabel("prior noise sd")
    np.atleast_1d(axes)[0].set_ylabel("baseline MSE vs true p")
    np.atleast_1d(axes)[-1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/baseline_mse.json"))
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default: --out with .png)")
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=250, help="prompts per training step (calibration pool)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hs", type=float, nargs="+", default=[0.0, 0.1, 0.3, 1.0])
    parser.add_argument("--sds", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--n0", type=int, default=4)
    parser.add_argument("--delta", type=int, default=4)
    parser.add_argument("--n-max", type=int, default=16)
    parser.add_argument("--kappa", type=float, default=1e-3)
    parser.add_argument("--budget-factor", type=float, default=1.5, help="max rollouts per step / base rollouts")
    parser.add_argument("--oracle-grid", type=int, default=800, help="grid points over p for the oracle")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (2 thrash on a shared 2-core box)")
    parser.add_argument("--sections", nargs="+", default=["per_batch", "stateful", "uncertainty"],
                        choices=["per_batch", "stateful", "uncertainty"])
    parser.add_argument("--step-prompts", type=int, default=8, help="stateful: prompts per step (trainer.batch_size)")
    parser.add_argument("--steps", type=int, default=125, help="stateful: steps per chain")
    parser.add_argument("--chains", type=int, default=32, help="stateful: independent runs, driven at once")
    parser.add_argument("--window", type=int, default=256, help="stateful: V05Baseline calibration window (prompts)")
    parser.add_argument("--rounds", type=int, default=2, help="stateful: OSLA rounds per step (algorithm.adaptive_rounds)")
    parser.add_argument("--unc-spread", type=float, default=0.6, help="uncertainty: sd of log r, the per-prompt error scale")
    args = parser.parse_args(argv)
    if args.prompts % args.batch_size:
        parser.error("--prompts must be a multiple of --batch-size")
    torch.set_num_threads(args.threads)

    start, start_cpu = time.perf_counter(), time.process_time()
    grid = [(h, sd) for h in args.hs for sd in args.sds]
    result: dict = {"benchmark": "baseline_mse", "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    cells: list[dict] = []
    if "per_batch" in args.sections:
        cells = [run_cell(h, sd, args.seed * 1000 + i, args) for i, (h, sd) in enumerate(grid)]
        result.update(targets=check_targets(cells), cells=cells)
    if "stateful" in args.sections:
        stateful = []
        for i, (h, sd) in enumerate(grid):
            stateful.append(run_stateful_cell(h, sd, args.seed * 1000 + 500 + i, args))
            print(f"stateful h={h} sd={sd}: {json.dumps(stateful[-1]['ratios'])}", file=sys.stderr, flush=True)
        result["stateful"] = {"targets": check_stateful_targets(stateful), "cells": stateful}
    if "uncertainty" in args.sections:
        unc_cells = [
            run_uncertainty_cell(h, 0.1, kind, args.seed * 1000 + 900 + i, args)
            for i, (h, kind) in enumerate((h, kind) for h in (0.0, 0.1, 0.3) for kind in ("informative", "uninformative"))
        ]
        result["uncertainty"] = {"cells": unc_cells}
    result.update(runtime_s=round(time.perf_counter() - start, 1), cpu_s=round(time.process_time() - start_cpu, 1))
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    if cells:
        plot(cells, args.plot or args.out.with_suffix(".png"))
    return result


if __name__ == "__main__":
    main()
