"""Does V0's answer need a map to be a pass-rate prior? A simulation of the best case.

V0's head answers P(class 1) with support labels 1[pass rate >= 0.5]. V0.5 fuses its prior with
observed successes as a pass rate. V0's query loss is trained toward pass rates, so the released
model may answer a pass rate already, or a threshold probability, or something between; its
weights are not reachable from this box. So this script measures both ends, each for a classifier
as good as it can be given its signal: a *threshold* scorer answering P(p >= 0.5 | signal) and a
*calibrated* scorer answering E[p | signal], and what `value.v0.prior_map=isotonic`
(rlvr.value.prior_map) does to each: recover the pass rate from the first, and cost the second
only the noise of fitting the map.

The world: each prompt has a true pass rate p (a mixture like the default job's: a third of the
prompts never solved, a sixth always, the rest Beta(2, 2)); the classifier sees logit(p) plus
Gaussian noise of sd `sigma` (its skill) and answers the exact posterior P(p >= 0.5 | signal),
or E[p | signal], computed on a grid. The context holds `context` prompts with `n0` rollouts each (their observed
success rates); the map is fit on them and applied to `queries` new prompts. Reported per sigma:
the mean squared error against the true p of the raw answer, of the mapped answer, and of the
context mean (the no-information prior), averaged over `seeds` worlds.

Usage: python -m benchmarks.experiments.v0_prior_map [--seeds 20] [--context 256] [--n0 4] [--out benchmarks/results]
Prints JSON and writes <out>/v0_prior_map.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from rlvr.value.prior_map import fit_isotonic

SIGMAS = (0.25, 0.5, 1.0, 2.0)


def pass_rates(n: int, gen: torch.Generator) -> torch.Tensor:
    kind = torch.rand(n, generator=gen)
    # Beta(2, 2) is the median of three uniforms; drawn from `gen` (torch.distributions takes no
    # generator, so its draws came from the unseeded global RNG and every run differed).
    mid = torch.rand(n, 3, generator=gen).median(dim=1).values
    return torch.where(kind < 1 / 3, torch.zeros(n), torch.where(kind < 0.5, torch.ones(n), mid))


def posterior(p: torch.Tensor, sigma: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """For s = logit(p) + N(0, sigma^2), under the world's prior on p (sampled): the threshold
    scorer's P(p >= 0.5 | s) and the calibrated scorer's E[p | s]."""
    eps = 1e-3
    signal = torch.logit(p.clamp(eps, 1 - eps)) + sigma * torch.randn(p.shape, generator=gen)
    grid = pass_rates(20000, gen)
    lik = torch.exp(-0.5 * ((signal[:, None] - torch.logit(grid.clamp(eps, 1 - eps))[None]) / sigma) ** 2)
    norm = lik.sum(1).clamp(min=1e-30)
    return {"threshold": (lik * (grid >= 0.5)).sum(1) / norm, "calibrated": (lik * grid).sum(1) / norm}


def one_world(seed: int, sigma: float, context: int, queries: int, n0: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    p_ctx, p_q = pass_rates(context, gen), pass_rates(queries, gen)
    observed = torch.binomial(torch.full((context,), float(n0)), p_ctx, generator=gen) / n0
    s_ctx, s_q = posterior(p_ctx, sigma, gen), posterior(p_q, sigma, gen)
    mse = lambda x: float(((x - p_q) ** 2).mean())  # noqa: E731
    out = {"context_mean": mse(torch.full_like(p_q, float(observed.mean())))}
    for kind in s_q:
        out[f"{kind}_raw"] = mse(s_q[kind])
        out[f"{kind}_isotonic"] = mse(fit_isotonic(s_ctx[kind], observed)(s_q[kind]))
    return out


def run(seeds: int, context: int, queries: int, n0: int) -> dict:
    out = {"context": context, "queries": queries, "n0": n0, "seeds": seeds, "by_sigma": {}}
    for sigma in SIGMAS:
        worlds = [one_world(s, sigma, context, queries, n0) for s in range(seeds)]
        row = {}
        for k in worlds[0]:
            vals = torch.tensor([w[k] for w in worlds])
            row[k] = {"mse": float(vals.mean()), "se": float(vals.std() / seeds**0.5)}
        for kind in ("threshold", "calibrated"):
            row[f"{kind}_isotonic_over_raw"] = row[f"{kind}_isotonic"]["mse"] / row[f"{kind}_raw"]["mse"]
        out["by_sigma"][str(sigma)] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--n0", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    result = run(args.seeds, args.context, args.queries, args.n0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "v0_prior_map.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
