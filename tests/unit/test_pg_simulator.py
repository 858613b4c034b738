"""benchmarks/experiments/pg_simulator.py: it trains through the library's own functions, is seeded, and its
quick mode writes well-formed outputs. The figures come from full runs (docs/benchmarks.md)."""

import json

import rlvr.algorithms as algorithms
from benchmarks.experiments import pg_simulator as sim

ARGS = dict(steps=6, prompts_n=16, answers_n=16, batch=8, lr=2.0, every=3)


def test_the_simulator_uses_the_library_functions_not_copies():
    for name in ("compute_advantages", "apply_weighting", "policy_loss", "v05", "HADWState"):
        assert getattr(sim, name) is getattr(algorithms, name), name


def test_it_is_seeded_and_deterministic():
    for cfg in (sim.SimConfig("grpo"), sim.SimConfig("v05", estimator="v05", prior="useless"), sim.SimConfig("h", weighting="hadw")):
        assert sim.run(cfg, 3, **ARGS) == sim.run(cfg, 3, **ARGS)
    assert sim.run(sim.SimConfig("grpo"), 3, **ARGS) != sim.run(sim.SimConfig("grpo"), 4, **ARGS)


def test_focal_at_gamma_zero_equals_no_weighting():
    assert sim.run(sim.SimConfig("f", weighting="focal", gamma=0.0), 1, **ARGS) == sim.run(sim.SimConfig("g"), 1, **ARGS)


def test_quick_mode_writes_json_and_png(tmp_path):
    sim.main(["--quick", "--configs", "grpo,v05-good,grpo+focal", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "pg_simulator.json").read_text())
    assert set(report["configs"]) == {"grpo", "v05-good", "grpo+focal"}
    for s in report["configs"].values():
        steps = [p["step"] for p in s["curve"]]
        assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == report["settings"]["steps"]
        rollouts = [p["rollouts"]["mean"] for p in s["curve"]]
        assert rollouts == sorted(rollouts) and rollouts[-1] > 0
        for p in s["curve"]:
            assert 0 <= p["pass@1"]["lo"] <= p["pass@1"]["mean"] <= p["pass@1"]["hi"] <= 1 or p["pass@1"]["lo"] < 0
            assert p["pass@1"]["mean"] <= p["pass@8"]["mean"] <= 1
        assert -1 <= s["grad_cosine"]["all"]["mean"] <= 1 and s["baseline_mse"]["mean"] >= 0
    assert (tmp_path / "pg_simulator.png").stat().st_size > 10_000


def test_lr_sweep_picks_each_configs_lr_on_validation_seeds(tmp_path):
    report = sim.main(["--quick", "--configs", "grpo,drgrpo", "--lrs", "0.5,4", "--val-seeds", "2", "--out", str(tmp_path)])
    for s in report["configs"].values():
        sweep = s["lr_sweep_val_pass@1"]
        assert set(sweep) == {0.5, 4.0} and s["lr"] == max(sweep, key=sweep.get)


def test_more_correct_answers_keep_the_initial_success_and_two_draw_the_original_world():
    import torch

    two = sim.make_world(8, 16, 0.7, 1.3, torch.Generator().manual_seed(5))
    again = sim.make_world(8, 16, 0.7, 1.3, torch.Generator().manual_seed(5), correct_n=2)
    assert torch.equal(two.logits, again.logits) and torch.equal(two.rare, again.rare)
    four = sim.make_world(8, 16, 0.7, 1.3, torch.Generator().manual_seed(5), correct_n=4)
    assert four.correct.sum(-1).tolist() == [4] * 8 and four.rare.sum(-1).tolist() == [3] * 8
    p2, p4 = sim.success(two), sim.success(four)
    assert torch.allclose(p2, p4, atol=1e-6)  # the same Beta draw of p, shared out over more answers
    probs = four.logits.softmax(-1)
    assert torch.allclose((probs * four.rare).sum(-1), 0.2 * p4, atol=1e-6)
    one = sim.make_world(8, 16, 0.7, 1.3, torch.Generator().manual_seed(5), correct_n=1)
    assert one.correct.sum(-1).tolist() == [1] * 8 and not one.rare.any()
    assert torch.allclose(sim.success(one), p2, atol=1e-6)  # one correct answer holds all of p


def test_adam_is_seeded_differs_from_sgd_and_an_unknown_optimizer_is_refused():
    import pytest

    grpo = sim.SimConfig("grpo")
    adam = sim.run(grpo, 3, **(ARGS | {"lr": 0.1}), optimizer="adam")
    assert adam == sim.run(grpo, 3, **(ARGS | {"lr": 0.1}), optimizer="adam")
    assert adam["curve"][-1] != sim.run(grpo, 3, **(ARGS | {"lr": 0.1}))["curve"][-1]
    assert adam["curve"][-1]["pass@1"] != adam["curve"][0]["pass@1"]  # it moved
    with pytest.raises(ValueError, match="optimizer"):
        sim.run(grpo, 3, **ARGS, optimizer="lion")


def test_regimes_quick_mode_pairs_every_cell_with_grpo_under_both_optimizers(tmp_path):
    from benchmarks.experiments import pg_regimes

    report = pg_regimes.main(["--quick", "--workers", "1", "--out", str(tmp_path)])
    cells = pg_regimes.cells(quick=True)
    assert len(report["rows"]) == 2 * len(cells)
    for row in report["rows"]:
        gains = {k: v for k, v in row.items() if k.startswith("gain/")}
        assert gains and all(g["n"] in (0, 3) and (g["n"] == 0 or g["lo"] <= g["mean"] <= g["hi"]) for g in gains.values())
        if row["method"].startswith("v05"):
            assert row["rollouts_ratio"] >= 0.99  # V0.5 buys extra rollouts, never fewer
    assert (tmp_path / "pg_regimes.png").stat().st_size > 10_000
