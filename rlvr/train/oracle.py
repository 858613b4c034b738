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
  group, counts as a disagreement;
- HA-DW's claim, the estimator's bias by difficulty: Â − A* averaged over a prompt's correct and
  over its wrong rollouts, where Â is the run's estimator on correctness (the papers' 0/1 reward)
  and A* the same estimator with the true baseline and scale (`true_advantages`), for prompts with
  0 < p* < 1. With a weighting on, the same for Â times the rollout's weight over its constant
  gain (HA-DW's λ: under Adam a constant scale does not change the update). Logged per step by
  bucket of p*, hard (< 0.3) and easy (> 0.7): `oracle/adv_bias_{hard,easy}_{correct,wrong}[_weighted]`;
- the cosine between the step's policy gradient and the gradient with A* (`oracle/grad_cosine`,
  computed by the learners on the same batch before the update: `PolicyLearner.gradient_cosines`;
  with a weighting on, `oracle/grad_cosine_unweighted` for the same step's gradient before the
  weighting, so the two pair). Its time, `time/oracle_gradient`, is outside `time/step`.
Every squared error carries the same oracle noise, E = error² + p*(1 − p*)/M on average, so the
baselines compare fairly; `oracle/p_star_var` is that noise, to subtract for absolute figures.
"""

from __future__ import annotations

import time

import ray
import torch

from rlvr.algorithms import compute_advantages
from rlvr.learner.plan import plan_mini_batches
from rlvr.rollout.engines import SamplingConfig
from rlvr.runtime.sizing import ActivationBudget
from rlvr.train.evaluate import correct_counts
from rlvr.types import Batch, Trajectory

__all__ = ["gradient_cosine", "oracle_advantages", "oracle_metrics", "report", "sample_oracle", "true_advantages"]

# the difficulty buckets of the advantage bias, by p* (prompts with 0 < p* < 1 only)
HARD_BELOW, EASY_ABOVE = 0.3, 0.7


def sample_oracle(generator, batch: Batch, sampling: SamplingConfig, samples: int, seed: int) -> dict:
    """M seeded samples of each of the batch's prompts, scored: {"successes": [...], "samples": M, "seconds": s}."""
    start = time.perf_counter()
    successes = correct_counts(generator, [g.problem for g in batch.groups], samples, sampling, seed)
    return {"successes": successes, "samples": samples, "seconds": time.perf_counter() - start}


def success_rates(oracle: dict) -> torch.Tensor:
    """Each prompt's success rate under the oracle's samples, in float64."""
    return torch.tensor(oracle["successes"], dtype=torch.float64) / oracle["samples"]


def scales_by_std(estimator: str, estimator_kwargs: dict) -> bool:
    return estimator == "grpo" or bool(estimator_kwargs.get("scale_by_std", False))


def true_advantages(correct: torch.Tensor, p_star: torch.Tensor, scaled: bool) -> torch.Tensor:
    """A* per rollout: c − p*, divided by sqrt(p*(1 − p*)) for an estimator that divides by the
    group's std (GRPO, V0.5 with scale_by_std), ``p_star`` given per rollout. NaN where the
    estimator scales and p* is 0 or 1 (no finite true scale)."""
    adv = correct.double() - p_star.double()
    if scaled:
        var = p_star.double() * (1 - p_star.double())
        adv = torch.where(var > 0, adv / var.clamp(min=1e-12).sqrt(), torch.full_like(adv, float("nan")))
    return adv


def oracle_advantages(batch: Batch, estimator: str, estimator_kwargs: dict) -> list[float]:
    """A* of each of the batch's trajectories from its oracle's p* (0 where it has no finite value)."""
    a_star = true_advantages(batch.correctness(), success_rates(batch.oracle)[batch.group_ids()], scales_by_std(estimator, estimator_kwargs))
    return torch.nan_to_num(a_star, nan=0.0).tolist()


