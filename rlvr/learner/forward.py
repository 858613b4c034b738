"""The learner's forward: a micro-batch as tensors (`collate`), each response token's log-prob
under the policy (`response_logprobs`, one prompt forward shared by its responses), and the
arithmetic a micro-step's bookkeeping needs (`loss_share`, `dot64`). No actor, no optimizer: the
tests run it on a bare Hugging Face model.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from rlvr.types import MiniBatch, Trajectory


def response_logprobs(model, mb: Collated, temperature: float = 1.0, share_prompts: bool = True,
                      pack_responses: bool = False, head_chunk: int = 0, lockstep: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(y_j | x, y_<j) of each response token [B, T], and its entropy (no grad).

    The sequences of one prompt share its forward pass: the distinct prompts of the micro-batch
    run once, with a KV cache, and every response continues from its own prompt's cache (the
    cache is indexed per sequence, so autograd sums each response's gradient into the prompt's
    activations). With n responses a prompt, prompt tokens cost 1/n of a full-sequence forward,
    and the default job's prompts are two thirds of its tokens. With `share_prompts=False`, and
    under gradient checkpointing (which turns HF's cache off), each sequence runs its own prompt
    in one forward instead; both paths compute the same numbers.

    The LM head runs on response positions only: on a 135M model with a 49k vocabulary it is a
    fifth of the FLOPs, and full-sequence logits would dominate memory.
    Logits are divided by the sampling temperature, so π is the policy the engine sampled from.
    With `pack_responses` (and shared prompts), a prompt's responses continue from its cache packed
    in one row (`packed_logprobs`): no padding between them, and the LM head runs on real tokens only.
    With `head_chunk`, the LM head runs that many positions at a time under activation
    checkpointing (`_token_logprobs`).

    With `lockstep` (ZeRO-3 over several ranks: every module call gathers the module's parameters
    in a collective, so every rank must make the same calls), the calls do not depend on the data:
    the response forward runs even with no response token to feed (on one stand-in token whose
    output joins the graph at zero size, so backward gathers for it too), and the LM head runs in
    one call.
    """
    checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if lockstep:
        head_chunk = 0
    if pack_responses and share_prompts and not checkpointing:
        return packed_logprobs(model, mb, temperature, head_chunk, lockstep)
    decoder = model.get_decoder()
    group_of, prompt_len, response_ids = mb.group_of, mb.prompt_len, mb.response_ids
    width, follow = mb.prompt_ids.shape[1], response_ids.shape[1] - 1  # response tokens fed as inputs
    device, rows = response_ids.device, torch.arange(len(group_of), device=response_ids.device)
    # a position sees the unpadded part of its own prompt and the tokens after it, up to itself
    causal = torch.ones(width + follow, width + follow, dtype=torch.bool, device=device).tril()
    key_ok = torch.cat([mb.prompt_mask[group_of], torch.ones(len(group_of), follow, dtype=torch.bool, device=device)], 1)

    def allowed(first_query: int) -> torch.Tensor:  # the mask's rows from query position first_query on
        return _attention_mask((causal[first_query:] & key_ok[:, None, :])[:, None], model)

    positions = torch.cat([torch.arange(width, device=device).expand(len(group_of), -1), prompt_len[group_of, None] + torch.arange(follow, device=device)], 1)
    if not share_prompts or checkpointing:
        inputs = torch.cat([mb.prompt_ids[group_of], response_ids[:, :follow]], 1)
        hidden = decoder(input_ids=inputs, attention_mask=allowed(0), position_ids=positions, use_cache=False).last_hidden_state
        first, rest = hidden[rows, prompt_len[group_of] - 1], hidden[:, width:]
    else:
        prompt, last = _prompt_forward(model, mb)
        first = last[group_of]
        rest = first[:, None, :][:, :0]
        if follow or lockstep:
            cache = prompt.past_key_values
            for layer in cache.layers:  # each sequence continues from its own prompt's keys and values
                layer.batch_select_indices(group_of)
            if follow:
                out = decoder(input_ids=response_ids[:, :follow], attention_mask=allowed(width), position_ids=positions[:, width:], past_key_values=cache, use_cache=True)
                rest = out.last_hidden_state
            else:  # lockstep, every response a single token: a stand-in call, none of its output used
                out = decoder(input_ids=response_ids[:, :1], position_ids=prompt_len[group_of, None], past_key_values=cache, use_cache=True)
                rest = out.last_hidden_state[:, :0]
    return _token_logprobs(model, torch.cat([first[:, None], rest], 1), response_ids, temperature, head_chunk)


