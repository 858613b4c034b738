"""Compose the Hydra config tree (typed by `rlvr.config.schema`) and check it before any actor starts."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from rlvr.algorithms import WEIGHTINGS, AlgorithmPreset, default_overlong_buffer
from rlvr.learner.schedule import LR_SCHEDULES

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value that cannot work; the message names the key."""


def config_dir() -> str:
    env = os.environ.get("RLVR_CONFIG_DIR")
    if env:
        return str(Path(env).resolve())
    return str(Path(__file__).resolve().parents[2] / "configs")


def overridden_keys(overrides) -> list[str]:
    """The keys command-line overrides set (`+key=v`, `++key=v` and `~key` name theirs too)."""
    return [o.lstrip("+~").split("=", 1)[0] for o in overrides]


def expand_shorthand(overrides: list[str]) -> list[str]:
    """`resume=never|auto|PATH` is short for resume.mode=..."""
    return [("resume.mode=" + o.split("=", 1)[1]) if o.startswith("resume=") else o for o in overrides]


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """The config tree with command-line style overrides (`key=value`, `group=option`).

    Hydra keeps the tree in struct mode, so an unknown key fails here with its name, and the schema
    (`rlvr.config.schema`) types every typed key, so a value of the wrong type does too.
    `resume=never|auto|PATH` is short for resume.mode=... (`expand_shorthand`).
    """
    overrides = expand_shorthand(list(overrides or []))
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    from rlvr.config.schema import register_schema

    register_schema()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        try:
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
        except ConfigCompositionException as e:
            if e.__cause__ is None:
                raise
            # Hydra says which override failed; its cause says why ("Value 'abc' ... converted to Integer")
            raise ConfigCompositionException(f"{e}: {str(e.__cause__).splitlines()[0]}") from e.__cause__
    if "model" in cfg and "cluster" in cfg:  # a learner or engine built from this tree (benchmarks, tests) gets a dtype
        from rlvr.runtime.sizing import resolve_auto_dtypes

        resolve_auto_dtypes(cfg.model, cfg.cluster.accelerator)
    return cfg


