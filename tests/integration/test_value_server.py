"""The value server as a Ray actor: predictions and context round trip, and its errors."""

import pytest
import ray
from helpers import ARITH, LEGS, NEW_ARITH, NEW_LEGS

from rlvr.value import EmbeddedValueModel, start_value_server


def test_value_server_actor_round_trip(ray_session):
    server = start_value_server("embedded", context_size=32)
    assert ray.get(server.predict.remote(NEW_ARITH)) == ([0.5, 0.5], [0.5, 0.5])
    ray.get(server.add_context.remote(ARITH + LEGS, [0.9] * len(ARITH) + [0.1] * len(LEGS)))
    prior, unc = ray.get(server.predict.remote(NEW_ARITH + NEW_LEGS))
    assert isinstance(prior, list) and isinstance(prior[0], float) and len(unc) == 4
    assert min(prior[:2]) > max(prior[2:])
    state = ray.get(server.state_dict.remote())
    assert state["prompts"] == ARITH + LEGS
    local = EmbeddedValueModel(context_size=32)
    local.load_state_dict(state)
    lp, lu = local.predict(NEW_ARITH + NEW_LEGS)
    assert lp.tolist() == pytest.approx(prior, abs=1e-5) and lu.tolist() == pytest.approx(unc, abs=1e-5)
    # and back into the actor
    ray.get(server.load_state_dict.remote({"prompts": ARITH[:1], "success": [0.0]}))
    assert ray.get(server.state_dict.remote())["prompts"] == ARITH[:1]
    ray.kill(server)


def test_value_server_errors(ray_session, tmp_path):
    with pytest.raises(ValueError, match="known backends"):
        start_value_server("bogus")
    with pytest.raises(ray.exceptions.RayActorError, match="value.hf_classifier.path: model folder not found"):
        start_value_server("hf-classifier", path=str(tmp_path / "missing"))