def packed_logprobs(model, mb: Collated, temperature: float = 1.0, head_chunk: int = 0,
                    lockstep: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`response_logprobs` with no padding at all: the same numbers.

    The micro-batch's distinct prompts run once, back to back in one row ([1, ΣP], positions
    restarting at each prompt, causal within it), cached. Then every response token runs in a
    second row ([1, ΣR]), prompt g's responses back to back: a response's token sees its prompt
    and its own response up to itself, never a sibling's, and its position restarts at the
    prompt's length. Attention runs one prompt at a time (`_segment_attention`, torch's SDPA on
    that prompt's queries and keys only), the rest of the decoder on the two rows as they are, so
    the projections and MLPs see real tokens only, as `flash_attn_varlen` would arrange on a GPU.
    The LM head, log-softmax and entropy run on the real response positions ([N, vocab]); the
    results are scattered back to [B, T], zero at padding. `lockstep`: as in `response_logprobs`.
    """
    decoder, prompt_len = model.get_decoder(), mb.prompt_len
    ends = prompt_len.cumsum(0).tolist()
    prompt_ids = mb.prompt_ids[mb.prompt_mask][None]  # row-major: prompt g's tokens end at ends[g]
    sizes = prompt_len.tolist()
    causal = {"queries": sizes, "keys": sizes, "attend": [([g], None) for g in range(len(sizes))]}
    with _segmented(model):
        prompt = decoder(input_ids=prompt_ids, position_ids=mb.packed_prompt_positions, use_cache=True, segments=causal)
        hidden = [prompt.last_hidden_state[0, [e - 1 for e in ends]]]  # predicts each response's first token
        bounds, seq, local = mb.packed_bounds.tolist(), mb.packed_seq, mb.packed_local
        if seq.numel():
            attend = []
            for g, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
                own = (seq[a:b, None] == seq[None, a:b]) & (local[None, a:b] <= local[a:b, None])
                sees_prompt = torch.ones(b - a, sizes[g], dtype=torch.bool, device=own.device)
                attend.append(([g, len(sizes) + g], torch.cat([sees_prompt, own], 1)[None, None]))
            responses = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
            segments = {"queries": responses, "keys": sizes + responses, "attend": attend}
            out = decoder(input_ids=mb.packed_ids, position_ids=mb.packed_positions, past_key_values=prompt.past_key_values,
                          use_cache=True, segments=segments)
            hidden.append(out.last_hidden_state[0])
        elif lockstep:  # every response a single token: a stand-in call that attends to itself, none of its output used
            stand_in = {"queries": [1], "keys": sizes + [1], "attend": [([len(sizes)], None)]}
            out = decoder(input_ids=mb.prompt_ids[:1, :1], position_ids=mb.packed_prompt_positions[:, :1], past_key_values=prompt.past_key_values,
                          use_cache=True, segments=stand_in)
            hidden.append(out.last_hidden_state[0, :0])
    rows, cols = mb.real_rows, mb.real_cols
    real_logp, real_entropy = _token_logprobs(model, torch.cat(hidden)[mb.packed_source], mb.response_ids[rows, cols], temperature, head_chunk)
    logp = torch.zeros(mb.response_ids.shape, dtype=real_logp.dtype, device=real_logp.device).index_put((rows, cols), real_logp)
    return logp, torch.zeros_like(logp).index_put_((rows, cols), real_entropy)


SEGMENTED = "rlvr_segmented"  # the attention `packed_logprobs` switches a model to for its two forwards


def _segment_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                       scaling: float | None = None, dropout: float = 0.0, segments: dict | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Attention over one packed row, a segment at a time. ``segments``: the queries' lengths, the
    keys' parts' lengths, and per query segment the key parts it attends over (concatenated) with
    its mask, or causally where the mask is None. query [1, H, Q, d], key and value [1, H_kv, K, d]
    (K includes the cache); returns [1, Q, H, d] as HF's attention does. The rows are split, not
    sliced: a split's backward is one concatenation, where each slice's would write a zero-filled
    copy of the whole row."""
    groups = query.shape[1] // key.shape[1]
    queries = query.split(segments["queries"], 2)
    keys, values = key.split(segments["keys"], 2), value.split(segments["keys"], 2)
    outputs = []
    for q, (parts, mask) in zip(queries, segments["attend"]):
        if not q.shape[2]:
            continue
        k = torch.cat([keys[i] for i in parts], 2) if len(parts) > 1 else keys[parts[0]]
        v = torch.cat([values[i] for i in parts], 2) if len(parts) > 1 else values[parts[0]]
        if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        outputs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None, scale=scaling))
    return torch.cat(outputs, 2).transpose(1, 2), None