def fill(cls: type[T], *nodes: Mapping, **given: Any) -> T:
    """An instance of the dataclass `cls`: each field is `given[name]`, or else the key of the same
    name in the one node of `nodes` that holds it. What a role's settings take from the tree is then
    written once, as the tree's keys; `given` holds only what is renamed, derived or from elsewhere.
    A field with no default that no node holds, or that two nodes hold, is an error naming it."""
    values = dict(given)
    for f in dataclasses.fields(cls):
        if f.name in values:
            continue
        holders = [node for node in nodes if f.name in node]
        if len(holders) > 1:
            raise ConfigError(f"{cls.__name__}.{f.name}: more than one config node has the key {f.name!r}; pass it by name")
        if holders:
            values[f.name] = holders[0][f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{cls.__name__}.{f.name}: no config node has the key {f.name!r}")
    return cls(**values)


def algorithm_preset(algo: DictConfig) -> AlgorithmPreset:
    """The `algorithm` config node as an AlgorithmPreset (which validates the part names)."""
    try:
        return fill(AlgorithmPreset, algo, rollout_correction=algo.rollout_correction.mode,
                    correction_threshold=algo.rollout_correction.threshold)
    except ValueError as e:
        raise ConfigError(f"algorithm: {e}") from e


def max_response_tokens(cfg: DictConfig) -> int:
    """The length a response may reach: `rollout.max_tokens`, or an episode's `env.max_tokens`."""
    return cfg.rollout.max_tokens if cfg.env.name == "none" else cfg.env.max_tokens


def overlong_buffer(cfg: DictConfig) -> int:
    """DAPO's L_c in tokens: `algorithm.overlong_buffer`, or 20 % of the longest response when null."""
    buffer = cfg.algorithm.overlong_buffer
    return default_overlong_buffer(max_response_tokens(cfg)) if buffer is None else int(buffer)


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def _check_one_of(key: str, value: Any, choices: Any, what: str = "") -> None:
    """`key: unknown 'value'; known: a, b` unless value is one of choices."""
    _check(value in choices, key, f"unknown {what + ' ' if what else ''}{value!r}; known: {', '.join(choices)}")


def _check_keys(keys: Any, known: Any, prefix: str, owner: str = "", hint: str = "") -> None:
    """Each key one of ``known``, or `prefix.key: unknown key[ for owner]; did you mean prefix.near?`
    (or `; known: ...` when no name is near), then ``hint``."""
    import difflib

    known = list(known)
    for key in keys:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            where = f" for {owner}" if owner else ""
            rest = f"did you mean {prefix}{near[0]}?" if near else f"known: {', '.join(known)}"
            raise ConfigError(f"{prefix}{key}: unknown key{where}; {rest}{hint}")


def _validate_value(v: DictConfig) -> None:
    from rlvr.value import BACKENDS

    _check_one_of("value.backend", v.backend, BACKENDS)
    _check(v.context_size >= 1, "value.context_size", f"must be >= 1, got {v.context_size}")
    if v.backend == "embedded":
        _check_one_of("value.regressor", v.regressor, ("kernel", "ridge"))
    if v.backend == "v0":
        for key, kind in (("checkpoint", "file"), ("embedding_model", "folder"), ("tabpfn_head", "file")):
            p = v.v0[key]
            _check(bool(p), f"value.v0.{key}", "backend=v0 needs this local path")
            exists = Path(p).is_dir() if kind == "folder" else Path(p).is_file()
            _check(exists, f"value.v0.{key}", f"{kind} {p!r} not found")
        for key in ("n_estimators", "max_length", "batch_size"):
            _check(v.v0[key] >= 1, f"value.v0.{key}", f"must be >= 1, got {v.v0[key]}")
        from rlvr.value.prior_map import MAPS

        _check_one_of("value.v0.prior_map", v.v0.prior_map, MAPS)
        _check(v.v0.map_folds >= 2, "value.v0.map_folds", f"must be >= 2, got {v.v0.map_folds}")
    if v.backend == "hf-classifier":
        p = v.hf_classifier.path
        _check(bool(p) and Path(p).is_dir(), "value.hf_classifier.path", f"model folder {p!r} not found")


def validate(cfg: DictConfig, may_be_missing: tuple[str, ...] = ()) -> None:
    """Fail fast, naming the key, on values that would only break later inside an actor.
    ``may_be_missing``: required keys the caller does without (`rlvr eval`: ``data.train.path``)."""
    missing = OmegaConf.missing_keys(cfg) - set(may_be_missing)
    _check(not missing, ", ".join(sorted(missing)), "is required but has no value")
    _check_known_keys(cfg)
    preset = algorithm_preset(cfg.algorithm)
    _validate_algorithm(cfg, preset)
    _validate_eval(cfg)
    _validate_trainer(cfg)
    _validate_model(cfg)
    _validate_rollout(cfg)
    _validate_verifier(cfg)
    _validate_env(cfg)
    _validate_data(cfg)


def _check_known_keys(cfg: DictConfig) -> None:
    """Every key the schema types is one of its fields. Hydra's `+key=value` adds a key the schema
    lacks (its own error message suggests it for a typo): `+trainer.stepz=3` trained with
    trainer.steps at its default, silently. Untyped nodes (data, env, weighting, ...) have their own checks."""
    from rlvr.config.schema import RlvrConfig

    def walk(node: Any, schema: type, prefix: str) -> None:
        fields = {f.name: f.type for f in dataclasses.fields(schema)}
        keys = list(node.keys()) if isinstance(node, DictConfig) else []
        _check_keys(keys, fields, prefix)
        for key in keys:
            if dataclasses.is_dataclass(fields[key]):
                walk(node[key], fields[key], f"{prefix}{key}.")

    walk(cfg, RlvrConfig, "")


DATA_KEYS = ("name", "system_prompt", "fewshot", "reward_terms", "train", "eval", "validation")
_SPLIT_TYPES = {"bool": bool, "int": int, "int | None": int, "str": str, "str | None": str, "list": list}


def _validate_data(cfg: DictConfig) -> None:
    """The data node is free-form in the schema (each data config brings its own splits): its keys,
    each split's keys and value types, and the few-shot turns are checked here. (A typo in a data
    YAML passed, and failed after Ray started; `skip_bad_rows: no` stayed the string "no", which
    is true.)"""
    import dataclasses

    from rlvr.data import DataSplitConfig

    d = cfg.data
    _check_keys(d, DATA_KEYS, "data.")
    types = {f.name: _SPLIT_TYPES.get(str(f.type)) for f in dataclasses.fields(DataSplitConfig)}
    for split in ("train", "eval", "validation"):
        node = d.get(split)
        if node is None:
            continue
        _check(OmegaConf.is_dict(node), f"data.{split}", f"must be a mapping of split settings, got {node!r}")
        _check_keys(node, sorted(types), f"data.{split}.")
        for key in node:
            if OmegaConf.is_missing(node, key):
                continue
            value, expected = node[key], types[key]
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value, resolve=True)
            ok = value is None or expected is None or (isinstance(value, expected) and not (expected is int and isinstance(value, bool)))
            _check(ok, f"data.{split}.{key}", f"must be {getattr(expected, '__name__', 'a list')}, got {type(value).__name__} {value!r}")
    fewshot = d.get("fewshot")
    if fewshot is not None:
        shots = OmegaConf.to_container(fewshot, resolve=True) if OmegaConf.is_config(fewshot) else fewshot
        good = isinstance(shots, list) and all(isinstance(s, dict) and set(s) == {"question", "response"}
                                               and all(isinstance(v, str) for v in s.values()) for s in shots)
        _check(good, "data.fewshot", f"must be a list of {{question: str, response: str}}, got {str(shots)[:80]!r}")


