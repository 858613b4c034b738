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


@pytest.fixture(scope="module")
def ray_session(rlvr_cache):
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={
                "env_vars": {
                    "TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"],
                    "HF_HUB_OFFLINE": "1",
                    "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
                }
            },
        )
    yield
    ray.shutdown()
