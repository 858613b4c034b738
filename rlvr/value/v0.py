"""Backend ``v0``: the published generalist value model V0 (arXiv 2602.03584), from local files.

V0 predicts the current policy's chance of solving a prompt from a *support set* of (prompt,
success) pairs of that policy: rlvr's value context.  Its parts, with the names and shapes of the
public release (github Now-Join-Us/V0, ``v0_core/models/v0.py``):

- **backbone**: Qwen3-Embedding-0.6B (``value.v0.embedding_model``, a local Hugging Face folder),
  read in float32, prompts tokenised with left padding and truncated to 2048 tokens.  Its last
  hidden states H [T, d] feed
- **the adapter**, residual dynamic-query attention pooling (``adapter_layer.*``)::

      g   = H[last token]
      Q   = static_queries + reshape(W₂ · GELU(LN(W₁ g)))        168 queries × 6 dims, W₁: d → 128
      KV  = proj_kv(H)                                           T × 6
      e   = flatten(MHA(LN_q(Q), LN_kv(KV), KV))                 3 heads, padding masked: 1008 dims

  (widths above 1024 would be reduced to 1024 by adaptive average pooling; 1008 is not).
- **the head**: a TabPFN v2.5 classifier (``value.v0.tabpfn_head``; the ``tabpfn`` package,
  version :data:`TABPFN_VERSION`, the one V0 pins), 4 estimators, float32, with V0's
  differentiable-input preprocessing.  On every call it is fit in context on the support set's
  embeddings with labels 1[success ≥ 0.5], and its answer is P(class 1): the softmax of the
  estimators' mean temperature-scaled logits.
- **the prior map** (rlvr's, ``value.v0.prior_map``): P(pass rate ≥ 0.5) is not a pass rate,
  and V0.5 fuses the prior as one, so by default (``isotonic``) the answer goes through
  E[success | score], an isotonic fit on the context's out-of-fold scores
  (:mod:`rlvr.value.prior_map`; ``value.v0.map_folds`` more head fits each time the context
  changes).  ``none`` uses V0's answer as it is, as V0's authors do.

The checkpoint (``value.v0.checkpoint``) is a ``.pt`` holding ``model_state_dict`` for the
module ``{backbone, adapter_layer}``, possibly with DDP's ``module.`` prefix.  The adapter's
weights must all be there; backbone weights it holds replace the embedding folder's.

**Uncertainty.** The head's class probabilities are all it says about its confidence, so the
uncertainty is the standard deviation of the success indicator under them, ``sqrt(p (1 - p))``
(0.5 at p = 0.5, 0.14 at p = 0.98).  V0.5 uses it only as a relative scale across prompts
(``algorithm.use_uncertainty``).

**Cost.** The context's embeddings are cached (:class:`~rlvr.value.context.EmbeddedContext`): a
prompt already in the context, or predicted earlier, is never encoded again, so a step encodes
only its new prompts.  The head is refit on every call, as V0 does.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rlvr.value.context import UNC_MAX, UNC_MIN, EmbeddedContext, check_pairs, check_prompts, clip_prior, device, offline
from rlvr.value.prior_map import MAPS, cross_fit, fit_isotonic

__all__ = ["DynamicQueryAdapter", "TABPFN_VERSION", "V0Encoder", "V0ValueModel", "load_v0_state_dict", "write_random_v0"]

TABPFN_VERSION = "6.2.0"
# The published adapter (V0.from_pretrained's defaults).
NUM_QUERIES, QUERY_DIM, NUM_HEADS, BOTTLENECK, TARGET_DIM = 168, 6, 3, 128, 1024
MAX_LENGTH = 2048
MIN_SUPPORT = 2  # the head needs two support items; fewer gives the uninformed prior (0.5, 0.5)


# --------------------------------------------------------------------------
# the embedding model: backbone + adapter
# --------------------------------------------------------------------------


def last_token_states(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state of each sequence's last real token, for left or right padding."""
    if bool((mask[:, -1] == 1).all()):  # left padding: the last position is real everywhere
        return hidden[:, -1]
    last = mask.sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class DynamicQueryAdapter(nn.Module):
    """V0's residual dynamic-query attention pooling (formula in the module docstring).

    Submodule names and order match the released state dict: ``static_queries``,
    ``generator.{0,1,4}`` (Linear, LayerNorm, GELU, Dropout, Linear), ``proj_kv``, ``mha``,
    ``ln_q``, ``ln_kv``.
    """

    def __init__(self, hidden_size: int, num_queries: int = NUM_QUERIES, query_dim: int = QUERY_DIM,
                 num_heads: int = NUM_HEADS, bottleneck: int = BOTTLENECK):
        super().__init__()
        self.num_queries, self.query_dim = num_queries, query_dim
        self.static_queries = nn.Parameter(torch.randn(1, num_queries, query_dim))
        self.generator = nn.Sequential(
            nn.Linear(hidden_size, bottleneck),
            nn.LayerNorm(bottleneck),
            nn.GELU(),
            nn.Dropout(0.0),  # 0.2 in training; its slot keeps the released key numbering
            nn.Linear(bottleneck, num_queries * query_dim),
        )
        self.proj_kv = nn.Linear(hidden_size, query_dim)
        self.mha = nn.MultiheadAttention(query_dim, num_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(query_dim)
        self.ln_kv = nn.LayerNorm(query_dim)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b = hidden.shape[0]
        queries = self.static_queries + self.generator(last_token_states(hidden, mask)).view(b, self.num_queries, self.query_dim)
        kv = self.proj_kv(hidden)
        out, _ = self.mha(self.ln_q(queries), self.ln_kv(kv), kv, key_padding_mask=~mask.bool(), need_weights=False)
        return out.reshape(b, -1)


class V0Encoder(nn.Module):
    """The module whose state dict a V0 checkpoint holds: ``backbone`` and ``adapter_layer``."""

    def __init__(self, backbone: nn.Module, adapter: DynamicQueryAdapter, target_dim: int = TARGET_DIM):
        super().__init__()
        self.backbone = backbone
        self.adapter_layer = adapter
        self.target_dim = target_dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        emb = self.adapter_layer(hidden, attention_mask)
        if emb.shape[1] > self.target_dim:
            emb = F.adaptive_avg_pool1d(emb.unsqueeze(1), self.target_dim).squeeze(1)
        return emb


def load_v0_state_dict(path: str | os.PathLike, weights_only: bool = True) -> dict[str, torch.Tensor]:
    """``model_state_dict`` of a V0 checkpoint, without DDP's ``module.`` prefix."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError by cause
        hint = " (it holds Python objects beyond tensors; if you trust the file, set value.v0.weights_only=false)" if weights_only else ""
        raise ValueError(f"value.v0.checkpoint: cannot read {path}{hint}: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model_state_dict"), dict):
        found = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"value.v0.checkpoint: {path} has no 'model_state_dict' (found {found}); not a V0 checkpoint")
    sd = ckpt["model_state_dict"]
    if sd and next(iter(sd)).startswith("module."):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd


def _fit_state_dict(encoder: V0Encoder, sd: dict[str, torch.Tensor], path: str) -> int:
    """Load ``sd`` into ``encoder``, refusing keys that do not fit by name; returns the number of
    backbone tensors the checkpoint replaced."""
    expected = encoder.state_dict()
    unexpected = [k for k in sd if k not in expected]
    missing = [k for k in expected if k.startswith("adapter_layer.") and k not in sd]
    wrong = [f"{k} {tuple(v.shape)} (the model has {tuple(expected[k].shape)})" for k, v in sd.items() if k in expected and v.shape != expected[k].shape]
    problems = []
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}" + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))
    if missing:
        problems.append(f"missing adapter keys {missing[:5]}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    if wrong:
        problems.append(f"shape mismatch: {wrong[:3]}")
    if problems:
        raise ValueError(
            f"value.v0.checkpoint: {path} does not fit the V0 architecture (Qwen3 backbone + dynamic-query adapter, "
            f"{NUM_QUERIES} queries x {QUERY_DIM} dims, {NUM_HEADS} heads): " + "; ".join(problems)
        )
    encoder.load_state_dict(sd, strict=False)
    return sum(1 for k in sd if k.startswith("backbone."))


# --------------------------------------------------------------------------
# the head: TabPFN, fit in context
# --------------------------------------------------------------------------


def _tabpfn():
    """The tabpfn pieces the head uses, checked against the API of :data:`TABPFN_VERSION`."""
    os.environ.setdefault("TABPFN_DISABLE_TELEMETRY", "1")  # no usage pings from a training job
    try:
        from tabpfn import TabPFNClassifier
        from tabpfn.base import ClassifierModelSpecs, initialize_tabpfn_model
    except ImportError as e:
        raise ImportError(
            f"value.backend=v0 needs the tabpfn package {TABPFN_VERSION} (pip install tabpfn=={TABPFN_VERSION}): {e}"
        ) from e
    init = inspect.signature(TabPFNClassifier.__init__).parameters
    fwd = inspect.signature(TabPFNClassifier.forward).parameters
    absent = [f"TabPFNClassifier({p}=...)" for p in ("model_path", "n_estimators", "inference_precision", "differentiable_input") if p not in init]
    absent += [f"TabPFNClassifier.forward({p}=...)" for p in ("use_inference_mode", "return_logits") if p not in fwd]
    if absent:
        raise ImportError(
            f"tabpfn {importlib.metadata.version('tabpfn')} has another API than the {TABPFN_VERSION} that V0 uses "
            f"(no {', '.join(absent)}); install tabpfn=={TABPFN_VERSION}"
        )
    return TabPFNClassifier, ClassifierModelSpecs, initialize_tabpfn_model


# --------------------------------------------------------------------------
# the backend
# --------------------------------------------------------------------------


class V0ValueModel:
    """The published V0 as a value backend (see the module docstring for the model)."""

    @staticmethod
    def config_kwargs(value_cfg) -> dict:
        return {k: value_cfg.v0[k] for k in value_cfg.v0}  # the `value.v0` node

    def __init__(
        self,
        checkpoint: str | None = None,
        embedding_model: str | None = None,
        tabpfn_head: str | None = None,
        context_size: int = 256,
        n_estimators: int = 4,
        max_length: int = MAX_LENGTH,
        batch_size: int = 32,
        weights_only: bool = True,
        prior_map: str = "isotonic",
        map_folds: int = 4,
    ):
        paths = {"checkpoint": checkpoint, "embedding_model": embedding_model, "tabpfn_head": tabpfn_head}
        for key, p in paths.items():
            if not p:
                raise ValueError(f"value.backend=v0 needs value.v0.{key} (a local path)")
            want_dir = key == "embedding_model"
            if not (os.path.isdir(p) if want_dir else os.path.isfile(p)):
                raise FileNotFoundError(f"value.v0.{key}: {'folder' if want_dir else 'file'} not found: {p}")
        if prior_map not in MAPS:
            raise ValueError(f"value.v0.prior_map: unknown {prior_map!r}; known: {', '.join(MAPS)}")
        self.n_estimators, self.max_length, self.batch_size = int(n_estimators), int(max_length), int(batch_size)
        self.prior_map, self.map_folds = prior_map, int(map_folds)
        self._map = None  # the fitted prior map of the current context
        self.device = device()
        self._classifier, specs_cls, init_head = _tabpfn()

        offline()
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(embedding_model, padding_side="left", local_files_only=True)
            # float32 as V0 reads it (transformers 5 would otherwise take the folder's bf16)
            backbone = AutoModel.from_pretrained(embedding_model, dtype=torch.float32, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"value.v0.embedding_model: {embedding_model} is not a transformers model folder with a tokenizer: {e}") from e
        self.encoder = V0Encoder(backbone, DynamicQueryAdapter(backbone.config.hidden_size))
        self.backbone_tensors_from_checkpoint = _fit_state_dict(self.encoder, load_v0_state_dict(checkpoint, weights_only), checkpoint)
        self.encoder.to(self.device).eval().requires_grad_(False)

        try:
            models, configs, _, inference_config = init_head(model_path=tabpfn_head, which="classifier", fit_mode="fit_preprocessors")
        except Exception as e:  # a truncated file, a regressor, a config of another version
            raise ValueError(f"value.v0.tabpfn_head: {tabpfn_head} is not a TabPFN classifier checkpoint: {type(e).__name__}: {e}") from e
        self._head = specs_cls(models[0], configs[0], inference_config)

        self.dim = NUM_QUERIES * QUERY_DIM if NUM_QUERIES * QUERY_DIM <= TARGET_DIM else TARGET_DIM
        # the backbone's folder too: a checkpoint may hold the adapter alone, its backbone from that folder
        self._ctx = EmbeddedContext(context_size, self._encode, self.dim, tag=f"{Path(checkpoint).name}|{Path(embedding_model).resolve()}")

    @property
    def context_size(self) -> int:
        return self._ctx.size

    def __len__(self) -> int:
        return len(self._ctx)

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[i : i + self.batch_size], max_length=self.max_length, padding=True,
                                   truncation=True, return_tensors="pt").to(self.device)
            out.append(self.encoder(batch["input_ids"], batch["attention_mask"]).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def embed(self, prompts: list[str]) -> torch.Tensor:
        """V0 embeddings [len(prompts), dim], through the cache."""
        return self._ctx.embed(prompts)

    @torch.no_grad()
    def head_probability(self, support: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """P(class 1) for each query row: TabPFN fit in context on (support, labels), as V0 does."""
        clf = self._classifier(
            model_path=self._head, device=self.device, n_estimators=self.n_estimators,
            inference_precision=torch.float32, differentiable_input=True,
        )
        # Two classes whatever the support holds (an all-fail support would otherwise make one).
        clf.n_classes_ = 2
        clf.fit(support.to(self.device), labels.to(self.device))
        logits = clf.forward(queries.to(self.device), use_inference_mode=True, return_logits=True)
        return torch.softmax(logits.float(), dim=-1)[:, 1].cpu()

    def predict(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = check_prompts(prompts)
        n_q = len(prompts)
        if len(self._ctx) < MIN_SUPPORT or n_q == 0:
            return torch.full((n_q,), 0.5), torch.full((n_q,), 0.5)
        success = torch.tensor(self._ctx.success)
        labels = (success >= 0.5).long()
        emb = self._ctx.emb
        p = self.head_probability(emb, labels, self.embed(prompts))
        if self.prior_map == "isotonic" and len(self._ctx) >= 2 * MIN_SUPPORT:
            if self._map is None:  # once per context: the folds cost map_folds head fits
                scores = cross_fit(len(success), self.map_folds, lambda sup, held: self.head_probability(emb[sup], labels[sup], emb[held]))
                self._map = fit_isotonic(scores, success)
            p = self._map(p)  # the head's P(pass rate >= 0.5) as a pass rate, E[success | score]
        unc = torch.sqrt(p * (1.0 - p))
        return clip_prior(p), unc.clamp(UNC_MIN, UNC_MAX)

    def add_context(self, prompts: list[str], success: list[float]) -> None:
        prompts, success = check_pairs(prompts, success)
        if prompts:
            self._ctx.add(prompts, success)
            self._map = None

    def state_dict(self) -> dict:
        """The context and its V0 embeddings (reused on load when the checkpoint's name matches)."""
        return {"backend": "v0", **self._ctx.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self._ctx.load_state_dict(d)
        self._map = None


# --------------------------------------------------------------------------
# a V0 in the published format with random weights (tests, benchmarks: no hub here)
# --------------------------------------------------------------------------


def write_random_v0(out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike, *, published_size: bool = False,
                    ddp_prefix: bool = False, seed: int = 0) -> dict[str, str]:
    """Write the three files ``value.v0.*`` points at, in V0's formats, with random weights.

    ``published_size``: the backbone has Qwen3-Embedding-0.6B's shape (28 layers, width 1024)
    and the head tabpfn's default architecture; otherwise both are tiny.  The adapter always has
    the published dimensions.  The tokenizer comes from ``tokenizer_dir``.  Returns the paths
    by config key (``checkpoint``, ``embedding_model``, ``tabpfn_head``).
    """
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    shape = (
        dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128)
        if published_size
        else dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    )
    cfg = Qwen3Config(vocab_size=len(tok), max_position_embeddings=MAX_LENGTH, pad_token_id=tok.pad_token_id, **shape)
    backbone = Qwen3Model(cfg)
    emb_dir = out / "embedding_model"
    backbone.save_pretrained(emb_dir)
    tok.save_pretrained(emb_dir)

    adapter = DynamicQueryAdapter(cfg.hidden_size)
    with torch.no_grad():  # the released generator's last layer starts at zero; give it weights
        adapter.generator[4].weight.normal_(0.0, 0.02)
    sd = V0Encoder(backbone, adapter).state_dict()
    if ddp_prefix:
        sd = {f"module.{k}": v for k, v in sd.items()}
    ckpt = out / "v0.pt"
    torch.save({"epoch": 0, "model_state_dict": sd, "optimizer_state_dict": None}, ckpt)

    _tabpfn()
    from dataclasses import asdict

    from tabpfn.architectures import ARCHITECTURES

    arch = ARCHITECTURES["base"]
    size = {} if published_size else {"emsize": 16, "nhead": 2, "nlayers": 1, "nhid_factor": 2}
    head_cfg, _ = arch.parse_config({"max_num_classes": 10, "num_buckets": 5000, **size})
    head = arch.get_architecture(head_cfg, n_out=head_cfg.max_num_classes, cache_trainset_representation=False)
    head_path = out / "tabpfn-v2.5-classifier-random.ckpt"  # "v2.5" in the name: tabpfn reads the version from it
    torch.save({"state_dict": head.state_dict(), "config": asdict(head_cfg), "architecture_name": "base"}, head_path)
    return {"checkpoint": str(ckpt), "embedding_model": str(emb_dir), "tabpfn_head": str(head_path)}