ENV_KEYS = ("name", "max_turns", "max_tokens", "parser", "tools", "tool_config", "options")  # configs/env/*.yaml


def _validate_env(cfg: DictConfig) -> None:
    e = cfg.env
    known = ENV_KEYS if e.name != "none" else ("name",)
    _check_keys(e.keys(), known, "env.", f"env={e.name}", " (an environment's own arguments go under env.options)")
    if e.name == "none":
        return
    from rlvr.envs import environment_from_config
    from rlvr.envs.tools import PARSERS, tool_schemas

    _check(e.max_turns >= 1, "env.max_turns", f"must be >= 1, got {e.max_turns}")
    _check(e.max_tokens >= 1, "env.max_tokens", f"must be >= 1 (response tokens of an episode, observations included), got {e.max_tokens}")
    _check_one_of("env.parser", e.parser, sorted(PARSERS), "tool-call parser")
    try:  # an unknown environment, bad options or a tool without a schema fail here, naming it
        tools = environment_from_config(e).tools
        tool_schemas(tools)
    except ValueError as err:
        raise ConfigError(f"env: {err}") from err
    # a parser with no tools sent a well-formed call to a verifier pool started without tools (the run
    # stopped); tools with no parser are shown to the model and never run
    _check(e.parser == "none" or bool(tools), "env.parser",
           f"{e.parser} reads tool calls, but env={e.name} has no tools: set env.parser=none, or give it tools (env.tools)")
    _check(e.parser != "none" or not tools, "env.parser",
           f"none reads no tool calls, but env={e.name} has tools {tools}: set env.parser=hermes, or leave the tools out")


