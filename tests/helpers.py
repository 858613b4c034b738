"""What several test modules share: the tiny-model overrides of a training run, learner and
engine configs built from the config tree like the trainer's, and the helpers of the fault and
resume tests (killing an actor class after a step; `rlvr` as a subprocess)."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import psutil

from rlvr.config import algorithm_preset, compose
from rlvr.learner.actor import LearnerConfig, UpdateConfig
from rlvr.rollout.engines import EngineConfig
from rlvr.runtime.roles import engine_config, learner_config
from rlvr.train.loop import update_config
from rlvr.types import MiniBatch, Trajectory


def tiny_learner_config(model_path: str, *overrides: str, **fields) -> LearnerConfig:
    """`fields` replace values after composing (e.g. threads=1 for a component test)."""
    return replace(learner_config(compose(["model=tiny-random", *overrides]), model_path), **fields)


def tiny_update_config(*overrides: str, **fields) -> UpdateConfig:
    cfg = compose(["model=tiny-random", *overrides])
    return replace(update_config(cfg, algorithm_preset(cfg.algorithm)), **fields)


def tiny_engine_config(model_path: str, *overrides: str, **fields) -> EngineConfig:
    return replace(engine_config(compose(["model=tiny-random", *overrides]), model_path), **fields)


def mini_batch(*micro_batches: list[Trajectory]) -> MiniBatch:
    """One mini-batch of the given micro-batches, its global counts taken from them (one rank)."""
    seqs = [t for mb in micro_batches for t in mb]
    return MiniBatch(list(micro_batches), tokens=sum(t.num_tokens for t in seqs), sequences=sum(t.num_tokens > 0 for t in seqs))


# (a module-level function, so that an actor can import it by name: give it to __ray_call__)
def adapter_weights(learner) -> dict:
    """Inside a learner actor: its LoRA weights, whole (gathered from the ranks under ZeRO-3)."""
    import deepspeed

    params = {n: p for n, p in learner.engine.module.named_parameters() if ".lora_" in n}
    with deepspeed.zero.GatheredParameters(list(params.values()), enabled=learner.cfg.zero_stage == 3):
        return {n: p.detach().clone() for n, p in params.items()}


# -- two families of prompts, and new ones of each: the value-model tests' context and queries ----
ARITH = [
    "What is 2 + 3?",
    "What is 17 - 4?",
    "Compute 45 + 12.",
    "What is 9 + 8?",
    "Calculate 30 - 7.",
    "What is 6 + 11?",
]
LEGS = [
    "How many legs do 3 cats and 2 birds have?",
    "Count the legs of 4 spiders and 1 dog.",
    "How many legs do 2 horses and 5 chickens have in total?",
    "Count the total number of legs of 3 ants and 2 cows.",
]
NEW_ARITH = ["What is 14 + 5?", "Compute 81 - 22."]
NEW_LEGS = ["How many legs do 6 ducks and 1 goat have?", "Count the legs of 2 beetles and 3 sheep."]


# -- training runs on the tiny random model ---------------------------------------------------------
TINY = [
    "model=tiny-random",
    "trainer.steps=2",
    "trainer.batch_size=4",
    "trainer.eval_every=2",
    "eval.size=4",
    "rollout.max_tokens=16",
    "algorithm.overlong_buffer=4",
    "learner.lr=1e-3",
    "learner.micro_batch_size=8",
    "verifier.timeout_s=10",
    "cluster.keep_roles=true",  # each run resets the previous test's actors instead of starting its own
    # odd_length decides correctness, not math: a random model never earns the strict math term and
    # DAPO's filter (on correctness) would drop every group
    "verifier.terms=[{fn: 'e2e_rewards:odd_length', weight: 1.0, correctness: true}, {fn: math, weight: 1.0, correctness: false}]",
]

# metrics a fault must not change: the step's samples, rewards and gradient
SAME = ("reward", "accuracy", "rollouts", "response_length", "learner/grad_norm")

TESTS = Path(__file__).resolve().parent

# a 4-step V0.5 + HA-DW run, checkpointed every 2 steps: the resume tests' run
RESUME_ARGS = [
    "algorithm=v05",
    "weighting=hadw",
    "model=tiny-random",
    "trainer.steps=4",
    "trainer.batch_size=4",
    "trainer.save_every=2",
    "trainer.keep_checkpoints=3",
    "trainer.eval_every=0",
    "trainer.progress=false",
    "data.train.size=12",
    "algorithm.warmup_prompts=4",  # V0.5's warm start runs once: a resumed run holds the same prompts out
    "eval.size=4",
    "rollout.max_tokens=12",
    "learner.lr=1e-3",
    "learner.mini_batches=2",  # the recomputed-pi_old path, with its seeded mini-batch split
    "learner.lr_warmup_steps=2",  # an lr schedule, whose place the learner's checkpoint keeps
    "learner.lr_schedule=cosine",
    "verifier.terms=[{fn: math, weight: 1.0}, {fn: 'e2e_rewards:odd_length', weight: 1.0}]",
    "eval.oracle.samples=4",  # the oracle's figures must come back the same after a resume
]


# -- actors kept for a pytest worker's whole run ---------------------------------------------------
# A component test needs a live learner or engine, not a new process: starting one costs seconds
# (imports, DeepSpeed, vLLM), resetting a kept one a fraction. This is `cluster.keep_roles`
# (rlvr/runtime/roles.py) for one actor at a time: the same `reset` protocol (the initial weights from disk, a
# new optimizer, version 0) and the same Ray-session scope (the simulated-cluster tests restart Ray,
# and the actors of the old session are gone with it), without a role's placement group, which a
# component test does not have. An actor that died is started anew (the fault tests signal every
# actor of a class in their session).
_kept_actors: dict = {"session": None, "learners": [], "engines": {}, "pids": set()}


def _kept_for_this_session() -> dict:
    from rlvr.runtime.roles import ray_session

    session = ray_session()
    if _kept_actors["session"] != session:
        _kept_actors.update(session=session, learners=[], engines={}, pids=set())
    return _kept_actors


def kept_learner(cfg: LearnerConfig, index: int = 0):
    """A single-rank PolicyLearner with `cfg`'s settings and the initial weights. ``index`` tells
    apart learners a test needs at the same time. The test must not kill it."""
    import ray

    from rlvr.learner.actor import PolicyLearner
    from rlvr.runtime.placement import node_address

    learners = _kept_for_this_session()["learners"]
    if len(learners) > index and _reset(learners[index], cfg, None):
        return learners[index]
    while len(learners) <= index:
        learners.append(None)
    host, port = ray.get(node_address.remote())
    learners[index] = _spare_from_faults(PolicyLearner.options(num_cpus=0.1).remote(cfg, 0, 1, host, port))
    return learners[index]


def kept_engine(cfg: EngineConfig):
    """A RolloutEngine of `cfg` (one per distinct config) at the initial weights, version 0. The
    test must not kill it."""
    from rlvr.rollout.pool import RolloutEngine

    engines = _kept_for_this_session()["engines"]
    key = repr(cfg)
    if key not in engines or not _reset(engines[key], None):
        engines[key] = _spare_from_faults(RolloutEngine.options(num_cpus=0.1).remote(cfg))
    return engines[key]


def _spare_from_faults(actor):
    """Record a kept actor's process, which `signal_actors` leaves alone: the fault tests signal the
    actors of the run they test, not those kept for the component tests."""
    import ray

    _kept_actors["pids"].add(ray.get(actor.__ray_call__.remote(lambda self: os.getpid())))
    return actor


def _reset(actor, *args) -> bool:
    """Reset a kept actor; False if it died (or hangs) meanwhile."""
    import ray

    try:
        ray.get(actor.reset.remote(*args), timeout=120)
        return True
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        ray.kill(actor)
        return False


def start_test_ray() -> None:
    """The local Ray of a pytest run (conftest's `ray_session`): 2 CPUs, and the test helpers'
    modules (reward functions named in the configs) importable in every actor."""
    import ray

    ray.init(
        address="local",  # not a cluster another pytest worker started (Ray would join the one /tmp/ray recorded)
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {
                "TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"],
                "HF_HUB_OFFLINE": "1",
                "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]),
            }
        },
    )


def at_step(monkeypatch, step: int, action: Callable[[], None], before: bool = False) -> None:
    """Run ``action`` once, right after the trainer's update of ``step`` returns (its weights are on
    the engines; step + 1's batch is next), or with ``before`` right before it (step's batch is
    generated and scored; its update and weight sync are next). A fault placed here lands at a
    named point of the run, whatever the box's speed: the test waits on no file and no clock."""
    import rlvr.train.loop as trainer

    inner, done = trainer.train_step, []

    def hooked(parts, batch, s: int) -> dict:
        if before and s == step and not done:
            done.append(action())
        m = inner(parts, batch, s)
        if not before and s == step and not done:
            done.append(action())
        return m

    monkeypatch.setattr(trainer, "train_step", hooked)


