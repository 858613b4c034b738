"""`rlvr value-report RUN_DIR`: how good the value prior was, measured the way V0.5 uses it.

Each step's prompts are predicted *before* their rollouts, from the context as it stood: the
(prompt, p̂) pairs of all earlier steps, oldest dropped past ``value.context_size``. The run's
``decisions.jsonl`` gives every prompt's uid, k and n (and the prior the run really used); the
run's ``config.yaml`` rebuilds the prompt texts. Several predictors replay the same stream:

  logged        the prior the run used (as logged; no replay)
  context_mean  the mean p̂ of the context: the trivial prior every other must beat
  embedded      today's EmbeddedValueModel (kernel regression over MiniLM embeddings)
  ridge         EmbeddedValueModel with ``regressor=ridge``

Scores, over the prompts predicted with at least ``--min-context`` context items:
  brier         mean (prior − p̂)²
  auc           P(prior of a successful rollout > prior of a failed one), ties ½
  reliability   priors in 10 bins: mean prior, mean p̂ (rollout-weighted), prompts
  unc_spearman  rank correlation of the uncertainty with |prior − p̂| (is it informative?)

Writes RUN_DIR/value_report.json and RUN_DIR/value_report.png (a reliability plot and the
Brier per step) and prints the table.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

PREDICTORS = ("logged", "context_mean", "embedded", "ridge")
RELIABILITY_BINS = 10


@dataclass
class Prediction:
    step: int
    context: int  # context items the prediction saw
    prior: float
    uncertainty: float
    k: int
    n: int


class ContextMean:
    """The trivial prior: the mean p̂ of the context (0.5 when empty), its sd as uncertainty."""

    def __init__(self, context_size: int):
        self.size, self.success = context_size, []

    def predict(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.tensor(self.success or [0.5], dtype=torch.float64)
        m = float(y.mean())
        sd = float(y.std(correction=0)) if len(self.success) > 1 else 0.5
        return torch.full((len(prompts),), m), torch.full((len(prompts),), max(sd, 1e-3))

    def add_context(self, prompts: list[str], success: list[float]) -> None:
        self.success = (self.success + list(success))[-self.size :]


def read_steps(run_dir: Path) -> "OrderedDict[int, list[dict]]":
    from rlvr.analysis.plots import load_decisions

    steps = load_decisions(run_dir)
    if not steps:
        raise ValueError(f"{Path(run_dir) / 'decisions.jsonl'} holds no decisions")
    warmup = Path(run_dir) / "warmup.jsonl"  # V0.5's warm-up pairs: the context before step 1
    if warmup.exists():
        rows = [json.loads(line) for line in warmup.read_text().splitlines() if line.strip()]
        return OrderedDict([(0, rows), *((s, r) for s, r in steps.items() if s != 0)])
    return OrderedDict(steps)


def question_texts(run_dir: Path) -> dict[str, str]:
    """uid -> question, rebuilt from the run's own data config."""
    from omegaconf import OmegaConf

    from rlvr.data import load_problems

    cfg = OmegaConf.load(run_dir / "config.yaml")
    return {p.uid: p.question for p in load_problems(OmegaConf.to_container(cfg.data.train, resolve=True))}


def replay(steps: "OrderedDict[int, list[dict]]", texts: dict[str, str], model) -> list[Prediction]:
    """Predict each step from the context of the steps before it, then add the step."""
    out, context = [], 0
    for step, rows in steps.items():
        missing = [r["uid"] for r in rows if r["uid"] not in texts]
        if missing:
            raise KeyError(f"step {step}: uids {missing[:3]} are not in the run's data (was data.* changed?)")
        prompts = [texts[r["uid"]] for r in rows]
        if not _warmup(rows):  # V0.5's warm-up pairs fill the context before step 1; they are not predicted
            prior, unc = model.predict(prompts)
            for r, p, u in zip(rows, prior.tolist(), unc.tolist()):
                out.append(Prediction(step, context, p, u, int(r["k"]), int(r["n"])))
        model.add_context(prompts, [r["k"] / r["n"] for r in rows])
        context = min(context + len(rows), getattr(model, "size", None) or model.context_size)
    return out


def logged(steps: "OrderedDict[int, list[dict]]", context_size: int) -> list[Prediction]:
    out, context = [], 0
    for step, rows in steps.items():
        if not _warmup(rows):
            out += [Prediction(step, context, r["prior"], r.get("uncertainty", float("nan")), r["k"], r["n"]) for r in rows]
        context = min(context + len(rows), context_size)
    return out


def _warmup(rows: list[dict]) -> bool:
    return bool(rows) and all(r.get("decision") == "warmup" for r in rows)


def auc(prior: np.ndarray, k: np.ndarray, n: np.ndarray) -> float:
    """Rollout-level AUC of the prior: successes are positives, failures negatives, ties ½."""
    pos, neg = k.astype(float), (n - k).astype(float)
    if pos.sum() == 0 or neg.sum() == 0:
        return float("nan")
    greater = (prior[:, None] > prior[None, :]).astype(float)
    ties = (prior[:, None] == prior[None, :]).astype(float)
    return float(pos @ (greater + 0.5 * ties) @ neg / (pos.sum() * neg.sum()))


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(_average_ranks(x), _average_ranks(y))[0, 1])


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties given their mean rank (Spearman's): plain argsort ranks split tied priors (V0.5's
    clamped ones, the 0.5 stand-in) in arbitrary order (0.188 where the tie-aware figure is 0.212)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    return (starts + (counts - 1) / 2)[inverse]


