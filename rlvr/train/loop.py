"""The training loop, top to bottom in one file.

    prompts -> BudgetController (rollouts, rewards, V0.5 baselines) -> Batch
            -> train_step: advantages (+ weighting) -> PolicyLearners (mini-batch updates with a
               real π_old and the rollout correction) -> weight sync to the RolloutPool
            -> metrics, evaluation, checkpoint

`train(cfg)` takes the composed Hydra config (see `rlvr.config.compose`), starts the roles and
hands them to a `Run`, whose `loop` reads top to bottom: each batch from a driver (`rlvr.train.drivers`:
`sync_batches`, or `AsyncBatches` when trainer.max_staleness >= 1), `train_step`, `record`,
`checkpoint`.

What the loop stands on lives next door: the roles as Ray actors (`rlvr.runtime.roles`), held-out
evaluation and `rlvr eval` (`rlvr.train.evaluate`), the run's records, checkpoint state and stop signals
(`rlvr.train.state`).
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import ray
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from rlvr.algorithms import WEIGHTINGS, HADWState, apply_weighting, compute_advantages
from rlvr.checkpoint import branch_from, note_origin, resolve_resume
from rlvr.config import ConfigError, algorithm_preset, fill, max_response_tokens, overlong_buffer, validate
from rlvr.data import Problem, PromptStream, QuestionSet, load_problems
from rlvr.generation import Generator, make_generator
from rlvr.learner.actor import UpdateConfig
from rlvr.learner.plan import plan_mini_batches
from rlvr.lora import LoraSettings, check_lora_targets
from rlvr.models import resolve_model_path
from rlvr.rollout.engines import SamplingConfig
from rlvr.runtime.faults import RoleFailed, first_line
from rlvr.runtime.placement import check_fits, cluster_nodes
from rlvr.runtime.roles import (
    LEARNER_LOSS_ERRORS,
    Roles,
    fault_metrics,
    learners_lost,
    restart_learners,
    role_plan,
    running_roles,
    start_ray,
)
from rlvr.runtime.sizing import ActivationBudget, check_model_length, check_prompt_lengths, micro_batching
from rlvr.seeds import evaluation_seed, oracle_seed, step_seed
from rlvr.train.controller import BudgetController, ControllerConfig
from rlvr.train.drivers import AsyncBatches, sync_batches
from rlvr.train.evaluate import evaluate, evaluation_problems
from rlvr.train.oracle import gradient_cosine, oracle_metrics, sample_oracle
from rlvr.train.state import (
    WARMUP_RECORDS,
    MetricsLog,
    RunStopped,
    StopRequest,
    check_resume_config,
    check_resume_data,
    console_line,
    hold_run_dir,
    load_training_state,
    rng_state,
    save_training_state,
    set_aside_records,
    set_rng_state,
    write_records,
    write_text_whole,
)
from rlvr.types import Batch

log = logging.getLogger("rlvr")


# --------------------------------------------------------------------------------------------
# The algorithm's configs: the learners' update and the controller's sampling
# --------------------------------------------------------------------------------------------
def update_config(cfg: DictConfig, preset) -> UpdateConfig:
    return fill(
        UpdateConfig, vars(preset),
        loss_kwargs=preset.loss_kwargs(),
        max_len=max_response_tokens(cfg),  # Dr.GRPO's constant: an episode's responses reach env.max_tokens
        temperature=cfg.rollout.temperature,
        epochs=cfg.learner.epochs,
    )


def controller_config(cfg: DictConfig) -> ControllerConfig:
    """The `algorithm` node's keys (the preset's values among them), and DAPO's lengths in tokens."""
    return fill(ControllerConfig, cfg.algorithm, overlong_buffer=overlong_buffer(cfg), max_response_tokens=max_response_tokens(cfg))


