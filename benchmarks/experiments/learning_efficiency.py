"""Learning efficiency on the real model: configs × seeds of real training runs, with bootstrap CIs.

Each (config, seed) is one training run in its own directory under ``--out``, in this process on
the previous run's actors (`cluster.keep_roles`: each run resets them instead of starting its own,
as `benchmarks/experiments/lr_search.py` does); a rerun skips finished runs and resumes interrupted ones (the
trainer's own resume). Each run's log is ``runs/<config>-s<seed>.log``. Held-out results come from
each run's ``eval.jsonl`` (one record per held-out prompt and eval point), so intervals resample
both seeds and prompts (paired: every run sees the same held-out prompts).

Budget (the default, sized for one 2-core box; see docs/benchmarks.md for the wall time):
  SmolLM2-135M on data=mix (the default job's data), 8 prompts × n = 4 a step, ``--steps`` 12, rollout.max_tokens 64,
  greedy held-out accuracy on 256 prompts every 4 steps (and at step 0), sampled pass@k
  (k = 1, 2, 4, 8; 8 samples at T = 0.7) on the same 256 prompts at step 0 and at the last step
  only, because at this size held-out evaluation costs more than training.

Questions, each printed as a measured ratio or difference with its 95% interval:
  1. rollouts V0.5 needs to reach GRPO's final held-out accuracy ÷ GRPO's rollouts (target ≤ 0.8);
  2. focal against none: Δ pass@8 and Δ pass@1 at the last step (grpo+focal − grpo, v05+focal − v05);
  3. HA-DW against GRPO: Δ final held-out accuracy, for the window anchor (the default) and the
     published ema anchor, and ema − window.
Hyper-parameters are the presets' (the papers'); nothing is tuned on the held-out prompts.

The long grid (issue "Evidence that decides", part 2; ``--long``): the configs below at 40 steps,
held-out accuracy every 10, 3 seeds, bf16 learner, with the oracle (``eval.oracle.samples=32`` every
5 steps) on grpo, grpo-n6 and both V0.5 runs; into ``benchmarks/results/learning_efficiency_long``.
About 27 runs of 15-20 minutes on a quiet 2-core box (about 8 hours), run in parts: a rerun skips
finished runs and resumes an interrupted one. The report adds held-out accuracy per task family
(question 4) and the oracle's baseline errors pooled over each config's seeds (question 5).

The GPU grid (``--gpu MODEL_DIR``): the long grid's configs and oracle on a larger model, on one
node of 8 GPUs (``cluster=single_node_gpu``: 4 ZeRO-2 learners, 4 vLLM engines), 100 steps of 32
prompts, answers up to 512 tokens, bf16 throughout, into ``benchmarks/results/learning_efficiency_gpu``.
Any local Hugging Face folder (``model=local``), e.g. Qwen2.5-1.5B-Instruct; ``--data`` picks harder
data where the model saturates ``mix``. Other cluster shapes: ``cluster.*=`` overrides after the flags.

Usage:
  python -m benchmarks.experiments.learning_efficiency [--configs grpo v05 ...] [--seeds 0 1 2] [--out DIR]
  python -m benchmarks.experiments.learning_efficiency --long [--seeds 0]    # the long grid, a seed at a time
  python -m benchmarks.experiments.learning_efficiency --gpu /models/Qwen2.5-1.5B-Instruct   # the same grid on a GPU node
  python -m benchmarks.experiments.learning_efficiency --report-only       # re-read finished runs
  python -m benchmarks.experiments.learning_efficiency --quick             # tiny model, one step: the test
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rlvr.algorithms import pass_at_k
from rlvr.analysis.plots import load_metrics
from rlvr.config import compose
from rlvr.runtime.roles import release_kept_roles
from rlvr.train.loop import train
from rlvr.train.state import RunStopped

# In the order a seed's runs are made: the pairs the three questions compare come first.
GRID = {
    "grpo": ["algorithm=grpo", "weighting=none"],
    "v05": ["algorithm=v05", "weighting=none"],
    "grpo+hadw": ["algorithm=grpo", "weighting=hadw"],
    "grpo+focal": ["algorithm=grpo", "weighting=focal"],
    "dapo": ["algorithm=dapo", "weighting=none"],
    "cispo": ["algorithm=cispo", "weighting=none"],
    "v05+focal": ["algorithm=v05", "weighting=focal"],
    # HA-DW's published anchor (issue 12 §3), against the window anchor of "grpo+hadw"; same λ.
    "grpo+hadw-ema": ["algorithm=grpo", "weighting=hadw", "weighting.anchor=ema"],
    # V0.5 differing from GRPO in its baseline only: GRPO's aggregation, and A / sqrt(b(1-b)) for A / std
    "v05@grpo-agg": ["algorithm=v05", "weighting=none", "algorithm.agg=seq-mean-token-mean", "algorithm.scale_by_std=true"],
    # GRPO at V0.5's average spend: n0 = 4 plus its budget of 1.5x the base rollouts
    "grpo-n6": ["algorithm=grpo", "weighting=none", "algorithm.n=6"],
}
# --long: the grid of issue 28 part 2 (v05@grpo-agg is "V0.5 with GRPO's aggregation" there)
LONG = {"configs": ["grpo", "grpo-n6", "v05@grpo-agg", "v05", "v05+focal", "grpo+focal", "grpo+hadw", "dapo", "cispo"],
        "steps": 40, "eval_every": 10, "out": Path("benchmarks/results/learning_efficiency_long")}
SHORT = {"configs": [c for c in GRID if c != "grpo-n6"], "steps": 12, "eval_every": 4, "out": Path("benchmarks/results/learning_efficiency")}
# --gpu: the long grid's configs on a larger model and a bigger batch, on one 8-GPU node
GPU = {**LONG, "steps": 100, "eval_every": 20, "batch_size": 32, "max_tokens": 512, "out": Path("benchmarks/results/learning_efficiency_gpu")}
# the oracle (rlvr/train/oracle.py) measures the baselines these runs use, and on grpo+hadw the advantage bias
# with and without HA-DW's weights; never trained on, not counted as spend (seed 0 of grpo+hadw ran without it)
ORACLE = {"grpo", "grpo-n6", "v05", "v05@grpo-agg", "grpo+hadw"}
# question 4: differences by task family, where HA-DW and focal claim effects that depend on difficulty
FAMILY_PAIRS = (("v05", "grpo"), ("grpo-n6", "grpo"), ("v05", "grpo-n6"), ("v05@grpo-agg", "grpo-n6"),
                ("grpo+hadw", "grpo"), ("grpo+focal", "grpo"), ("v05+focal", "v05"))
PASS_KS = (1, 2, 4, 8)
# Sampled pass@k costs 8 generations per held-out prompt; only question 2 reads it.
SAMPLED = {"grpo", "v05", "grpo+focal", "v05+focal"}
KEEP = ("config.yaml", "summary.json", "metrics.jsonl", "eval.jsonl", "decisions.jsonl", "warmup.jsonl", "oracle.jsonl")  # what a finished run keeps


KEPT = ["cluster.keep_roles=true"]  # each run resets the previous run's actors instead of starting its own


def budget(args, config: str = "grpo") -> list[str]:
    """The overrides every run of ``config`` gets (pass@k sampling only where a question reads it)."""
    n_samples = (2 if args.quick else max(PASS_KS)) if config in SAMPLED else 1
    if args.quick:
        return KEPT + [
            "model=tiny-random", "trainer.steps=1", "trainer.batch_size=2", "trainer.eval_every=1",
            "data.train.size=8", "eval.size=4", "rollout.max_tokens=8", f"eval.n_samples={n_samples}",
            "eval.pass_at_k_every=1", "trainer.save_every=0", "trainer.progress=false",
        ] + (["algorithm.warmup_prompts=2"] if config.startswith("v05") else []) + (
            ["eval.oracle.samples=2", "eval.oracle.every=1"] if config in ORACLE else [])
    overrides = KEPT + [
        f"trainer.steps={args.steps}", f"trainer.batch_size={args.batch_size}", f"trainer.eval_every={args.eval_every}",
        f"eval.size={args.eval_prompts}", f"rollout.max_tokens={args.max_tokens}",
        f"eval.n_samples={n_samples}", f"eval.pass_at_k_every={args.steps}", f"trainer.save_every={5 if args.long else 4}",
        "trainer.progress=false", f"data={args.data}",
    ]
    # the oracle on the runs whose baselines it measures
    oracle = ["eval.oracle.samples=32", f"eval.oracle.every={max(1, args.eval_every // 2)}"] if config in ORACLE else []
    if args.gpu:  # bf16 weights, learner and engine (model=local's defaults); the CPU grids' settings below do not apply
        return overrides + ["cluster=single_node_gpu", "model=local", f"model.path={args.gpu}"] + oracle
    overrides.append("model.rollout_dtype=float32")  # both CPU grids' records were sampled by a float32 engine, before bfloat16 became smollm2's default
    if args.long:  # the bf16 learner (smollm2's default)
        return overrides + oracle
    return overrides + ["model.train_dtype=float32"]  # the grid began before bf16 became smollm2's default: every run the same


def run_dir(args, config: str, seed: int) -> Path:
    return args.out / "runs" / f"{config.replace('+', '-')}-s{seed}"


def finished(d: Path, steps: int) -> bool:
    try:
        return json.loads((d / "summary.json").read_text())["steps"] >= steps
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return False


def step0_run(args) -> Path | None:
    """The run that evaluated the untrained model, if any: it is the same model in every run, so
    any seed's will do (a grid continued with ``--seeds 1`` reuses seed 0's)."""
    for d in sorted((args.out / "runs").glob("*-s*")):
        if d.is_dir() and (d / "eval.jsonl").exists() and 0 in read_evals(d):
            return d
    return None


def grid_steps(args) -> int:
    """The steps each of the grid's runs trains (``--quick``: one)."""
    return 1 if args.quick else args.steps


