"""benchmarks/micro/learner_memory.py: each setting runs the real learner in its own process and the
report is well formed. The figures come from full runs on SmolLM2 (docs/benchmarks.md)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_mode_measures_each_setting_in_its_own_process(tmp_path, tiny_model):
    out = tmp_path / "learner_memory.json"
    cmd = [sys.executable, "-m", "benchmarks.micro.learner_memory", "--repeats", "1", "--settings", "mb16", "mb8", "--out", str(out), "model=tiny-random"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    settings = json.loads(out.read_text())["settings"]
    assert settings["mb8"]["entries"] == ["model=tiny-random", "learner.micro_batch_size=8"]
    assert settings["mb8"]["micro_batch_sizes"] == [8] * 4 and settings["mb16"]["micro_batch_sizes"] == [16] * 2  # 32 sequences
    for r in settings.values():
        assert 0 < r["rss_after_init_mb"] <= r["peak_rss_mb"] and r["train_step_s"] > 0
    assert settings["mb16"]["peak_vs_first"] == settings["mb16"]["time_vs_first"] == 1


def test_fresh_shapes_and_process_settings_reach_the_learner(tmp_path, tiny_model):
    """--fresh-shapes draws new lengths every step; `env:` entries set the process up before the
    learner's first GEMM, and the learner's own kernel-cache bound yields to them."""
    out = tmp_path / "learner_memory.json"
    cmd = [sys.executable, "-m", "benchmarks.micro.learner_memory", "--repeats", "2", "--fresh-shapes", "--settings", "default",
           "kernel-caches-1024", "glibc-heap", "--out", str(out), "model=tiny-random"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    report = json.loads(out.read_text())
    settings = report["settings"]
    assert report["fresh_shapes"] and all(len(r["rss_after_steps_mb"]) == 3 for r in settings.values())  # the warm-up and 2 steps
    for r in settings.values():
        assert len(r["micro_batch_sizes_per_step"]) == 3 and all(sum(split) == 32 for split in r["micro_batch_sizes_per_step"])
    assert settings["default"]["kernel_caches"] == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256", "LRU_CACHE_CAPACITY": "256"}
    assert settings["kernel-caches-1024"]["kernel_caches"] == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024", "LRU_CACHE_CAPACITY": "1024"}
    assert settings["glibc-heap"]["entries"] == ["model=tiny-random", "learner.mmap_threshold_mb=0"]
