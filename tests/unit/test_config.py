"""The config tree: every preset composes, and bad input fails early with the key named."""

import re
from pathlib import Path

import pytest
import torch
import yaml
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from rlvr.algorithms import policy_loss
from rlvr.cli import main
from rlvr.config import ConfigError, algorithm_preset, compose, config_dir, overlong_buffer, validate
from rlvr.models import resolve_model_path

ALGORITHMS = sorted(p.stem for p in (Path(config_dir()) / "algorithm").glob("*.yaml"))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_algorithm_file_composes_into_a_checked_preset_of_registered_parts(name):
    cfg = compose([f"algorithm={name}"])
    validate(cfg)
    preset = algorithm_preset(cfg.algorithm)  # looks up every part in its registry
    assert preset.name == name
    logp = torch.zeros(2, 3, requires_grad=True)
    loss, _ = policy_loss(preset.loss, logp, torch.zeros(2, 3), torch.ones(2), torch.ones(2, 3), preset.agg, **preset.loss_kwargs())
    assert torch.isfinite(loss)
    if name != "grpo":  # a preset is grpo.yaml plus its own recipe's values, no key of its own
        own = yaml.safe_load((Path(config_dir()) / "algorithm" / f"{name}.yaml").read_text())
        base = yaml.safe_load((Path(config_dir()) / "algorithm" / "grpo.yaml").read_text())
        assert own.pop("defaults") == ["grpo", "_self_"]
        assert set(own) < set(base) and len(own) <= len(base) // 3, sorted(own)


def test_the_presets_hold_their_recipes_values():
    presets = {name: algorithm_preset(compose([f"algorithm={name}"]).algorithm) for name in ALGORITHMS}
    assert set(presets) == {"grpo", "drgrpo", "rloo", "dapo", "cispo", "v05", "gspo"}
    dapo = presets["dapo"]
    assert (dapo.eps_low, dapo.eps_high, dapo.sampling, dapo.overlong, dapo.filter_metric) == (0.2, 0.28, "dynamic_filter", True, "acc")
    assert dapo.loss_kwargs() == {"eps_low": 0.2, "eps_high": 0.28, "clip_ratio_c": 10.0}
    assert presets["cispo"].loss_kwargs() == {"eps_high": 0.2}
    assert presets["v05"].sampling == "adaptive"
    assert presets["drgrpo"].agg == "seq-mean-token-sum-norm"
    gspo = presets["gspo"]
    assert (gspo.loss, gspo.agg, gspo.mini_batches) == ("gspo", "seq-mean-token-mean", 4)
    assert gspo.loss_kwargs() == {"eps_low": 3e-4, "eps_high": 4e-4}


def test_an_unknown_loss_in_an_algorithm_file_is_named():
    with pytest.raises(ConfigError, match=r"algorithm: unknown policy loss 'nope'; known: cispo, gspo, ppo_clip"):
        algorithm_preset(compose(["algorithm.loss=nope"]).algorithm)


@pytest.mark.parametrize("weighting", ["none", "focal", "hadw"])
def test_weightings_compose(weighting):
    cfg = compose([f"weighting={weighting}", "algorithm=dapo"])
    validate(cfg)
    assert cfg.weighting.name == weighting


def test_unknown_key_is_named():
    with pytest.raises((HydraException, OmegaConfBaseException), match="learner.lrr"):
        compose(["learner.lrr=1e-6"])


@pytest.mark.parametrize(
    "override, key, says",
    [
        ("trainer.steps=abc", "trainer.steps", "converted to Integer"),
        ("rollout.max_tokens=1.5", "rollout.max_tokens", "converted to Integer"),
        ("learner.lr=fast", "learner.lr", "converted to Float"),
        ("trainer.progress=maybe", "trainer.progress", "not a valid bool"),
        ("algorithm.n=[1,2]", "algorithm.n", "converted to Integer"),
        ("eval.oracle.samples=x", "eval.oracle.samples", "converted to Integer"),
    ],
)
def test_a_value_of_the_wrong_type_fails_as_the_tree_is_composed_naming_its_key(override, key, says):
    """Before the schema these passed compose and failed later (`'>=' not supported between 'str' and
    'int'`, no key named) or not at all (`trainer.progress=maybe`, `rollout.max_tokens=1.5`)."""
    with pytest.raises(HydraException, match=f"{key}=.*{says}"):
        compose([override])


def test_the_schema_types_keys_and_holds_no_value_of_its_own():
    """The tree is the one source of values: every schema field is MISSING, and the composed default
    tree sets each one (validate reports a MISSING key); numbers stay numbers of their key's type."""
    import dataclasses

    from omegaconf import MISSING

    from rlvr.config import schema

    for node in (c for c in vars(schema).values() if dataclasses.is_dataclass(c)):
        for f in dataclasses.fields(node):
            nested = f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)
            assert nested or f.default == MISSING, f"{node.__name__}.{f.name} holds a value: {f.default!r}"
    cfg = compose(["cluster=multi_node"])
    validate(cfg)
    assert isinstance(cfg.learner.lr, float) and isinstance(cfg.cluster.actor_cpus, float) and cfg.cluster.actor_cpus == 2
    assert compose(["learner.micro_batch_size=8"]).learner.micro_batch_size == 8  # "auto" or a number: checked by validate