# --------------------------------------------------------------------------------------------
# One step's pieces
# --------------------------------------------------------------------------------------------
def split_warmup(problems: list[Problem], count: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """(training prompts, V0.5's warm-up prompts): `count` drawn by `seed` and held out of training,
    with every other copy of their questions (a generated set repeats some: a copy left in training
    had its own step-0 success rate in the value context), the same way on every start, so that a
    resumed run's prompt stream is the original's."""
    if count <= 0:
        return problems, []
    if count >= len(problems):
        raise ConfigError(
            f"algorithm.warmup_prompts: {count} warm-up prompts would leave none of the {len(problems)} training prompts; lower it"
        )
    chosen = set(random.Random(seed).sample(range(len(problems)), count))
    warmup = [problems[i] for i in sorted(chosen)]
    asked = QuestionSet(p.question for p in warmup)
    train = [p for i, p in enumerate(problems) if i not in chosen and p.question not in asked]
    if not train:
        raise ConfigError(f"algorithm.warmup_prompts: the {count} warm-up prompts' questions are all {len(problems)} training prompts'; lower it")
    return train, warmup


HADW_STATE_KEYS = ("window", "anchor", "eta")  # `weighting=hadw`'s keys for its anchor state (the rest are its function's)


def hadw_state(weighting: DictConfig) -> HADWState:
    """HA-DW's anchor state from `weighting=hadw`; an unused one for any other weighting."""
    if weighting.name != "hadw":
        return HADWState()
    return HADWState(**{k: weighting[k] for k in HADW_STATE_KEYS})


def weighting_kwargs(weighting: DictConfig, hadw_state: HADWState) -> dict:
    """The registered weighting's keyword arguments: each key of its config node that its function
    takes (focal: gamma; HA-DW: lam), and the anchor state where it takes one. A new weighting is its
    registered function and its `configs/weighting/*.yaml`, nothing here."""
    params = inspect.signature(WEIGHTINGS[weighting.name]).parameters
    kwargs = {k: v for k, v in weighting.items() if k in params}
    if "state" in params:
        kwargs["state"] = hadw_state
    return kwargs


def v05_baselines(batch: Batch, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Each group's V0.5 baseline of the reward the estimator subtracts it from. V0.5's b estimates
    the success rate; a shaped reward (partial test credit, a format term, a penalty) differs from
    correctness by a part no prior speaks to, so the group's mean of that part goes on top:
    b_r = b + mean_i(r_i − c_i), which is b itself when the reward is correctness. (Without it,
    four solutions passing 2/3 of their tests each, none correct, got +0.47 each against b = 0.2.)"""
    base = batch.baselines()
    gap = torch.zeros_like(base).index_add_(0, group_ids, rewards - batch.correctness())
    return base + gap / torch.bincount(group_ids, minlength=len(base)).clamp(min=1)


def set_advantages(batch: Batch, preset, weighting: DictConfig, hadw_state: HADWState) -> None:
    """Advantages of every trajectory (the estimator on the shaped reward, then the optional
    weighting on correctness: both papers weigh by success rate), on the batch."""
    rewards, group_ids = batch.rewards(), batch.group_ids()
    kwargs = dict(preset.estimator_kwargs())
    if preset.estimator == "v05":
        kwargs["baselines"] = v05_baselines(batch, rewards, group_ids)
        kwargs["success_rates"] = batch.baselines()  # scale_by_std's variance: of the success rate, not the shaped reward
    adv = compute_advantages(preset.estimator, rewards, group_ids, **kwargs)
    if weighting.name != "none":
        # a weighting scales each rollout's row: a column of ones beside the advantages comes out as the weights
        both = apply_weighting(weighting.name, torch.stack([adv, torch.ones_like(adv)], 1), batch.correctness(), group_ids,
                               **weighting_kwargs(weighting, hadw_state))
        moved = both[:, 1][adv.abs() > 1e-8]  # the weight a rollout got, where its advantage carries one
        batch.unweighted_advantages = adv
        adv, batch.advantage_weights = both[:, 0].contiguous(), both[:, 1].contiguous()
        if moved.numel():
            batch.stats.update({"weighting/min": float(moved.min()), "weighting/max": float(moved.max())})
    batch.set_advantages(adv)


def step_metrics(batch: Batch, learn: dict) -> dict:
    """The step's record: what was trained (under DAPO the kept groups only; `accuracy_generated` counts
    every rollout), the controller's counts and rank 0's learner metrics. A batch with no rollouts (DAPO
    found no mixed group) has NaN figures, which the record leaves out: a 0 would be a point no rollout made."""
    trajectories = batch.trajectories
    if trajectories:
        reward = np.array([t.reward for t in trajectories])
        lengths = np.array([len(t.response_ids) for t in trajectories])
        prompts = np.array([len(t.prompt_ids) for t in trajectories])
        adv = batch.advantages()
        m = {
            "reward": reward.mean(), "reward_std": reward.std(), "reward_max": reward.max(), "reward_min": reward.min(),
            "accuracy": np.mean([t.correct for t in trajectories]),
            "response_length": lengths.mean(), "response_length_max": lengths.max(), "response_length_min": lengths.min(),
            "prompt_length": prompts.mean(), "prompt_length_max": prompts.max(),
            "truncated_frac": np.mean([t.truncated for t in trajectories]),
            # groups whose rewards are all equal: no signal for a group-mean baseline (TRL's frac_reward_zero_std)
            "groups_uniform_frac": np.mean([np.ptp(g.rewards) < 1e-8 for g in batch.groups if g.trajectories]),
            "adv_abs_mean": adv.abs().mean(), "adv_max": adv.max(), "adv_min": adv.min(),
        }
        m = {k: float(v) for k, v in m.items()}
    else:
        m = dict.fromkeys(("reward", "accuracy", "response_length", "truncated_frac", "adv_abs_mean"), float("nan"))
    m["groups"] = len(batch.groups)
    m.update(batch.stats)
    m.update({f"learner/{k}": v for k, v in learn.items() if k not in ("seconds",)})
    return m


# --------------------------------------------------------------------------------------------
# The step (its two drivers, sync and async, are in rlvr.train.drivers)
# --------------------------------------------------------------------------------------------
@dataclass
class StepParts:
    """What `train_step` uses besides the batch: built once per run."""

    cfg: DictConfig
    preset: object
    roles: Roles
    update: UpdateConfig
    hadw_state: HADWState
    micro_batching: int | ActivationBudget  # how micro-batches are cut: learner.micro_batch_size, `auto` worked out


def train_step(parts: StepParts, batch: Batch, step: int) -> dict:
    """Advantages -> mini-batch updates on the learners -> weight sync. Shared by both drivers.

    The learners hold version step-1 on entry and step on return; the engines get step.
    """
    cfg, roles = parts.cfg, parts.roles
    learners, rollout = roles.learners, roles.rollout
    # 2. advantages, then the optional weighting, written onto the batch's trajectories
    set_advantages(batch, parts.preset, cfg.weighting, parts.hadw_state)
    trajectories, async_m = batch.for_learners(step - 1, cfg.trainer.max_staleness, parts.preset.mask_truncated)
    # 3. learner.mini_batches optimizer steps for each of learner.epochs passes
    with roles.learners_busy:  # no replacement engine reloads from the learners while they update (async runs)
        colocated = cfg.cluster.mode == "colocated"
        if colocated:
            rollout.sleep()  # hand the shared accelerators to the learners (a no-op on CPU)
        try:
            oracle_m = {}
            if batch.oracle is not None and trajectories:
                oracle_m = gradient_cosine(batch, trajectories, learners, parts.update, parts.preset, step - 1, cfg.trainer.max_staleness,
                                           parts.micro_batching, seed=step_seed(cfg.seed, step), timeout_s=cfg.trainer.role_timeout_s)
            learn_start = time.perf_counter()
            plans = plan_mini_batches(trajectories, cfg.learner.mini_batches, len(learners), parts.micro_batching,
                                      seed=step_seed(cfg.seed, step))
            if trajectories:
                ranks = ray.get([l.train_step.remote(plan, parts.update) for l, plan in zip(learners, plans)], timeout=cfg.trainer.role_timeout_s)
                # the ranks' sums are all-gathered (rank 0 has them); memory is each rank's own
                learner_metrics = {**ranks[0], **{k: max(r[k] for r in ranks) for k in ("peak_rss_mb", "cuda_peak_gb") if k in ranks[0]}}
            else:
                log.warning("step %d: no trainable trajectories (%d stale), skipping the update", step, async_m["async/stale_dropped"])
                learner_metrics = {}
            learn_s = time.perf_counter() - learn_start
        finally:
            if colocated:  # a learner lost in its update sends the run to restart_learners: the engines must not stay asleep
                rollout.wake_up()
        # 4. new weights to the rollout engines, bucketed (cluster.weight_sync picks the transport)
        # (an engine lost meanwhile is replaced and loaded from the learners: the sync never hangs on it)
        sync_m = rollout.load_weights(cfg.cluster.weight_sync, learners, version=step)
    m = step_metrics(batch, learner_metrics)
    m.update(sync_m)
    m.update(async_m)
    m.update(oracle_m)
    m["time/learn"] = learn_s
    return m


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def train(cfg: DictConfig, keep_history: bool = True) -> dict:
    """Train as `cfg` says; returns the run's summary and its per-step history (the steps this call
    trained; empty with ``keep_history=False``, as `rlvr train` runs it: about 5 KiB a step held to the
    end, where metrics.jsonl has them all). SIGTERM or SIGINT stops it with a checkpoint (`RunStopped`, no summary)."""
    validate(cfg)  # bad keys and values fail here, before any actor starts
    preset = algorithm_preset(cfg.algorithm)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with hold_run_dir(run_dir):
        stop = StopRequest()
        try:
            return _train(cfg, preset, run_dir, stop, keep_history)
        except (KeyboardInterrupt, SystemExit) as e:
            stopped = stop.stop_behind(e)
            if stopped is None or isinstance(e, RunStopped):
                raise
            raise stopped from None
        finally:
            stop.restore()


def _train(cfg: DictConfig, preset, run_dir: Path, stop: StopRequest, keep_history: bool) -> dict:
    ckpt = resolve_resume(run_dir, str(cfg.resume.mode))
    if ckpt is not None:
        check_resume_config(ckpt, cfg)
    note_origin(run_dir, str(cfg.resume.mode), ckpt)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # The data first (a bad file fails in seconds, before Ray), then the cluster: one too small for
    # the placement fails before any model is converted or loaded.
    train_problems = load_problems(OmegaConf.to_container(cfg.data.train, resolve=True))
    eval_problems = evaluation_problems(cfg, train_problems)
    train_problems, warmup_problems = split_warmup(train_problems, cfg.algorithm.warmup_prompts, cfg.seed)
    stream = PromptStream(train_problems, seed=cfg.seed)
    if ckpt is not None:
        check_resume_data(ckpt, stream)
    else:
        set_aside_records(run_dir)
    write_text_whole(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))  # once a resume is known to be accepted
    start_ray(cfg)
    stop.install()
    check_fits(role_plan(cfg, preset), cluster_nodes())
    model_path = resolve_model_path(cfg.model.path, cfg.cache_dir)
    check_model_length(cfg, model_path)
    check_prompt_lengths(cfg, model_path, {"data.train": train_problems + warmup_problems, f"data.{cfg.eval.split}": eval_problems})
    try:
        check_lora_targets(LoraSettings.from_config(cfg.model.lora), model_path)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    log.info(
        "%s + weighting %s | model %s | data %s: %d train, %d held-out prompts | %d steps x %d prompts x n=%d | run_dir %s",
        cfg.algorithm.name, cfg.weighting.name, model_path, cfg.data.name, len(train_problems), len(eval_problems),
        cfg.trainer.steps, cfg.trainer.batch_size, cfg.algorithm.n, run_dir,
    )
    if cfg.eval.oracle.samples:  # inside the step, the bar standing still: up to minutes a step in the records
        log.info("the oracle draws %d more answers to each prompt every %d step(s), and its gradient against the step's",
                 cfg.eval.oracle.samples, cfg.eval.oracle.every)
    if cfg.rollout.top_p < 1:
        log.warning(
            "rollout.top_p=%s: the engines sample, and report log-probs, from the nucleus renormalised, while the learners' "
            "π is the whole softmax(logits/T); π/μ is then low by the nucleus's mass on every token, which the rollout "
            "correction and old_logprobs=rollout read as a mismatch. RL recipes keep top_p=1 (the default).", cfg.rollout.top_p)
    with running_roles(cfg, model_path, preset) as roles:
        generator = make_generator(cfg, roles.rollout, roles.verifier, model_path)
        run = Run(cfg, preset, roles, stream, generator, eval_problems, run_dir, model_path, stop, keep_history)
        if ckpt is not None:
            run.resume(ckpt)
        else:
            run.step_zero(warmup_problems)
        run.loop()
        if stop.signal is None or run.step >= run.total:
            return run.finish()
    # stopped with a checkpoint: outside `running_roles`, so kept roles stay for the same command again
    raise RunStopped(stop.signal, run.last.step if run.last is not None else None)


class TrainedStep(NamedTuple):
    """The last trained step: what a run that stops while collecting the next batch checkpoints."""

    step: int
    state: dict  # its checkpoint state (`Run.checkpoint`)
    saved: bool  # already on disk


class Run:
    """One `train()` call once its roles are up: the loop (`loop`), what each step leaves behind
    (`record`, `checkpoint`) and how the run comes back (`restore`, `restart_learners`)."""

    def __init__(self, cfg: DictConfig, preset, roles: Roles, stream: PromptStream, generator: Generator,
                 eval_problems: list[Problem], run_dir: Path, model_path: str, stop: StopRequest, keep_history: bool = True):
        self.cfg, self.roles, self.stream, self.generator = cfg, roles, stream, generator
        self.eval_problems, self.run_dir, self.model_path = eval_problems, run_dir, model_path
        self.sampling = SamplingConfig(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_tokens=cfg.rollout.max_tokens)
        self.controller = BudgetController(controller_config(cfg), generator, roles.value, self.sampling)
        self.parts = StepParts(cfg, preset, roles, update_config(cfg, preset), hadw_state(cfg.weighting), micro_batching(cfg, model_path))
        self.metrics_log = MetricsLog(run_dir, cfg)
        self.total = cfg.trainer.steps
        self.staleness = cfg.trainer.max_staleness  # 0: synchronous
        self.keep_history = keep_history
        self.history: list[dict] = []
        self.accuracies: list[tuple[int, float]] = []  # (trained step, held-out accuracy) for the summary
        self.start_step, self.step, self.heldout_before = 1, 0, None
        self.last: TrainedStep | None = None
        self.updating = False  # a step's update has begun and its checkpoint is not yet recorded
        self.latest_checkpoint: Path | None = None  # the latest checkpoint this run started from or wrote
        # What a run that loses its learners before its first checkpoint goes back to.
        self.initial = copy.deepcopy({"step": 0, "stream": stream.state_dict(), "hadw": self.parts.hadw_state.state_dict(),
                                      "controller": self.controller.state_dict(), "rng": rng_state(),
                                      "value": {"prompts": [], "success": []}})
        self.stop = stop
        self.bar = None

    # -- where the run starts --------------------------------------------------------------------
    def restore(self, state: dict) -> int:
        """Every role and the loop's state as of a checkpoint; the step to continue at."""
        self.stream.load_state_dict(state["stream"])
        self.parts.hadw_state.load_state_dict(state["hadw"])
        if state.get("controller") is not None:  # checkpoints from before V05Baseline have none
            self.controller.load_state_dict(state["controller"])
        set_rng_state(state["rng"])
        self.roles.rollout.load_weights(self.cfg.cluster.weight_sync, self.roles.learners, version=state["step"])
        return state["step"] + 1

    def resume(self, ckpt: Path) -> None:
        state = load_training_state(ckpt, self.roles)
        self.start_step, self.heldout_before = self.restore(state), state.get("heldout_before")
        self.latest_checkpoint = ckpt
        branch_from(self.run_dir, ckpt)
        self.metrics_log.rewind(self.start_step)
        log.info("resumed from %s: continuing at step %d (epoch %d)", ckpt, self.start_step, self.stream.epoch)
        if self.start_step <= self.total:  # steps to go: an earlier end's summary would say this run finished
            (self.run_dir / "summary.json").unlink(missing_ok=True)
        else:
            log.warning(
                "%s already holds step %d of trainer.steps=%d: nothing to train. Raise trainer.steps to go on, "
                "or pass resume=never (or another run_dir) to start fresh.", self.run_dir, state["step"], self.total
            )

    def step_zero(self, warmup_problems: list[Problem]) -> None:
        """A fresh run: V0.5's warm start (if any) and the held-out accuracy before training."""
        cfg, roles = self.cfg, self.roles
        step0: dict = {}
        warmup_decisions: list[dict] = []
        if warmup_problems:
            log.info("V0.5 warm start: rolling out %d held-out training prompts x %d to fill the value context", len(warmup_problems), cfg.algorithm.n)
            step0 = self.controller.warm_start(warmup_problems, seed=step_seed(cfg.seed, 0))
            warmup_decisions = step0.pop("decisions")
            log.info(
                "V0.5 warm start: %d prompts, %d rollouts in %.1f s; prior Brier %.4f (the context mean's %.4f), window %d",
                step0["warmup/prompts"], step0["warmup/rollouts"], step0["warmup/seconds"], step0["warmup/prior_brier"],
                step0["warmup/context_mean_brier"], step0["v05/window"],
            )
            # a learner lost before the first checkpoint goes back to the warmed-up state
            self.initial.update(controller=copy.deepcopy(self.controller.state_dict()), value=roles.value.state)
        eval_records: list[dict] = []
        if cfg.eval.at_start:
            step0.update(evaluate(self.generator, self.eval_problems, cfg,
                                  seed=evaluation_seed(cfg.seed, 0), per_prompt=eval_records))
            self.heldout_before = step0.get("eval/accuracy")
            log.info("step 0 held-out accuracy %.3f on %d prompts",
                     float("nan") if self.heldout_before is None else self.heldout_before, len(self.eval_problems))
        if step0:
            self.metrics_log.write(0, step0, eval_records=eval_records)
            if self.keep_history:
                self.history.append({"step": 0, **step0})
        if warmup_decisions:  # what the value context held before step 1 (`rlvr value-report` replays from it)
            write_records(self.run_dir / WARMUP_RECORDS, warmup_decisions)

    # -- the loop --------------------------------------------------------------------------------
    def make_batch(self, step: int) -> Batch:
        """1. rollouts: the controller decides how many per prompt, and scores them."""
        cfg, stream, controller = self.cfg, self.stream, self.controller
        start = time.perf_counter()
        batch = controller.collect(stream.next(cfg.trainer.batch_size), stream.next, seed=step_seed(cfg.seed, step))
        batch.stream_state = stream.state_dict()
        batch.controller_state = controller.state_dict()
        if self.staleness and self.roles.value is not None:  # the server moves on with the batches generated ahead
            batch.value_state = self.roles.value.state  # the controller's snapshot after this batch
        batch.stats["time/collect"] = time.perf_counter() - start
        if cfg.eval.oracle.samples and step % cfg.eval.oracle.every == 0:  # p* at the weights that sampled the batch
            batch.oracle = sample_oracle(self.generator, batch, self.sampling,
                                         cfg.eval.oracle.samples, oracle_seed(cfg.seed, step))
        return batch

    def loop(self) -> None:
        """Steps start_step..total: each batch through `train_step` (2.-4.), then `record` (5.) and
        `checkpoint` (6.). A learner rank that dies sends the run back to its last checkpoint."""
        self.stop.deferring = True  # from here a signal stops the run at the next step boundary, with a checkpoint
        self.bar = tqdm(total=self.total, initial=self.start_step - 1, desc="train", disable=not self.cfg.trainer.progress,
                        dynamic_ncols=True, file=sys.stderr)
        ahead = self.cfg.trainer.generate_ahead or self.staleness
        source = AsyncBatches(self.make_batch, self.start_step, self.total, ahead) if self.staleness else None
        self.step = self.start_step - 1
        try:
            while True:  # one pass, and one more after each learner restart
                batches = source if source is not None else sync_batches(self.make_batch, self.start_step, self.total)
                try:
                    for step, batch in enumerate(batches, start=self.start_step):
                        self.step = step
                        step_start = time.perf_counter()
                        self.updating = True
                        m = train_step(self.parts, batch, step)
                        step_start += m.get("time/oracle_gradient", 0.0)  # the oracle's time is logged apart
                        if source is not None:
                            source.synced_version(step)
                            m["time/step"] = time.perf_counter() - step_start + batch.stats.get("time/learner_wait", 0.0)
                        else:
                            m["time/step"] = time.perf_counter() - step_start + batch.stats["time/collect"]
                        self.record(step, batch, m)
                        stop = self.checkpoint(step, batch)
                        self.updating = False
                        if stop:
                            break
                    break
                except LEARNER_LOSS_ERRORS as e:
                    # a learner silent past its deadline (stopped, hung) is as lost as a dead one
                    silent = isinstance(e, ray.exceptions.GetTimeoutError)
                    if not (silent or learners_lost(self.roles.learners)):
                        raise
                    if self.staleness:  # the batches generated ahead were sampled from weights that died with it
                        raise RoleFailed(f"a learner rank was lost ({type(e).__name__}: {first_line(e)}); an async run "
                                         "(trainer.max_staleness >= 1) does not restart its learners") from e
                    self.restart_learners(e)
        except RoleFailed as e:
            # Failing while collecting the next batch, the learners still hold the last trained
            # step's weights, so that step's checkpoint is exact. Failing within a step (its weight
            # sync, its held-out evaluation), they may hold the next step's: nothing is saved then.
            if self.last is not None and not self.last.saved and not self.updating:
                self.latest_checkpoint = save_training_state(self.run_dir, self.last.step, self.roles, self.last.state, self.cfg)
                self.last = self.last._replace(saved=True)
                log.info("checkpoint %s", self.latest_checkpoint)
            where = f"a checkpoint at step {self.last.step}" if self.last is not None and self.last.saved else "its last checkpoint"
            raise RoleFailed(f"{e}. The run stopped with {where}; the same command resumes it.") from e
        finally:
            if source is not None:
                source.close(300 if sys.exc_info()[0] is None else 10)  # an abort need not wait for the batch in flight
            self.stop.deferring = False
            self.bar.close()
            self.metrics_log.close()

    def record(self, step: int, batch: Batch, m: dict) -> None:
        """5. metrics: the step's, the oracle's and the held-out evaluation's, to the log and the console."""
        cfg = self.cfg
        m["gen_tokens_per_s"] = m.get("gen_tokens", 0) / max(m.get("time/generate", 1e-9), 1e-9)
        if m.get("learner/tokens"):  # the batch's trained tokens (every rank's), per second of the learn phase, all epochs
            m["learn_tokens_per_s"] = m["learner/tokens"] / max(m.get("time/learn", 1e-9), 1e-9)
        m.update(fault_metrics(self.roles))
        eval_records, oracle_records = [], []
        if batch.oracle is not None:
            preset = self.parts.preset
            oracle_m, oracle_records = oracle_metrics(batch, batch.oracle, cfg.algorithm.n, preset.estimator, preset.estimator_kwargs(),
                                                      weight_gain=cfg.weighting.lam if cfg.weighting.name == "hadw" else 1.0)
            m.update(oracle_m)
        if cfg.trainer.eval_every and (step % cfg.trainer.eval_every == 0 or step == self.total):
            eval_start = time.perf_counter()
            every = cfg.eval.pass_at_k_every
            sampled = not every or step % every == 0 or step == self.total
            m.update(evaluate(self.generator, self.eval_problems, cfg,
                              evaluation_seed(cfg.seed, step), sampled, eval_records))
            m["time/eval"] = time.perf_counter() - eval_start
        self.metrics_log.write(step, m, batch.decisions, eval_records, oracle_records)
        if self.keep_history:
            self.history.append({"step": step, **m})
        if "eval/accuracy" in m:
            self.accuracies.append((step, m["eval/accuracy"]))
        self.bar.update(1)
        tqdm.write(console_line(step, self.total, m), file=sys.stdout)
        sys.stdout.flush()

    def checkpoint(self, step: int, batch: Batch) -> bool:
        """6. checkpoint: periodically, at the end, and when asked to stop (then True). It records the
        trained step; an async run regenerates whatever was generated ahead of it."""
        cfg, value = self.cfg, self.roles.value
        state = {
            "step": step,
            "epoch": batch.stream_state["epoch"],
            "stream": batch.stream_state,
            "controller": batch.controller_state,
            "hadw": self.parts.hadw_state.state_dict(),
            "rng": rng_state(),
            "heldout_before": self.heldout_before,
            # the value server's state after this batch: the controller's snapshot
            "value": value.state if value is not None and self.staleness == 0 else batch.value_state,
        }
        every = cfg.trainer.save_every
        stopping = self.stop.signal is not None  # read once: a signal arriving in between must not stop an unsaved run
        saved = (every and step % every == 0) or step == self.total or stopping
        if saved:
            with self.roles.learners_busy:
                self.latest_checkpoint = save_training_state(self.run_dir, step, self.roles, state, cfg)
            log.info("checkpoint %s", self.latest_checkpoint)
        self.last = TrainedStep(step, state, bool(saved))
        if stopping:
            log.warning("stopped at step %d; `rlvr train` with the same run_dir resumes from here", step)
            return True
        return False

    def restart_learners(self, error: Exception) -> None:
        """A learner rank died: its optimizer state went with it. Restart every rank, go back to the
        last checkpoint (or the start) and train the steps since again."""
        cfg, roles = self.cfg, self.roles
        t0 = time.perf_counter()
        self.last = None  # its weights died with the learners: if the restart fails, there is nothing to checkpoint
        self.updating = False
        restart_learners(cfg, roles, self.model_path, error)
        # this run's own latest: the checkpoint it resumed from (resume=PATH may be another run's,
        # or an earlier one of this run_dir than its latest) or the last it wrote
        back_to = self.latest_checkpoint
        state = load_training_state(back_to, roles) if back_to is not None else self.initial
        if back_to is None and roles.value is not None:
            roles.value.load(self.initial["value"])
        self.start_step, self.last = self.restore(state), None
        self.history = [h for h in self.history if h["step"] < self.start_step]
        self.accuracies = [a for a in self.accuracies if a[0] < self.start_step]
        self.metrics_log.rewind(self.start_step)
        self.bar.n = self.start_step - 1
        self.bar.refresh()
        roles.learner_restarts.lost(t0)
        log.warning("restarted every learner rank from %s, training again from step %d", back_to or "the initial weights", self.start_step)

    def finish(self) -> dict:
        summary_path = self.run_dir / "summary.json"
        if self.start_step > self.total and summary_path.exists():  # a finished run resumed: nothing trained, nothing to rewrite
            return {"summary": json.loads(summary_path.read_text()), "history": self.history}
        summary = {
            "heldout_before": self.heldout_before,
            # a trained step's figure only: with eval_every=0 step 0's was reported as the trained model's
            "heldout_after": self.accuracies[-1][1] if self.accuracies else None,
            # resumed past trainer.steps (lowered, or another run's later checkpoint): the checkpoint's step
            "steps": self.step if self.total >= self.start_step else self.start_step - 1,
            "run_dir": str(self.run_dir),
        }
        write_text_whole(summary_path, json.dumps(summary, indent=2))  # a resume of the finished run reads it back
        log.info("done: held-out accuracy %s -> %s", summary["heldout_before"], summary["heldout_after"])
        return {"summary": summary, "history": self.history}
