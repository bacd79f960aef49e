"""Typed configs of the reward_model stage (`reward_model_schema`, conf/reward_model.yaml) and of batched
scoring (`rm_score_schema`, conf/rm_score.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.config import ModelConfig, PeftConfig, help_field, register_schema

TRUNCATION = ("middle", "drop")


@dataclass
class RMHyperparams:
    learning_rate: float = help_field(1e-5)
    num_train_epochs: float = help_field(1.0)
    max_steps: int = help_field(-1, help="Stop after this many optimizer steps (overrides epochs when > 0).")
    per_device_train_batch_size: int = help_field(4, help="Pairs per device and step.")
    gradient_accumulation_steps: int = help_field(4)
    warmup_steps: float = help_field(0.03, help="Warm-up: steps, or a fraction of all steps when < 1.")
    lr_scheduler_type: str = help_field("cosine")
    weight_decay: float = help_field(0.0)
    max_length: int = help_field(8192, help="Longest scored sequence (prompt + completion) in tokens.")
    truncation: str = help_field(
        "middle",
        help="Pairs over max_length: middle = keep the prompt and the END of the completion (the final answer "
        "sits at the end of an R1 trace), cutting reasoning from the middle | drop.",
    )
    min_completion_tokens: int = help_field(
        64, help="With middle truncation, a prompt leaving fewer completion tokens than this drops the pair."
    )
    margin: float = help_field(0.0, help="Margin m in -log σ(r_chosen - r_rejected - m).")
    center_rewards_coefficient: float | None = help_field(
        None, help="Weight of the reward-centering term (r_chosen + r_rejected)^2 (Eisenstein et al.)."
    )
    eval_fraction: float = help_field(0.1, help="Share of pairs held out (by id hash) for evaluation.")
    gradient_checkpointing: bool = help_field(False)
    attn_implementation: str = help_field("auto")
    bf16: bool | None = help_field(None, help="bf16 mixed precision; null = on when a GPU supports it.")
    seed: int = help_field(42)
    logging_steps: int = help_field(10)
    eval_steps: int = help_field(100, help="Evaluate on the held-out pairs every N steps (and at the end).")
    save_steps: int = help_field(200)
    save_total_limit: int = help_field(2)
    report_to: list[str] = help_field(["tensorboard"])

    def __post_init__(self) -> None:
        if self.truncation not in TRUNCATION:
            raise ValueError(f"rm.truncation must be one of {TRUNCATION}, got '{self.truncation}'")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"rm.eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("set rm.max_steps > 0 or rm.num_train_epochs > 0")
        if self.min_completion_tokens >= self.max_length:
            raise ValueError("rm.min_completion_tokens must be smaller than rm.max_length")


@dataclass
class RMStageConfig:
    """Bradley-Terry reward model: a one-score head trained on (prompt, chosen, rejected) pairs."""

    run_name: str = help_field("default", hashed=False)
    run_dir: str = help_field("runs/${run_name}", hashed=False)
    round: int = help_field(0)
    output_dir: str = help_field("${run_dir}/round_${round}/reward_model", hashed=False)
    model: ModelConfig = field(default_factory=ModelConfig)
    pairs: str = help_field(
        "${run_dir}/data", help="Pairs parquet, or a finished stage directory whose manifest has `pairs`."
    )
    extra_pairs: list[str] = help_field(
        [], help="More pairs sources added to `pairs` (e.g. the previous round's on-policy pairs)."
    )
    rm: RMHyperparams = field(default_factory=RMHyperparams)
    peft: PeftConfig = field(default_factory=lambda: PeftConfig(method="none", merge=False))
    use_cpu: bool | None = help_field(None, hashed=False)
    resume: bool = help_field(True)
    keep_checkpoints: bool = help_field(False, hashed=False)
    force: bool = help_field(False, hashed=False)


@dataclass
class ScoreConfig:
    """`python -m reward_model.score`: add an `rm_score` column to a parquet of (prompt, completion) rows."""

    input: str = help_field("???", help="Parquet file with prompt and completion columns.")
    output: str = help_field("???", help="Parquet file to write: the input rows plus `rm_score`.")
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt_column: str = help_field("prompt")
    completion_column: str = help_field("completion")
    max_length: int = help_field(8192, help="Longer sequences are cut in the middle, as in training.")
    batch_tokens: int = help_field(
        16384, help="Padded tokens per forward pass (batches are built by length)."
    )
    chunk_rows: int = help_field(2048, help="Rows per resumable chunk.", hashed=False)
    use_cpu: bool | None = help_field(None, hashed=False)
    progress: bool = help_field(True, hashed=False)
    force: bool = help_field(
        False, help="Score again even if the output (or its parts) match this input, config and model.", hashed=False
    )


register_schema("reward_model_schema", RMStageConfig)
register_schema("rm_score_schema", ScoreConfig)
