"""Roles that outlive their actor: SIGKILL the verifier pool or the value server, the run goes on."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray

from rlvr.faults import RestartingRole, RoleFailed
from rlvr.learner import PolicyLearner


@ray.remote(num_cpus=0.1)
class Counter:
    def __init__(self):
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n

    def state(self) -> int:
        return self.n

    def load(self, n: int) -> None:
        self.n = n

    def pid(self) -> int:
        return os.getpid()


def sigkill(role: RestartingRole) -> None:
    pid = role.call("pid")
    os.kill(pid, signal.SIGKILL)
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.05)


def test_a_dead_actor_is_replaced_restored_and_the_call_redone(ray_session):
    role = RestartingRole("counter", Counter.remote, max_restarts=2, snapshot_method="state", restore_method="load")
    assert role.call("add", 3) == 3 and role.snapshot() == 3
    role.call("add", 1)  # 4, after the snapshot
    sigkill(role)
    assert role.call("add", 10) == 13  # the replacement came back at the snapshot (3)
    assert role.restarts == 1 and role.seconds_lost > 0 and role.node() == ray.util.get_node_ip_address()

    sigkill(role)
    assert role.call_or(-1, "add", 1) == -1  # no waiting on the replacement
    assert role.call("state") == 3  # ... which was restored meanwhile
    assert role.restarts == 2

    sigkill(role)
    with pytest.raises(RoleFailed, match=r"the counter actor on .* died 3 times, more than trainer.max_restarts=2 allows; last error: "):
        role.call("add", 1)
    role.kill()


def wait_for_step(run_dir: Path, step: int, timeout_s: float = 600) -> None:
    """Until the run's metrics.jsonl has a record of ``step``."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if metrics.exists() and any(json.loads(l)["step"] == step for l in metrics.read_text().splitlines() if l.strip()):
            return
        time.sleep(0.1)


def killer(run_dir: Path, after_step: int, actor_class: str, sig: int = signal.SIGKILL) -> threading.Thread:
    """Send ``sig`` to every process of ``actor_class`` once metrics.jsonl has ``after_step``."""

    def run():
        wait_for_step(run_dir, after_step)
        # only this test's Ray session: its processes descend from this one (another Ray job on
        # the machine has actors of the same class)
        for p in psutil.Process().children(recursive=True):
            try:
                if (p.cmdline() or [""])[0].startswith(f"ray::{actor_class}"):
                    os.kill(p.pid, sig)
            except psutil.NoSuchProcess:
                pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


SAME = ("reward", "accuracy", "rollouts", "response_length", "learner/grad_norm")


@pytest.mark.slow
def test_v05_run_survives_its_verifier_and_value_server_dying(tmp_path, ray_session, tiny_model):
    from test_e2e import TINY

    from rlvr.config import compose
    from rlvr.trainer import train

    base = TINY + ["algorithm=v05", "trainer.steps=4", "trainer.eval_every=0", "trainer.save_every=0"]
    straight = train(compose(base + [f"run_dir={tmp_path / 'straight'}"]))["history"]

    faulty_dir = tmp_path / "faulty"
    threads = [killer(faulty_dir, 1, "_VerifierPoolImpl"), killer(faulty_dir, 2, "ValueServer")]
    faulty = train(compose(base + [f"run_dir={faulty_dir}"]))["history"]
    for t in threads:
        t.join(timeout=5)
    steps = {h["step"]: h for h in faulty if h["step"] >= 1}
    assert sorted(steps) == [1, 2, 3, 4]
    assert steps[4]["faults/verifier_restarts"] == 1 and steps[4]["faults/value_restarts"] == 1
    assert steps[1]["faults/verifier_restarts"] == 0 and steps[4]["faults/seconds_lost"] > 0
    # The verifier's batch is scored again, with the same rewards: steps 1 and 2 are the straight run's.
    want = {h["step"]: h for h in straight if h["step"] >= 1}
    for s in (1, 2):
        assert {k: steps[s][k] for k in SAME} == {k: want[s][k] for k in SAME}
    # The step that found the value server dead used the uninformed prior; the others the server's.
    decisions = [json.loads(l) for l in (faulty_dir / "decisions.jsonl").read_text().splitlines()]
    per_step = [decisions[i : i + 4] for i in range(0, 16, 4)]
    uninformed = [i + 1 for i, ds in enumerate(per_step) if all(d["prior"] == 0.5 and d["uncertainty"] == 0.5 for d in ds)]
    # step 1 reads the warm start's context; step 3 used the uninformed prior if the kill landed before its prediction
    assert set(uninformed) <= {3}


@pytest.mark.slow
def test_a_role_that_keeps_dying_stops_with_a_checkpoint_and_resumes(tmp_path, ray_session, tiny_model):
    from test_e2e import TINY

    from rlvr.config import compose
    from rlvr.trainer import train

    run_dir = tmp_path / "run"
    base = TINY + ["algorithm=grpo", "trainer.steps=3", "trainer.eval_every=0", "trainer.save_every=0", f"run_dir={run_dir}"]
    t = killer(run_dir, 1, "_VerifierPoolImpl")
    with pytest.raises(RoleFailed, match=r"the verifier actor on .* died 1 times, more than trainer.max_restarts=0 allows.*checkpoint at step 1"):
        train(compose(base + ["trainer.max_restarts=0"]))
    t.join(timeout=5)
    assert (run_dir / "checkpoints" / "step_00000001").is_dir()
    history = train(compose(base))["history"]  # resumes at step 2
    assert [h["step"] for h in history if h["step"] >= 1] == [2, 3]


