"""benchmarks/micro/engine_settings.py: each setting runs rlvr's vLLM engine in its own process with the
settings it names, and the report is well formed. The figures come from SmolLM2 (docs/benchmarks.md)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_mode_runs_each_setting_in_its_own_engine(tmp_path, tiny_model):
    out = tmp_path / "engine_settings.json"
    cmd = [sys.executable, "-m", "benchmarks.micro.engine_settings", "--prompts", "8", "--max-tokens", "8", "--settings", "default", "block128",
           "--out", str(out), "model=tiny-random"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    settings = json.loads(out.read_text())["settings"]
    assert (settings["default"]["block_size"], settings["block128"]["block_size"]) == (32, 128)
    for r in settings.values():
        assert r["kv_cache_gb"] > 0 and r["tokens"] > 0 and r["tokens_per_s"] > 0 and 0 < r["rss_mb"] <= r["peak_rss_mb"]
    assert settings["default"]["rate_vs_first"] == settings["default"]["peak_vs_first"] == 1