def score(preds: list[Prediction], min_context: int) -> dict:
    sel = [p for p in preds if p.context >= min_context]
    if not sel:
        return {"prompts": 0}
    prior = np.array([p.prior for p in sel])
    k, n = np.array([p.k for p in sel]), np.array([p.n for p in sel])
    p_hat = k / n
    unc = np.array([p.uncertainty for p in sel])
    edges = np.linspace(0, 1, RELIABILITY_BINS + 1)
    bins = np.clip(np.digitize(prior, edges) - 1, 0, RELIABILITY_BINS - 1)
    table = [
        {
            "bin": [float(edges[b]), float(edges[b + 1])],
            "prompts": int((bins == b).sum()),
            "mean_prior": float(prior[bins == b].mean()),
            "mean_p_hat": float(k[bins == b].sum() / n[bins == b].sum()),
        }
        for b in range(RELIABILITY_BINS)
        if (bins == b).any()
    ]
    per_step = {}
    for p in sel:
        per_step.setdefault(p.step, []).append((p.prior - p.k / p.n) ** 2)
    return {
        "prompts": len(sel),
        "brier": float(((prior - p_hat) ** 2).mean()),
        "auc": auc(prior, k, n),
        "corr": float(np.corrcoef(prior, p_hat)[0, 1]) if np.ptp(prior) > 0 and np.ptp(p_hat) > 0 else float("nan"),
        "p_hat_var": float(p_hat.var()),
        "unc_spearman": _spearman(unc, np.abs(prior - p_hat)) if np.isfinite(unc).all() else float("nan"),
        "reliability": table,
        "brier_per_step": {s: float(np.mean(v)) for s, v in per_step.items()},
    }


def make_predictor(name: str, context_size: int, encoder_path: str | None = None):
    from rlvr.value import EmbeddedValueModel

    if name == "context_mean":
        return ContextMean(context_size)
    if name == "embedded":
        return EmbeddedValueModel(context_size=context_size, encoder_path=encoder_path, regressor="kernel")
    if name == "ridge":
        return EmbeddedValueModel(context_size=context_size, encoder_path=encoder_path, regressor="ridge")
    raise ValueError(f"unknown predictor {name!r}; known: {', '.join(PREDICTORS)}")


def value_report(run_dir: Path, min_context: int = 64, predictors: tuple[str, ...] = PREDICTORS) -> dict:
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir / 'config.yaml'} not found: is {run_dir} an rlvr run directory?")
    try:
        config = OmegaConf.load(run_dir / "config.yaml")
    except Exception as e:  # noqa: BLE001 - a YAML error of any kind (the file cut short): printed, not a traceback
        raise ValueError(f"{run_dir / 'config.yaml'} does not load: {e}") from None
    steps = read_steps(run_dir)
    context_size = int(OmegaConf.select(config, "value.context_size", default=256))
    texts = question_texts(run_dir) if any(p != "logged" for p in predictors) else {}
    results = {}
    for name in predictors:
        preds = logged(steps, context_size) if name == "logged" else replay(steps, texts, make_predictor(name, context_size))
        results[name] = score(preds, min_context)
    base = results.get("context_mean", {}).get("brier")
    for r in results.values():
        if base and "brier" in r:
            r["brier_over_context_mean"] = r["brier"] / base
    report = {"run_dir": str(run_dir), "min_context": min_context, "steps": len(steps), "predictors": results}
    (run_dir / "value_report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_report(report, run_dir / "value_report.png")
    return report


def format_table(report: dict) -> str:
    lines = [
        f"value prior of {report['run_dir']}: prompts predicted with >= {report['min_context']} context items",
        f"{'predictor':<14}{'prompts':>8}{'brier':>8}{'÷ mean':>8}{'auc':>7}{'corr':>7}{'unc ρ':>7}",
    ]
    for name, r in report["predictors"].items():
        if not r.get("prompts"):
            lines.append(f"{name:<14}{0:>8}  (no prompt had enough context)")
            continue
        lines.append(
            f"{name:<14}{r['prompts']:>8}{r['brier']:>8.4f}{r.get('brier_over_context_mean', math.nan):>8.2f}"
            f"{r['auc']:>7.3f}{r['corr']:>7.3f}{r['unc_spearman']:>7.3f}"
        )
    return "\n".join(lines)


def plot_report(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rel, ax_step) = plt.subplots(1, 2, figsize=(10, 4))
    ax_rel.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    for name, r in report["predictors"].items():
        if not r.get("prompts"):
            continue
        table = r["reliability"]
        ax_rel.plot([b["mean_prior"] for b in table], [b["mean_p_hat"] for b in table], marker="o", label=name)
        steps = sorted(r["brier_per_step"], key=int)
        ax_step.plot([int(s) for s in steps], [r["brier_per_step"][s] for s in steps], marker=".", label=name)
    ax_rel.set_xlabel("prior (bin mean)")
    ax_rel.set_ylabel("observed p̂ (rollout-weighted)")
    ax_rel.set_title("reliability")
    ax_step.set_xlabel("step")
    ax_step.set_ylabel("Brier vs p̂")
    ax_step.set_title("prior error per step")
    ax_rel.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
