"""benchmarks/common.py and seeding of the cheap simulation benchmarks."""

from __future__ import annotations

import os

from benchmarks.common import settings_in_fresh_processes


def test_a_failed_setting_is_reported_and_the_others_still_run(tmp_path):
    """One failed worker (check=True) used to discard every other setting's results."""
    (tmp_path / "fake_bench_worker.py").write_text(
        "import json, sys\n"
        "args = json.loads(sys.argv[2])\n"
        "if 'fail' in args: sys.exit(3)\n"
        "print('noise'); print(json.dumps({'rate': float(args[-1])}))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    settings = {"a": ["2"], "b": ["fail"], "c": ["3"]}
    out = settings_in_fresh_processes("fake_bench_worker", settings, ["a", "b", "c"], [], [], {"rate_vs_first": "rate"}, env=env)
    assert out["a"] == {"rate": 2.0, "rate_vs_first": 1.0}
    assert out["b"] == {"error": "the worker exited with 3"}
    assert out["c"] == {"rate": 3.0, "rate_vs_first": 1.5}
    first_failed = settings_in_fresh_processes("fake_bench_worker", settings, ["b", "c"], [], [], {"rate_vs_first": "rate"}, env=env)
    assert first_failed["c"] == {"rate": 3.0, "rate_vs_first": None}


def test_v0_prior_map_is_reproducible_from_its_seeds():
    """Its Beta(2, 2) draws came from torch's unseeded global RNG: two runs of one command differed."""
    import torch

    from benchmarks.experiments import v0_prior_map

    torch.manual_seed(1)
    first = v0_prior_map.run(2, 32, 32, 4)
    torch.manual_seed(2)
    assert v0_prior_map.run(2, 32, 32, 4) == first
    mid = v0_prior_map.pass_rates(200_000, torch.Generator().manual_seed(0))
    mid = mid[(mid > 0) & (mid < 1)]  # the Beta(2, 2) half: mean 1/2, variance 1/20
    assert abs(float(mid.mean()) - 0.5) < 0.005 and abs(float(mid.var()) - 0.05) < 0.002