def advantage_bias(batch: Batch, p_star: torch.Tensor, estimator: str, estimator_kwargs: dict,
                   weight_gain: float) -> tuple[dict[str, float], list[dict]]:
    """Per prompt with 0 < p* < 1: the mean of Â − A* over its correct and over its wrong rollouts
    (and, with a weighting, of Â·w/gain − A*); and the step's rollout-weighted means by bucket."""
    c, gids = batch.correctness().double(), batch.group_ids()
    kwargs = dict(estimator_kwargs)
    if estimator == "v05":
        kwargs["baselines"] = batch.baselines().double()
    raw = compute_advantages(estimator, c, gids, **kwargs)
    a_star = true_advantages(c, p_star[gids], scales_by_std(estimator, estimator_kwargs))
    gap = {"": raw - a_star}
    if batch.advantage_weights is not None:
        gap["_weighted"] = raw * batch.advantage_weights.double() / weight_gain - a_star
    fields: list[dict] = []
    sums: dict[str, list[float]] = {}
    for g, p in enumerate(p_star.tolist()):
        in_group = gids == g
        if not 0 < p < 1 or not in_group.any():
            fields.append({})
            continue
        bucket = "hard" if p < HARD_BELOW else "easy" if p > EASY_ABOVE else None
        record = {}
        for cls, mask in (("correct", in_group & (c > 0)), ("wrong", in_group & (c == 0))):
            count = int(mask.sum())
            record[f"n_{cls}"] = count
            for suffix, values in gap.items():
                if count:
                    record[f"bias_{cls}{suffix}"] = float(values[mask].mean())
                    if bucket is not None:
                        acc = sums.setdefault(f"oracle/adv_bias_{bucket}_{cls}{suffix}", [0.0, 0.0])
                        acc[0] += float(values[mask].sum())
                        acc[1] += count
        fields.append(record)
    return {k: total / count for k, (total, count) in sums.items()}, fields


def oracle_metrics(batch: Batch, oracle: dict, n0: int, estimator: str = "grpo", estimator_kwargs: dict | None = None,
                   weight_gain: float = 1.0) -> tuple[dict[str, float], list[dict]]:
    """The step's means over prompts (`oracle/*`) and one record per prompt, from a batch whose
    advantages are set and the oracle's successes of its prompts; ``estimator`` (with its
    kwargs) and the weighting's constant ``weight_gain`` are the run's, for the advantage bias."""
    m_samples, rates = oracle["samples"], success_rates(oracle)
    bias_metrics, bias_fields = advantage_bias(batch, rates, estimator, estimator_kwargs or {}, weight_gain)
    priors = {d["uid"]: d["prior"] for d in batch.decisions}
    records, errors = [], {"se_mean_n0": [], "se_rloo": [], "se_mean_spend": [], "se_v05": [], "se_prior": []}
    disagree, zero, signed = 0, 0, 0
    for g, p in zip(batch.groups, rates.tolist()):
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
            zero += t.advantage == 0
            if 0 < p < 1:  # p* of 0 or 1: the oracle gives no sign to agree with (nor a scale)
                signed += 1
                disagree += t.advantage == 0 or (t.advantage > 0) != (t.correct > 0)
        records.append({**record, **bias_fields[len(records)]})
    rollouts = max(sum(len(g.trajectories) for g in batch.groups), 1)
    metrics = {f"oracle/{k}": sum(v) / len(v) for k, v in errors.items() if v}
    metrics.update({
        "oracle/p_star_mean": float(rates.mean()),
        "oracle/p_star_var": float((rates * (1 - rates) / m_samples).mean()),
        "oracle/sign_disagree": disagree / max(signed, 1),
        "oracle/zero_advantage": zero / rollouts,
        "oracle/samples": float(m_samples),
        "time/oracle": oracle["seconds"],
    })
    metrics.update(bias_metrics)
    return metrics, records


