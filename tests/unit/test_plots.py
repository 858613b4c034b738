"""rlvr.analysis.plots: loading metrics.jsonl (dedup after resume) and writing the comparison PNGs."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from rlvr.analysis.plots import build_figures, load_metrics, main, plot_runs, run_label

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CURVES = ("reward_vs_step.png", "heldout_vs_step.png", "reward_vs_rollouts.png", "heldout_vs_rollouts.png")
ALL = (*CURVES, "step_time_breakdown.png", "pass_at_k.png")


def make_run(
    d: Path,
    *,
    steps: int = 10,
    rollouts: int = 64,
    eval_every: int = 5,
    pass_k: bool = True,
    algorithm: str | None = "grpo",
    weighting: str | None = "none",
    slope: float = 0.05,
) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    recs = [{"step": 0, "eval/accuracy": 0.1, **({"eval/pass@1": 0.1, "eval/pass@4": 0.2} if pass_k else {})}]
    for s in range(1, steps + 1):
        r = {
            "step": s,
            "reward": min(1.0, 0.1 + slope * s),
            "accuracy": min(1.0, 0.1 + slope * s),
            "rollouts": rollouts,
            "time/generate": 2.0,
            "time/verify": 0.5,
            "time/value": 0.25,
            "time/learn": 1.0,
            "time/sync": 0.25,
            "time/step": 4.5,
            "groups": 8,
        }
        if s % eval_every == 0:
            r.update({"eval/accuracy": min(1.0, 0.1 + slope * s), "time/eval": 3.0})
            if pass_k:
                r.update({f"eval/pass@{k}": min(1.0, 0.1 + slope * s + 0.05 * i) for i, k in enumerate((1, 2, 4, 8))})
        recs.append(r)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    if algorithm is not None:
        cfg = f"seed: 1\nalgorithm:\n  name: {algorithm}\n  estimator: grpo\n"
        if weighting is not None:
            cfg += f"weighting:\n  name: {weighting}\n"
        (d / "config.yaml").write_text(cfg)
    return d


# -- load_metrics -----------------------------------------------------------------


def test_load_metrics_sorted_and_deduplicated(tmp_path):
    lines = [
        {"step": 0, "eval/accuracy": 0.1},
        {"step": 1, "reward": 0.1},
        {"step": 2, "reward": 0.2},
        {"step": 3, "reward": 0.3, "old": 1},
        # crash after step 3, resumed from the checkpoint at step 1: steps 2 and 3 are written again
        {"step": 2, "reward": 0.25},
        {"step": 3, "reward": 0.35},
        {"step": 4, "reward": 0.4},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    recs = load_metrics(tmp_path)
    assert [r["step"] for r in recs] == [0, 1, 2, 3, 4]
    assert [r.get("reward") for r in recs] == [None, 0.1, 0.25, 0.35, 0.4]
    assert "old" not in recs[3]  # the whole last record wins, not a merge
    assert recs[0] == {"step": 0, "eval/accuracy": 0.1}


def test_load_metrics_unsorted_input(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": s}) + "\n" for s in (3, 1, 2)))
    assert [r["step"] for r in load_metrics(tmp_path)] == [1, 2, 3]


def test_load_metrics_skips_bad_lines(tmp_path, caplog):
    text = (
        json.dumps({"step": 1, "reward": 0.1})
        + "\n\n"
        + '{"step": 2, "rew'  # cut short by a crash; the resumed run appends to the same line
        + json.dumps({"step": 2, "reward": 0.2})
        + "\n"
        + json.dumps({"reward": 0.5})  # no step
        + "\n"
        + json.dumps({"step": 3, "reward": 0.3})
        + "\n"
        + '{"step": 4, "reward": 0.'  # cut short at the end
    )
    (tmp_path / "metrics.jsonl").write_text(text)
    with caplog.at_level(logging.WARNING, logger="rlvr.analysis.plots"):
        recs = load_metrics(tmp_path)
    assert [(r["step"], r["reward"]) for r in recs] == [(1, 0.1), (3, 0.3)]
    assert len(caplog.records) == 3


def test_load_metrics_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no metrics\.jsonl in run directory .*nope"):
        load_metrics(tmp_path / "nope")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        load_metrics(tmp_path / "empty_run")


# -- labels ------------------------------------------------------------------------


def test_run_label(tmp_path):
    assert run_label(make_run(tmp_path / "a", algorithm="v05", weighting="focal")) == "v05+focal"
    assert run_label(make_run(tmp_path / "b", algorithm="grpo", weighting=None)) == "grpo"
    assert run_label(make_run(tmp_path / "c", algorithm=None)) == "c"
    bad = make_run(tmp_path / "d", algorithm=None)
    (bad / "config.yaml").write_text("algorithm: [unclosed\n")
    assert run_label(bad) == "d"
    (bad / "config.yaml").write_text("just a string\n")
    assert run_label(bad) == "d"


# -- figures -------------------------------------------------------------------------


def _png_ok(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 1000, path


def test_plot_two_runs(tmp_path):
    a = make_run(tmp_path / "run_a", algorithm="grpo", weighting="none", rollouts=64)
    b = make_run(tmp_path / "run_b", algorithm="v05", weighting="hadw", rollouts=32, slope=0.08, steps=12, eval_every=4)
    figs = build_figures([str(a), str(b)])
    assert set(figs) == set(ALL)
    for name in CURVES:
        ax = figs[name].axes[0]
        assert len(ax.get_lines()) == 2, name
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend == ["grpo+none", "v05+hadw"], name

    # x = cumulative rollouts
    line_a, line_b = figs["reward_vs_rollouts.png"].axes[0].get_lines()
    assert list(line_a.get_xdata()) == [64 * s for s in range(1, 11)]
    assert list(line_b.get_xdata()) == [32 * s for s in range(1, 13)]
    held_a = figs["heldout_vs_rollouts.png"].axes[0].get_lines()[0]
    assert list(held_a.get_xdata()) == [0, 5 * 64, 10 * 64]  # step 0 eval at 0 rollouts
    held_b = figs["heldout_vs_step.png"].axes[0].get_lines()[1]
    assert list(held_b.get_xdata()) == [0, 4, 8, 12]

    # stacked bars: one bar per run, one container per phase
    ax = figs["step_time_breakdown.png"].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["grpo+none", "v05+hadw"]
    phases = [t.get_text() for t in ax.get_legend().get_texts()]
    assert phases == ["generate", "verify", "value", "learn", "sync", "other", "eval (outside step)"]
    assert len(ax.containers) == len(phases) and all(len(c) == 2 for c in ax.containers)
    tops = [max(r.get_y() + r.get_height() for c in ax.containers for r in [c[i]]) for i in range(2)]
    assert tops[0] == pytest.approx(4.5 + 3.0 * 2 / 10)  # step time + amortised eval (2 evals in 10 steps)
    assert tops[1] == pytest.approx(4.5 + 3.0 * 3 / 12)

    # pass@k at the last eval step that has them
    ax = figs["pass_at_k.png"].axes[0]
    assert len(ax.get_lines()) == 2
    assert list(ax.get_lines()[0].get_xdata()) == [1, 2, 4, 8]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["grpo+none (step 10)", "v05+hadw (step 12)"]

    # (the PNG files themselves are checked in test_main)


def test_plot_default_out_dir_and_no_pass_at_k(tmp_path):
    a = make_run(tmp_path / "a", pass_k=False)
    b = make_run(tmp_path / "b", pass_k=False, algorithm=None)
    paths = plot_runs([str(a), str(b)])
    assert {p.name for p in paths} == set(ALL) - {"pass_at_k.png"}
    assert all(p.parent == a / "plots" for p in paths)
    assert not (a / "plots" / "pass_at_k.png").exists()
    for p in paths:
        _png_ok(p)


def test_duplicate_labels_are_disambiguated(tmp_path):
    a = make_run(tmp_path / "seed1")
    b = make_run(tmp_path / "seed2")
    ax = build_figures([str(a), str(b)])["reward_vs_step.png"].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["grpo+none [seed1]", "grpo+none [seed2]"]


def test_plot_uses_deduplicated_records(tmp_path):
    d = make_run(tmp_path / "r", steps=4, eval_every=2)
    with open(d / "metrics.jsonl", "a") as f:  # resumed from step 2: steps 3 and 4 again
        for s in (3, 4):
            f.write(json.dumps({"step": s, "reward": 0.9, "rollouts": 10, "time/step": 1.0}) + "\n")
    ax = build_figures([str(d)])["reward_vs_rollouts.png"].axes[0]
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [64, 128, 138, 148]
    assert list(line.get_ydata())[2:] == [0.9, 0.9]


def test_plot_sparse_metrics(tmp_path):
    """Only a step-0 eval record (a run that died in its first step), NaN values: no crash."""
    d = tmp_path / "r"
    d.mkdir()
    (d / "metrics.jsonl").write_text('{"step": 0, "eval/accuracy": 0.2}\n{"step": 1, "reward": NaN, "flag": "x"}\n')
    figs = build_figures([str(d)])
    assert len(figs["reward_vs_step.png"].axes[0].get_lines()) == 0
    assert len(figs["heldout_vs_step.png"].axes[0].get_lines()) == 1
    buf = io.BytesIO()
    figs["reward_vs_step.png"].savefig(buf, format="png")  # an empty axes with its note renders
    assert buf.getvalue()[:8] == PNG_MAGIC


def test_plot_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_runs([str(tmp_path / "missing")])
    with pytest.raises(ValueError):
        plot_runs([])


def test_main(tmp_path, capsys):
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", algorithm="v05", weighting="focal")
    out = tmp_path / "figs"
    assert main([str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == sorted(ALL)
    assert all(Path(p).parent == out for p in printed)
    for p in printed:
        _png_ok(Path(p))

    assert main([str(tmp_path / "nope")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])


def test_v05_decisions_figure_from_decisions_jsonl(tmp_path, caplog):
    a = make_run(tmp_path / "v05", algorithm="v05")
    lines = []
    for step in range(1, 6):
        for i, kind in enumerate(("accepted", "shrunk", "rejected", "shrunk")):
            lines.append(json.dumps({"step": step, "uid": f"q{i}", "prior": 0.2 * i, "k": i, "n": 4 + 4 * (i == 1), "decision": kind, "extra": 4 * (i == 1)}))
    lines.insert(3, "{cut short")  # a crash mid-line loses that line only
    # a batch that crosses an epoch of the prompts holds a uid twice: both are its decisions
    lines.insert(9, json.dumps({"step": 2, "uid": "q1", "prior": 0.2, "k": 1, "n": 4, "decision": "accepted", "extra": 0}))
    # steps 4 and 5 written again after a resume from step 3 (a run from before MetricsLog.rewind)
    lines += [json.dumps({"step": s, "uid": "q0", "prior": 0.5, "k": 2, "n": 4, "decision": "accepted", "extra": 0}) for s in (4, 5)]
    (a / "decisions.jsonl").write_text("\n".join(lines) + "\n")
    from rlvr.analysis.plots import load_decisions

    with caplog.at_level(logging.WARNING, logger="rlvr.analysis.plots"):
        steps = load_decisions(a)
    assert "not a decision record" in caplog.text
    assert list(steps) == [1, 2, 3, 4, 5] and [len(steps[s]) for s in steps] == [4, 5, 4, 1, 1]
    assert [r["uid"] for r in steps[2]] == ["q0", "q1", "q2", "q3", "q1"]
    paths = plot_runs([str(a)])
    assert "v05_decisions.png" in {p.name for p in paths}
    _png_ok(a / "plots" / "v05_decisions.png")


def test_episodes_figure_for_multi_turn_runs_only(tmp_path):
    plain = make_run(tmp_path / "plain")
    assert "episodes.png" not in {p.name for p in plot_runs([str(plain)])}
    env = make_run(tmp_path / "env")
    records = [json.loads(line) for line in (env / "metrics.jsonl").read_text().splitlines()]
    for r in records[1:]:
        r.update({"env/episodes": 32, "env/turns_per_episode": 2.0 - r["step"] / 20, "env/tool_calls_per_episode": 1.0,
                  "env/tool_error_rate": 0.4 / r["step"], "env/ended_share/done": 0.9, "env/ended_share/max_turns": 0.1})
    (env / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    paths = plot_runs([str(env), str(plain)], str(tmp_path / "out"))
    assert "episodes.png" in {p.name for p in paths}
    _png_ok(tmp_path / "out" / "episodes.png")


def test_compare_says_when_final_accuracies_are_not_side_by_side(tmp_path):
    """Run A evaluated 4 prompts at step 2, run B 6 others last at step 1: they printed as equals."""
    import json

    from rlvr.analysis.plots import compare_runs, format_comparison

    for name, evals, prompts in (("A", {0: 0.3, 2: 0.5}, 4), ("B", {0: 0.4, 1: 0.45}, 6)):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "rollouts": 32, **({"eval/accuracy": evals[s]} if s in evals else {})}) + "\n"
                                                 for s in range(3)))
        (d / "eval.jsonl").write_text("".join(json.dumps({"step": s, "uid": f"{name}/{i}", "greedy": 1}) + "\n"
                                              for s in evals for i in range(prompts)))
    rows = compare_runs([str(tmp_path / "A"), str(tmp_path / "B")])
    assert [(r["heldout_final_step"], r["eval_prompts"]) for r in rows] == [(2, 4), (1, 6)]
    table = format_comparison(rows)
    assert "note: the final held-out accuracies come from different steps: A step 2, B step 1" in table
    assert "note: the runs evaluated different held-out prompts: A 4 prompts" in table


def test_rollouts_spent_count_v05s_warm_up(tmp_path):
    """Step 0's warm-up rollouts (`warmup/rollouts`) were left out of the curves and `rlvr compare`."""
    from rlvr.analysis.plots import compare_runs

    d = tmp_path / "v05"
    d.mkdir()
    recs = [{"step": 0, "warmup/rollouts": 256, "eval/accuracy": 0.3}, *({"step": s, "rollouts": 32} for s in (1, 2))]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert compare_runs([str(d)])[0]["rollouts"] == 320.0