@contextmanager
def _segmented(model):
    """The model's attention is `_segment_attention` inside the block (HF reads
    `config._attn_implementation` at every call), its own outside; backward does not call it again."""
    from transformers import AttentionInterface

    if SEGMENTED not in AttentionInterface._global_mapping:
        AttentionInterface.register(SEGMENTED, _segment_attention)
    if getattr(model.config, "attn_logit_softcapping", None) or getattr(model.config, "use_sliding_window", False):
        raise ValueError(f"learner.pack_responses: {type(model).__name__}'s attention is not plain scaled dot-product (softcapping or "
                         "a sliding window); set learner.pack_responses=false")
    base = model.config._attn_implementation
    model.config._attn_implementation = SEGMENTED
    try:
        yield
    finally:
        model.config._attn_implementation = base


def _prompt_forward(model, mb: Collated):
    """The micro-batch's distinct prompts through the decoder once, cached: (its output, with the
    cache, and each prompt's last hidden state [G, d], which predicts its responses' first token)."""
    prompt_ids, prompt_mask, prompt_len = mb.prompt_ids, mb.prompt_mask, mb.prompt_len
    groups, width = prompt_ids.shape
    device = prompt_ids.device
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    allowed = _attention_mask((causal & prompt_mask[:, None, :])[:, None], model)
    out = model.get_decoder()(input_ids=prompt_ids, attention_mask=allowed, position_ids=torch.arange(width, device=device)[None], use_cache=True)
    return out, out.last_hidden_state[torch.arange(groups, device=device), prompt_len - 1]


def _token_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
                    head_chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """log π of each target under the LM head on ``hidden`` [..., d] (logits over the temperature,
    in float32), and the entropy of each position's distribution (no grad).

    The head's float32 logits and log-softmax take about 16 bytes a vocabulary entry a position
    (0.8 MB on a 49k vocabulary), held for backward. With `head_chunk` and a graph to build, the
    head runs `head_chunk` positions at a time under checkpointing: backward keeps only the hidden
    states and recomputes one chunk's logits at a time, for one more head forward."""
    head, final = model.get_output_embeddings(), final_logits(model.config)
    count = hidden.shape[:-1].numel()
    if not head_chunk or count <= head_chunk or not (torch.is_grad_enabled() and hidden.requires_grad):
        return _head_logprobs(head, hidden, targets, temperature, final)
    flat, flat_targets = hidden.reshape(count, -1), targets.reshape(count)
    chunks = [checkpoint(_head_logprobs, head, flat[i : i + head_chunk], flat_targets[i : i + head_chunk], temperature, final,
                         use_reentrant=False)
              for i in range(0, count, head_chunk)]
    return torch.cat([c[0] for c in chunks]).reshape(targets.shape), torch.cat([c[1] for c in chunks]).reshape(targets.shape)


