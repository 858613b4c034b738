"""The training loop's own parts, without Ray: what a run writes as it goes, what resume refuses, the
RNG and signal state, and the batch drivers (synchronous, and generation running ahead of training
by a bound). The budget controller's bookkeeping is in test_samplers.py."""

import os
import random
import signal
import sys
import threading
import time

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from rlvr.config import ConfigError, compose


def test_decision_and_eval_lines_reach_disk_as_written_not_at_close(tmp_path):
    """A crash (SIGKILL) between steps lost the lines still in the file buffer."""
    from rlvr.train.state import MetricsLog

    cfg = compose([])
    log = MetricsLog(tmp_path, cfg)
    log.write(1, {"reward": 0.5}, decisions=[{"uid": "a"}], eval_records=[{"uid": "b"}])
    for name in ("metrics.jsonl", "decisions.jsonl", "eval.jsonl"):
        assert (tmp_path / name).read_text().count("\n") == 1, name  # read before close
    log.close()


def test_console_line_without_optimizer_steps_has_no_updates_part():
    from rlvr.train.state import console_line

    m = {"reward": 0.5, "accuracy": 0.25, "response_length": 12.0}
    line = console_line(1, 10, m)
    assert line.startswith("step 1/10 | reward 0.500 | acc 0.250") and "updates" not in line


def _saved_config(tmp_path, overrides):
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(compose(overrides), resolve=True))


@pytest.mark.parametrize("saved, now, refused", [
    (["cluster.zero_stage=1"], ["cluster.zero_stage=2"], "cluster.zero_stage"),
    (["cluster.zero_stage=1", "cluster.num_learners=1"], ["cluster.zero_stage=1", "cluster.num_learners=2"], "cluster.num_learners under ZeRO-1"),
    # model.dtype=auto resolves on the resuming machine: bf16 weights saved on a bf16 CPU or a GPU,
    # float32 here (DeepSpeed's bf16-mode optimizer files into a float32 engine)
    (["model=local", "model.path=/m", "model.dtype=bfloat16"], ["model=local", "model.path=/m", "model.dtype=float32"], "model.dtype"),
])
def test_resume_refuses_zero_stage_and_rank_changes(tmp_path, saved, now, refused):
    from rlvr.train.state import check_resume_config

    _saved_config(tmp_path, saved)
    with pytest.raises(ConfigError, match=refused):
        check_resume_config(tmp_path, compose(now))


def test_resume_of_a_config_without_num_learners_is_not_a_rank_change(tmp_path):
    """A checkpoint whose config.yaml predates cluster.num_learners cannot say its ranks: not refused."""
    from rlvr.train.state import check_resume_config

    cfg = compose(["cluster.zero_stage=1"])
    saved = OmegaConf.to_container(cfg, resolve=True)
    del saved["cluster"]["num_learners"]
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    check_resume_config(tmp_path, cfg)


def test_rng_state_round_trips_python_numpy_and_torch():
    from rlvr.train.state import rng_state, set_rng_state

    saved = rng_state()
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(saved)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first


def test_the_lock_file_names_only_the_current_holder(tmp_path):
    from rlvr.train.state import hold_run_dir

    for _ in range(2):
        with hold_run_dir(tmp_path):
            pass
    with hold_run_dir(tmp_path):
        assert (tmp_path / ".lock").read_text().splitlines() == [f"pid {os.getpid()} on {os.uname().nodename}"]


def test_a_second_signal_in_the_loop_aborts():
    from rlvr.train.state import RunStopped, StopRequest

    stop = StopRequest()
    try:
        stop.deferring = True
        stop.handle(signal.SIGTERM, None)  # first: recorded, the loop checkpoints and stops
        assert stop.signal == signal.SIGTERM and stop.stopped is None
        with pytest.raises(RunStopped, match="stopped by SIGINT again, aborting; the same command resumes from the last complete") as e:
            stop.handle(signal.SIGINT, None)  # second: abort now (exit 128 + it, not a traceback and 1)
        assert stop.stopped is e.value and e.value.signum == signal.SIGINT
    finally:
        stop.restore()


def test_a_stop_that_a_ray_call_turned_into_a_plain_keyboard_interrupt_is_raised_as_itself(tmp_path, monkeypatch):
    """ray.get and ray.wait re-raise the handler's RunStopped as a plain KeyboardInterrupt: `rlvr train`
    signalled while its roles started ended with a traceback and exit 1, not 143 and its message."""
    import rlvr.train.loop as loop
    from rlvr.config import compose
    from rlvr.train.state import RunStopped

    def roles_starting(cfg, preset, run_dir, stop, keep_history):
        try:
            stop.handle(signal.SIGTERM, None)
        except RunStopped:
            raise KeyboardInterrupt from None  # as a Ray call gives it back

    monkeypatch.setattr(loop, "_train", roles_starting)
    with pytest.raises(KeyboardInterrupt) as e:  # a plain one would end pytest's session: take both, then tell them apart
        loop.train(compose(["model=tiny-random", f"run_dir={tmp_path}"]))
    assert isinstance(e.value, RunStopped) and "stopped by SIGTERM before its first step" in str(e.value)

    def ray_starting(cfg, preset, run_dir, stop, keep_history):
        sys.exit(signal.SIGTERM)  # ray.init's own SIGTERM handler, before the run's is back: exit 15, nothing said

    monkeypatch.setattr(loop, "_train", ray_starting)
    with pytest.raises(RunStopped, match="stopped by SIGTERM before its first step"):
        loop.train(compose(["model=tiny-random", f"run_dir={tmp_path}"]))
    monkeypatch.setattr(loop, "_train", lambda *args: sys.exit(3))  # any other exit is left alone
    with pytest.raises(SystemExit):
        loop.train(compose(["model=tiny-random", f"run_dir={tmp_path}"]))

    def interrupted(*args):
        raise KeyboardInterrupt("not a signal of ours")

    monkeypatch.setattr(loop, "_train", interrupted)  # no signal behind it: it passes through as it is
    with pytest.raises(KeyboardInterrupt) as e:
        loop.train(compose(["model=tiny-random", f"run_dir={tmp_path}"]))
    assert type(e.value) is KeyboardInterrupt and "not a signal of ours" in str(e.value)


