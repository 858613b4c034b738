"""benchmarks/profiles/scaling.py quick mode: real training runs on the tiny model (kept actors) at two prompt
counts and two answer caps, each phase timed, each role's peak memory read, the costs fitted and
plotted. The figures come from the full sweep (docs/benchmarks.md)."""

import json


def test_quick_sweep_times_each_phase_and_reads_each_role_s_memory(tmp_path, tiny_model):
    from benchmarks.profiles import scaling

    report = scaling.main(["--quick", "--out", str(tmp_path / "scaling.json")])
    by_prompts, by_tokens = report["sweeps"]["prompts"], report["sweeps"]["max_tokens"]
    assert [r["value"] for r in by_prompts] == [2, 4] and [r["value"] for r in by_tokens] == [8, 16]
    for row in by_prompts + by_tokens:
        assert row["seconds"]["step"] >= row["seconds"]["learn"] > 0 and row["seconds"]["generate"] > 0
        assert row["peak_mb"]["rollout"] > 0 and row["peak_mb"]["learner"] > 0 and row["peak_mb"]["verifier"] > 0
        assert 0 <= row["padding_share"] < 1
    assert by_prompts[1]["rollouts"] == 2 * by_prompts[0]["rollouts"]  # GRPO: n per prompt, nothing bought
    assert by_prompts[1]["learn_tokens"] > by_prompts[0]["learn_tokens"]
    assert report["fit"]["generation"]["per_token_s"] is not None and "fixed_s" in report["fit"]["learning"]
    assert json.loads((tmp_path / "scaling.json").read_text())["sweeps"] == json.loads(json.dumps(report["sweeps"]))
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
