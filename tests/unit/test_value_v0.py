"""value.backend=v0: the published V0 format (Qwen3 backbone, dynamic-query adapter, TabPFN head).

No network here, so the files are written in V0's formats with random weights
(:func:`rlvr.value.v0.write_random_v0`): a tiny Qwen3 backbone, the adapter at the published
dimensions, a ``.pt`` with ``model_state_dict`` (with and without DDP's ``module.`` prefix) and a
tiny TabPFN v2.5-format classifier built with the tabpfn package's own constructors.
"""

import math
from pathlib import Path

import pytest
import torch

from rlvr.config import ConfigError, compose, validate
from rlvr.value import (
    PRIOR_MAX,
    PRIOR_MIN,
    V0ValueModel,
    make_value_model,
    value_model_kwargs,
)
from rlvr.value.v0 import NUM_HEADS, NUM_QUERIES, QUERY_DIM, write_random_v0

PROMPTS = ["What is 2 + 3?", "What is 17 - 4?", "Compute 45 + 12.", "What is 9 + 8?", "Calculate 30 - 7.", "What is 6 + 11?"]
TARGETS = ["What is 14 + 5?", "Compute 81 - 22.", "What is 3 + 3?"]


@pytest.fixture(scope="module")
def v0_files(tmp_path_factory, tiny_model) -> dict:
    return write_random_v0(tmp_path_factory.mktemp("v0"), tiny_model)


@pytest.fixture(scope="module")
def v0(v0_files) -> V0ValueModel:
    return V0ValueModel(**v0_files, context_size=8, prior_map="none")  # V0's answer as it is


def counting(model: V0ValueModel) -> list[str]:
    """Record every prompt the backbone encodes from here on."""
    seen: list[str] = []
    encode = model._ctx.encode

    def recording(texts):
        seen.extend(texts)
        return encode(texts)

    model._ctx.encode = recording
    return seen


def reference_embedding(files: dict, prompt: str) -> torch.Tensor:
    """V0's embedding of one prompt, written out from the formulas with the checkpoint's tensors
    (no padding, plain attention), independent of rlvr's modules."""
    from transformers import AutoModel, AutoTokenizer

    sd = torch.load(files["checkpoint"], weights_only=True)["model_state_dict"]
    a = {k.removeprefix("adapter_layer."): v for k, v in sd.items() if k.startswith("adapter_layer.")}
    tok = AutoTokenizer.from_pretrained(files["embedding_model"])
    backbone = AutoModel.from_pretrained(files["embedding_model"], dtype=torch.float32).eval()
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        h = backbone(input_ids=ids).last_hidden_state[0]  # [T, d]
    ln = lambda x, p: torch.nn.functional.layer_norm(x, x.shape[-1:], a[f"{p}.weight"], a[f"{p}.bias"])  # noqa: E731
    g = h[-1]
    z = torch.nn.functional.gelu(ln(g @ a["generator.0.weight"].T + a["generator.0.bias"], "generator.1"))
    q = a["static_queries"][0] + (z @ a["generator.4.weight"].T + a["generator.4.bias"]).view(NUM_QUERIES, QUERY_DIM)
    kv = h @ a["proj_kv.weight"].T + a["proj_kv.bias"]
    wq, wk, wv = a["mha.in_proj_weight"].chunk(3)
    bq, bk, bv = a["mha.in_proj_bias"].chunk(3)
    Q, K, V = ln(q, "ln_q") @ wq.T + bq, ln(kv, "ln_kv") @ wk.T + bk, kv @ wv.T + bv
    d = QUERY_DIM // NUM_HEADS
    heads = []
    for i in range(NUM_HEADS):
        s = slice(i * d, (i + 1) * d)
        heads.append(torch.softmax(Q[:, s] @ K[:, s].T / math.sqrt(d), dim=-1) @ V[:, s])
    out = torch.cat(heads, dim=-1) @ a["mha.out_proj.weight"].T + a["mha.out_proj.bias"]
    return out.reshape(-1)  # 168 x 6 = 1008 <= 1024: no pooling


def test_embeddings_equal_the_reference_forward(v0, v0_files):
    emb = v0.embed(PROMPTS)  # one padded batch of prompts of different lengths
    assert emb.shape == (len(PROMPTS), NUM_QUERIES * QUERY_DIM)
    ref = torch.stack([reference_embedding(v0_files, p) for p in PROMPTS])
    assert torch.allclose(emb, ref, atol=1e-5), (emb - ref).abs().max()


def test_ddp_prefix_loads_the_same_weights(v0, v0_files, tiny_model, tmp_path):
    files = write_random_v0(tmp_path, tiny_model, ddp_prefix=True)
    keys = list(torch.load(files["checkpoint"], weights_only=True)["model_state_dict"])
    assert keys[0].startswith("module.backbone.") and any(k.startswith("module.adapter_layer.") for k in keys)
    prefixed = V0ValueModel(**files)
    assert prefixed.backbone_tensors_from_checkpoint == v0.backbone_tensors_from_checkpoint > 0
    assert torch.equal(prefixed.embed(PROMPTS), v0.embed(PROMPTS))  # same seed, same weights


