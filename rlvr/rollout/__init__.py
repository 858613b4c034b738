"""Rollout engines without Ray (engines.py: vLLM and HF backends) and the Ray side (pool.py: RolloutEngine, RolloutPool)."""
