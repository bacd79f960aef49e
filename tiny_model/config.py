"""Typed config of the tiny_model stage (YAML conf/tiny_model.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.config import help_field


@dataclass
class TinyModelConfig:
    """Shape of the tiny model and of the corpus its tokenizer is trained on."""

    vocab_size: int = help_field(384, help="BPE vocabulary size (byte alphabet + merges + special tokens).")
    hidden_size: int = help_field(128, help="Hidden size; hidden/heads must be >= 32 for vLLM on CPU.")
    num_hidden_layers: int = help_field(2)
    num_attention_heads: int = help_field(4)
    num_key_value_heads: int = help_field(2)
    intermediate_size: int = help_field(512)
    max_position_embeddings: int = help_field(2048)
    rope_theta: float = help_field(10000.0)
    tokenizer_corpus_problems: int = help_field(3000, help="Synthetic problems the tokenizer is trained on.")
    seed: int = help_field(0)

    def __post_init__(self) -> None:
        head_dim = self.hidden_size // self.num_attention_heads
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if head_dim < 32:
            raise ValueError(
                f"head_dim = hidden_size / num_attention_heads = {head_dim} < 32: vLLM's CPU attention "
                f"rejects it; use e.g. hidden_size=128, num_attention_heads=4"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")


@dataclass
class TinyModelStageConfig:
    """`python -m tiny_model`: build the tiny offline policy + reward model + tokenizer."""

    run_name: str = help_field("default")
    run_dir: str = help_field("runs/${run_name}")
    output_dir: str = help_field("${run_dir}/tiny_model", help="Gets policy/ and reward_model/ subfolders.")
    shape: TinyModelConfig = field(default_factory=TinyModelConfig)
    force: bool = help_field(False, help="Rebuild even if a matching manifest exists.", hashed=False)
