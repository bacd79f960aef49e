"""Typed configs of the reward_model stage (`reward_model_schema`, conf/reward_model.yaml) and of batched
scoring (`rm_score_schema`, conf/rm_score.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.config import ModelConfig, PeftConfig, help_field
from core.push_to_hub import PushToHubConfig

TRUNCATION = ("middle", "drop")


@dataclass
class RMOptions:
    """What reward_model adds to TRL's RewardConfig: how pairs are cut and split, the margin, and how the
    model is loaded (the stage loads it, not TRL)."""

    truncation: str = help_field(
        "middle",
        help="Pairs over rm.max_length: middle = keep the prompt and the END of the completion (the final answer "
        "sits at the end of an R1 trace), cutting reasoning from the middle | drop.",
    )
    min_completion_tokens: int = help_field(
        64, help="With middle truncation, a prompt leaving fewer completion tokens than this drops the pair."
    )
    margin: float = help_field(
        0.0,
        help="Margin m in -log σ(r_chosen - r_rejected - m) (given to TRL as the pairs' `margin` column).",
    )
    eval_fraction: float = help_field(0.1, help="Share of pairs held out (by id hash) for evaluation.")
    attn_implementation: str = help_field("auto", help="auto | sdpa | eager | flash_attention_2.")

    def __post_init__(self) -> None:
        if self.truncation not in TRUNCATION:
            raise ValueError(f"train.truncation must be one of {TRUNCATION}, got '{self.truncation}'")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"train.eval_fraction must be in (0, 1), got {self.eval_fraction}")


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
    rm: dict[str, Any] = help_field(
        {},
        help="Arguments of trl.RewardConfig as TRL names them (learning_rate, max_steps, max_length, eval_steps, "
        "center_rewards_coefficient, ...; presets in conf/rm/), passed as they are and checked by TRL when the "
        "stage starts (see train_sft's `sft`). max_length is also where pairs are cut (train.truncation). "
        "Stage defaults: per_device_eval_batch_size = per_device_train_batch_size, evaluation every eval_steps, "
        "the first step logged. Set by the stage (refused here): output_dir, use_cpu, "
        "ddp_find_unused_parameters.",
    )
    train: RMOptions = field(default_factory=RMOptions)
    peft: PeftConfig = field(default_factory=lambda: PeftConfig(method="none", merge=False))
    use_cpu: bool | None = help_field(None, hashed=False)
    resume: bool = help_field(True)
    keep_checkpoints: bool = help_field(False, hashed=False)
    push_to_hub: PushToHubConfig = field(default_factory=PushToHubConfig)
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
        False,
        help="Score again even if the output (or its parts) match this input, config and model.",
        hashed=False,
    )