def _validate_algorithm(cfg: DictConfig, preset: AlgorithmPreset) -> None:
    a = cfg.algorithm
    _check(a.n >= 2, "algorithm.n", f"a group needs at least 2 rollouts, got {a.n}")
    if a.sampling == "dynamic_filter":
        _check(a.max_rounds >= 1, "algorithm.max_rounds", f"must be >= 1 (DAPO samples in rounds; 0 trains on nothing), got {a.max_rounds}")
    _check(preset.estimator != "v05" or a.sampling == "adaptive", "algorithm.sampling",
           f"the v05 estimator subtracts the baseline adaptive sampling fuses for each prompt: needs sampling=adaptive, got {a.sampling}")
    if preset.uses_value_model:
        _check(a.delta >= 1, "algorithm.delta", f"must be >= 1, got {a.delta}")
        _check(a.adaptive_rounds >= 0, "algorithm.adaptive_rounds", f"must be >= 0 (0: no purchases after the first draw), got {a.adaptive_rounds}")
        _check(a.n_max >= a.n, "algorithm.n_max", f"must be >= algorithm.n ({a.n}), got {a.n_max}")
        _check(a.budget_factor >= 1.0, "algorithm.budget_factor", f"must be >= 1, got {a.budget_factor}")
        _check(
            a.calibration_window >= cfg.trainer.batch_size,
            "algorithm.calibration_window",
            f"must hold at least one step's prompts (trainer.batch_size = {cfg.trainer.batch_size}), got {a.calibration_window}",
        )
        _validate_value(cfg.value)
    if preset.overlong:
        _check(a.overlong_penalty_factor > 0, "algorithm.overlong_penalty_factor", f"must be > 0 (overlong=false turns the shaping off), got {a.overlong_penalty_factor}")
        max_tokens, key = max_response_tokens(cfg), "rollout.max_tokens" if cfg.env.name == "none" else "env.max_tokens"
        _check(
            0 < overlong_buffer(cfg) < max_tokens / 2,
            "algorithm.overlong_buffer",
            f"must be in (0, {key}/2 = {max_tokens / 2:g}) tokens, got {a.overlong_buffer}: the length penalty "
            f"starts at {key} - buffer, and a buffer of half the length or more penalises ordinary answers "
            f"(DAPO: 4,096 of 20,480; null = 20 % of {key})",
        )
    _check(a.warmup_prompts >= 0, "algorithm.warmup_prompts", f"must be >= 0 (0 = no warm start), got {a.warmup_prompts}")
    if a.warmup_prompts:
        _check(preset.uses_value_model, "algorithm.warmup_prompts", f"warms up V0.5's value context (sampling=adaptive); {preset.sampling} has none to fill")
        from rlvr.value.v0 import MIN_SUPPORT

        # each half's priors come from the other half's outcomes: one prompt (or v0's head under its
        # support) left a fold predicting from nothing, and its stand-in 0.5 entered the calibration window
        least = 2 * (MIN_SUPPORT if cfg.value.backend == "v0" else 1)
        _check(a.warmup_prompts >= least, "algorithm.warmup_prompts",
               f"must be 0 or >= {least} with value.backend={cfg.value.backend}: each half of the warm-up prompts is "
               f"predicted from the other half's outcomes, and a half of {a.warmup_prompts // 2} gives no prior, got {a.warmup_prompts}")
    _check_one_of("weighting.name", cfg.weighting.name, WEIGHTINGS)
    _check_weighting(cfg.weighting)


def _check_weighting(weighting: DictConfig) -> None:
    """The weighting run once on a two-rollout group with its config node's values: a bad value
    (focal's gamma < 0, HA-DW's anchor) fails here, not after the warm start and the first step."""
    import inspect

    import torch

    from rlvr.algorithms import WEIGHTINGS, apply_weighting
    from rlvr.train.loop import HADW_STATE_KEYS, hadw_state, weighting_kwargs

    # a key neither the function nor HA-DW's anchor state takes was dropped silently (+weighting.gama=0.3)
    options = inspect.signature(WEIGHTINGS[weighting.name]).parameters.values()  # the data arguments have no default
    known = {"name"} | {p.name for p in options if p.default is not p.empty and p.name != "update_state"}
    if weighting.name == "hadw":
        known |= set(HADW_STATE_KEYS)
    _check_keys(weighting.keys(), sorted(known), "weighting.", f"weighting={weighting.name}")
    try:
        kwargs = weighting_kwargs(weighting, hadw_state(weighting))
        apply_weighting(weighting.name, torch.tensor([1.0, -1.0]), torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"weighting={weighting.name}: {e}") from None


def _validate_eval(cfg: DictConfig) -> None:
    oracle = cfg.eval.oracle
    _check(oracle.samples >= 0, "eval.oracle.samples", f"must be >= 0 (0 = off), got {oracle.samples}")
    _check(oracle.every >= 1, "eval.oracle.every", f"must be >= 1, got {oracle.every}")
    e = cfg.eval
    _check(e.n_samples >= 1, "eval.n_samples", f"must be >= 1 (1: greedy pass@1 only), got {e.n_samples}")
    _check(e.max_tokens >= 1, "eval.max_tokens", f"must be >= 1, got {e.max_tokens}")
    _check(e.size >= 0, "eval.size", f"must be >= 0 held-out prompts, got {e.size}")
    _check(e.pass_at_k_every >= 0, "eval.pass_at_k_every", f"must be >= 0 (0 = every eval), got {e.pass_at_k_every}")
    if oracle.samples:
        _check(cfg.trainer.max_staleness == 0, "eval.oracle.samples",
               f"the oracle measures at the weights that sampled the batch: synchronous runs only (trainer.max_staleness=0, got {cfg.trainer.max_staleness})")
    _check_one_of("eval.split", cfg.eval.split, ("heldout", "validation"))
    if cfg.eval.split == "validation":
        _check(
            cfg.data.get("validation") is not None,
            "eval.split",
            f"data={cfg.data.name} has no validation split: add data.validation (a split like data.eval) or use eval.split=heldout",
        )


