"""benchmarks/experiments/lr_search.py on the tiny model: real short runs scored on the validation split, the
best lr chosen per preset, and finished runs not trained again. The figures: docs/benchmarks.md."""

import pytest

from benchmarks.experiments import lr_search


@pytest.mark.slow
def test_lr_search_scores_on_validation_and_skips_finished_runs(tmp_path, ray_session, tiny_model):
    overrides = lr_search.budget(True, 1, 4)
    results = lr_search.run(["grpo"], [1e-4, 1e-3], overrides, tmp_path, quick=True)
    assert set(results["grpo"]) == {"0.0001", "0.001"}
    for r in results["grpo"].values():
        assert r["prompts"] == 4 and 0 <= r["validation_accuracy"] <= 1 and r["rollouts"] == 2 * 4
    config = (tmp_path / "grpo-lr0.001" / "config.yaml").read_text()
    assert "split: validation" in config and "lr: 0.001" in config
    assert not (tmp_path / "grpo-lr0.001" / "checkpoints").exists()  # only the records are kept
    stamp = (tmp_path / "grpo-lr0.001" / "summary.json").stat().st_mtime
    assert lr_search.run(["grpo"], [1e-3], overrides, tmp_path, quick=True)["grpo"]["0.001"] == results["grpo"]["0.001"]
    assert (tmp_path / "grpo-lr0.001" / "summary.json").stat().st_mtime == stamp
    chosen = lr_search.choose(results)["grpo"]
    assert chosen["lr"] in (1e-4, 1e-3) and chosen["margin_over_next"] >= 0
    assert "| grpo |" in lr_search.table(results, lr_search.choose(results))
