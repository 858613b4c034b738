"""The ``reasoning_gym`` source: procedural generators from the ``reasoning-gym`` package (offline, seeded).

Several tasks are mixed with a seeded weighted draw. Each task's generator gets a seed *derived*
from (task label, split seed) by a hash: reasoning-gym builds item ``i`` from ``Random(seed + i)``,
so raw seeds 0 and 1 would give the same items shifted by one, and a "held-out" split with seed 1
would be almost entirely the training split with seed 0. The derived seeds make splits with
different seeds practically disjoint; ``exclude`` makes them exactly disjoint (questions in it are
dropped and replaced by further items).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping
from typing import Any

from rlvr.data.problems import DataSplitConfig, Problem, RowErrors, check_answer_type, derived_seed, make_problem, to_plain

log = logging.getLogger(__name__)


def _task_specs(tasks: Any, default_answer_type: str) -> list[dict]:
    tasks = to_plain(tasks)
    if not tasks:
        raise ValueError("data.tasks is empty: give at least one reasoning-gym task")
    if not isinstance(tasks, (list, tuple)):  # a mapping iterated as its keys dropped every weight and kwargs
        raise ValueError(f"data.tasks must be a list of task specs ([{{name: ..., weight: ..., kwargs: {{...}}}}] or names), "
                         f"got {type(tasks).__name__} {str(tasks)[:80]!r}")
    specs = []
    for t in tasks:
        if isinstance(t, str):
            t = {"name": t}
        if not isinstance(t, Mapping) or not t.get("name"):
            raise ValueError(f"bad reasoning-gym task spec {t!r}: expected {{'name': ..., 'weight': ..., 'kwargs': {{...}}}}")
        extra = set(t) - {"name", "weight", "kwargs", "answer_type", "label"}
        if extra:
            raise ValueError(
                f"task {t['name']!r}: unknown keys {sorted(extra)} (known: name, label, weight, kwargs, answer_type)"
            )
        weight = float(t.get("weight", 1.0))
        if not (weight > 0 and math.isfinite(weight)):  # random.choices refused an infinite one later, naming no task
            raise ValueError(f"task {t['name']!r}: weight must be positive and finite, got {weight}")
        if not isinstance(t.get("kwargs") or {}, Mapping):
            raise ValueError(f"task {t['name']!r}: kwargs must be a mapping, got {str(t['kwargs'])[:80]!r}")
        kwargs = dict(t.get("kwargs") or {})
        for k in ("seed", "size"):
            if k in kwargs:
                raise ValueError(f"task {t['name']!r}: set {k!r} on the data split, not in the task kwargs")
        specs.append(
            {
                "name": str(t["name"]),
                "label": str(t.get("label") or t["name"]),
                "weight": weight,
                "kwargs": kwargs,
                "answer_type": t.get("answer_type", default_answer_type),
            }
        )
    labels = [s["label"] for s in specs]
    if len(labels) != len(set(labels)):
        raise ValueError(f"duplicate reasoning-gym task labels in {labels}: give each level of a task its own 'label'")
    return specs


def _create_dataset(reasoning_gym, spec: dict, size: int, seed: int):
    """One task's reasoning-gym dataset; a task it does not know or kwargs its config refuses
    (a misspelt key, min above max) is an error naming the task, not reasoning-gym's traceback."""
    try:
        return reasoning_gym.create_dataset(spec["name"], size=size, seed=derived_seed(spec["label"], seed), **spec["kwargs"])
    except (TypeError, AssertionError, ValueError, KeyError) as e:
        raise ValueError(f"task {spec['name']!r} with kwargs {spec['kwargs']}: {type(e).__name__}: {e}") from e


def load_reasoning_gym(cfg: DataSplitConfig, exclude: set[str] | None) -> list[Problem]:
    import reasoning_gym

    specs = _task_specs(cfg.tasks, cfg.answer_type)
    for s in specs:
        check_answer_type(s["answer_type"], f"task {s['name']!r}: ")
    size = int(cfg.size)
    if size <= 0:
        raise ValueError(f"data.size must be positive, got {size}")
    weights = [s["weight"] for s in specs]
    errors = RowErrors(f"reasoning_gym(seed={cfg.seed})", cfg.skip_bad_rows)

    # Generate in rounds: items are a pure function of (derived seed, index),
    # and the task draw is a fixed sequence, so a bigger round only appends.
    budget = size
    max_budget = 8 * size + 64
    while True:
        datasets = {s["label"]: _create_dataset(reasoning_gym, s, budget, cfg.seed) for s in specs}
        rng = random.Random(derived_seed("mix", cfg.seed))
        counters = {s["label"]: 0 for s in specs}
        out: list[Problem] = []
        errors.skipped = 0
        for _ in range(budget):
            spec = specs[rng.choices(range(len(specs)), weights=weights, k=1)[0]] if len(specs) > 1 else specs[0]
            name = spec["label"]
            idx = counters[name]
            counters[name] += 1
            item = datasets[name][idx]
            if exclude and item.get("question") in exclude:
                continue
            p = make_problem(
                f"{name}/{cfg.seed}/{idx}", item.get("question"), item.get("answer"), spec["answer_type"], errors,
                f"task {name} item {idx}",
            )
            if p is not None:
                out.append(p)
                if len(out) == size:
                    break
        if len(out) == size or budget >= max_budget:
            break
        budget = min(max_budget, 2 * budget)
    if len(out) < size:
        log.warning(
            "reasoning_gym(seed=%s): only %d of %d problems after excluding %d questions and skipping bad rows",
            cfg.seed, len(out), size, len(exclude or ()),
        )
    errors.summary(len(out))
    return out