def test_restore_after_a_second_install_gives_back_the_handlers_from_before_the_run():
    """loop.py calls install() again after ray.init; restore() must give back the original handlers."""
    from rlvr.train.state import StopRequest

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    stop = StopRequest()
    stop.install()
    stop.restore()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def _batch(step):
    from rlvr.types import Batch

    return Batch(groups=[], stats={"step": step})


def test_sync_batches_yields_first_to_last_inclusive():
    from rlvr.train.drivers import sync_batches

    assert [b.stats["step"] for b in sync_batches(_batch, 3, 5)] == [3, 4, 5]


def _until(done, timeout_s: float = 30.0) -> None:
    """Wait for the generator thread to reach a state, however loaded the box is."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_async_batches_generate_no_further_ahead_than_the_bound():
    from rlvr.train.drivers import AsyncBatches

    made = []
    a = AsyncBatches(lambda s: (made.append(s), _batch(s))[1], first=1, last=6, ahead=1)
    _until(lambda: len(made) >= 2)
    time.sleep(0.2)  # time enough for a third, were it allowed
    assert made == [1, 2]  # step 3 waits for step 1's weights
    it = iter(a)
    assert next(it).stats["step"] == 1
    a.synced_version(1)
    _until(lambda: len(made) >= 3)
    time.sleep(0.2)
    assert made == [1, 2, 3]
    assert [b.stats["step"] for b in [next(it), next(it)]] == [2, 3]
    a.synced_version(6)
    assert [b.stats["step"] for b in it] == [4, 5, 6]  # exactly last - first + 1 batches in all
    a.close(timeout_s=5)
    assert not a.thread.is_alive()


def test_async_close_stops_the_generator_waiting_for_weights():
    from rlvr.train.drivers import AsyncBatches

    a = AsyncBatches(_batch, first=1, last=10, ahead=0)
    time.sleep(0.2)
    a.close(timeout_s=5)
    assert not a.thread.is_alive()


def test_async_generator_error_is_raised_in_the_training_thread():
    from rlvr.train.drivers import AsyncBatches

    def make(step):
        raise RuntimeError("engine lost")

    a = AsyncBatches(make, first=1, last=2, ahead=1)
    caught = []

    def consume():
        try:
            list(a)
        except RuntimeError as e:
            caught.append(e)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(10)  # a lost error left the training thread waiting forever
    assert [str(e) for e in caught] == ["engine lost"]
    a.close(timeout_s=5)


def test_a_resume_path_of_another_config_is_refused_before_its_new_run_dir_is_made(tmp_path):
    """resume=PATH into a run_dir that does not exist yet was checked only inside train(), after Hydra
    had made the run dir and its .hydra/ record (a stray folder left by a refused command)."""
    from rlvr.checkpoint import _write_manifest, checkpoint_name
    from rlvr.train.state import refuse_before_start

    ckpt = tmp_path / "other" / "checkpoints" / checkpoint_name(2)
    ckpt.mkdir(parents=True)
    (ckpt / "config.yaml").write_text(OmegaConf.to_yaml(compose(["model=tiny-random", "algorithm=grpo"]), resolve=True))
    _write_manifest(ckpt, 2)
    with pytest.raises(ConfigError, match="different config"):
        refuse_before_start(compose(["model=tiny-random", "algorithm=v05", f"run_dir={tmp_path / 'new'}", f"resume={ckpt}"]))
    assert not (tmp_path / "new").exists()
    with pytest.raises(ConfigError, match="different config"):  # and a run dir's own latest checkpoint (resume=auto)
        refuse_before_start(compose(["model=tiny-random", "algorithm=v05", f"run_dir={tmp_path / 'other'}"]))


def test_a_resume_past_trainer_steps_summarises_the_checkpoint_s_step(tmp_path):
    """A run stopped at step 3's checkpoint, rerun with trainer.steps=2: nothing trains, and the
    summary said steps=2 while its weights and records were at step 3."""
    import json

    from rlvr.train.loop import Run

    run = Run.__new__(Run)
    run.run_dir, run.start_step, run.total, run.step = tmp_path, 4, 2, 3
    run.heldout_before, run.accuracies, run.history = 0.25, [], []
    run.finish()
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 3