@pytest.mark.slow
def test_a_killed_or_stopped_rollout_engine_is_replaced_and_the_run_is_unchanged(tmp_path, ray_session, tiny_model):
    """SIGKILL the engine after step 1, SIGSTOP its replacement after step 2 (caught by
    rollout.timeout_s, in step 3's generate call or its weight sync, wherever the signal lands):
    each replacement gets the current weights and redraws the same samples."""
    from test_e2e import TINY

    from rlvr.config import compose
    from rlvr.trainer import train

    base = TINY + ["algorithm=grpo", "trainer.steps=4", "trainer.eval_every=0", "trainer.save_every=0", "rollout.timeout_s=20"]
    straight = {h["step"]: h for h in train(compose(base + [f"run_dir={tmp_path / 'straight'}"]))["history"]}
    faulty_dir = tmp_path / "faulty"
    threads = [killer(faulty_dir, 1, "RolloutEngine"), killer(faulty_dir, 2, "RolloutEngine", signal.SIGSTOP)]
    faulty = {h["step"]: h for h in train(compose(base + [f"run_dir={faulty_dir}"]))["history"]}
    for t in threads:
        t.join(timeout=5)
    restarts = [faulty[s]["faults/rollout_restarts"] for s in (1, 2, 3, 4)]
    assert restarts[:2] == [0, 1] and restarts[3] == 2 and restarts[2] in (1, 2)
    assert faulty[4]["faults/seconds_lost"] >= 20  # the stopped engine was given its full deadline
    for s in (1, 2, 3, 4):
        assert {k: faulty[s][k] for k in SAME} == {k: straight[s][k] for k in SAME}
        assert faulty[s]["learner/rollout_logprob_diff"] == pytest.approx(straight[s]["learner/rollout_logprob_diff"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("backend, engines", [("ray", 2), ("ipc", 1)])  # ipc pairs learner rank r with engine r
def test_an_engine_stopped_before_a_weight_sync_is_replaced_and_loaded_not_waited_for(backend, engines, ray_session, tiny_model):
    """A SIGSTOPped engine never answers its load: the sync gives up on it after rollout.timeout_s,
    any other engine keeps the weights it loaded, and the replacement gets the learner's."""
    from learner_helpers import tiny_engine_config, tiny_learner_config

    from rlvr.placement import node_address
    from rlvr.rollout import RolloutEngine, RolloutPool
    from rlvr.trainer import reload_engine
    from rlvr.weight_sync import sync_weights

    host, port = ray.get(node_address.remote())
    learner = PolicyLearner.options(num_cpus=0.1).remote(tiny_learner_config(tiny_model, threads=1), 0, 1, host, port)
    start = lambda i: RolloutEngine.options(num_cpus=0.1).remote(tiny_engine_config(tiny_model, "rollout=hf"))  # noqa: E731
    pool = RolloutPool([start(i) for i in range(engines)], start, max_restarts=1, timeout_s=5, ready_timeout_s=120)
    pool.reload = lambda engine: reload_engine("ray", [learner], engine, pool.version)
    stopped = pool.engines[0]
    os.kill(ray.get(stopped.__ray_call__.remote(lambda self: os.getpid())), signal.SIGSTOP)
    pool.version = 7
    m = sync_weights(backend, [learner], pool.engines, version=7, timeout_s=pool.timeout_s, on_failure=pool.replace_failed)
    assert pool.restarts == 1 and pool.engines[0] is not stopped and pool.seconds_lost >= 5
    assert ray.get([e.weight_version.remote() for e in pool.engines]) == [7] * engines
    assert m["time/sync"] >= 5
    for actor in [learner, *pool.engines]:
        ray.kill(actor)


@pytest.mark.slow
def test_a_killed_learner_restarts_from_the_last_checkpoint_and_the_run_is_unchanged(tmp_path, ray_session, tiny_model):
    """SIGKILL the learner after step 3 (checkpoint at step 2): every rank restarts, reloads step 2
    and trains step 3 again, with the same seeds, so steps 3 and 4 are the straight run's."""
    from test_e2e import TINY

    from rlvr.config import compose
    from rlvr.trainer import train

    base = TINY + ["algorithm=grpo", "trainer.steps=4", "trainer.eval_every=0", "trainer.save_every=2"]
    straight = {h["step"]: h for h in train(compose(base + [f"run_dir={tmp_path / 'straight'}"]))["history"]}
    faulty_dir = tmp_path / "faulty"
    t = killer(faulty_dir, 3, "PolicyLearner")
    history = train(compose(base + [f"run_dir={faulty_dir}"]))["history"]
    t.join(timeout=5)
    faulty = {h["step"]: h for h in history}
    assert sorted(s for s in faulty if s >= 1) == [1, 2, 3, 4]
    assert faulty[4]["faults/learner_restarts"] == 1 and faulty[4]["faults/seconds_lost"] > 0
    for s in (1, 2, 3, 4):
        assert {k: faulty[s][k] for k in SAME} == {k: straight[s][k] for k in SAME}
    # step 3 was trained twice: metrics.jsonl holds both records, the second is the straight run's
    records = [json.loads(l) for l in (faulty_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["step"] >= 1] == [1, 2, 3, 3, 4]