def test_unknown_group_option_lists_the_choices():
    with pytest.raises(HydraException, match="grpo"):
        compose(["algorithm=ppo"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("learner.lr=-1", "learner.lr"),
        ("algorithm.n=1", "algorithm.n"),
        ("cluster.zero_stage=4", "cluster.zero_stage"),
        ("rollout.temperature=0", "rollout.temperature"),
        ("rollout.backend=tgi", "rollout.backend"),
        ("algorithm.loss=ppo", "algorithm"),
        ("verifier.timeout_s=0", "verifier.timeout_s"),
        ("rollout.kv_cache_gb=0", "rollout.kv_cache_gb"),
        ("learner.mmap_threshold_mb=-1", "learner.mmap_threshold_mb"),
        ("model.rollout_dtype=int8", "model.rollout_dtype: must be one of float32, bfloat16, float16"),
        ("algorithm=dapo rollout.max_tokens=32 algorithm.overlong_buffer=16", "algorithm.overlong_buffer"),
        ("algorithm=dapo rollout.max_tokens=32 algorithm.overlong_buffer=0", "algorithm.overlong_buffer"),
        ("algorithm=dapo algorithm.clip_ratio_c=1.0", "clip_ratio_c"),
        ("algorithm=grpo algorithm.clip_ratio_c=3.0 algorithm.loss=cispo algorithm.eps_low=null", "clip_ratio_c"),
        ("algorithm=cispo algorithm.eps_high=0", "eps_high"),
        ("algorithm=cispo algorithm.eps_high=-0.5", "eps_high"),
        ("algorithm=dapo algorithm.filter_metric=length", "filter_metric"),
        ("algorithm=grpo algorithm.warmup_prompts=8", "algorithm.warmup_prompts"),
        ("algorithm=v05 algorithm.warmup_prompts=-1", "algorithm.warmup_prompts"),
        ("algorithm=v05 algorithm.warmup_prompts=1", "algorithm.warmup_prompts: must be 0 or >= 2 with value.backend=embedded"),
        ("weighting=focal weighting.gamma=-1", "weighting=focal: focal gamma must be >= 0"),  # was a traceback after the warm start
        ("weighting=focal weighting.gamma=abc", "weighting=focal"),
        ("weighting=hadw weighting.anchor=emma", "weighting=hadw: unknown HA-DW anchor 'emma'"),
        ("weighting=hadw weighting.window=0", "weighting=hadw: HA-DW window must be >= 1"),
        ("weighting=focal +weighting.gama=0.3", "weighting.gama: unknown key for weighting=focal; did you mean weighting.gamma?"),  # was dropped silently
        ("weighting=none +weighting.gamma=1", "weighting.gamma: unknown key for weighting=none"),
        ("env=calculator +env.level=3", "env.level: unknown key for env=calculator; known: name, max_turns"),
        ("+env.max_turns=3", "env.max_turns: unknown key for env=none"),
        ("model.path=/nonexistent/model", "model.path: '/nonexistent/model' is neither a built-in model"),  # was found after Ray started
        ("eval.n_samples=-2", "eval.n_samples"),
        ("eval.max_tokens=0", "eval.max_tokens"),
        ("eval.size=-1", "eval.size"),
        ("eval.pass_at_k_every=-1", "eval.pass_at_k_every"),
        ("trainer.keep_checkpoints=-1", "trainer.keep_checkpoints"),
        ("trainer.save_every=-5", "trainer.save_every"),
        ("learner.grad_clip=-1", "learner.grad_clip"),
        ("learner.weight_decay=-1", "learner.weight_decay"),
        ("verifier.memory_mb=-1", "verifier.memory_mb"),
        ("eval.oracle.samples=-1", "eval.oracle.samples"),
        ("eval.oracle.every=0", "eval.oracle.every"),
        ("eval.oracle.samples=8 trainer.max_staleness=1", "eval.oracle.samples: the oracle measures at the weights that sampled the batch"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose(override.split()))


def test_overlong_buffer_follows_max_tokens_and_names_both_keys():
    for max_tokens, buffer in ((64, 13), (96, 19), (20480, 4096)):
        cfg = compose(["algorithm=dapo", f"rollout.max_tokens={max_tokens}", "model.max_model_len=32768"])
        validate(cfg)
        assert overlong_buffer(cfg) == buffer  # DAPO's 20 %: the soft start at 80 % of the length
    with pytest.raises(ConfigError, match="rollout.max_tokens") as e:
        validate(compose(["algorithm=dapo", "rollout.max_tokens=64", "algorithm.overlong_buffer=64"]))
    assert "algorithm.overlong_buffer" in str(e.value)


def test_values_that_would_break_inside_the_actors_are_config_errors():
    """Each passed validation and failed later: max_tokens past max_model_len (vLLM caps the answer
    silently, and DAPO's overlong zone is never reached), threads 0 (torch.set_num_threads in every
    actor), DAPO with max_rounds 0 (no batch, every step skipped), a negative num_cpus."""
    for overrides, key in ((["rollout.max_tokens=600"], "rollout.max_tokens"), (["eval.max_tokens=512"], "eval.max_tokens"),
                           (["model.max_model_len=0"], "model.max_model_len"), (["rollout.threads=0"], "rollout.threads"),
                           (["algorithm=dapo", "algorithm.max_rounds=0"], "algorithm.max_rounds"), (["cluster.num_cpus=-3"], "cluster.num_cpus")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate(compose(["model=tiny-random", *overrides]))


FILES = ["data=file", "data.train.path=train.jsonl", "data.eval.path=eval.jsonl"]


def test_the_data_node_s_keys_types_and_few_shot_turns_are_checked():
    """The data node is free-form in the schema: a typo in a data YAML passed validation and failed
    after Ray started, and `skip_bad_rows=no` stayed the string "no", which is true."""
    for overrides, key in ((["+data.sytem_prompt=Be brief."], "data.sytem_prompt: unknown key; did you mean data.system_prompt?"),
                           (["+data.train.fewshots=1"], "data.train.fewshots: unknown key; known: answer_key, answer_type, format"),
                           ([*FILES, "data.train.skip_bad_rows=no"], "data.train.skip_bad_rows"), (["data.train.size=abc"], "data.train.size"),
                           (["data.fewshot=[1,2]"], "data.fewshot")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("?", r"\?")):
            validate(compose(overrides))
    validate(compose([*FILES, "data.train.skip_bad_rows=true", "data.fewshot=[{question: q, response: r}]"]))


def test_the_v05_estimator_needs_adaptive_sampling():
    """Without it no prompt gets a baseline: step 1 crashed with "Could not infer dtype of NoneType"."""
    with pytest.raises(ConfigError, match="algorithm.sampling"):
        validate(compose(["algorithm=v05", "algorithm.sampling=fixed"]))
    validate(compose(["algorithm=v05"]))


def test_dr_grpo_s_constant_is_the_longest_response():
    """An episode's response (every turn, tool results included) runs to env.max_tokens, not to one
    turn's rollout.max_tokens: Dr.GRPO divides by that length."""
    from rlvr.train.loop import update_config

    for overrides, length in ((["rollout.max_tokens=96"], 96), (["rollout.max_tokens=96", "env=calculator", "env.max_tokens=256"], 256)):
        cfg = compose(["algorithm=drgrpo", *overrides])
        assert update_config(cfg, algorithm_preset(cfg.algorithm)).max_len == length


def test_presets_are_their_base_plus_their_differences():
    """Each algorithm file holds only what differs from grpo.yaml (Hydra defaults list)."""
    grpo = compose(["algorithm=grpo"]).algorithm
    for name in ("dapo", "cispo", "v05", "rloo", "drgrpo"):
        algo = compose([f"algorithm={name}"]).algorithm
        assert set(algo) == set(grpo), name
    dapo, cispo, v05 = (compose([f"algorithm={n}"]).algorithm for n in ("dapo", "cispo", "v05"))
    assert (dapo.clip_ratio_c, dapo.filter_metric, dapo.overlong_buffer, dapo.eps_high) == (10.0, "acc", None, 0.28)
    assert (cispo.eps_low, cispo.eps_high) == (None, 0.2)
    assert v05.warmup_prompts == 64 and grpo.warmup_prompts == 0


def test_rlvr_eval_scores_the_run_s_own_held_out_set(tmp_path):
    """`rlvr eval` scored `data.eval` raw: 71 of data=mix's 256 prompts were training prompts."""
    from omegaconf import OmegaConf

    from rlvr.data import load_problems
    from rlvr.train.evaluate import checkpoint_problems, evaluation_problems

    cfg = compose(["data=mix", "eval.size=256"])
    train = load_problems(OmegaConf.to_container(cfg.data.train, resolve=True))
    got = checkpoint_problems(cfg)
    assert [p.question for p in got] == [p.question for p in evaluation_problems(cfg, train)]
    assert not {p.question for p in got} & {p.question for p in train}
    rows = tmp_path / "eval.jsonl"  # data=file with no training file: the eval split as it is
    rows.write_text('{"prompt": "1 + 1?", "answer": "2"}\n{"prompt": "2 + 2?", "answer": "4"}\n')
    assert [p.answer for p in checkpoint_problems(compose(["data=file", f"data.eval.path={rows}"]))] == ["2", "4"]


def test_rlvr_eval_takes_a_checkpoint_s_own_config_and_the_overrides_on_top(tmp_path):
    """`rlvr eval CKPT` composed the tree's defaults: a run on data=arith with seed 5 was scored on
    data=mix's held-out prompts of seed 0."""
    from omegaconf import OmegaConf

    from rlvr.checkpoint import _write_manifest
    from rlvr.train.evaluate import checkpoint_problems, eval_config

    ckpt = tmp_path / "run" / "checkpoints" / "step_00000004"
    ckpt.mkdir(parents=True)
    run_cfg = compose(["data=arith", "seed=5", "model.max_model_len=512"])
    (ckpt / "config.yaml").write_text(OmegaConf.to_yaml(run_cfg, resolve=True))
    _write_manifest(ckpt, 4)
    cfg = eval_config(ckpt, ["eval.n_samples=4"])
    validate(cfg)
    assert (cfg.seed, cfg.model.max_model_len, cfg.eval.n_samples) == (5, 512, 4)
    assert [p.question for p in checkpoint_problems(cfg)] == [p.question for p in checkpoint_problems(run_cfg)]
    assert eval_config(ckpt, ["data=mix"]).data == compose(["data=mix"]).data  # a group replaces the run's node
    humaneval = eval_config(ckpt, ["data=humaneval"])  # and brings what it sets elsewhere: the code reward
    assert [t["fn"] for t in humaneval.verifier.terms] == ["code_tests"] and humaneval.seed == 5
    assert eval_config(tmp_path / "model-folder", ["seed=3"]).seed == 3  # not a checkpoint: the tree's defaults
    rows = tmp_path / "eval.jsonl"  # a model scored on a file of its own: no training file needed
    rows.write_text('{"prompt": "1 + 1?", "answer": "2"}\n')
    validate(eval_config(tmp_path / "model-folder", ["data=file", f"data.eval.path={rows}"]), may_be_missing=("data.train.path",))


def test_validation_split_is_disjoint_from_training_and_heldout():
    from omegaconf import OmegaConf

    from rlvr.data import load_problems
    from rlvr.train.evaluate import evaluation_problems

    cfg = compose(["eval.split=validation", "eval.size=64"])
    validate(cfg)
    train = load_problems(OmegaConf.to_container(cfg.data.train, resolve=True))
    validation = evaluation_problems(cfg, train)
    heldout_all = load_problems({**OmegaConf.to_container(cfg.data.eval, resolve=True), "limit": None})
    questions = {p.question for p in validation}
    assert len(validation) == 64
    assert not questions & {p.question for p in train} and not questions & {p.question for p in heldout_all}
    assert evaluation_problems(compose(["eval.size=64"]), train)[0].question in {p.question for p in heldout_all}
    with pytest.raises(ConfigError, match="eval.split"):
        validate(compose(["data=arith", "eval.split=validation"]))
    with pytest.raises(ConfigError, match="eval.split"):
        validate(compose(["eval.split=test"]))


def test_missing_required_value_is_named():
    with pytest.raises(ConfigError, match="model.path"):
        validate(compose(["model=local"]))


def test_cli_reports_config_errors_without_a_traceback(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "trainer.stepz=3"])
    assert e.value.code == 2
    assert "trainer.stepz" in capsys.readouterr().err


def test_missing_model_folder_is_a_clear_error(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model_path(str(tmp_path / "nope"))
    # a folder missing a part failed inside an actor: the learner's ActorDiedError (no weights), a
    # tokenizer error asking for sentencepiece (no tokenizer), an OSError traceback (bad JSON)
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    assert resolve_model_path(str(folder)) == str(folder)
    for weights in folder.glob("*.safetensors"):
        weights.rename(tmp_path / weights.name)
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        resolve_model_path(str(folder))
    for weights in tmp_path.glob("*.safetensors"):
        weights.rename(folder / weights.name)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        resolve_model_path(str(folder))
    (folder / "config.json").write_text("{")
    with pytest.raises(FileNotFoundError, match="config.json does not read as JSON"):
        resolve_model_path(str(folder))


def test_cli_reports_a_missing_model_without_a_traceback(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "FileNotFoundError" in err and "no config.json" in err and "Traceback" not in err


@pytest.mark.parametrize("term, message", [
    ("{fn: 'mymod:f', style: openrlhf}", "unknown style 'openrlhf'"),
    ("{fn: 'mymod:f', stile: trl}", "unknown reward term keys \\['stile'\\]"),
    ("{fn: nofunction}", "expected one of"),
    ("{fn: 'nosuchmod:f'}", "no module 'nosuchmod' on this process's path"),  # was three verifier restarts a minute in
    ("{fn: code_tests, kwargs: {timeout: 3.0}}", "unknown kwargs \\['timeout'\\]; its options: mode, timeout_s"),  # was the 2 s default, silently
    ("{fn: code_tests, kwargs: {mode: most}}", "mode must be 'fraction' or 'all'"),  # was every item scored 0
    ("{fn: code_tests, kwargs: {timeout_s: 3s}}", "timeout_s must be a positive number"),
    ("{fn: math, kwargs: {choice: AB}}", "unknown kwargs \\['choice'\\]; its options: choices"),
])
def test_bad_reward_terms_fail_before_any_actor_starts(term, message):
    with pytest.raises(ConfigError, match=r"verifier.terms\[0\]: .*" + message):
        validate(compose([f"verifier.terms=[{term}]"]))
    with pytest.raises(ConfigError, match=r"verifier.terms: no reward term decides correctness \(format\)"):
        validate(compose(["verifier.terms=[{fn: format}]"]))
    with pytest.raises(ConfigError, match=r"verifier.terms: must be a list of terms, e.g. \[\{fn: math\}\], got the string 'math'"):
        validate(compose(["verifier.terms=math"]))  # was read letter by letter: "reward fn 'm'"
    # Hydra's own error for a typo suggests `+trainer.stepz=3`, which added a key the run ignored
    with pytest.raises(ConfigError, match=r"trainer.stepz: unknown key; did you mean trainer.steps\?"):
        validate(compose(["+trainer.stepz=3"]))
    with pytest.raises(ConfigError, match=r"foo: unknown key; known: algorithm, "):
        validate(compose(["+foo.bar=1"]))
    with pytest.raises(ConfigError, match="resume: must be auto, never or a checkpoint"):
        validate(compose(["resume="]))  # a ValueError with a traceback, after the run dir was made


def test_every_sampling_mode_a_preset_may_name_has_a_sampler():
    """`rlvr.algorithms.presets.SAMPLING_MODES` validates the name (the algorithms stay free of I/O);
    `rlvr.sampling.SAMPLERS` runs it. The two lists are one list."""
    from rlvr.algorithms.presets import SAMPLING_MODES
    from rlvr.sampling import SAMPLERS

    assert tuple(SAMPLERS) == SAMPLING_MODES


def test_a_weighting_takes_its_keyword_arguments_from_its_config_node():
    """No branch on weighting names: each key of `weighting=X` that X's registered function takes,
    and HA-DW's anchor state where the function takes one."""
    from rlvr.algorithms import HADWState
    from rlvr.train.loop import weighting_kwargs

    state = HADWState()
    assert weighting_kwargs(compose(["weighting=focal", "weighting.gamma=2.0"]).weighting, state) == {"gamma": 2.0}
    assert weighting_kwargs(compose(["weighting=hadw", "weighting.lam=1.2"]).weighting, state) == {"lam": 1.2, "state": state}
    assert weighting_kwargs(compose(["weighting=none"]).weighting, state) == {}


def test_fill_takes_each_field_from_the_one_node_that_holds_it_or_from_what_is_given():
    from dataclasses import dataclass

    from rlvr.config import fill

    @dataclass
    class Settings:
        lr: float
        dtype: str
        seed: int
        betas: tuple = (0.9, 0.999)

    cfg = compose(["model=tiny-random"])
    s = fill(Settings, cfg.learner, cfg.model, seed=7)
    assert (s.lr, s.dtype, s.seed, s.betas) == (cfg.learner.lr, cfg.model.dtype, 7, (0.9, 0.999))
    with pytest.raises(ConfigError, match=r"Settings\.seed: no config node has the key 'seed'"):
        fill(Settings, cfg.learner, cfg.model)
    with pytest.raises(ConfigError, match=r"Settings\.dtype: more than one config node"):
        fill(Settings, cfg.learner, cfg.model, {"dtype": "bfloat16"}, seed=7)


# ---- found surviving mutants of the checks (2026-12-07): each fails with one bound or condition changed --


def refused_naming(overrides, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate(compose(overrides))


# ---- DAPO's overlong shaping ------------------------------------------------------------------


def test_dapo_overlong_buffer_default_is_20_percent_of_the_episode_length():
    """A mutant (tree.py:98 default_overlong_buffer(cfg.rollout.max_tokens)): with env=calculator the
    penalty zone was 20 % of one turn's 96 tokens (19) instead of the episode's 256 (51): the
    shaping starts at 237 of 256, silently; validation passes either way."""
    cfg = compose(["algorithm=dapo", "env=calculator", "rollout.max_tokens=96"])
    validate(cfg)
    assert cfg.env.max_tokens == 256
    assert overlong_buffer(cfg) == 51


def test_dapo_overlong_checks_apply_to_episodes():
    """A mutant (tree.py:263 `if preset.overlong and env.name == "none"`) and another (tree.py:265 the bound
    from rollout.max_tokens): the buffer is checked against env.max_tokens when an env is set."""
    refused_naming(["algorithm=dapo", "env=calculator", "algorithm.overlong_buffer=128"], "algorithm.overlong_buffer: must be in (0, env.max_tokens/2 = 128)")
    # a good buffer: 60 < 256/2, though it is more than half of one turn's 96 tokens
    validate(compose(["algorithm=dapo", "env=calculator", "rollout.max_tokens=96", "algorithm.overlong_buffer=60"]))


def test_dapo_overlong_penalty_factor_zero_is_refused():
    """A mutant (tree.py:264 `>= 0`): overlong=true with factor 0 trains without the shaping, silently."""
    refused_naming(["algorithm=dapo", "algorithm.overlong_penalty_factor=0"], "algorithm.overlong_penalty_factor")


# ---- DAPO's dynamic sampling rounds -----------------------------------------------------------


def test_max_rounds_is_bounded_below_only():
    """Round seeds are hashed, so any number of DAPO rounds keeps its own seeds (the cap of 100 was theirs)."""
    validate(compose(["algorithm=dapo", "algorithm.max_rounds=1"]))
    validate(compose(["algorithm=dapo", "algorithm.max_rounds=1000"]))
    refused_naming(["algorithm=dapo", "algorithm.max_rounds=0"], "algorithm.max_rounds")


def test_max_rounds_is_checked_for_any_preset_that_samples_dynamically():
    """A mutant (tree.py:245 `if preset.name == "dapo"`): grpo with sampling=dynamic_filter and 0 rounds
    passed and trained on nothing."""
    refused_naming(["algorithm=grpo", "algorithm.sampling=dynamic_filter", "algorithm.max_rounds=0"], "algorithm.max_rounds")


# ---- V0.5 (sampling=adaptive) -----------------------------------------------------------------


def test_adaptive_checks_follow_the_sampling_not_the_estimator():
    """A mutant (tree.py:251 `if preset.estimator == "v05"`): grpo with sampling=adaptive starts the
    value server, and delta=0 raised in allocate() at the first step."""
    refused_naming(["algorithm=grpo", "algorithm.sampling=adaptive", "algorithm.delta=0"], "algorithm.delta")


def test_v05_delta_zero_is_refused():
    """A mutant (tree.py:252 `>= 0`): allocate() raises "delta must be >= 1" at step 1, after Ray started."""
    refused_naming(["algorithm=v05", "algorithm.delta=0"], "algorithm.delta")


def test_v05_edge_values_that_work_are_accepted():
    """A mutant (tree.py:255 n_max > n), another (:256 budget_factor > 1), another (:258 calibration_window >
    batch_size) each refused a config at its documented bound ("must be >= ...")."""
    validate(compose(["algorithm=v05", "algorithm.n=4", "algorithm.n_max=4"]))
    validate(compose(["algorithm=v05", "algorithm.budget_factor=1.0"]))
    validate(compose(["algorithm=v05", "trainer.batch_size=8", "algorithm.calibration_window=8"]))
    refused_naming(["algorithm=v05", "algorithm.n=4", "algorithm.n_max=3"], "algorithm.n_max")
    refused_naming(["algorithm=v05", "algorithm.budget_factor=0.99"], "algorithm.budget_factor")
    refused_naming(["algorithm=v05", "trainer.batch_size=8", "algorithm.calibration_window=7"], "algorithm.calibration_window")


def test_value_checks_apply_only_where_a_value_model_runs():
    """A mutant (tree.py:262 `_validate_value` dedented): grpo starts no value server, yet a value
    backend without its paths refused it."""
    validate(compose(["algorithm=grpo", "value.backend=v0"]))
    validate(compose(["algorithm=grpo", "value.backend=hf-classifier"]))


def test_value_context_size_zero_is_refused():
    """A mutant (tree.py:129 `>= 0`): the value server's Context raises "context_size must be positive"."""
    refused_naming(["algorithm=v05", "value.context_size=0"], "value.context_size")


def test_v0_paths_must_be_of_the_right_kind(tmp_path):
    """A mutant (tree.py:136 `Path(p).exists()`): a folder given as the checkpoint file passed.
    A mutant (tree.py:139 `>= 0`): n_estimators=0 passed."""
    (tmp_path / "v0.pt").write_bytes(b"")
    (tmp_path / "head.ckpt").write_bytes(b"")
    (tmp_path / "emb").mkdir()
    good = ["algorithm=v05", "value.backend=v0", f"value.v0.checkpoint={tmp_path / 'v0.pt'}",
            f"value.v0.embedding_model={tmp_path / 'emb'}", f"value.v0.tabpfn_head={tmp_path / 'head.ckpt'}"]
    validate(compose(good))
    refused_naming([*good, f"value.v0.checkpoint={tmp_path / 'emb'}"], "value.v0.checkpoint: file")
    refused_naming([*good, "value.v0.n_estimators=0"], "value.v0.n_estimators")


def test_hf_classifier_folder_must_exist(tmp_path):
    """A mutant (tree.py:146 existence dropped): a missing model folder failed in the value server."""
    refused_naming(["algorithm=v05", "value.backend=hf-classifier", f"value.hf_classifier.path={tmp_path / 'nope'}"], "value.hf_classifier.path")


# ---- trainer, env, model, rollout, cluster ----------------------------------------------------


def test_generate_ahead_only_in_async_runs():
    """A mutant (tree.py:356 `>= 0`): generate_ahead on a synchronous run was ignored, silently."""
    refused_naming(["trainer.generate_ahead=2"], "trainer.generate_ahead")


def test_async_generation_needs_disaggregated_engines_from_staleness_1():
    """A mutant (tree.py:358 `> 1`): colocated engines with max_staleness=1 passed."""
    refused_naming(["cluster.mode=colocated", "trainer.max_staleness=1"], "trainer.max_staleness")


def test_role_timeout_zero_is_refused():
    """A mutant (tree.py:334 `>= 0`)."""
    refused_naming(["trainer.role_timeout_s=0"], "trainer.role_timeout_s")


def test_env_limits_of_zero_are_refused():
    """A mutant (tree.py:233-234 `>= 0`): env.max_tokens=0 asks the engine for 0 tokens, which it
    reads as "unset" and samples rollout.max_tokens; max_turns=0 samples nothing."""
    refused_naming(["env=calculator", "env.max_tokens=0"], "env.max_tokens")
    refused_naming(["env=calculator", "env.max_turns=0"], "env.max_turns")


def test_rollout_max_tokens_equal_to_max_model_len_is_refused():
    """A mutant (tree.py:405 rollout's bound off by one): max_tokens == max_model_len leaves no room for
    the prompt."""
    refused_naming(["model=tiny-random", "rollout.max_tokens=512", "eval.max_tokens=96"], "rollout.max_tokens")
    validate(compose(["model=tiny-random", "rollout.max_tokens=511", "eval.max_tokens=96"]))


def test_colocated_engines_one_per_learner_are_accepted():
    """A mutant (tree.py:469 `<`): the default colocated layout (1 learner, 1 engine) was refused."""
    validate(compose(["cluster.mode=colocated", "cluster.weight_sync=ipc"]))
    validate(compose(["cluster=single_node_gpu", "cluster.mode=colocated", "cluster.weight_sync=ipc"]))


def test_one_cpu_is_enough_for_a_local_ray():
    """A mutant (tree.py:461 `> 1`)."""
    validate(compose(["cluster.num_cpus=1"]))


def test_negative_value_accelerators_are_refused():
    """A mutant (tree.py:463)."""
    refused_naming(["cluster.value_accelerators=-1"], "cluster.value_accelerators")


def test_train_dtype_needs_float32_weights_to_autocast_from():
    """A mutant (tree.py:378 dropped): float32 compute over bfloat16 weights passed."""
    refused_naming(["model=tiny-random", "model.dtype=bfloat16", "model.train_dtype=float32"], "model.train_dtype")


# ---- rlvr/cli.py ------------------------------------------------------------------------------


def test_a_single_run_checks_its_default_run_dir(tmp_path, monkeypatch, capsys):
    """A mutant (cli.py:138 `if sets_run_dir`): a single run without run_dir= (runs/... under the current
    folder) was not checked: a file named `runs` there gave Hydra's traceback."""
    import rlvr.train.loop as loop

    def no_training(*a, **k):
        raise AssertionError("validation let the run start")

    monkeypatch.setattr(loop, "train", no_training)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("mine")
    assert main(["train", "model=tiny-random"]) == 2
    assert "run_dir: " in capsys.readouterr().err


def test_a_bool_is_not_a_data_split_int():
    refused_naming(["data.train.size=true"], "data.train.size")


def test_a_few_shot_turn_needs_both_question_and_response():
    refused_naming(["+data.fewshot=[{question: q}]"], "data.fewshot")


def test_validate_refuses_a_string_for_data_tasks():
    """A bare string passed validation and was refused only as the data loaded (after validate's fail-fast point)."""
    refused_naming(["data.train.tasks=chain_sum"], "data.train.tasks")


@pytest.mark.parametrize("override, key", [("learner.lr_schedule=cosin", "learner.lr_schedule: must be one of constant, linear, cosine"),
                                           ("learner.lr_warmup_steps=-1", "learner.lr_warmup_steps"),
                                           ("learner.min_lr_ratio=1.5", "learner.min_lr_ratio")])
def test_an_lr_schedule_that_cannot_work_is_refused(override, key):
    refused_naming([override], key)
    validate(compose(["learner.lr_schedule=cosine", "learner.lr_warmup_steps=10", "learner.min_lr_ratio=1.0"]))  # the bounds are in


AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma f16c\n"


@pytest.mark.parametrize("cpuinfo, accelerator, fast", [
    (AVX2_ONLY, None, False),  # an AVX2 EPYC: bf16 emulated, a 2048^3 GEMM under 1 GFLOP/s against 117 in float32
    (AVX2_ONLY.replace("avx2", "avx2 avx512f avx512_bf16"), None, True),  # Zen 4/5, Cooper Lake and later
    (AVX2_ONLY.replace("avx2", "avx2 amx_bf16"), None, True),  # Sapphire Rapids
    ("Features\t: fp asimd bf16 i8mm\n", None, True),  # an Arm core with bf16
    (AVX2_ONLY, "GPU", True),  # the roles compute on GPUs, whatever the driver's CPU
    (None, None, False),  # no /proc/cpuinfo (not Linux)
])
def test_native_bf16_reads_the_cpu_s_bf16_instructions(tmp_path, cpuinfo, accelerator, fast):
    from rlvr.runtime.sizing import native_bf16

    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    assert native_bf16(accelerator, str(path)) is fast


def test_auto_dtypes_resolve_where_the_roles_compute_and_what_is_set_stays(monkeypatch):
    """bf16 was smollm2's default everywhere: on a CPU without bf16 instructions `make train` generated
    10x slower. `auto` is bfloat16 only where bf16 is native (or the weights are bf16 already)."""
    import rlvr.runtime.sizing as sizing

    for native, want in ((False, "float32"), (True, "bfloat16")):
        monkeypatch.setattr(sizing, "native_bf16", lambda accelerator, _n=native: _n)
        cfg = compose(["model=smollm2-135m"])
        assert (cfg.model.train_dtype, cfg.model.rollout_dtype) == (want, want)
        assert compose(["model=smollm2-135m", "model.rollout_dtype=float16"]).model.rollout_dtype == "float16"
        local = compose(["model=local", "model.path=/m"]).model
        assert (local.dtype, local.train_dtype, local.rollout_dtype) == (want, want, want)
        assert compose(["model=local", "model.path=/m", "model.dtype=bfloat16"]).model.train_dtype == "bfloat16"  # bf16 weights: bf16 compute
    monkeypatch.setattr(sizing, "native_bf16", lambda accelerator: False)
    cfg = compose(["model=smollm2-135m", "model.train_dtype=auto"])
    cfg.model.train_dtype = "auto"  # as Hydra's main hands it to train(): validate resolves it too
    validate(cfg)
    assert cfg.model.train_dtype == "float32"


def test_a_sweep_job_s_dir_name_fits_a_file_name_and_nests_no_folders():
    """`${hydra.job.num}_${hydra.job.override_dirname}` passed 255 bytes with 14 ordinary overrides (Hydra's
    mkdir stopped the sweep with an OSError traceback), and a path in a value nested the job a folder per part."""
    from rlvr.config.schema import JOB_DIR_BYTES, job_dir_name

    assert job_dir_name(0, "seed=1") == "0_seed=1" and job_dir_name(3, "") == "3"
    assert job_dir_name(1, "data.train.path=/data/gsm8k.jsonl") == "1_data.train.path=%2Fdata%2Fgsm8k.jsonl"
    long = ",".join(f"trainer.key_{i}=é{i}" for i in range(40))
    cut = job_dir_name(12, long)
    assert len(cut.encode()) <= JOB_DIR_BYTES < 255 and cut.startswith("12_trainer.key_0=é0,") and cut.endswith("...")
    cut.encode("utf-8")  # cut at a character, not inside one
    from omegaconf import OmegaConf

    from rlvr.config import compose

    compose([])  # registers the resolver configs/config.yaml's sweep subdir uses
    assert OmegaConf.create({"n": 0, "o": long, "d": "${rlvr_job_dir:${n},${o}}"}).d == job_dir_name(0, long)


def test_v0_s_warm_start_needs_its_head_s_support_in_each_half(tmp_path):
    """V0's head answers the stand-in 0.5 under MIN_SUPPORT (2) context items: 3 warm-up prompts left a
    half of 1 predicting nothing, and that 0.5 entered the calibration window."""
    from rlvr.config import ConfigError, compose, validate

    (tmp_path / "ckpt.pt").write_bytes(b""), (tmp_path / "head.ckpt").write_bytes(b""), (tmp_path / "emb").mkdir()
    v0 = ["algorithm=v05", "value.backend=v0", f"value.v0.checkpoint={tmp_path}/ckpt.pt", f"value.v0.tabpfn_head={tmp_path}/head.ckpt",
          f"value.v0.embedding_model={tmp_path}/emb"]
    with pytest.raises(ConfigError, match="algorithm.warmup_prompts: must be 0 or >= 4 with value.backend=v0"):
        validate(compose([*v0, "algorithm.warmup_prompts=3"]))
    validate(compose([*v0, "algorithm.warmup_prompts=4"]))
