"""Tiny random-weight models around the REAL tokenizers of four model families (tests/realdata/), plus a base
model (the Qwen2.5 tokenizer with its chat template removed).

Each model has the family's real vocabulary size, special tokens, chat template and the end-of-turn ids of
its published generation config, with a few thousand hidden units in all: the embedding dominates (a 151,936
x 64 table), so a training step on 2 cores costs well under a second at the lengths the tests use. The
architecture is the family's (Qwen2, Qwen3, Llama); head_dim 32 is the smallest vLLM's CPU attention takes.
"""

from __future__ import annotations

import json
import lzma
import shutil
from dataclasses import dataclass
from pathlib import Path

REALDATA = Path(__file__).resolve().parent / "realdata" / "tokenizers"


@dataclass(frozen=True)
class Family:
    name: str
    folder: str
    architecture: str  # qwen2 | qwen3 | llama
    eos_token_id: tuple[int, ...]  # the published generation_config.json's list
    bos_token_id: int | None = None
    keep_template: bool = True


FAMILIES = {
    f.name: f
    for f in (
        Family("qwen2.5", "qwen2.5-instruct", "qwen2", (151645, 151643), 151643),
        Family("qwen3", "qwen3", "qwen3", (151645, 151643), 151643),
        Family("llama3", "llama-3-8b-instruct", "llama", (128001, 128009), 128000),
        Family("r1", "deepseek-r1-distill-qwen", "qwen2", (151643,), 151646),
        Family("base", "qwen2.5-instruct", "qwen2", (151643,), 151643, keep_template=False),
    )
}
CHAT_FAMILIES = ("qwen2.5", "qwen3", "llama3", "r1")


def write_tokenizer(family: Family, out: Path) -> Path:
    """The family's tokenizer files in `out` (tokenizer.json decompressed; the base model loses its template)."""
    out.mkdir(parents=True, exist_ok=True)
    src = REALDATA / family.folder
    for f in src.iterdir():
        if f.name == "tokenizer.json.xz":
            (out / "tokenizer.json").write_bytes(lzma.decompress(f.read_bytes()))
        elif f.name in ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            shutil.copy(f, out / f.name)
    if not family.keep_template:
        config = json.loads((out / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
        (out / "chat_template.jinja").unlink(missing_ok=True)
    return out


def build_family_model(family: Family, out: Path, seed: int = 0) -> Path:
    """A tiny causal LM of the family's architecture saved with its tokenizer and generation config."""
    import torch
    from transformers import (
        AutoTokenizer,
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    write_tokenizer(family, out)
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    vocab = 128256 if family.architecture == "llama" else 151936
    assert len(tokenizer) <= vocab, (family.name, len(tokenizer))
    shape = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=family.bos_token_id,
        eos_token_id=family.eos_token_id[0],
        torch_dtype="float32",
    )
    config_cls, model_cls = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
    }[family.architecture]
    if family.architecture == "qwen3":
        shape["head_dim"] = 32
    torch.manual_seed(seed)
    model = model_cls(config_cls(**shape))
    model.generation_config = GenerationConfig(
        bos_token_id=family.bos_token_id,
        eos_token_id=list(family.eos_token_id) if len(family.eos_token_id) > 1 else family.eos_token_id[0],
    )
    model.save_pretrained(out, safe_serialization=True)
    return out