def _auto_or(value, types, minimum) -> bool:
    """`auto`, or a number of `types` at least `minimum` (bools are not numbers here)."""
    return value == "auto" or (isinstance(value, types) and not isinstance(value, bool) and value >= minimum)


def _validate_trainer(cfg: DictConfig) -> None:
    t = cfg.trainer
    _check(t.steps >= 1, "trainer.steps", f"must be >= 1, got {t.steps}")
    _check(t.batch_size >= 1, "trainer.batch_size", f"must be >= 1, got {t.batch_size}")
    _check(t.max_restarts >= 0, "trainer.max_restarts", f"must be >= 0 (0 = stop at the first death), got {t.max_restarts}")
    _check(t.role_timeout_s > 0, "trainer.role_timeout_s", f"must be > 0 (seconds), got {t.role_timeout_s}")
    mode = cfg.resume.mode
    _check(mode is not None and str(mode).strip() != "", "resume", "must be auto, never or a checkpoint (or run) directory, got an empty value")
    _check(str(cfg.run_dir).strip() != "", "run_dir", "is empty (an unset variable?): the run would write into the current folder")
    for key, meaning in (("eval_every", "0 = none during training (eval.at_start: before it)"), ("save_every", "0 = at the last step and on a signal only"),
                         ("keep_checkpoints", "0 = keep all")):
        _check(t[key] >= 0, f"trainer.{key}", f"must be >= 0 ({meaning}), got {t[key]}")
    _check(cfg.learner.grad_clip >= 0, "learner.grad_clip", f"must be >= 0 (0 = no clipping), got {cfg.learner.grad_clip}")
    _check(cfg.learner.lr_schedule in LR_SCHEDULES, "learner.lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}, got {cfg.learner.lr_schedule!r}")
    _check(cfg.learner.lr_warmup_steps >= 0, "learner.lr_warmup_steps", f"must be >= 0 (optimizer steps), got {cfg.learner.lr_warmup_steps}")
    _check(0 <= cfg.learner.min_lr_ratio <= 1, "learner.min_lr_ratio", f"must be in [0, 1] (a share of learner.lr), got {cfg.learner.min_lr_ratio}")
    _check(cfg.learner.weight_decay >= 0, "learner.weight_decay", f"must be >= 0, got {cfg.learner.weight_decay}")
    _check(cfg.learner.lr > 0, "learner.lr", f"must be > 0, got {cfg.learner.lr}")
    _check(_auto_or(cfg.learner.micro_batch_size, int, 1), "learner.micro_batch_size", f"must be auto or an integer >= 1, got {cfg.learner.micro_batch_size!r}")
    _check(cfg.learner.mmap_threshold_mb >= 0, "learner.mmap_threshold_mb", f"must be >= 0 (0: glibc's own threshold), got {cfg.learner.mmap_threshold_mb}")
    _check(isinstance(cfg.learner.head_chunk, int) and cfg.learner.head_chunk >= 0, "learner.head_chunk",
           f"must be an integer >= 0 (0: the LM head on all positions at once), got {cfg.learner.head_chunk!r}")
    _check(cfg.learner.activation_memory_gb > 0, "learner.activation_memory_gb", f"must be > 0 (GiB), got {cfg.learner.activation_memory_gb}")
    _check(_auto_or(cfg.rollout.kv_cache_gb, (int, float), 1e-9), "rollout.kv_cache_gb",
           f"must be auto or > 0 (GiB of host memory for the engine's KV cache), got {cfg.rollout.kv_cache_gb!r}")
    for key in ("max_num_seqs", "block_size"):
        _check(cfg.rollout[key] >= 1, f"rollout.{key}", f"must be >= 1, got {cfg.rollout[key]}")
    for key in ("mini_batches", "epochs"):
        _check(cfg.learner[key] >= 1, f"learner.{key}", f"must be >= 1, got {cfg.learner[key]}")
    _check(t.max_staleness >= 0, "trainer.max_staleness", f"must be >= 0 (0 = synchronous), got {t.max_staleness}")
    if t.generate_ahead is not None:
        _check(t.max_staleness >= 1, "trainer.generate_ahead", "only applies to async runs (trainer.max_staleness >= 1)")
        _check(t.generate_ahead >= 1, "trainer.generate_ahead", f"must be >= 1, got {t.generate_ahead}")
    if t.max_staleness >= 1:
        _check(
            cfg.cluster.mode == "disaggregated",
            "trainer.max_staleness",
            "async generation needs engines of their own (cluster.mode=disaggregated); colocated engines sleep while learners step",
        )