def final_logits(config) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What the model's own forward does to the LM head's output (as vLLM does), which calling the
    head directly skips: a final tanh soft-cap (Gemma 2), Granite's division by `logits_scaling`
    (HyperCLOVA X multiplies by it), Cohere's `logit_scale`, Falcon-H1's `lm_head_multiplier`. Left
    out, the learner's π was another policy than the one sampled (35 nats apart under Gemma 2's
    cap). None for plain models; `check_head_matches` refuses a model this does not reproduce."""
    config = config.get_text_config()
    kind = str(getattr(config, "model_type", ""))
    factor = 1.0
    if kind.startswith("granite") and getattr(config, "logits_scaling", None):
        factor /= float(config.logits_scaling)
    elif kind.startswith("hyperclovax") and getattr(config, "logits_scaling", None):
        factor *= float(config.logits_scaling)
    elif kind.startswith("cohere") and getattr(config, "logit_scale", None):
        factor *= float(config.logit_scale)
    elif kind == "falcon_h1" and getattr(config, "lm_head_multiplier", None):
        factor *= float(config.lm_head_multiplier)
    cap = getattr(config, "final_logit_softcapping", None)
    if factor == 1.0 and not cap:
        return None

    def final(logits: torch.Tensor) -> torch.Tensor:
        if factor != 1.0:
            logits = logits * factor
        return torch.tanh(logits / cap) * cap if cap else logits

    return final


def check_head_matches(model) -> None:
    """The learner's log-probs are the LM head on the decoder's output, then `final_logits`, not the
    model's forward (which would compute the head over every position): on a few tokens the two
    must agree, or this model does something after its head the learner would not (another
    scaling, a vocabulary cut) and its π would be another policy than the one sampled."""
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = (torch.arange(1, 9)[None] * 7919) % vocab
    with torch.no_grad():
        full = model(input_ids=ids).logits.float()
        ours = model.get_output_embeddings()(model.get_decoder()(input_ids=ids).last_hidden_state).float()
        final = final_logits(model.config)
        ours = final(ours) if final is not None else ours
    if ours.shape != full.shape or not torch.allclose(ours, full, rtol=1e-3, atol=1e-3 * float(full.abs().max().clamp(min=1))):
        gap = float((ours - full).abs().max()) if ours.shape == full.shape else f"shapes {tuple(ours.shape)} / {tuple(full.shape)}"
        raise ValueError(f"{type(model).__name__} ({model.config.get_text_config().model_type}) transforms its logits after the LM head "
                         f"in a way the learner does not reproduce (max |difference| {gap}): not supported")


def _head_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
                   final: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()
    if final is not None:
        logits = final(logits)
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets[..., None]).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def _attention_mask(allowed: torch.Tensor, model) -> torch.Tensor:
    """A 4D mask as the model's attention takes it: boolean for SDPA, additive otherwise (eager)."""
    if model.config._attn_implementation == "sdpa":
        return allowed
    dtype = next(model.parameters()).dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)


@dataclass
class Collated:
    """One micro-batch as the learner's forward reads it (`collate`): each distinct prompt once, the
    responses padded, and the packed layout of `packed_logprobs`."""

    prompt_ids: torch.Tensor  # [G, P] right-padded
    prompt_mask: torch.Tensor  # [G, P] bool
    prompt_len: torch.Tensor  # [G]
    group_of: torch.Tensor  # [B] each sequence's prompt
    response_ids: torch.Tensor  # [B, T] right-padded
    mask: torch.Tensor  # [B, T] the loss mask (0 at padding)
    rollout_logprobs: torch.Tensor  # [B, T] the engine's μ (0 where none)
    has_rollout_logprobs: bool  # every sequence came with μ
    advantages: torch.Tensor  # [B]
    packed_ids: torch.Tensor  # [1, R] every fed response token, prompt by prompt (`_packed_layout`)
    packed_seq: torch.Tensor  # [R] a slot's sequence
    packed_local: torch.Tensor  # [R] a slot's index in its sequence
    packed_positions: torch.Tensor  # [1, R] a slot's position: its prompt's length + packed_local
    packed_prompt_positions: torch.Tensor  # [1, ΣP] the prompt row's positions, restarting at each prompt
    packed_bounds: torch.Tensor  # [G + 1] prompt g's responses fill slots [bounds[g], bounds[g + 1])
    packed_source: torch.Tensor  # per real response token: the hidden that predicts it ([G] prompt ends, then the R slots)
    real_rows: torch.Tensor  # per real response token: its sequence
    real_cols: torch.Tensor  # per real response token: its position

    def to(self, device) -> Collated:
        return Collated(**{f.name: v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v for f in fields(self)})


