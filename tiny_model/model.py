"""The tiny offline model: a byte-level BPE tokenizer trained on the synthetic data, a 2-layer Qwen2 causal
LM and a Qwen2 reward-model head (one score), saved in Hugging Face format (safetensors + tokenizer + chat
template), so every stage, vLLM included, loads it like any hub model, without a hub.

Decisions (measured on the 2-core development machines):
- every digit is its own token (`Digits(individual_digits=True)` before `ByteLevel`): arithmetic is learnt
  in a few thousand steps instead of never;
- `<think>` / `</think>` are ordinary added tokens, not special ones, so `skip_special_tokens` keeps them;
- hidden 128 with 4 heads gives head_dim 32, the smallest vLLM's CPU attention accepts;
- ChatML with `{% generation %}` tags around the assistant turn, so TRL's assistant-only loss works;
  `<|im_end|>` is eos (the model learns to stop), `<|endoftext|>` is pad (never equal to eos).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path

from core.chat import THINK_CLOSE, THINK_OPEN, record_to_messages, user_content
from core.config import MATH_INSTRUCTION_SUFFIX
from tiny_model.config import TinyModelConfig

log = logging.getLogger(__name__)

PAD, EOS, IM_START = "<|endoftext|>", "<|im_end|>", "<|im_start|>"

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def corpus(n_problems: int, seed: int) -> Iterator[str]:
    """Conversations rendered as text, from the same generator as the offline data."""
    from data_process.synthetic import SyntheticSpec, iter_rows

    for row in iter_rows(SyntheticSpec(num_problems=n_problems, seed=seed + 7919)):
        for trace in row["generations"]:
            record = {"instruction": row["problem"], "output": trace}
            yield "\n".join(m["content"] for m in record_to_messages(record, MATH_INSTRUCTION_SUFFIX))
        yield row["solution"]
    yield user_content("Solve the problem.", suffix=MATH_INSTRUCTION_SUFFIX)


def train_tokenizer(cfg: TinyModelConfig):
    """A byte-level BPE tokenizer (any text encodes; digits split), wrapped as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=[PAD, IM_START, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(cfg.tokenizer_corpus_problems, cfg.seed), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=None,
        model_max_length=cfg.max_position_embeddings,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    hf.add_tokens([THINK_OPEN, THINK_CLOSE])  # ordinary tokens: decoding keeps them
    hf.chat_template = CHATML_TEMPLATE
    return hf


def build(cfg: TinyModelConfig, output_dir: str | Path) -> dict[str, str]:
    """Train the tokenizer, initialise the policy and the reward model, save both. Returns their dirs."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    output_dir = Path(output_dir)
    tokenizer = train_tokenizer(cfg)
    eos_id, pad_id = tokenizer.convert_tokens_to_ids(EOS), tokenizer.convert_tokens_to_ids(PAD)
    model_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        torch_dtype="float32",
    )
    dirs = {"policy": output_dir / "policy", "reward_model": output_dir / "reward_model"}
    policy = Qwen2ForCausalLM(model_config)
    policy.generation_config = GenerationConfig(
        eos_token_id=[eos_id, pad_id], pad_token_id=pad_id, bos_token_id=None, max_new_tokens=256
    )
    reward_fields = {k: v for k, v in model_config.to_dict().items() if k not in ("id2label", "label2id")}
    reward_config = Qwen2Config.from_dict({**reward_fields, "num_labels": 1})
    reward = Qwen2ForSequenceClassification(reward_config)
    for name, model in (("policy", policy), ("reward_model", reward)):
        model.save_pretrained(dirs[name], safe_serialization=True)
        tokenizer.save_pretrained(dirs[name])
        (dirs[name] / "tiny_model_config.json").write_text(json.dumps(cfg.__dict__, indent=2) + "\n")
    n_params = sum(p.numel() for p in policy.parameters())
    log.info("tiny model: %d parameters, vocab %d, saved to %s", n_params, len(tokenizer), output_dir)
    return {k: str(v) for k, v in dirs.items()}
