"""benchmarks/profiles/learner_roofline.py: its FLOP count is the model's, and its report runs end to end
on a real (tiny) DeepSpeed learner (issue "Performance at the limit of the box", part 1)."""

import pytest
import torch


def test_the_counted_matmul_flops_are_what_torch_counts(tiny_model):
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM

    from benchmarks.profiles.learner_roofline import dims, forward_flops
    from rlvr.learner.forward import collate, response_logprobs
    from rlvr.types import Trajectory

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    # one prompt and one response: nothing is padded, so torch's count is the real tokens' count
    mb = collate([Trajectory(list(range(3, 40)), list(range(5, 29)))], 0, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        response_logprobs(model, mb, 1.0)
    counted = counter.get_flop_counts()["Global"]
    matmul = sum(v for op, v in counted.items() if str(op).split(".")[-1] in ("mm", "addmm", "bmm"))
    ours = forward_flops(dims(model.config), mb)
    assert ours["matmul"] == pytest.approx(matmul, rel=1e-3)  # the rotary embedding's tiny bmm is the difference
    assert 0 < ours["attention"] < sum(counted.values())


def test_the_report_runs_on_a_tiny_learner(tmp_path):
    from benchmarks.profiles import learner_roofline

    report = learner_roofline.main(["--sequences", "8", "--repeats", "1", "--out", str(tmp_path / "r.json"), "model.path=tiny-random"])
    assert report["step_flops"] > 0 and report["train_step_s"] > 0 and 0 <= report["padding_share"] < 1
    assert report["machine"]["at_learner_shapes_flops"] > 0 and report["ratio_to_peak_at_shapes"] > 0
    assert sum(report["profile"]["shares"].values()) == pytest.approx(1.0)