def collate(seqs: list[Trajectory], pad_id: int, device) -> Collated:
    """One micro-batch as tensors: each distinct prompt once, right-padded ([G, P]), and the
    responses ([B, T]), with `group_of` mapping a sequence to its prompt."""
    index: dict[tuple[int, ...], int] = {}
    group_of = [index.setdefault(s.prompt_key, len(index)) for s in seqs]
    prompts = list(index)
    width = max(len(p) for p in prompts)
    resp_width = max(1, max(len(s.response_ids) for s in seqs))
    prompt_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for g, p in enumerate(prompts):
        prompt_ids[g, : len(p)] = torch.tensor(p)
        prompt_mask[g, : len(p)] = True
    response_ids = torch.full((len(seqs), resp_width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), resp_width))
    rollout_lp = torch.zeros((len(seqs), resp_width))
    for b, s in enumerate(seqs):
        n_resp = len(s.response_ids)
        response_ids[b, :n_resp] = s.response_ids
        mask[b, :n_resp] = s.loss_mask
        if len(s.rollout_logprobs):
            rollout_lp[b, :n_resp] = s.rollout_logprobs
    return Collated(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        prompt_len=prompt_mask.sum(1),
        group_of=torch.tensor(group_of, dtype=torch.long),
        response_ids=response_ids,
        mask=mask,
        rollout_logprobs=rollout_lp,
        has_rollout_logprobs=all(len(s.rollout_logprobs) == len(s.response_ids) for s in seqs),  # an empty response has its (no) μ
        advantages=torch.tensor([s.advantage for s in seqs], dtype=torch.float32),
        **_packed_layout([len(s.response_ids) for s in seqs], group_of, [len(p) for p in prompts], response_ids),
    ).to(device)


def _packed_layout(lengths: list[int], group_of: list[int], prompt_lengths: list[int], response_ids: torch.Tensor) -> dict:
    """Where each response token lives in `packed_logprobs`' response row: the fed tokens (all but
    the last) of prompt 0's responses back to back, then prompt 1's, and so on; `packed_seq` and
    `packed_local` name a slot's sequence and its index in it. Response token t of sequence b is
    predicted by its prompt's last position (t = 0: row g of the [G] prompt hiddens) or by slot
    t - 1 of its run (`groups + offset + t - 1` once the prompt hiddens and the slots are
    concatenated): `packed_source`, listed over the real positions (`real_rows`, `real_cols`)."""
    groups = len(prompt_lengths)
    runs: list[list[int]] = [[] for _ in range(groups)]
    for b, g in enumerate(group_of):
        runs[g].append(b)
    ids, seq, local, pos, bounds, source, rows, cols = [], [], [], [], [0], [], [], []
    for g, bs in enumerate(runs):
        for b in bs:
            fed = max(lengths[b] - 1, 0)
            offset = len(seq)
            ids += response_ids[b, :fed].tolist()
            seq += [b] * fed
            local += range(fed)
            pos += range(prompt_lengths[g], prompt_lengths[g] + fed)
            for t in range(lengths[b]):
                source.append(g if t == 0 else groups + offset + t - 1)
                rows.append(b)
                cols.append(t)
        bounds.append(len(seq))
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return {"packed_ids": as_long(ids)[None], "packed_seq": as_long(seq), "packed_local": as_long(local), "packed_positions": as_long(pos)[None],
            "packed_prompt_positions": as_long([i for n in prompt_lengths for i in range(n)])[None], "packed_bounds": as_long(bounds),
            "packed_source": as_long(source), "real_rows": as_long(rows), "real_cols": as_long(cols)}


def positions(mb: Collated, packed: bool) -> tuple[int, int]:
    """(positions the decoder's forwards run on, the real ones among them): the prompts ([G, P]
    padded, or one row) and the fed response tokens ([B, T - 1] padded, or one row). 1 - real/run
    is the padding share: 0 when packed (`padding_share`)."""
    real = int(mb.prompt_mask.sum()) + mb.packed_ids.shape[1]
    if packed:
        return real, real
    return mb.prompt_ids.numel() + mb.response_ids.shape[0] * (mb.response_ids.shape[1] - 1), real


def padding_share(counts: list[tuple[int, int]]) -> float:
    """The share of the positions run that are padding, over micro-batches' `positions` counts."""
    run, real = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return 1 - real / run if run else 0.0


def loss_share(mb: Collated, plan: MiniBatch, agg: str) -> float:
    """A micro-batch's share of its mini-batch's loss, from the mini-batch's global counts: its
    tokens, or its sequences with a token to train on (the per-sequence aggregations leave the
    others out of their means, and so does `plan.sequences`)."""
    return float(mb.mask.sum()) / plan.tokens if agg == "token-mean" else int((mb.mask.sum(-1) > 0).sum()) / plan.sequences


def dot64(a: torch.Tensor, b: torch.Tensor, chunk: int = 1 << 22) -> float:
    """⟨a, b⟩ summed in float64, a chunk at a time (no float64 copy of a whole gradient). A float32
    reduction's order follows the buffers' alignment: two processes differed at 1e-7."""
    return sum(float(torch.dot(a[i : i + chunk].double(), b[i : i + chunk].double())) for i in range(0, a.numel(), chunk))