def rewrite_checkpoint(files: dict, tmp_path: Path, edit) -> dict:
    sd = torch.load(files["checkpoint"], weights_only=True)["model_state_dict"]
    edit(sd)
    path = tmp_path / "edited.pt"
    torch.save({"model_state_dict": sd}, path)
    return {**files, "checkpoint": str(path)}


def test_a_checkpoint_that_does_not_fit_is_refused_by_name(v0_files, tmp_path):
    extra = rewrite_checkpoint(v0_files, tmp_path, lambda sd: sd.update({"adapter_layer.bogus": torch.zeros(1)}))
    with pytest.raises(ValueError, match=r"unexpected keys \['adapter_layer.bogus'\]"):
        V0ValueModel(**extra)
    missing = rewrite_checkpoint(v0_files, tmp_path, lambda sd: sd.pop("adapter_layer.proj_kv.weight"))
    with pytest.raises(ValueError, match=r"missing adapter keys \['adapter_layer.proj_kv.weight'\]"):
        V0ValueModel(**missing)
    wide = rewrite_checkpoint(v0_files, tmp_path, lambda sd: sd.update({"adapter_layer.static_queries": torch.zeros(1, 10, 32)}))
    with pytest.raises(ValueError, match=r"shape mismatch: \['adapter_layer.static_queries \(1, 10, 32\) \(the model has \(1, 168, 6\)\)'\]"):
        V0ValueModel(**wide)
    # only the adapter: the backbone comes from the embedding folder
    adapter_only = rewrite_checkpoint(v0_files, tmp_path, lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("backbone.")])
    assert V0ValueModel(**adapter_only).backbone_tensors_from_checkpoint == 0


