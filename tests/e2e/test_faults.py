"""Training runs whose roles die: SIGKILL (or SIGSTOP) the verifier pool, the value server, an
engine or a learner mid-run, and the run goes on with the straight run's metrics.

Each fault lands at a named point of the run (`helpers.at_step`: right before or after a step's
update), so where it lands does not depend on the box's speed.
"""

import json
import signal

import pytest
from helpers import SAME, TINY, at_step, in_weight_sync, signal_actors

from rlvr.config import compose
from rlvr.runtime.faults import RoleFailed
from rlvr.train.loop import train

GRPO_4 = TINY + ["algorithm=grpo", "trainer.steps=4", "trainer.eval_every=0", "trainer.save_every=2", "rollout.timeout_s=10"]


@pytest.fixture(scope="module")
def straight_grpo(tmp_path_factory, ray_session, tiny_model) -> dict[int, dict]:
    """The run the engine and learner faults are compared with (checkpoints change no metric)."""
    run_dir = tmp_path_factory.mktemp("straight")
    return {h["step"]: h for h in train(compose(GRPO_4 + [f"run_dir={run_dir}"]))["history"]}


@pytest.mark.slow
def test_v05_run_survives_its_verifier_and_value_server_dying(tmp_path, ray_session, tiny_model, monkeypatch):
    """The verifier pool dies after step 1 (step 2's batch is scored again, with the same rewards),
    the value server after step 2 (step 3 finds it dead and uses the uninformed prior)."""
    base = TINY + ["algorithm=v05", "trainer.steps=4", "trainer.eval_every=0", "trainer.save_every=0"]
    straight = train(compose(base + [f"run_dir={tmp_path / 'straight'}"]))["history"]

    faulty_dir = tmp_path / "faulty"
    at_step(monkeypatch, 1, signal_actors("_VerifierPoolImpl"))
    at_step(monkeypatch, 2, signal_actors("ValueServer"))
    faulty = train(compose(base + [f"run_dir={faulty_dir}"]))["history"]
    steps = {h["step"]: h for h in faulty if h["step"] >= 1}
    assert sorted(steps) == [1, 2, 3, 4]
    assert [steps[s]["faults/verifier_restarts"] for s in (1, 2, 3, 4)] == [0, 1, 1, 1]
    assert [steps[s]["faults/value_restarts"] for s in (1, 2, 3, 4)] == [0, 0, 1, 1]
    assert steps[4]["faults/seconds_lost"] > 0
    want = {h["step"]: h for h in straight if h["step"] >= 1}
    for s in (1, 2):
        assert {k: steps[s][k] for k in SAME} == {k: want[s][k] for k in SAME}
    # step 1 reads the warm start's context; step 3 found the server dead: the uninformed prior
    decisions = [json.loads(l) for l in (faulty_dir / "decisions.jsonl").read_text().splitlines()]
    per_step = [decisions[i : i + 4] for i in range(0, 16, 4)]
    uninformed = [i + 1 for i, ds in enumerate(per_step) if all(d["prior"] == 0.5 and d["uncertainty"] == 0.5 for d in ds)]
    assert uninformed == [3]
    # and the calibration window did not learn from those stand-ins as if they were priors
    assert [steps[s]["v05/priors_missing"] for s in (1, 2, 3, 4)] == [0, 0, 4, 0]
    assert steps[3]["v05/window"] == steps[2]["v05/window"] and steps[4]["v05/window"] == steps[3]["v05/window"] + 4


@pytest.mark.slow
def test_a_role_that_keeps_dying_stops_with_a_checkpoint_and_resumes(tmp_path, ray_session, tiny_model, monkeypatch):
    run_dir = tmp_path / "run"
    base = TINY + ["algorithm=grpo", "trainer.steps=3", "trainer.eval_every=0", "trainer.save_every=0", f"run_dir={run_dir}"]
    at_step(monkeypatch, 1, signal_actors("_VerifierPoolImpl"))
    with pytest.raises(RoleFailed, match=r"the verifier role's actors died 1 time in this run, more than trainer.max_restarts=0 allows; the last was the verifier actor on .*checkpoint at step 1"):
        train(compose(base + ["trainer.max_restarts=0"]))
    assert (run_dir / "checkpoints" / "step_00000001").is_dir()
    history = train(compose(base))["history"]  # resumes at step 2
    assert [h["step"] for h in history if h["step"] >= 1] == [2, 3]


@pytest.mark.slow
def test_a_role_lost_within_a_step_saves_no_mislabelled_checkpoint(tmp_path, ray_session, tiny_model, monkeypatch):
    """The verifier dies after step 2's update, so step 2's held-out evaluation fails. The learners
    already hold step 2's weights: saving them as step 1's checkpoint (with step 1's stream and RNG)
    would train step 2 twice on resume. Nothing is saved; the run says it resumes from its last
    checkpoint (here none: it starts over)."""
    run_dir = tmp_path / "run"
    base = TINY + ["algorithm=grpo", "trainer.steps=3", "trainer.eval_every=2", "trainer.save_every=0", f"run_dir={run_dir}"]
    at_step(monkeypatch, 2, signal_actors("_VerifierPoolImpl"))
    with pytest.raises(RoleFailed, match=r"the verifier role's actors died 1 time .*The run stopped with its last checkpoint"):
        train(compose(base + ["trainer.max_restarts=0"]))
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())


