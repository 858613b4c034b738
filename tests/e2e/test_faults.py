"""Training runs whose roles die: SIGKILL (or SIGSTOP) the verifier pool, the value server, an
engine or a learner mid-run, and the run goes on with the straight run's metrics."""

import json
import signal

import pytest
from helpers import SAME, killer

from rlvr.faults import RoleFailed


@pytest.mark.slow
def test_v05_run_survives_its_verifier_and_value_server_dying(tmp_path, ray_session, tiny_model):
    from helpers import TINY

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
    from helpers import TINY

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
    from helpers import TINY

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
def test_a_killed_learner_restarts_from_the_last_checkpoint_and_the_run_is_unchanged(tmp_path, ray_session, tiny_model):
    """SIGKILL the learner after step 3 (checkpoint at step 2): every rank restarts, reloads step 2
    and trains step 3 again, with the same seeds, so steps 3 and 4 are the straight run's."""
    from helpers import TINY

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
