import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def rlvr_cache(tmp_path_factory) -> str:
    """Models built once per session (tiny random model; SmolLM2 conversion where needed)."""
    cache = os.environ.get("RLVR_CACHE") or str(tmp_path_factory.mktemp("rlvr_cache"))
    os.environ["RLVR_CACHE"] = cache
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(cache, "torch_extensions"))
    return cache


@pytest.fixture(scope="session")
def tiny_model(rlvr_cache) -> str:
    from rlvr.models import resolve_model_path

    return resolve_model_path("tiny-random", rlvr_cache)


@pytest.fixture(scope="session")
def ray_session(rlvr_cache):
    """One local Ray for the whole pytest run: starting it costs seconds, and every module paid
    them. The simulated-cluster tests stop it for a cluster of their own and start it again."""
    import ray
    from helpers import start_test_ray

    if not ray.is_initialized():
        start_test_ray()
    yield
    ray.shutdown()


def pytest_collection_modifyitems(items):
    """The integration and e2e tiers start Ray, vLLM, DeepSpeed or a whole run in a subprocess: all
    of their tests are `slow`, so `-m "not slow"` is the unit tier even where a module forgot the mark."""
    for item in items:
        if item.path.parent.name in ("integration", "e2e"):
            item.add_marker(pytest.mark.slow)
