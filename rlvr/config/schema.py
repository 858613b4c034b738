"""The types of the config tree's keys: dataclasses registered with Hydra's ConfigStore as `rlvr_schema`,
the first entry of `configs/config.yaml`'s defaults list, so every value the YAML files and the
command line give is checked against its key's type as the tree is composed (`trainer.steps=abc`
fails there, naming `trainer.steps`).

The values themselves live in the YAML tree only: every field here is `MISSING`, so a key the tree
does not set is reported by `validate`, and no default is written twice. A key whose options carry
different keys (`data`, `env`, `weighting`, `cluster.node_resources`) is left untyped here; the
option's YAML file and `validate` define it. Keys that take a word or a number (`auto`) are `Any`
and checked by `validate`.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from omegaconf import MISSING

SCHEMA_NAME = "rlvr_schema"


@dataclass
class RolloutCorrectionConfig:
    mode: str = MISSING
    threshold: float = MISSING


@dataclass
class AlgorithmConfig:
    name: str = MISSING
    estimator: str = MISSING
    loss: str = MISSING
    agg: str = MISSING
    eps_low: Optional[float] = MISSING
    eps_high: float = MISSING
    clip_ratio_c: Optional[float] = MISSING
    sampling: str = MISSING
    n: int = MISSING
    kl_coef: float = MISSING
    kl_estimator: str = MISSING
    overlong: bool = MISSING
    overlong_buffer: Optional[int] = MISSING
    overlong_penalty_factor: float = MISSING
    mask_truncated: bool = MISSING
    scale_by_std: bool = MISSING
    mini_batches: int = MISSING
    epochs: int = MISSING
    old_logprobs: str = MISSING
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)
    filter_metric: str = MISSING
    max_rounds: int = MISSING
    delta: int = MISSING
    n_max: int = MISSING
    kappa: float = MISSING
    budget_factor: float = MISSING
    adaptive_rounds: int = MISSING
    calibration_window: int = MISSING
    use_uncertainty: bool = MISSING
    warmup_prompts: int = MISSING


@dataclass
class LoraConfig:
    rank: int = MISSING
    alpha: int = MISSING
    dropout: float = MISSING
    target_modules: Any = MISSING  # "all-linear" or a list of module names


@dataclass
class ModelConfig:
    path: str = MISSING
    dtype: str = MISSING
    train_dtype: str = MISSING
    rollout_dtype: str = MISSING
    max_model_len: int = MISSING
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class RolloutConfig:
    backend: str = MISSING
    temperature: float = MISSING
    top_p: float = MISSING
    max_tokens: int = MISSING
    kv_cache_gb: Any = MISSING  # "auto" or GiB
    max_num_seqs: int = MISSING
    block_size: int = MISSING
    threads: int = MISSING
    timeout_s: float = MISSING


@dataclass
class ClusterConfig:
    address: Optional[str] = MISSING
    num_cpus: Optional[int] = MISSING
    accelerator: Optional[str] = MISSING
    mode: str = MISSING
    num_learners: int = MISSING
    zero_stage: int = MISSING
    num_engines: int = MISSING
    tensor_parallel: int = MISSING
    value_accelerators: float = MISSING
    actor_cpus: float = MISSING
    verifier_cpus: float = MISSING
    strategy: str = MISSING
    node_resources: Dict[str, Any] = MISSING  # role -> a custom resource name (or null)
    placement_timeout_s: float = MISSING
    keep_roles: bool = MISSING
    weight_sync: str = MISSING


@dataclass
class ResumeConfig:
    mode: str = MISSING
    allow_config_change: bool = MISSING


@dataclass
class TrainerConfig:
    steps: int = MISSING
    batch_size: int = MISSING
    eval_every: int = MISSING
    save_every: int = MISSING
    keep_checkpoints: int = MISSING
    progress: bool = MISSING
    max_staleness: int = MISSING
    generate_ahead: Optional[int] = MISSING
    max_restarts: int = MISSING
    role_timeout_s: float = MISSING


@dataclass
class LearnerConfig:
    lr: float = MISSING
    lr_warmup_steps: int = MISSING
    lr_schedule: str = MISSING
    min_lr_ratio: float = MISSING
    weight_decay: float = MISSING
    grad_clip: float = MISSING
    micro_batch_size: Any = MISSING  # "auto" or sequences
    activation_memory_gb: float = MISSING
    mini_batches: int = MISSING
    epochs: int = MISSING
    gradient_checkpointing: bool = MISSING
    share_prompts: bool = MISSING
    head_chunk: int = MISSING
    pack_responses: bool = MISSING
    bucket_mb: int = MISSING
    mmap_threshold_mb: float = MISSING


@dataclass
class VerifierConfig:
    num_workers: int = MISSING
    timeout_s: float = MISSING
    memory_mb: int = MISSING
    terms: Any = MISSING  # a list of {fn, weight, kwargs}


@dataclass
class V0Config:
    checkpoint: Optional[str] = MISSING
    embedding_model: Optional[str] = MISSING
    tabpfn_head: Optional[str] = MISSING
    n_estimators: int = MISSING
    max_length: int = MISSING
    batch_size: int = MISSING
    weights_only: bool = MISSING
    prior_map: str = MISSING
    map_folds: int = MISSING


@dataclass
class HFClassifierConfig:
    path: Optional[str] = MISSING


@dataclass
class ValueConfig:
    backend: str = MISSING
    context_size: int = MISSING
    regressor: str = MISSING
    v0: V0Config = field(default_factory=V0Config)
    hf_classifier: HFClassifierConfig = field(default_factory=HFClassifierConfig)


@dataclass
class OracleConfig:
    samples: int = MISSING
    every: int = MISSING


@dataclass
class EvalConfig:
    split: str = MISSING
    size: int = MISSING
    n_samples: int = MISSING
    pass_at_k_every: int = MISSING
    at_start: bool = MISSING
    max_tokens: int = MISSING
    oracle: OracleConfig = field(default_factory=OracleConfig)


@dataclass
class LoggingConfig:
    verbose: bool = MISSING
    jsonl: bool = MISSING
    tensorboard: bool = MISSING
    wandb: bool = MISSING
    wandb_mode: str = MISSING
    wandb_project: str = MISSING


@dataclass
class RlvrConfig:
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    weighting: Any = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = MISSING
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    env: Any = MISSING
    seed: int = MISSING
    run_dir: str = MISSING
    cache_dir: Optional[str] = MISSING
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    value: ValueConfig = field(default_factory=ValueConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def register_schema() -> None:
    """Put the schema in Hydra's ConfigStore and the resolver `configs/config.yaml` uses (both
    idempotent): `configs/config.yaml` names the schema first."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name=SCHEMA_NAME, node=RlvrConfig)
    OmegaConf.register_new_resolver("rlvr_job_dir", job_dir_name, replace=True)


JOB_DIR_BYTES = 160  # well under a file name's 255 bytes, with room for a path's other parts


def job_dir_name(num: Any, override_dirname: str) -> str:
    """A sweep job's folder: ``<num>_<its overrides>``, as Hydra names it, with a value's ``/`` made
    ``%2F`` (a path in an override nested the job one folder per part) and the name cut to
    :data:`JOB_DIR_BYTES` ending in ``...`` (14 ordinary overrides passed 255 bytes, and Hydra's mkdir
    stopped the sweep with an OSError). The job number keeps cut names apart."""
    name = f"{num}_{override_dirname}".replace("/", "%2F") if override_dirname else str(num)
    data = name.encode("utf-8")
    if len(data) <= JOB_DIR_BYTES:
        return name
    return data[: JOB_DIR_BYTES - 3].decode("utf-8", "ignore") + "..."