def test_missing_and_wrong_files_are_named(v0_files, tmp_path):
    for key in ("checkpoint", "embedding_model", "tabpfn_head"):
        with pytest.raises(FileNotFoundError, match=f"value.v0.{key}: .* not found: .*nowhere"):
            V0ValueModel(**{**v0_files, key: str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match="value.backend=v0 needs value.v0.checkpoint"):
        make_value_model("v0")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="has no 'model_state_dict'.*not a V0 checkpoint"):
        V0ValueModel(**{**v0_files, "checkpoint": str(tmp_path / "other.pt")})
    (tmp_path / "head.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="value.v0.tabpfn_head: .* is not a TabPFN classifier checkpoint"):
        V0ValueModel(**{**v0_files, "tabpfn_head": str(tmp_path / "head.ckpt")})


def test_predicts_as_v0_does(v0, v0_files):
    """The prior is V0's: a fresh TabPFNClassifier (4 estimators, float32, differentiable input)
    fit on the support embeddings with labels 1[success >= 0.5], softmax of its mean logits."""
    from tabpfn import TabPFNClassifier

    v0.load_state_dict({"prompts": [], "success": []})
    assert v0.predict(TARGETS)[0].tolist() == [0.5] * 3  # no support yet: the uninformed prior
    success = [1.0, 0.75, 0.0, 0.25, 1.0, 0.5]
    v0.add_context(PROMPTS, success)
    prior, unc = v0.predict(TARGETS)

    clf = TabPFNClassifier(model_path=v0_files["tabpfn_head"], device="cpu", n_estimators=4,
                           inference_precision=torch.float32, differentiable_input=True)
    clf.fit(v0.embed(PROMPTS), torch.tensor([1, 1, 0, 0, 1, 1]))
    with torch.no_grad():
        logits = clf.forward(v0.embed(TARGETS), use_inference_mode=True, return_logits=True)
    p = torch.softmax(logits, dim=-1)[:, 1].clamp(PRIOR_MIN, PRIOR_MAX)
    assert torch.allclose(prior, p, atol=1e-6), (prior, p)
    assert torch.allclose(unc, torch.sqrt(prior * (1 - prior)), atol=1e-6)  # no clipping at these priors
    assert torch.equal(v0.predict(TARGETS)[0], prior)  # refit on every call, deterministically
    # an all-fail support still yields P(class 1)
    v0.load_state_dict({"prompts": PROMPTS[:3], "success": [0.0, 0.0, 0.25]})
    prior0, _ = v0.predict(TARGETS)
    assert prior0.shape == (3,) and ((prior0 >= PRIOR_MIN) & (prior0 <= PRIOR_MAX)).all()


def test_the_isotonic_prior_map_is_fit_on_out_of_fold_head_answers(v0, v0_files):
    """prior_map=isotonic: V0's answer mapped through E[success | score], fit on the context's
    answers for itself with its fold left out of the support; once per context."""
    from rlvr.value.prior_map import fit_isotonic

    mapped = V0ValueModel(**v0_files, context_size=8, map_folds=3)
    success = [1.0, 0.75, 0.0, 0.25, 1.0, 0.5]
    for m in (v0, mapped):
        m.load_state_dict({"prompts": [], "success": []})
        m.add_context(PROMPTS, success)
    emb, labels = v0.embed(PROMPTS), (torch.tensor(success) >= 0.5).long()
    oof = torch.empty(6)
    for k in range(3):  # item i in fold i mod 3
        held = torch.tensor([i for i in range(6) if i % 3 == k])
        support = torch.tensor([i for i in range(6) if i % 3 != k])
        oof[held] = v0.head_probability(emb[support], labels[support], emb[held])
    raw = v0.head_probability(emb, labels, v0.embed(TARGETS))
    expected = fit_isotonic(oof, torch.tensor(success))(raw).clamp(PRIOR_MIN, PRIOR_MAX)
    seen = counting(mapped)
    prior, unc = mapped.predict(TARGETS)
    torch.testing.assert_close(prior, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(unc, torch.sqrt(prior * (1 - prior)).clamp(min=1e-3), atol=1e-6, rtol=0)
    assert seen == TARGETS  # the folds reuse the context's cached embeddings
    order = raw.argsort()
    assert (prior[order].diff() >= 0).all()  # the map keeps V0's ranking
    calls = []
    head = mapped.head_probability
    mapped.head_probability = lambda *a: calls.append(1) or head(*a)
    mapped.predict(TARGETS)
    assert len(calls) == 1  # the map is fit once per context, not on every call
    mapped.add_context(TARGETS[:1], [0.0])
    mapped.predict(TARGETS)
    assert len(calls) == 1 + 1 + 3  # a new context: the head, and the three folds again


def test_context_prompts_are_never_re_encoded(v0_files):
    m = V0ValueModel(**v0_files, context_size=4)
    seen = counting(m)
    m.predict(PROMPTS[:2])  # fewer than two support items: nothing to encode
    m.add_context(PROMPTS[:3], [1.0, 0.0, 0.5])
    assert seen == PROMPTS[:3]
    m.predict(PROMPTS[:3] + TARGETS[:1])
    assert seen == PROMPTS[:3] + TARGETS[:1]  # only the new prompt
    m.add_context(TARGETS[:1] + PROMPTS[3:5], [0.0, 1.0, 1.0])  # the FIFO drops the oldest two
    assert seen == PROMPTS[:3] + TARGETS[:1] + PROMPTS[3:5]
    assert m.state_dict()["prompts"] == [PROMPTS[2], TARGETS[0], PROMPTS[3], PROMPTS[4]]

    state = m.state_dict()
    restored = V0ValueModel(**v0_files, context_size=4)
    seen_restored = counting(restored)
    restored.load_state_dict(state)  # the embeddings come with the state
    assert torch.equal(restored.predict(TARGETS)[0], m.predict(TARGETS)[0])
    assert seen_restored == TARGETS[1:]  # the context (TARGETS[0] among it) was not encoded again

    # the same checkpoint file over another backbone (a checkpoint holding the adapter only): the
    # saved embeddings are another encoder's, so the context is encoded anew
    import shutil

    other_backbone = Path(v0_files["embedding_model"]).with_name("other_backbone")
    shutil.copytree(v0_files["embedding_model"], other_backbone, dirs_exist_ok=True)
    other = V0ValueModel(**{**v0_files, "embedding_model": str(other_backbone)}, context_size=4)
    seen_other = counting(other)
    other.load_state_dict(state)
    assert seen_other == state["prompts"]


def test_config_validation_names_the_key(v0_files, tmp_path):
    overrides = [f"value.v0.{k}={v}" for k, v in v0_files.items()]
    cfg = compose(["algorithm=v05", "value.backend=v0", *overrides])
    validate(cfg)
    kwargs = value_model_kwargs(cfg.value)
    assert kwargs["checkpoint"] == v0_files["checkpoint"] and kwargs["n_estimators"] == 4 and kwargs["context_size"] == 256
    with pytest.raises(ConfigError, match="value.v0.checkpoint: backend=v0 needs this local path"):
        validate(compose(["algorithm=v05", "value.backend=v0"]))
    with pytest.raises(ConfigError, match="value.v0.prior_map: unknown 'platt'; known: none, isotonic"):
        validate(compose(["algorithm=v05", "value.backend=v0", *overrides, "value.v0.prior_map=platt"]))
    with pytest.raises(ConfigError, match="value.v0.map_folds: must be >= 2, got 1"):
        validate(compose(["algorithm=v05", "value.backend=v0", *overrides, "value.v0.map_folds=1"]))
    with pytest.raises(ConfigError, match="value.v0.tabpfn_head: file .*nowhere.* not found"):
        validate(compose(["algorithm=v05", "value.backend=v0", *overrides, f"value.v0.tabpfn_head={tmp_path / 'nowhere'}"]))


