"""SIGTERM to `rlvr train` itself, as a batch scheduler sends it: a real process whose Ray starts
inside the run (the in-process tests start Ray before `train()`, so their handler was the last one in)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import TESTS

ARGS = ["algorithm=grpo", "model=tiny-random", "trainer.steps=6", "trainer.batch_size=2", "trainer.save_every=0",
        "trainer.eval_every=0", "trainer.progress=false", "data.train.size=8", "eval.size=2", "rollout.max_tokens=8"]


def start(args: list[str], log_path, **env_vars: str) -> subprocess.Popen:
    """`python -m rlvr.cli ARGS` in a session of its own (so its Ray can be killed with it), output to ``log_path``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), **env_vars)
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "-m", "rlvr.cli", *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def signal_when(proc: subprocess.Popen, ready, sig: int, log_path) -> tuple[int, str]:
    """Send ``sig`` once ``ready()`` holds; the exit status and the output. Whatever of its Ray is left goes after."""
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.05)
        assert proc.poll() is None, log_path.read_text()[-3000:]
        proc.send_signal(sig)
        return proc.wait(timeout=300), log_path.read_text(errors="replace")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run SIGTERMed once step 1 is trained: its run dir, exit status and output."""
    tmp_path = tmp_path_factory.mktemp("signals")
    run_dir, log_path = tmp_path / "run", tmp_path / "train.log"
    metrics = run_dir / "metrics.jsonl"

    def trained_a_step() -> bool:
        return metrics.exists() and any(json.loads(line)["step"] >= 1 for line in metrics.read_text().splitlines() if line.endswith("}"))

    rc, out = signal_when(start(["train", *ARGS, f"run_dir={run_dir}"], log_path), trained_a_step, signal.SIGTERM, log_path)
    return run_dir, rc, out


@pytest.mark.slow
def test_sigterm_to_rlvr_train_saves_a_checkpoint_and_stops(stopped_run):
    """`ray.init` put its own SIGTERM handler in place of the run's: SIGTERM aborted the driver
    (exit 134, "*** SIGTERM received ***") with no checkpoint, in sync and async runs alike."""
    run_dir, rc, out = stopped_run
    assert rc == 128 + signal.SIGTERM, out[-3000:]
    step = int((run_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert 1 <= step < 6 and f"stopped by SIGTERM at step {step}'s checkpoint" in out
    assert max(json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()) == step


@pytest.mark.slow
def test_ctrl_c_while_rlvr_eval_generates_exits_130(stopped_run, tmp_path):
    """After ray.init, Ctrl-C came out of ray.wait as a KeyboardInterrupt traceback (exit 1) and SIGTERM
    reached Ray's handler (exit 134)."""
    run_dir, _, _ = stopped_run
    log_path = tmp_path / "eval.log"
    proc = start(["eval", str(run_dir), "eval.size=4", "eval.n_samples=8", "rollout.max_tokens=256"], log_path)
    rc, out = signal_when(proc, lambda: "Successfully reset prefix cache" in log_path.read_text(errors="replace"), signal.SIGINT, log_path)
    assert rc == 128 + signal.SIGINT and "rlvr eval: stopped by SIGINT" in out and "Traceback" not in out, out[-3000:]


@pytest.mark.slow
def test_sigterm_while_rlvr_eval_exports_the_checkpoint_leaves_no_temp_folder(stopped_run, tmp_path):
    """Before Ray starts nothing took SIGTERM: its default action ended the process with the exported
    model (a whole model's weights for a real one) left in $TMPDIR/rlvr-eval-*, which nothing removes."""
    run_dir, _, _ = stopped_run
    tmp, log_path = tmp_path / "tmp", tmp_path / "eval.log"  # stopped before Ray, whose socket paths a long TMPDIR would break
    tmp.mkdir()
    proc = start(["eval", str(run_dir), "eval.size=4"], log_path, TMPDIR=str(tmp))
    rc, out = signal_when(proc, lambda: any(tmp.glob("rlvr-eval-*/*")), signal.SIGTERM, log_path)
    assert rc == 128 + signal.SIGTERM and not any(tmp.glob("rlvr-eval-*")), out[-3000:]


@pytest.mark.slow
def test_sigterm_while_the_roles_start_stops_before_the_first_step(tmp_path):
    """Inside a Ray call (the driver waits for the learners) the run's RunStopped came out of ray.get as
    a plain KeyboardInterrupt: a traceback and exit 1 instead of 143 and the message."""
    run_dir, log_path = tmp_path / "run", tmp_path / "train.log"
    proc = start(["train", *ARGS, f"run_dir={run_dir}"], log_path)
    rc, out = signal_when(proc, lambda: (run_dir / "logs" / "learner-0.log").exists(), signal.SIGTERM, log_path)
    assert rc == 128 + signal.SIGTERM and "stopped by SIGTERM before its first step" in out, out[-3000:]