def _validate_model(cfg: DictConfig) -> None:
    from rlvr.models import SMOLLM2_NAME, TINY_NAME
    from rlvr.runtime.sizing import DTYPE_BYTES, resolve_auto_dtypes

    m = cfg.model
    resolve_auto_dtypes(m, cfg.cluster.accelerator)  # what `rlvr config` prints and config.yaml records
    _check(m.path in (SMOLLM2_NAME, TINY_NAME) or (Path(str(m.path)).expanduser() / "config.json").is_file(), "model.path",
           f"{m.path!r} is neither a built-in model ({SMOLLM2_NAME}, {TINY_NAME}) nor a Hugging Face model folder (no config.json); "
           "this machine cannot download from a model hub")
    _check(m.train_dtype in ("float32", "bfloat16"), "model.train_dtype", f"must be float32, bfloat16 or auto, got {m.train_dtype!r}")
    _check(m.rollout_dtype in DTYPE_BYTES, "model.rollout_dtype",
           f"must be one of {', '.join(DTYPE_BYTES)} or auto, got {m.rollout_dtype!r}")
    _check(
        m.train_dtype == m.dtype or m.dtype == "float32",
        "model.train_dtype",
        f"{m.train_dtype} compute needs float32 weights to autocast from; model.dtype is {m.dtype}",
    )
    lora = cfg.model.lora
    _check(lora.rank >= 0, "model.lora.rank", f"must be >= 0 (0 = full fine-tuning), got {lora.rank}")
    _check(lora.alpha > 0, "model.lora.alpha", f"must be > 0, got {lora.alpha}")
    _check(0 <= lora.dropout < 1, "model.lora.dropout", f"must be in [0, 1), got {lora.dropout}")
    _check(
        isinstance(lora.target_modules, str) or len(lora.target_modules) > 0,
        "model.lora.target_modules",
        "is empty: give module names (e.g. [q_proj, v_proj]) or all-linear",
    )


def _validate_rollout(cfg: DictConfig) -> None:
    r = cfg.rollout
    from rlvr.rollout.engines import ENGINES

    _check_one_of("rollout.backend", r.backend, ENGINES)
    _check(r.temperature > 0, "rollout.temperature", f"training needs sampling, so > 0; got {r.temperature}")
    _check(0 < r.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    _check(r.max_tokens >= 1, "rollout.max_tokens", f"must be >= 1, got {r.max_tokens}")
    _check(r.threads >= 1, "rollout.threads", f"must be >= 1 (each engine's and learner's torch threads), got {r.threads}")
    _check(r.timeout_s > 0, "rollout.timeout_s", f"must be > 0 seconds, got {r.timeout_s}")
    length = cfg.model.max_model_len
    _check(length >= 1, "model.max_model_len", f"must be >= 1 token, got {length}")
    for key, tokens in (("rollout.max_tokens", r.max_tokens), ("eval.max_tokens", cfg.eval.max_tokens)):
        # the engine silently caps an answer at max_model_len less its prompt: a length past it is never reached
        _check(tokens < length, key, f"must leave room for the prompt within model.max_model_len={length}, got {tokens}")
    validate_cluster(cfg.cluster, cfg.rollout.backend)
    _check(cfg.learner.bucket_mb >= 0, "learner.bucket_mb", f"must be >= 0 (0 = one tensor per bucket), got {cfg.learner.bucket_mb}")


def _validate_verifier(cfg: DictConfig) -> None:
    v = cfg.verifier
    _check(v.timeout_s > 0, "verifier.timeout_s", f"must be > 0, got {v.timeout_s}")
    _check(v.num_workers >= 1, "verifier.num_workers", f"must be >= 1, got {v.num_workers}")
    _check(v.memory_mb > 0, "verifier.memory_mb", f"must be > 0 (MB a worker may use), got {v.memory_mb}")
    _check(not isinstance(v.terms, str), "verifier.terms", f"must be a list of terms, e.g. [{{fn: {v.terms}}}], got the string {v.terms!r}")
    _check(len(v.terms) >= 1, "verifier.terms", "needs at least one reward term")
    from rlvr.rewards import coerce_spec, correctness_terms

    specs = []
    for i, term in enumerate(v.terms):
        try:
            specs.append(coerce_spec(OmegaConf.to_container(term, resolve=True) if OmegaConf.is_config(term) else term))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"verifier.terms[{i}]: {e}") from None
        _check(_module_found(specs[-1].fn), f"verifier.terms[{i}]",
               f"{specs[-1].fn!r}: no module {specs[-1].fn.partition(':')[0]!r} on this process's path (the current directory and PYTHONPATH)")
    try:
        correctness_terms(specs)
    except ValueError as e:
        raise ConfigError(f"verifier.terms: {e}") from None


