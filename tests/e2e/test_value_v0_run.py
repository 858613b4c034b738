"""value.backend=v0 in a training run: V0.5's decisions read V0's priors (files in V0's format,
random weights: tests/unit/test_value_v0.py checks the backend itself)."""

import json

import pytest
import torch

from rlvr.config import compose
from rlvr.value import V0ValueModel
from rlvr.value.v0 import write_random_v0


@pytest.fixture(scope="module")
def v0_files(tmp_path_factory, tiny_model) -> dict:
    return write_random_v0(tmp_path_factory.mktemp("v0"), tiny_model)


@pytest.mark.slow
def test_v05_trains_with_the_v0_prior(v0_files, tmp_path, ray_session, tiny_model):
    from helpers import TINY

    from rlvr.train.loop import train

    run_dir = tmp_path / "v05-v0"
    # without the warm start, so that step 1 meets an empty context and step 2 exactly step 1's
    cfg = compose(TINY + ["algorithm=v05", "algorithm.warmup_prompts=0", "value.backend=v0", f"run_dir={run_dir}"]
                  + [f"value.v0.{k}={v}" for k, v in v0_files.items()])
    history = train(cfg)["history"]
    assert [h["step"] for h in history if h["step"] >= 1] == [1, 2]
    decisions = [json.loads(l) for l in (run_dir / "decisions.jsonl").read_text().splitlines()]
    assert len(decisions) == 8
    assert all(d["prior"] == 0.5 for d in decisions[:4])  # step 1: an empty context
    # Step 2's priors are the backend's, given step 1's prompts and success rates as context.
    state = torch.load(sorted((run_dir / "checkpoints").glob("step_*"))[-1] / "trainer_state.pt", weights_only=False)["value"]
    assert state["backend"] == "v0" and len(state["prompts"]) == 8
    local = V0ValueModel(**v0_files)
    local.load_state_dict({"prompts": state["prompts"][:4], "success": state["success"][:4]})
    prior, unc = local.predict(state["prompts"][4:])
    assert [d["prior"] for d in decisions[4:]] == pytest.approx(prior.tolist(), abs=1e-5)
    assert [d["uncertainty"] for d in decisions[4:]] == pytest.approx(unc.tolist(), abs=1e-5)


