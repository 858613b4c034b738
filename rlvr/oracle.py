"""An oracle in the live loop: each training prompt's success rate p* at the current weights, and
how far each baseline the methods use is from it (issue "Evidence that decides").

At the steps `eval.oracle.every` names, after the step's batch is collected and before its update
(so the engines still hold the weights that sampled it), the engines draw `eval.oracle.samples`
(M) more answers to each of the batch's prompts, seeded apart from training and scored by the
same verifier. Their success rate is p*, with the binomial variance p*(1 − p*)/M. The samples are
never trained on, never enter the value context and are not counted in `rollouts`; their time is
`time/oracle`. Synchronous runs only: an async run's engines may already hold newer weights.

What is measured per prompt, on correctness (what every baseline estimates), against p*:
- the group mean of the first n0 rollouts (GRPO's baseline at the base spend), RLOO's
  leave-one-out means of those n0, and the group mean of all the prompt's rollouts (the spend the
  method actually made: V0.5's, with its extra rollouts);
- V0.5's fused baseline b and the value model's prior alone, when the run has them;
- whether each rollout's advantage has the sign of its oracle advantage c − p*, over the rollouts
  where that is not zero (p* strictly between 0 and 1); a zero advantage, as GRPO gives a uniform
  group, counts as a disagreement.
Every squared error carries the same oracle noise, E = error² + p*(1 − p*)/M on average, so the
baselines compare fairly; `oracle/p_star_var` is that noise, to subtract for absolute figures.
"""

from __future__ import annotations

import time

import torch

from rlvr.batch import Batch
from rlvr.evaluate import correct_counts
from rlvr.rollout import SamplingConfig

__all__ = ["oracle_metrics", "report", "sample_oracle"]


def sample_oracle(generator, batch: Batch, sampling: SamplingConfig, samples: int, seed: int) -> dict:
    """M seeded samples of each of the batch's prompts, scored: {"successes": [...], "samples": M, "seconds": s}."""
    start = time.perf_counter()
    successes = correct_counts(generator, [g.problem for g in batch.groups], samples, sampling, seed)
    return {"successes": successes, "samples": samples, "seconds": time.perf_counter() - start}


def oracle_metrics(batch: Batch, oracle: dict, n0: int) -> tuple[dict[str, float], list[dict]]:
    """The step's means over prompts (`oracle/*`) and one record per prompt, from a batch whose
    advantages are set and the oracle's successes of its prompts."""
    m_samples = oracle["samples"]
    p_star = torch.tensor(oracle["successes"], dtype=torch.float64) / m_samples
    priors = {d["uid"]: d["prior"] for d in batch.decisions}
    records, errors = [], {"se_mean_n0": [], "se_rloo": [], "se_mean_spend": [], "se_v05": [], "se_prior": []}
    disagree, zero, signed = 0, 0, 0
    for g, p in zip(batch.groups, p_star.tolist()):
        c = torch.tensor([float(t.correct) for t in g.trajectories], dtype=torch.float64)
        first = c[:n0]
        record = {"uid": g.problem.uid, "p_star": p, "samples": m_samples, "n": len(c), "mean_n0": float(first.mean()),
                  "mean_spend": float(c.mean())}
        errors["se_mean_n0"].append((record["mean_n0"] - p) ** 2)
        if len(first) > 1:
            loo = (first.sum() - first) / (len(first) - 1)
            errors["se_rloo"].append(float(((loo - p) ** 2).mean()))
            record["se_rloo"] = errors["se_rloo"][-1]
        errors["se_mean_spend"].append((record["mean_spend"] - p) ** 2)
        if g.baseline is not None:
            errors["se_v05"].append((g.baseline - p) ** 2)
            record["baseline"] = g.baseline
        if g.problem.uid in priors:
            errors["se_prior"].append((priors[g.problem.uid] - p) ** 2)
            record["prior"] = priors[g.problem.uid]
        for t in g.trajectories:
            target = float(t.correct) - p
            zero += t.advantage == 0
            if target != 0:  # p* of 0 or 1: the oracle gives no sign to agree with
                signed += 1
                disagree += t.advantage == 0 or (t.advantage > 0) != (target > 0)
        records.append(record)
    rollouts = max(sum(len(g.trajectories) for g in batch.groups), 1)
    metrics = {f"oracle/{k}": sum(v) / len(v) for k, v in errors.items() if v}
    metrics.update({
        "oracle/p_star_mean": float(p_star.mean()),
        "oracle/p_star_var": float((p_star * (1 - p_star) / m_samples).mean()),
        "oracle/sign_disagree": disagree / max(signed, 1),
        "oracle/zero_advantage": zero / rollouts,
        "oracle/samples": float(m_samples),
        "time/oracle": oracle["seconds"],
    })
    return metrics, records


BASELINES = {"mean_n0": "group mean, first n0", "rloo": "RLOO leave-one-out (first n0)", "mean_spend": "group mean at the spend made",
             "v05": "V0.5 fused baseline", "prior": "value prior alone"}


def report(records: list[dict], reps: int = 2000, seed: int = 0) -> dict:
    """Each baseline's mean squared error against p* over the (step, prompt) records of
    oracle.jsonl, less the oracle's own noise p*(1 − p*)/M, with a 95 % bootstrap interval over
    records; and each one's ratio to the group mean of the first n0 (paired, same resamples)."""
    import numpy as np

    p = np.array([r["p_star"] for r in records])
    noise = p * (1 - p) / np.array([r["samples"] for r in records])
    se = {"mean_n0": (np.array([r["mean_n0"] for r in records]) - p) ** 2,
          "mean_spend": (np.array([r["mean_spend"] for r in records]) - p) ** 2}
    if all("se_rloo" in r for r in records):
        se["rloo"] = np.array([r["se_rloo"] for r in records])
    for key, field in (("v05", "baseline"), ("prior", "prior")):
        if records and all(field in r for r in records):
            se[key] = (np.array([r[field] for r in records]) - p) ** 2
    idx = np.random.default_rng(seed).integers(0, len(records), size=(reps, len(records)))
    out = {"records": len(records), "p_star_mean": float(p.mean()), "oracle_noise": float(noise.mean()), "baselines": {}}
    boot = {key: v[idx].mean(1) - noise[idx].mean(1) for key, v in se.items()}
    point = {key: float(v.mean() - noise.mean()) for key, v in se.items()}
    for key in se:
        row = {"what": BASELINES[key], "mse": point[key], "mse_ci95": [float(np.percentile(boot[key], 2.5)), float(np.percentile(boot[key], 97.5))]}
        for ref in ("mean_n0", "mean_spend"):  # paired: the same resamples for both
            ratio = boot[key] / np.where(boot[ref] > 0, boot[ref], np.nan)
            row[f"over_{ref}"] = point[key] / max(point[ref], 1e-12)
            defined = ratio[~np.isnan(ratio)]  # a reference below the oracle's noise has no ratio
            row[f"over_{ref}_ci95"] = [float(np.percentile(defined, 2.5)), float(np.percentile(defined, 97.5))] if len(defined) else None
        out["baselines"][key] = row
    return out
