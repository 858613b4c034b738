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


@pytest.mark.slow
def test_sigterm_to_rlvr_train_saves_a_checkpoint_and_stops(tmp_path):
    """`ray.init` put its own SIGTERM handler in place of the run's: SIGTERM aborted the driver
    (exit 134, "*** SIGTERM received ***") with no checkpoint, in sync and async runs alike."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    log_path = tmp_path / "train.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rlvr.cli", "train", *ARGS, f"run_dir={run_dir}"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        metrics, deadline = run_dir / "metrics.jsonl", time.time() + 300
        while time.time() < deadline and proc.poll() is None:  # once step 1 is trained
            if metrics.exists() and any(json.loads(line)["step"] >= 1 for line in metrics.read_text().splitlines() if line.endswith("}")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, log_path.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=300)
        out = log_path.read_text()
        assert rc == 128 + signal.SIGTERM, out[-3000:]
        step = int((run_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
        assert 1 <= step < 6 and f"stopped by SIGTERM at step {step}'s checkpoint" in out
        assert max(json.loads(line)["step"] for line in metrics.read_text().splitlines()) == step
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of its Ray is left
        except ProcessLookupError:
            pass