def gradient_cosine(batch: Batch, trajectories: list[Trajectory], learners: list, update, preset, version: int,
                    max_staleness: int, micro_batching: int | ActivationBudget, seed: int, timeout_s: float | None = None) -> dict:
    """The oracle's `oracle/grad_cosine`: the learners' gradient on ``trajectories`` (the batch as
    trained) against the gradient with the oracle's advantages A*, on the same micro-batches, before
    the update; with a weighting on, also `oracle/grad_cosine_unweighted`, the estimator's gradient
    before the weighting (the same step, so the two pair)."""
    start = time.perf_counter()
    keep = lambda advantages: batch.for_learners(version, max_staleness, preset.mask_truncated, advantages)[0]  # noqa: E731
    variants = {"oracle/grad_cosine": trajectories}
    if batch.unweighted_advantages is not None:
        variants["oracle/grad_cosine_unweighted"] = keep(batch.unweighted_advantages.tolist())
    oracle = keep(oracle_advantages(batch, preset.estimator, preset.estimator_kwargs()))
    plans = [plan_mini_batches(ts, 1, len(learners), micro_batching, seed=seed) for ts in [*variants.values(), oracle]]
    cosines = ray.get([l.gradient_cosines.remote([p[r] for p in plans], update) for r, l in enumerate(learners)], timeout=timeout_s)[0]
    return {**dict(zip(variants, cosines)), "time/oracle_gradient": time.perf_counter() - start}


BASELINES = {"mean_n0": "group mean, first n0", "rloo": "RLOO leave-one-out (first n0)", "mean_spend": "group mean at the spend made",
             "v05": "V0.5 fused baseline", "prior": "value prior alone"}


def report(records: list[dict], reps: int = 2000, seed: int = 0) -> dict:
    """Each baseline's mean squared error against p* over the (step, prompt) records of
    oracle.jsonl, less the oracle's own noise p̂*(1 − p̂*)/(M − 1), with a 95 % bootstrap interval over
    records; and each one's ratio to the group mean of the first n0 (paired, same resamples)."""
    import numpy as np

    p = np.array([r["p_star"] for r in records])
    # unbiased: E[p̂*(1 − p̂*)] = p(1 − p)(M − 1)/M, so /(M − 1) (with /M every MSE read high by p(1 − p)/M²)
    noise = p * (1 - p) / np.maximum(np.array([r["samples"] for r in records]) - 1, 1)
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
            row[f"over_{ref}"] = point[key] / point[ref] if point[ref] > 0 else None  # as its resamples: no ratio below the noise
            defined = ratio[~np.isnan(ratio)]  # a reference below the oracle's noise has no ratio
            row[f"over_{ref}_ci95"] = [float(np.percentile(defined, 2.5)), float(np.percentile(defined, 97.5))] if len(defined) else None
        out["baselines"][key] = row
    out["advantage_bias"] = bias_report(records, idx)
    return out


def bias_report(records: list[dict], idx) -> dict:
    """Mean Â − A* over the rollouts of each p* bucket (hard, easy) and side (correct, wrong), raw
    and with the weighting when the run had one, with 95 % bootstrap intervals over records (the
    resamples ``idx``). With both, ``reduction`` is |raw| − |weighted|, paired on the same
    resamples: above 0 where the weighting brings the bias closer to 0."""
    import numpy as np

    def interval(boot: np.ndarray) -> list[float]:
        boot = boot[~np.isnan(boot)]
        return [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]

    p = np.array([r["p_star"] for r in records])
    buckets = {"hard": (p > 0) & (p < HARD_BELOW), "easy": (p > EASY_ABOVE) & (p < 1)}
    out: dict = {}
    for bucket, in_bucket in buckets.items():
        for cls in ("correct", "wrong"):
            count = np.array([r.get(f"n_{cls}", 0) for r in records], dtype=float) * in_bucket
            boots, means = {}, {}
            for suffix, name in (("", "raw"), ("_weighted", "weighted")):
                key = f"bias_{cls}{suffix}"
                if not count.sum() or not any(key in r for r in records):
                    continue
                total = np.array([r.get(key, 0.0) for r in records]) * count  # a record's mean times its rollouts
                boots[name] = total[idx].sum(1) / np.where(count[idx].sum(1) > 0, count[idx].sum(1), np.nan)
                means[name] = float(total.sum() / count.sum())
                out.setdefault(bucket, {}).setdefault(cls, {})[name] = {
                    "mean": means[name], "ci95": interval(boots[name]), "rollouts": int(count.sum()),
                }
            if len(boots) == 2:
                out[bucket][cls]["reduction"] = {"mean": abs(means["raw"]) - abs(means["weighted"]),
                                                 "ci95": interval(np.abs(boots["raw"]) - np.abs(boots["weighted"]))}
    return out