def run_grid(args) -> None:
    """Seed-major, so an interrupted grid has every config at the first seeds. The grid's first run
    evaluates step 0; the others skip it (``eval.at_start=false``) and the report shares it."""
    steps = grid_steps(args)
    todo = [(c, s) for s in args.seeds for c in args.configs]
    start = time.perf_counter()
    rlvr_log = logging.getLogger("rlvr")
    if rlvr_log.level == logging.NOTSET:
        rlvr_log.setLevel(logging.INFO)  # each run's log file gets its progress lines
    try:
        for i, (config, seed) in enumerate(todo, 1):
            one_run(args, config, seed, f"[{i}/{len(todo)}]", steps, start)
    finally:
        release_kept_roles()  # the last run's actors: nothing runs on them after the grid


def one_run(args, config: str, seed: int, tag: str, steps: int, start: float) -> None:
    """Train ``config`` at ``seed`` unless it finished before; keep its records, drop its checkpoints."""
    d = run_dir(args, config, seed)
    if finished(d, steps):
        print(f"{tag} {config} seed {seed}: done already, skipped", file=sys.stderr)
        return
    if d.exists() and not (d / "checkpoints").exists():
        shutil.rmtree(d)  # records of a run that left no checkpoint: it restarts from step 0, so they go
    d.parent.mkdir(parents=True, exist_ok=True)
    shared = step0_run(args)
    at_start = [] if shared in (None, d) else ["eval.at_start=false"]
    overrides = [*GRID[config], *budget(args, config), *at_start, f"seed={seed}", f"run_dir={d}", *args.extra]
    t0 = time.perf_counter()
    log = logging.FileHandler(d.parent / f"{d.name}.log")
    log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("rlvr").addHandler(log)
    try:
        train(compose(overrides))
    except RunStopped as stop:  # SIGTERM, Ctrl-C: keep its checkpoint, stop the grid
        raise SystemExit(f"{config} seed {seed}: {stop}") from stop
    except Exception as err:
        raise SystemExit(f"{config} seed {seed} failed ({err!r}); see {d.parent / (d.name + '.log')}") from err
    finally:
        logging.getLogger("rlvr").removeHandler(log)
        log.close()
    for extra in d.iterdir():  # a finished run needs no checkpoints (GBs each); its records stay
        if extra.name not in KEEP:
            shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
    print(f"{tag} {config} seed {seed}: {time.perf_counter() - t0:.0f} s (total {time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)


# -- report ---------------------------------------------------------------------------------


def read_evals(d: Path) -> dict[int, dict[str, dict]]:
    """eval.jsonl as {step: {uid: record}}."""
    evals: dict[int, dict[str, dict]] = {}
    for line in (d / "eval.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            evals.setdefault(int(r["step"]), {})[r["uid"]] = r
    return evals


def load_run(d: Path, step0: dict[str, dict] | None = None) -> dict:
    """Per eval step: greedy correct [P] and sampled successes [P] (when sampled), in uid order; and
    cumulative rollouts at each step. ``step0`` fills in the shared untrained-model evaluation."""
    evals = read_evals(d)
    if 0 not in evals and step0 is not None:
        evals[0] = step0
    cum, total = {0: 0.0}, 0.0
    for m in load_metrics(d):  # one record per step: a resumed run logs the steps it trains again
        # V0.5's warm start (step 0) is spend too: it counts from the start of the curve
        total += m.get("rollouts", 0) if m["step"] > 0 else m.get("warmup/rollouts", 0)
        cum[m["step"]] = total
    return {"evals": evals, "rollouts": cum, "dir": d.name}


def matrices(runs: list[dict], step: int, uids: list[str]):
    """greedy [S, P] and (successes, samples) [S, P] for one step, or None where absent."""
    greedy = np.array([[r["evals"][step][u]["greedy"] for u in uids] for r in runs], dtype=float)
    if all("successes" in r["evals"][step][uids[0]] for r in runs):
        succ = np.array([[r["evals"][step][u]["successes"] for u in uids] for r in runs], dtype=float)
        n = int(runs[0]["evals"][step][uids[0]]["samples"])
        return greedy, succ, n
    return greedy, None, None


def pass_table(succ: np.ndarray, n: int) -> dict[int, np.ndarray]:
    """Unbiased pass@k per (seed, prompt)."""
    ks = [k for k in PASS_KS if k <= n]
    return {k: pass_at_k(n, torch.as_tensor(succ), k).numpy() for k in ks}


def bootstrap(stat, shapes: dict[str, int], prompts: int, reps: int, key: str) -> np.ndarray:
    """``stat(seed_idx: dict[config, idx], prompt_idx)`` over ``reps`` joint resamples of the seeds of
    the configs in ``shapes`` (config -> seeds) and of the prompts. The generator is seeded by ``key``,
    so a statistic's interval does not move when other configs join the report."""
    rng = np.random.default_rng(list(key.encode()))
    out = []
    for _ in range(reps):
        p_idx = rng.integers(0, prompts, prompts)
        s_idx = {c: rng.integers(0, s, s) for c, s in shapes.items()}
        out.append(stat(s_idx, p_idx))
    return np.array(out, dtype=float)


def interval(samples: np.ndarray) -> list[float]:
    finite = samples[~np.isnan(samples)]
    if len(finite) < 0.5 * len(samples):
        return [float("nan"), float("nan")]
    with np.errstate(invalid="ignore"):  # inf - inf where "never reached" fills the tail
        bounds = np.percentile(finite, [2.5, 97.5])
    return [float("inf") if np.isnan(b) else float(b) for b in bounds]  # nan here comes only from inf: unbounded


def crossing(xs: np.ndarray, ys: np.ndarray, target: float) -> float:
    """First x where the piecewise-linear curve (xs, ys) reaches target; inf if never."""
    for i in range(len(xs)):
        if ys[i] >= target:
            if i == 0:
                return float(xs[0])
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            return float(x0 + (target - y0) / (y1 - y0) * (x1 - x0)) if y1 > y0 else float(x1)
    return float("inf")


def report(args) -> dict:
    runs = {}
    shared = step0_run(args)
    step0 = read_evals(shared)[0] if shared is not None else None
    for config in GRID:  # every config with runs, not only those this call ran: the report is the grid's
        started = [run_dir(args, config, s) for s in args.seeds if (run_dir(args, config, s) / "eval.jsonl").exists()]
        # finished runs only: an interrupted one (its eval.jsonl is written at start) cut the shared
        # steps, and "final" became step 0, where every difference is 0 with interval [0, 0]
        dirs = [d for d in started if finished(d, grid_steps(args))]
        for d in sorted(set(started) - set(dirs)):
            print(f"report: leaving out {d.name}, which has not reached step {grid_steps(args)}", file=sys.stderr)
        if dirs:
            runs[config] = [load_run(d, step0) for d in dirs]
    if not runs:
        raise SystemExit(f"no finished runs under {args.out / 'runs'}")
    any_run = next(iter(runs.values()))[0]
    steps = sorted(s for s in any_run["evals"] if all(s in r["evals"] for rs in runs.values() for r in rs))
    uids = sorted(any_run["evals"][steps[0]])
    last = steps[-1]
    if last != grid_steps(args):
        raise SystemExit(f"the runs share evaluations up to step {last}, not the grid's last step {grid_steps(args)}: "
                         "their eval_every differs, or a run's eval.jsonl is cut")
    for r in (r for rs in runs.values() for r in rs):
        for s in steps:
            missing = set(uids) - set(r["evals"][s])
            if missing:  # a bare KeyError before
                raise SystemExit(f"{r['dir']} evaluated other prompts at step {s} than {any_run['dir']} ({len(missing)} missing, "
                                 f"e.g. {sorted(missing)[0]}): the grid's runs must share their held-out set")
    shapes = {c: len(rs) for c, rs in runs.items()}
    reps = args.bootstrap

    curves = {}
    for config, rs in runs.items():
        greedy = np.stack([matrices(rs, s, uids)[0] for s in steps])  # [T, S, P]
        roll = np.array([[r["rollouts"].get(s, np.nan) for r in rs] for s in steps])  # [T, S]
        boot = bootstrap(
            lambda si, pi: greedy[:, si[config]][:, :, pi].mean((1, 2)), {config: shapes[config]}, len(uids), reps, config
        )
        curves[config] = {
            "steps": steps,
            "rollouts": roll.mean(1).tolist(),
            "accuracy": greedy.mean((1, 2)).tolist(),
            "accuracy_ci": [interval(boot[:, t]) for t in range(len(steps))],
            "seeds": len(rs),
        }
        _, succ, n = matrices(rs, last, uids)
        if succ is not None:
            table = pass_table(succ, n)
            curves[config]["pass_at_k_last"] = {k: float(v.mean()) for k, v in table.items()}
            curves[config]["_pass"] = table
        curves[config]["_greedy"], curves[config]["_roll"] = greedy, roll

    answers = {}
    if "grpo" in runs and "v05" in runs:
        g, v = curves["grpo"], curves["v05"]

        def ratio(si, pi):
            acc_g = g["_greedy"][:, si["grpo"]][:, :, pi].mean((1, 2))
            acc_v = v["_greedy"][:, si["v05"]][:, :, pi].mean((1, 2))
            roll_g, roll_v = g["_roll"][:, si["grpo"]].mean(1), v["_roll"][:, si["v05"]].mean(1)
            target = acc_g[-1]
            grpo_needs = crossing(roll_g, acc_g, target)
            if not grpo_needs > 0:  # GRPO's final accuracy was there before any training: no ratio
                return float("nan")
            return crossing(roll_v, acc_v, target) / grpo_needs

        point = ratio({"grpo": np.arange(shapes["grpo"]), "v05": np.arange(shapes["v05"])}, np.arange(len(uids)))
        boot = bootstrap(ratio, {c: shapes[c] for c in ("grpo", "v05")}, len(uids), reps, "1")
        answers["1_v05_rollouts_to_grpo_final"] = {
            "question": "rollouts V0.5 needs to reach GRPO's final held-out accuracy / GRPO's rollouts (target <= 0.8)",
            "ratio": point, "ci95": interval(boot), "never_reached_frac": float(np.isinf(boot).mean()),
        }
    for base, focal in (("grpo", "grpo+focal"), ("v05", "v05+focal")):
        if base in curves and focal in curves and "_pass" in curves[base] and "_pass" in curves[focal]:
            out = {}
            for k in (1, max(k for k in curves[base]["_pass"])):
                a, b = curves[focal]["_pass"][k], curves[base]["_pass"][k]
                diff = lambda si, pi, a=a, b=b: a[si[focal]][:, pi].mean() - b[si[base]][:, pi].mean()  # noqa: E731
                boot = bootstrap(diff, {c: shapes[c] for c in (base, focal)}, len(uids), reps, f"2 {focal} {k}")
                out[f"delta_pass@{k}"] = {"diff": float(a.mean() - b.mean()), "ci95": interval(boot)}
            answers[f"2_{focal}_vs_{base}"] = {"question": f"{focal} - {base} at the last step", **out}
    for key, treated, base in (
        ("3_hadw_vs_grpo", "grpo+hadw", "grpo"),
        ("3_hadw_ema_vs_grpo", "grpo+hadw-ema", "grpo"),
        ("3_hadw_ema_vs_window", "grpo+hadw-ema", "grpo+hadw"),
    ):
        if treated in curves and base in curves:
            a, b = curves[treated]["_greedy"][-1], curves[base]["_greedy"][-1]
            diff = lambda si, pi, a=a, b=b, t=treated, c=base: a[si[t]][:, pi].mean() - b[si[c]][:, pi].mean()  # noqa: E731
            answers[key] = {
                "question": f"{treated} - {base}, final held-out accuracy",
                "diff": float(a.mean() - b.mean()),
                "ci95": interval(bootstrap(diff, {c: shapes[c] for c in (treated, base)}, len(uids), reps, key)),
            }
    families = by_family(curves, runs, last, uids, shapes, reps)
    if families:
        answers["4_by_family"] = families
    oracle = oracle_errors(args, runs)
    if oracle:
        answers["5_oracle_baseline_mse"] = oracle
    for c in curves.values():
        for key in ("_greedy", "_roll", "_pass"):
            c.pop(key, None)
    result = {
        "benchmark": "learning_efficiency",
        "budget": budget(args),
        "step0_from": str(shared) if shared is not None else None,
        "seeds": args.seeds,
        "held_out_prompts": len(uids),
        "curves": curves,
        "answers": answers,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning_efficiency.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "learning_efficiency.png")
    return result


def by_family(curves: dict, runs: dict, last: int, uids: list[str], shapes: dict, reps: int) -> dict:
    """Final held-out accuracy per task family for each config, and each pair of FAMILY_PAIRS' difference
    per family, with 95 % intervals over seeds and the family's prompts (an eval record without a
    family, from before the field existed, gives no figures)."""
    record = next(iter(runs.values()))[0]["evals"][last]
    if not all("family" in record[u] for u in uids):
        return {}
    members: dict[str, list[int]] = {}
    for i, u in enumerate(uids):
        members.setdefault(record[u]["family"], []).append(i)
    groups = {f: np.array(ix) for f, ix in sorted(members.items())}
    out: dict = {"accuracy": {}, "differences": {}}
    for config, c in curves.items():
        final = c["_greedy"][-1]  # [S, P]
        row = {}
        for fam, ix in groups.items():
            sub = final[:, ix]
            boot = bootstrap(lambda si, pi, sub=sub, config=config: sub[si[config]][:, pi].mean(), {config: shapes[config]},
                             len(ix), reps, f"4 {config} {fam}")
            row[fam] = {"accuracy": float(sub.mean()), "ci95": interval(boot), "prompts": len(ix)}
        out["accuracy"][config] = row
    for treated, base in FAMILY_PAIRS:
        if treated in curves and base in curves:
            a, b = curves[treated]["_greedy"][-1], curves[base]["_greedy"][-1]
            row = {}
            for fam, ix in groups.items():
                sa, sb = a[:, ix], b[:, ix]
                diff = lambda si, pi, sa=sa, sb=sb, t=treated, c=base: sa[si[t]][:, pi].mean() - sb[si[c]][:, pi].mean()  # noqa: E731
                boot = bootstrap(diff, {k: shapes[k] for k in (treated, base)}, len(ix), reps, f"4 {treated} {base} {fam}")
                row[fam] = {"diff": float(sa.mean() - sb.mean()), "ci95": interval(boot)}
            out["differences"][f"{treated} - {base}"] = row
    return out


def oracle_errors(args, runs: dict) -> dict:
    """Each baseline's squared error against the oracle's p* and the advantage bias
    (`rlvr.train.oracle.report`), and the gradient's cosine with the oracle's
    (`oracle_report.cosine_summary`), pooled over a config's seeds, for the configs whose runs
    logged oracle records."""
    from benchmarks.experiments.oracle_report import cosine_summary
    from rlvr.train.oracle import report as oracle_report

    out = {}
    for config in runs:
        records, dirs = [], []
        for s in args.seeds:
            path = run_dir(args, config, s) / "oracle.jsonl"
            if path.is_file():
                records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                dirs.append(path.parent)
        if records:
            out[config] = {**oracle_report(records, reps=args.bootstrap), "grad_cosine": cosine_summary(dirs, reps=args.bootstrap)}
    return out


def plot(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.5), layout="constrained")
    ax_step, ax_roll, ax_pass = fig.subplots(1, 3)
    for i, (config, c) in enumerate(result["curves"].items()):
        lo, hi = zip(*c["accuracy_ci"])
        for ax, x in ((ax_step, c["steps"]), (ax_roll, c["rollouts"])):
            ax.plot(x, c["accuracy"], marker="o", color=f"C{i}", label=f"{config} ({c['seeds']} seeds)")
            ax.fill_between(x, lo, hi, color=f"C{i}", alpha=0.15)
        if "pass_at_k_last" in c:
            ks = sorted(int(k) for k in c["pass_at_k_last"])
            ax_pass.plot(ks, [c["pass_at_k_last"][k] for k in ks], marker="o", color=f"C{i}", label=config)
    ax_step.set(title="held-out greedy accuracy (95% CI: seeds × prompts)", xlabel="step", ylabel="accuracy")
    ax_roll.set(title="against rollouts spent", xlabel="cumulative rollouts (mean over seeds)", ylabel="accuracy")
    ax_pass.set(title="sampled pass@k at the last step", xlabel="k", ylabel="pass@k")
    for ax in (ax_step, ax_roll, ax_pass):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(GRID),
                        help="the configs to run (default: the grid's); the report covers every config with runs under --out")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--out", type=Path,
        help="run dirs and report (default: benchmarks/results/learning_efficiency, or ..._long with --long); "
             "tracked in git (checkpoints are removed once a run finishes)",
    )
    parser.add_argument("--data", default="mix", help="data config (mix | arith)")
    parser.add_argument("--steps", type=int, help="default 12, or 40 with --long")
    parser.add_argument("--eval-every", type=int, help="default 4, or 10 with --long")
    parser.add_argument("--eval-prompts", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, help="default 64, or 512 with --gpu")
    parser.add_argument("--batch-size", type=int, help="prompts a step: default 8, or 32 with --gpu")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--quick", action="store_true", help="tiny model, one step per run: checks the pipeline only")
    parser.add_argument("--long", action="store_true", help="the long grid: 40 steps, the oracle on grpo, grpo-n6, V0.5 and grpo+hadw, bf16")
    parser.add_argument("--gpu", metavar="MODEL_DIR",
                        help="the long grid on a GPU node with this local model folder: 100 steps x 32 prompts, 512 tokens")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("extra", nargs="*", help="more key=value overrides for every run")
    args = parser.parse_args(argv)
    args.long = args.long or bool(args.gpu)  # the GPU grid is the long one, larger
    for key, value in ({"batch_size": 8, "max_tokens": 64} | (GPU if args.gpu else LONG if args.long else SHORT)).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if not args.report_only:
        run_grid(args)
    result = report(args)
    print(json.dumps({"answers": result["answers"], "final_accuracy": {c: v["accuracy"][-1] for c, v in result["curves"].items()}}, indent=2))
    return result


if __name__ == "__main__":
    main()
