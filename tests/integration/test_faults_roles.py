"""Roles that outlive their actor, one at a time: a restarting role replaces a killed actor and
redoes the call; a stopped engine does not hang a weight sync."""

import os
import signal
import threading
import time

import psutil
import pytest
import ray

from rlvr.learner.actor import PolicyLearner
from rlvr.runtime.faults import RestartingRole, RoleFailed, gather
from rlvr.weight_sync import ipc


def fresh_learner(tiny_model: str):
    """A learner of its own: these tests stop or kill it, so the kept actors cannot serve."""
    from helpers import tiny_learner_config

    from rlvr.runtime.placement import node_address

    host, port = ray.get(node_address.remote())
    return PolicyLearner.options(num_cpus=0.1).remote(tiny_learner_config(tiny_model, threads=1), 0, 1, host, port)


def fresh_engine(tiny_model: str):
    """An HF engine of its own, for the same reason."""
    from helpers import tiny_engine_config

    from rlvr.rollout.pool import RolloutEngine

    return RolloutEngine.options(num_cpus=0.1).remote(tiny_engine_config(tiny_model, "rollout=hf"))


def pid_of(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


@pytest.mark.slow
@pytest.mark.parametrize("backend, engines", [("ray", 2), ("ipc", 1)])  # ipc pairs learner rank r with engine r
def test_an_engine_stopped_before_a_weight_sync_is_replaced_and_loaded_not_waited_for(backend, engines, ray_session, tiny_model):
    """A SIGSTOPped engine never answers its load: the sync gives up on it after rollout.timeout_s,
    any other engine keeps the weights it loaded, and the replacement gets the learner's."""
    from rlvr.rollout.pool import RolloutPool
    from rlvr.runtime.roles import reload_engine

    learner = fresh_learner(tiny_model)
    start = lambda i: fresh_engine(tiny_model)  # noqa: E731
    pool = RolloutPool([start(i) for i in range(engines)], start, max_restarts=1, timeout_s=5, ready_timeout_s=120)
    pool.reload = lambda engine: reload_engine("ray", [learner], engine, pool.version, timeout_s=120)
    stopped = pool.engines[0]
    os.kill(pid_of(stopped), signal.SIGSTOP)
    m = pool.load_weights(backend, [learner], version=7)
    assert pool.policy.restarts == 1 and pool.engines[0] is not stopped and pool.policy.seconds_lost >= 5
    assert ray.get([e.weight_version.remote() for e in pool.engines]) == [7] * engines
    assert m["time/sync"] >= 5
    # the stopped engine never opened its bucket: the learner's release still removed the file
    assert not list(ipc.SHM_DIR.glob(f"{ipc.FILE_PREFIX}{pid_of(learner)}-*"))
    for actor in [learner, *pool.engines]:
        ray.kill(actor)


@pytest.mark.slow
def test_an_engine_stopped_before_colocated_sleep_is_replaced_not_waited_for(ray_session, tiny_model):
    """Colocated mode puts the engines to sleep before each update and wakes them after it: a
    SIGSTOPped engine hung that call for good. Now it is replaced after rollout.timeout_s."""
    from rlvr.rollout.pool import RolloutPool

    start = lambda i: fresh_engine(tiny_model)  # noqa: E731
    pool = RolloutPool([start(0)], start, max_restarts=1, timeout_s=5, ready_timeout_s=120)
    stopped = pool.engines[0]
    os.kill(pid_of(stopped), signal.SIGSTOP)
    t0 = time.perf_counter()
    pool.sleep()
    assert pool.policy.restarts == 1 and pool.engines[0] is not stopped and 5 <= time.perf_counter() - t0 < 120
    pool.wake_up()  # the replacement answers
    ray.kill(pool.engines[0])


@pytest.mark.slow
def test_an_engine_the_generating_thread_replaced_is_not_replaced_again_by_the_sync(ray_session, tiny_model):
    """An async run: the generating thread and the weight sync both find engine 0 lost, and the
    generating thread replaces it first. The sync names the handle it waited on, so its failure
    does not take the replacement for the lost engine (which killed it and charged a second death)."""
    from rlvr.rollout.pool import RolloutPool

    start = lambda i: fresh_engine(tiny_model)  # noqa: E731
    pool = RolloutPool([start(0)], start, max_restarts=1, timeout_s=5, ready_timeout_s=120)
    waited_on = list(pool.engines)  # what load_weights hands sync_weights
    lost = pool.engines[0]
    ray.kill(lost)
    # the generating thread, first; it reloads once the trainer's update and sync (which hold the
    # learners) are done, so the replacement's version names the weights the learners hand it
    busy, reloaded = threading.RLock(), []
    pool.reload_lock, pool.reload = busy, lambda engine: reloaded.append(pool.version)
    with busy:
        generating = threading.Thread(target=pool._replace, args=(0, RuntimeError("lost in generate"), lost))
        generating.start()
        time.sleep(1)
        assert reloaded == []  # waiting, not exporting behind the update under the version before it
        pool.version = 7  # the sync of step 7 began
    generating.join(120)
    assert reloaded == [7]
    replacement = pool.engines[0]
    pool.replace_failed({0: RuntimeError("lost in the weight sync")}, time.perf_counter(), waited_on)
    assert pool.policy.restarts == 1 and pool.engines[0] is replacement
    assert ray.get(replacement.weight_version.remote(), timeout=30) is not None  # alive
    ray.kill(replacement)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ray", "ipc"])
def test_a_learner_stopped_before_a_weight_sync_raises_at_its_deadline(backend, ray_session, tiny_model):
    """The learners' side of a sync has a deadline too (trainer.role_timeout_s in a run): a SIGSTOPped
    learner rank raises GetTimeoutError, which the loop treats as a lost learner, instead of hanging."""
    from rlvr.rollout.pool import RolloutPool

    learner, engine = fresh_learner(tiny_model), fresh_engine(tiny_model)
    pool = RolloutPool([engine], timeout_s=60)
    assert pool.load_weights(backend, [learner], version=1)["sync/bytes"] > 0  # both sides up, with no deadline on start-up
    pool.learner_timeout_s = 5
    pid = pid_of(learner)
    os.kill(pid, signal.SIGSTOP)
    start = time.perf_counter()
    with pytest.raises(ray.exceptions.GetTimeoutError):
        pool.load_weights(backend, [learner], version=2)
    assert 5 <= time.perf_counter() - start < 60
    assert ray.get(engine.weight_version.remote()) == 1  # the engine kept the weights it had
    os.kill(pid, signal.SIGKILL)
    ray.kill(engine)


@pytest.mark.slow
def test_a_learner_lost_while_engines_read_its_buckets_is_a_lost_learner(ray_session, tiny_model):
    """`ray` sync: rank 0 owns the buckets it put. Killed after its export, while an engine still
    reads them, the engine's load raised OwnerDiedError, which the loop did not take for a lost
    learner: the run crashed instead of restarting the learners."""
    from rlvr.runtime.roles import LEARNER_LOSS_ERRORS, learners_lost
    from rlvr.weight_sync.base import Deadlines, wait_loads

    learner, engine = fresh_learner(tiny_model), fresh_engine(tiny_model)
    buckets, _ = ray.get(learner.export_weights.remote(None))
    ray.get(engine.__ray_ready__.remote())
    engine.__ray_call__.remote(lambda self: time.sleep(3))  # the engine is busy: its load waits, holding the buckets' refs
    load = engine.update_weights.remote(1, buckets)
    os.kill(pid_of(learner), signal.SIGKILL)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(learner.__ray_ready__.remote(), timeout=60)
    with pytest.raises(LEARNER_LOSS_ERRORS) as lost:
        wait_loads([load], Deadlines(60, 60), None, time.perf_counter())
    assert isinstance(lost.value, ray.exceptions.ObjectLostError) and learners_lost([learner])
    assert ray.get(engine.weight_version.remote()) == 0  # the engine lives; the restart's reload overwrites what it read
    ray.kill(engine)


@pytest.mark.slow
def test_a_replacement_engine_that_does_not_load_stops_the_run_at_its_deadline(ray_session, tiny_model):
    """A replacement's first load is timed by trainer.role_timeout_s (it may include the engine's
    warm-up): a stopped replacement raises RoleFailed, naming the key, instead of hanging."""
    from rlvr.runtime.roles import reload_engine

    learner, engine = fresh_learner(tiny_model), fresh_engine(tiny_model)
    ray.get([learner.__ray_ready__.remote(), engine.weight_version.remote()])
    os.kill(pid_of(engine), signal.SIGSTOP)
    start = time.perf_counter()
    with pytest.raises(RoleFailed, match=r"a replacement rollout engine did not load the weights: no answer within trainer.role_timeout_s=5"):
        reload_engine("ray", [learner], engine, version=3, timeout_s=5)
    assert 5 <= time.perf_counter() - start < 120
    for actor in (learner, engine):
        ray.kill(actor)


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
        if n < 0:
            raise ValueError(f"cannot restore {n}")
        self.n = n

    def pid(self) -> int:
        return os.getpid()


def gone(pid: int, within_s: float = 10) -> bool:
    end = time.perf_counter() + within_s
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        if time.perf_counter() > end:
            return False
        time.sleep(0.05)
    return True


def sigkill(role: RestartingRole) -> None:
    pid = role.call("pid")
    os.kill(pid, signal.SIGKILL)
    assert gone(pid)


def test_a_dead_actor_is_replaced_restored_and_the_call_redone(ray_session):
    role = RestartingRole("counter", Counter.remote, max_restarts=2, snapshot_method="state", restore_method="load")
    assert role.call("add", 3) == 3 and role.snapshot() == 3
    role.call("add", 1)  # 4, after the snapshot
    sigkill(role)
    assert role.call("add", 10) == 13  # the replacement came back at the snapshot (3)
    assert role.policy.restarts == 1 and role.policy.seconds_lost > 0 and role.node() == ray.util.get_node_ip_address()

    sigkill(role)
    assert role.call_or(-1, "add", 1) == -1  # no waiting on the replacement
    assert role.call("state") == 3  # ... which was restored meanwhile
    assert role.policy.restarts == 2

    sigkill(role)
    with pytest.raises(RoleFailed, match=r"the counter role's actors died 3 times in this run, more than trainer.max_restarts=2 allows; the last was the counter actor on .* \(\w+\): "):
        role.call("add", 1)
    role.kill()


def test_an_update_since_the_snapshot_is_replayed_on_the_replacement(ray_session):
    """The value server's step of context (add_context, then snapshot): a death between the two
    restored the replacement to the snapshot before, and the step's pairs were lost, unsaid."""
    role = RestartingRole("counter", Counter.remote, max_restarts=2, snapshot_method="state", restore_method="load")
    assert role.call("add", 3) == 3 and role.snapshot() == 3
    assert role.update("add", 4) == 7  # after the snapshot: kept until the next one
    sigkill(role)
    assert role.call("state") == 7  # restored to 3, then the update again
    assert role.snapshot() == 7 and role.updates == []
    role.load(1)
    role.update("add", 2)
    sigkill(role)
    assert role.call("state") == 3 and role.policy.restarts == 2
    role.kill()


def test_a_replacement_whose_restore_fails_fails_the_role_instead_of_answering_from_the_wrong_state(ray_session):
    """The restore was sent and never read: a replacement that could not load its state answered
    every later call from a fresh one, and only Ray's "unhandled error" line said so."""
    for ask in ("call", "call_or"):
        role = RestartingRole("counter", Counter.remote, max_restarts=2, snapshot_method="state", restore_method="load")
        role.call("add", 3)
        role.state = -1  # a state the replacement cannot load
        sigkill(role)
        if ask == "call_or":
            assert role.call_or(-5, "add", 1) == -5  # finds the death, starts the replacement, does not wait
        with pytest.raises(RoleFailed, match=r"the counter actor's replacement could not be brought back to its last state: ValueError: cannot restore -1"):
            getattr(role, ask)(*((-5,) if ask == "call_or" else ()), "add", 1)
        role.kill()


def test_gather_returns_the_answers_and_names_the_lost_and_the_silent_calls(ray_session):
    alive, stopped, dead = Counter.remote(), Counter.remote(), Counter.remote()
    pids = ray.get([a.pid.remote() for a in (stopped, dead)])
    os.kill(pids[0], signal.SIGSTOP)
    os.kill(pids[1], signal.SIGKILL)
    start = time.perf_counter()
    answers, failures = gather({"alive": alive.add.remote(2), "stopped": stopped.add.remote(1), "dead": dead.add.remote(1)}, 5, "rollout.timeout_s")
    assert answers == {"alive": 2} and set(failures) == {"stopped", "dead"}
    assert isinstance(failures["stopped"], TimeoutError) and "rollout.timeout_s=5" in str(failures["stopped"])
    assert isinstance(failures["dead"], ray.exceptions.RayActorError)
    assert 5 <= time.perf_counter() - start < 30  # waited for the deadline, not past it
    for actor in (alive, stopped, dead):
        ray.kill(actor)


def test_a_stopped_actor_is_a_dead_one_once_a_call_passes_its_deadline(ray_session):
    role = RestartingRole("counter", Counter.remote, max_restarts=2, snapshot_method="state", restore_method="load", call_timeout_s=3)
    assert role.call("add", 2) == 2 and role.snapshot() == 2
    pid = role.call("pid")
    os.kill(pid, signal.SIGSTOP)  # no error, no answer: only the deadline tells
    start = time.perf_counter()
    assert role.call("add", 5) == 7  # on the replacement, restored to the snapshot
    assert 3 <= time.perf_counter() - start < 60 and role.policy.restarts == 1 and gone(pid)  # the stopped one was killed

    os.kill(role.call("pid"), signal.SIGSTOP)
    assert role.call_or(-1, "add", 1) == -1  # past the deadline again: the default, the replacement meanwhile
    assert role.call("state") == 2 and role.policy.restarts == 2

    os.kill(role.call("pid"), signal.SIGSTOP)
    with pytest.raises(RoleFailed, match=r"the counter role's actors died 3 times .* \(TimeoutError\): no answer to add within trainer.role_timeout_s=3"):
        role.call("add", 1)
    role.kill()


@pytest.mark.slow
def test_load_forgets_the_updates_before_it_and_a_second_restart_of_one_death_is_none(ray_session):
    role = RestartingRole("counter", Counter.remote, max_restarts=3, snapshot_method="state", restore_method="load")
    role.call("add", 3)
    role.snapshot()
    role.update("add", 4)
    role.load(1)  # a checkpoint's state: the update before it is no longer to be replayed
    dead = role.actor
    role.restart(RuntimeError("died"), dead)
    role.restart(RuntimeError("died"), dead)  # another thread found the same death: nothing more
    assert role.call("state") == 1 and role.policy.restarts == 1
    role.kill()
