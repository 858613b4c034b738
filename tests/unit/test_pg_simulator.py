"""benchmarks/pg_simulator.py: it trains through the library's own functions, is seeded, and its
quick mode writes well-formed outputs. The figures come from full runs (docs/benchmarks.md)."""

import json

import rlvr.algorithms as algorithms
from benchmarks import pg_simulator as sim

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