def test_the_phase_breakdown_counts_each_second_once(tmp_path):
    """time/collect (generate + verify + value) was stacked as a phase of its own, and the oracle's
    time (outside time/step) as inside it: the bar read about twice the step."""
    from rlvr.analysis.plots import _Run

    a = make_run(tmp_path / "a")
    records = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    for r in records[1:]:
        r.update({"time/collect": 2.75, "time/oracle": 40.0, "time/oracle_gradient": 30.0})
    (a / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    mean = _Run(str(a), "a").mean_phase_seconds()
    inside = {p: v for p, v in mean.items() if p not in ("eval", "oracle", "oracle_gradient")}
    assert "collect" not in mean and sum(inside.values()) == pytest.approx(4.5)
    assert mean["oracle"] == pytest.approx(40.0) and mean["oracle_gradient"] == pytest.approx(30.0) and mean["eval"] == pytest.approx(0.6)


def test_the_v05_figure_is_drawn_when_a_run_without_decisions_comes_first(tmp_path):
    """Every run has a decisions.jsonl, empty but for V0.5's: with a GRPO run listed first the figure was skipped."""
    grpo = make_run(tmp_path / "grpo")
    (grpo / "decisions.jsonl").write_text("")
    v05 = make_run(tmp_path / "v05", algorithm="v05")
    (v05 / "decisions.jsonl").write_text("".join(
        json.dumps({"step": s, "uid": f"q{i}", "prior": 0.3, "k": i, "n": 4, "decision": "accepted", "extra": 0}) + "\n"
        for s in (1, 2) for i in range(4)))
    assert "v05_decisions.png" in {p.name for p in plot_runs([str(grpo), str(v05)], str(tmp_path / "out"))}


# ---- found surviving mutants (2026-12-07): each pins a reported figure by hand -------------------------


def metrics_run(d, records):
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return d


def test_compare_reports_the_last_evaluation_the_step_0_one_and_counts_eval_seconds(tmp_path):
    from rlvr.analysis.plots import compare_runs

    a = metrics_run(tmp_path / "a", [
        {"step": 0, "eval/accuracy": 0.3, "time/eval": 2.0},
        {"step": 1, "rollouts": 8, "time/step": 4.0, "eval/accuracy": 0.6, "time/eval": 2.0},
        {"step": 2, "rollouts": 8, "time/step": 4.0, "eval/accuracy": 0.5, "time/eval": 2.0},
    ])
    (row,) = compare_runs([str(a)])
    assert row["heldout_before"] == 0.3
    assert row["heldout_final"] == 0.5 and row["heldout_final_step"] == 2  # the last evaluation, not the best
    assert row["seconds"] == pytest.approx(4.0 + 4.0 + 3 * 2.0)  # steps and evaluations
    # a run whose records start after step 0 has no "before"
    b = metrics_run(tmp_path / "b", [{"step": 1, "rollouts": 8, "time/step": 4.0, "eval/accuracy": 0.6}])
    (row,) = compare_runs([str(b)])
    assert row["heldout_before"] is None


def test_v05_figure_mean_extra_per_error_bin(tmp_path):
    d = metrics_run(tmp_path / "v", [{"step": 1, "rollouts": 8, "time/step": 1.0, "reward": 0.5}])
    rows = [  # |prior - k/n|: 0, 0 (bin [0, 0.1)), 0.55 (bin [0.5, 0.6)); extra 4, 0, 6
        {"step": 1, "uid": "a", "prior": 0.5, "k": 2, "n": 4, "decision": "accepted", "extra": 4},
        {"step": 1, "uid": "b", "prior": 0.5, "k": 2, "n": 4, "decision": "accepted", "extra": 0},
        {"step": 1, "uid": "c", "prior": 0.2, "k": 3, "n": 4, "decision": "rejected", "extra": 6},
    ]
    (d / "decisions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = build_figures([str(d)])["v05_decisions.png"]
    (ax,) = [a for a in fig.axes if a.get_title().startswith("extra rollouts")]
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "mean per bin"]
    assert list(line.get_xdata()) == pytest.approx([0.05, 0.55])
    assert list(line.get_ydata()) == pytest.approx([2.0, 6.0])


def test_compare_and_plot_take_a_sweep_s_glob_with_hydra_s_multirun_yaml_in_it(tmp_path, capsys):
    """`rlvr compare multirun/<date>/<time>/*` (its help's example) also names Hydra's multirun.yaml
    beside the jobs: both commands failed on it with exit 2 and drew nothing."""
    from rlvr.cli import main as rlvr_main

    sweep = tmp_path / "multirun" / "2026-12-08" / "01-08-34"
    jobs = [make_run(sweep / "0_seed=0", steps=2, eval_every=1), make_run(sweep / "1_seed=1", steps=2, eval_every=1)]
    (sweep / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    glob = sorted(map(str, sweep.glob("*")))
    assert rlvr_main(["compare", "--json", *glob]) == 0
    out, err = capsys.readouterr()
    assert [Path(r["run_dir"]) for r in json.loads(out)] == jobs and "multirun.yaml" in err
    assert main([*glob, "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "heldout_vs_step.png").is_file()
    assert rlvr_main(["compare", str(sweep / "multirun.yaml")]) == 2  # only files: the error names it
    assert "multirun.yaml" in capsys.readouterr().err


def test_the_compare_table_formats_by_column_not_by_size():
    """Rollouts under 10 printed as "8.000" above another row's "16"; seconds as "7.483" above "10"."""
    from rlvr.analysis.plots import format_comparison

    row = {"run": "a", "steps": 2, "heldout_before": 0.25, "heldout_final": 0.5, "heldout_final_step": 2, "eval_prompts": 4,
           "pass_at_k": {}, "rollouts": 8.0, "seconds": 7.4834, "eval_set": None}
    table = format_comparison([row, {**row, "run": "b", "rollouts": 16.0, "seconds": 10.0}])
    assert table.splitlines()[1].split() == ["a", "2", "0.250", "0.500", "2", "4", "8", "7.5"]
    assert table.splitlines()[2].split()[-2:] == ["16", "10.0"]