@pytest.mark.slow
def test_a_killed_or_stopped_rollout_engine_is_replaced_and_the_run_is_unchanged(tmp_path, straight_grpo, monkeypatch):
    """The engine is SIGKILLed after step 1 (step 2's generate call finds it dead), its replacement
    SIGSTOPped before step 3's update (the weight sync waits rollout.timeout_s for it) and the next
    one after step 3 (step 4's generate call waits as long). Each replacement gets the current
    weights and redraws the same samples."""
    at_step(monkeypatch, 1, signal_actors("RolloutEngine"))
    at_step(monkeypatch, 3, signal_actors("RolloutEngine", signal.SIGSTOP), before=True)
    at_step(monkeypatch, 3, signal_actors("RolloutEngine", signal.SIGSTOP))
    faulty = {h["step"]: h for h in train(compose(GRPO_4 + [f"run_dir={tmp_path / 'faulty'}"]))["history"]}
    assert [faulty[s]["faults/rollout_restarts"] for s in (1, 2, 3, 4)] == [0, 1, 2, 3]
    assert faulty[3]["faults/seconds_lost"] >= 10 and faulty[4]["faults/seconds_lost"] >= 20  # each stop had its full deadline
    for s in (1, 2, 3, 4):
        assert {k: faulty[s][k] for k in SAME} == {k: straight_grpo[s][k] for k in SAME}
        assert faulty[s]["learner/rollout_logprob_diff"] == pytest.approx(straight_grpo[s]["learner/rollout_logprob_diff"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("sig, in_sync, mode", [(signal.SIGKILL, False, ["cluster.mode=colocated", "cluster.weight_sync=ipc"]),
                                                (signal.SIGSTOP, False, []), (signal.SIGSTOP, True, [])],
                         ids=["killed-colocated", "stopped", "stopped-in-sync"])
def test_a_killed_or_stopped_learner_restarts_from_the_last_checkpoint_and_the_run_is_unchanged(tmp_path, straight_grpo, monkeypatch,
                                                                                               sig, in_sync, mode):
    """SIGKILL (or SIGSTOP) the learner after step 3 (checkpoint at step 2): step 4's update finds it
    dead (or silent past trainer.role_timeout_s), every rank restarts, reloads step 2 and trains
    step 3 again, with the same seeds, so steps 3 and 4 are the straight run's. `in_sync`: stopped
    after step 4's update, so that step 4's weight sync is what waits out the deadline. Killed in
    colocated mode, the learner is lost while the engines sleep: they are woken for the rerun
    (they stayed asleep, and step 3's generation on them failed)."""
    faulty_dir = tmp_path / "faulty"
    if in_sync:
        in_weight_sync(monkeypatch, 4, signal_actors("PolicyLearner", sig))
    else:
        at_step(monkeypatch, 3, signal_actors("PolicyLearner", sig))
    history = train(compose(GRPO_4 + [f"run_dir={faulty_dir}", "trainer.role_timeout_s=20", *mode]))["history"]
    faulty = {h["step"]: h for h in history}
    assert sorted(s for s in faulty if s >= 1) == [1, 2, 3, 4]
    assert faulty[4]["faults/learner_restarts"] == 1 and faulty[4]["faults/seconds_lost"] > 0
    for s in (1, 2, 3, 4):
        assert {k: faulty[s][k] for k in SAME} == {k: straight_grpo[s][k] for k in SAME}
    # step 3 was trained twice: metrics.jsonl keeps one record of it, the straight run's (the restart
    # dropped the first: `MetricsLog.rewind`)
    records = [json.loads(l) for l in (faulty_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["step"] >= 1] == [1, 2, 3, 4]
    step3 = next(r for r in records if r["step"] == 3)
    assert {k: step3[k] for k in SAME} == {k: straight_grpo[3][k] for k in SAME}


@pytest.mark.slow
def test_a_learner_lost_in_an_async_run_stops_it_with_a_message(tmp_path, ray_session, tiny_model, monkeypatch):
    """An async run does not restart its learners (the batches generated ahead came from weights that
    died with them); the loss passed up as Ray's ActorDiedError, a traceback without the way out."""
    run_dir = tmp_path / "run"
    at_step(monkeypatch, 1, signal_actors("PolicyLearner"))
    with pytest.raises(RoleFailed, match=r"a learner rank was lost \(.+\); an async run \(trainer.max_staleness >= 1\) does not "
                                         r"restart its learners. The run stopped with .*the same command resumes it"):
        train(compose(GRPO_4 + [f"run_dir={run_dir}", "trainer.max_staleness=1", "trainer.role_timeout_s=20"]))