def _module_found(fn: str) -> bool:
    """A builtin, or a ``module:function`` whose module exists (found, not run: the verifier's
    workers import it; an import that fails there used to surface as three actor restarts)."""
    import importlib.util

    from rlvr.rewards import REWARD_FUNCTIONS

    if fn in REWARD_FUNCTIONS:
        return True
    try:
        return importlib.util.find_spec(fn.partition(":")[0]) is not None
    except (ImportError, ValueError):
        return False


def validate_cluster(c: DictConfig, rollout_backend: str) -> None:
    from rlvr.runtime.placement import MODES, STRATEGIES
    from rlvr.weight_sync import BACKENDS

    _check_one_of("cluster.mode", c.mode, MODES)
    _check_one_of("cluster.strategy", c.strategy, STRATEGIES)
    _check_one_of("cluster.weight_sync", c.weight_sync, BACKENDS)
    _check(c.zero_stage in (0, 1, 2, 3), "cluster.zero_stage", f"must be 0, 1, 2 or 3, got {c.zero_stage}")
    for key in ("num_learners", "num_engines", "tensor_parallel"):
        _check(c[key] >= 1, f"cluster.{key}", f"must be >= 1, got {c[key]}")
    _check(c.actor_cpus > 0, "cluster.actor_cpus", f"must be > 0, got {c.actor_cpus}")
    _check(c.num_cpus is None or c.num_cpus >= 1, "cluster.num_cpus", f"must be >= 1 or null (all cores), got {c.num_cpus}")
    _check(c.verifier_cpus > 0, "cluster.verifier_cpus", f"must be > 0, got {c.verifier_cpus}")
    _check(c.value_accelerators >= 0, "cluster.value_accelerators", f"must be >= 0, got {c.value_accelerators}")
    _check_keys(c.node_resources or {}, ("learner", "rollout", "value", "verifier"), "cluster.node_resources.")
    for role, marker in (c.node_resources or {}).items():
        key = f"cluster.node_resources.{role}"
        # a number failed later as a TypeError in the too-small message; GPU replaced the bundle's
        # GPU: 1 with 0.001, and Ray refused the actor only once the bundles were reserved
        _check(marker is None or (isinstance(marker, str) and marker.strip() != ""), key,
               f"must be the name of a custom resource the role's nodes declare, or null; got {marker!r}")
        _check(marker is None or marker not in ("CPU", "GPU", "memory", "object_store_memory", c.accelerator), key,
               f"{marker} is a resource the role's bundle asks for by amount: pin by a custom resource its nodes "
               f"declare (ray start --resources='{{\"{role}_node\": 1}}', then {key}={role}_node)")
    if c.tensor_parallel > 1:
        _check(rollout_backend == "vllm", "cluster.tensor_parallel", "tensor parallelism needs rollout=vllm")
    if c.mode == "colocated":
        _check(
            c.num_engines <= c.num_learners,
            "cluster.num_engines",
            f"colocated engines live beside learner ranks: at most cluster.num_learners={c.num_learners}, got {c.num_engines}",
        )
        _check(c.tensor_parallel == 1, "cluster.tensor_parallel", "colocated mode shares one accelerator per engine: must be 1")
    if c.value_accelerators > 0:
        _check(bool(c.accelerator), "cluster.value_accelerators", "needs cluster.accelerator (e.g. GPU); set it or use 0")
    if c.mode == "colocated":
        _check(
            not (c.node_resources or {}).get("rollout"),
            "cluster.node_resources.rollout",
            "colocated engines live in the learner bundles: pin cluster.node_resources.learner instead",
        )
        _check(c.weight_sync != "nccl", "cluster.weight_sync", "colocated engines share their learner's GPU, where NCCL cannot pair two ranks: use ipc")
    if c.weight_sync == "ipc":
        _check(c.mode == "colocated", "cluster.weight_sync", "ipc shares memory on one node: it needs cluster.mode=colocated")
