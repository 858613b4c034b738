"""The config: the Hydra tree in `configs/` is the one source of values, `schema.py` the types of its
keys, `tree.py` composing it (`compose`) and checking it before any actor starts (`validate`)."""

from rlvr.config.tree import (
    ConfigError,
    algorithm_preset,
    compose,
    config_dir,
    expand_shorthand,
    fill,
    max_response_tokens,
    overlong_buffer,
    overridden_keys,
    validate,
    validate_cluster,
)

__all__ = [
    "ConfigError", "algorithm_preset", "compose", "config_dir", "expand_shorthand", "fill", "max_response_tokens", "overlong_buffer",
    "overridden_keys", "validate", "validate_cluster",
]
