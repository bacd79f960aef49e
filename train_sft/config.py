"""Typed config of the train_sft stage (schema `train_sft_schema`, YAML conf/train_sft.yaml).

`sft` is TRL's SFTConfig as a mapping, passed as it is (core.training.trl_args, whose module docstring says
why it is not a subclass); `train` holds what this project adds to it. The `sft` node is opened in the
schema (any key composes), because TRL's own field list, not the keys a preset happens to list, decides
what a key may be: `sft.neftune_noise_alpha=5` works without `+`, and `sft.lerning_rate=1` fails when the
stage starts (or when the pipeline composes), naming the closest TRL names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.config import ModelConfig, PeftConfig, help_field
from core.push_to_hub import PushToHubConfig

OVERLENGTH = ("drop", "truncate")
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3")


@dataclass
class DataSource:
    """One input set: an SFT parquet file, or a finished stage directory (its manifest's `sft`/`selected`)."""

    path: str = help_field("???", help="Parquet file, or a stage directory holding manifest.json.")
    weight: float = help_field(
        1.0, help="Sampling weight: 2.0 repeats the set twice, 0.5 keeps a (seeded) half of it."
    )


@dataclass
class SFTOptions:
    """What train_sft adds to TRL's SFTConfig: how examples are cut, and how the model is loaded (the stage
    loads it, not TRL)."""

    overlength: str = help_field(
        "drop",
        help="Examples over sft.max_length: drop | truncate (keeps the start; the answer and eos are lost). "
        "Done before TRL sees the data, so TRL's own truncation never cuts an example.",
    )
    attn_implementation: str = help_field(
        "auto",
        help="auto (flash_attention_2 if installed on GPU, else sdpa) | sdpa | eager | flash_attention_2|3.",
    )
    rope_theta: float | None = help_field(
        None, help="Override RoPE theta (OpenR1-Qwen-7B raised it to 300k to reach 32k context)."
    )
    max_position_embeddings: int | None = help_field(None, help="Override the model's context size.")

    def __post_init__(self) -> None:
        if self.overlength not in OVERLENGTH:
            raise ValueError(f"train.overlength must be one of {OVERLENGTH}, got '{self.overlength}'")
        if self.attn_implementation not in ATTENTION:
            raise ValueError(f"train.attn_implementation must be one of {ATTENTION}")


@dataclass
class SFTStageConfig:
    """Supervised fine-tuning on CoT Alpaca records with TRL's SFTTrainer."""

    run_name: str = help_field("default", hashed=False)
    run_dir: str = help_field("runs/${run_name}", hashed=False)
    round: int = help_field(0, help="Rejection-sampling round this SFT belongs to.")
    output_dir: str = help_field("${run_dir}/round_${round}/sft", hashed=False)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: list[DataSource] = field(default_factory=lambda: [DataSource(path="${run_dir}/data")])
    sft: dict[str, Any] = help_field(
        {},
        help="Arguments of trl.SFTConfig as TRL names them (learning_rate, max_steps, max_length, ...; presets "
        "in conf/sft/), passed as they are and checked by TRL when the stage starts. Project meanings: "
        "packing null = pack (BFD, padding-free) when flash attention is in use, else padded batches "
        "(packing without varlen kernels attends densely over the whole row, slower than padding); "
        "padding_free follows packing; bf16 null = on where the GPU supports it; use_liger_kernel only "
        "when liger-kernel is installed; report_to [none] = nothing. Set by the stage (refused here): "
        "output_dir, use_cpu, completion_only_loss, ddp_find_unused_parameters.",
    )
    train: SFTOptions = field(default_factory=SFTOptions)
    peft: PeftConfig = field(default_factory=PeftConfig)
    use_cpu: bool | None = help_field(
        None, help="Train on the CPU; null = when no GPU is visible.", hashed=False
    )
    resume: bool = help_field(True, help="Continue from the last checkpoint in output_dir if there is one.")
    keep_checkpoints: bool = help_field(False, help="Keep checkpoints/ after a finished run.", hashed=False)
    push_to_hub: PushToHubConfig = field(default_factory=PushToHubConfig)
    force: bool = help_field(False, help="Retrain even if a matching manifest exists.", hashed=False)

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("train_sft needs at least one data source (data=[{path: ...}])")
        for source in self.data:
            if source.weight <= 0:
                raise ValueError(f"data source {source.path}: weight must be > 0, got {source.weight}")
