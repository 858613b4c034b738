"""benchmarks/profiles/gpu_check.py, the one command for a GPU machine, run here on CPU: every part runs and
checks itself, and a part that fails is recorded while the others go on (issue "Performance at the
limit of the box", part 5)."""

import json


def test_the_gpu_check_runs_on_cpu_and_records_a_failing_part(tmp_path):
    from benchmarks.profiles import gpu_check

    out = tmp_path / "gpu_check.json"
    # no bundle here: the SmolLM2-shaped model cannot be built, and that is a record, not the end
    report = gpu_check.main(["--device", "cpu", "--models", f"tiny,{gpu_check.SMOLLM2_SHAPED}", "--quick", "--repeats", "1",
                             "--bundle", str(tmp_path / "no-bundle"), "--out", str(out)])
    assert json.loads(out.read_text())["models"].keys() == report["models"].keys()
    missing = report["models"][gpu_check.SMOLLM2_SHAPED]
    assert "make gpu-bundle" in missing["build"]["error"] and "learner" not in missing

    tiny = report["models"]["tiny"]
    learner = tiny["learner"]
    assert "error" not in learner, learner
    # the three forward paths compute the same numbers
    assert learner["max_abs_logprob_diff_shared_vs_per_sequence"] < 1e-5 and learner["max_abs_logprob_diff_packed_vs_per_sequence"] < 1e-5
    for key in [f"{precision}/{path}" for precision in ("float32", "bf16_autocast") for path in ("shared", "packed", "per_sequence")]:
        assert learner[key]["tokens_per_s"] > 0 and learner[key]["peak_mb"] is None  # no accelerator memory on CPU
    engine = tiny["engine_hf"]
    assert engine["engine_device"] == "cpu" and engine["samples"] == 8 and engine["logprobs_finite"], engine

    share = report["weight_share"]
    assert share["opened_on"] == "cpu" and share["sum_equal"], share

    value = report["value_v0"]
    assert value["backbone"] == "tiny" and value["embedding_finite"], value
    assert value["v0_value_model"]["prior_in_range"] and value["v0_value_model"]["predictions"] == 16