def in_weight_sync(monkeypatch, step: int, action: Callable[[], None]) -> None:
    """Run ``action`` once, as the weight sync of ``step`` starts (the learners have updated; the
    engines have not loaded the new weights)."""
    from rlvr.rollout.pool import RolloutPool

    inner, done = RolloutPool.load_weights, []

    def hooked(pool, backend: str, learners: list, version: int) -> dict:
        if version == step and not done:
            done.append(action())
        return inner(pool, backend, learners, version)

    monkeypatch.setattr(RolloutPool, "load_weights", hooked)


def signal_actors(actor_class: str, sig: int = signal.SIGKILL) -> Callable[[], None]:
    """An `at_step` action: send ``sig`` to every process of ``actor_class`` but the kept ones (`kept_learner`, `kept_engine`)."""

    def send() -> None:
        # only this test's Ray session: its processes descend from this one (another Ray job on
        # the machine has actors of the same class)
        for p in psutil.Process().children(recursive=True):
            try:
                if (p.cmdline() or [""])[0].startswith(f"ray::{actor_class}") and p.pid not in _kept_actors["pids"]:
                    os.kill(p.pid, sig)
            except psutil.NoSuchProcess:
                pass

    return send


def rlvr_train(run_dir: Path, *extra: str, kill_at_step: int | None = None) -> subprocess.CompletedProcess | None:
    """`rlvr train` in a subprocess on RESUME_ARGS + extra; SIGKILLed, with its whole process group,
    once its checkpoint of ``kill_at_step`` exists."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "rlvr.cli", "train", *RESUME_ARGS, f"run_dir={run_dir}", *extra]
    log = open(run_dir.parent / f"{run_dir.name}-{'killed' if kill_at_step else 'run'}.log", "a")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if kill_at_step is None:
        assert proc.wait(timeout=600) == 0, (run_dir.parent / f"{run_dir.name}-run.log").read_text()[-3000:]
        return None
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and latest.read_text().strip() == f"step_{kill_at_step:08d}":
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its Ray cluster and every actor, no clean-up
    proc.wait()
    time.sleep(2)
    return None


def train_in_process(run_dir: Path, *extra: str) -> dict:
    """`train()` here on RESUME_ARGS + extra, on the previous run's actors where they fit
    (`cluster.keep_roles`): what `rlvr_train` does, without a new interpreter, Ray and actors."""
    from rlvr.config import compose
    from rlvr.train.loop import train

    return train(compose([*RESUME_ARGS, "cluster.keep_roles=true", *extra, f"run_dir={run_dir}"]))


def run_cli(*args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    proc = subprocess.run([sys.executable, "-m", "rlvr.cli", *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


# Probe source (for `python -c`) that gives glibc's `mallinfo2` its struct: `heap_info()` returns it.
# Test probes run in fresh processes, since the heap figures they read are the whole process's.
MALLINFO2 = """
import ctypes
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = MallInfo2
def heap_info():
    return _libc.mallinfo2()
"""
