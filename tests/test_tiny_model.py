"""The tiny offline model: loads with transformers, tokenizes digits one by one, keeps <think> on decode,
pads with a token that is not eos, masks exactly the assistant turn, and both heads run."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from core.chat import record_to_messages

RECORD = {"instruction": "Compute 61 + 38.", "output": "<think>61+38=99.</think> The answer is \\boxed{99}."}


def test_saved_files_are_safetensors_with_tokenizer_and_template(tiny_model):
    for d in tiny_model.values():
        names = {p.name for p in Path(d).iterdir()}
        assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names
        assert not any(n.endswith(".bin") for n in names)
        assert (
            "chat_template.jinja" in names
            or "chat_template" in (Path(d) / "tokenizer_config.json").read_text()
        )


def test_tokenizer_digits_think_tokens_and_pad(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model["policy"])
    assert tok.pad_token != tok.eos_token and tok.eos_token == "<|im_end|>"
    pieces = tok.convert_ids_to_tokens(tok("12345")["input_ids"])
    assert pieces == ["1", "2", "3", "4", "5"]
    ids = tok(RECORD["output"])["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == RECORD["output"]


def test_chat_template_masks_exactly_the_assistant_turn_and_its_eos(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model["policy"])
    enc = tok.apply_chat_template(
        record_to_messages(RECORD, "Please reason."), return_assistant_tokens_mask=True, return_dict=True
    )
    trained = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert tok.decode(trained) == RECORD["output"] + "<|im_end|>"


def test_policy_generates_and_reward_model_scores(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model["policy"])
    policy = AutoModelForCausalLM.from_pretrained(tiny_model["policy"])
    assert 0.3e6 < sum(p.numel() for p in policy.parameters()) < 1e6
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": RECORD["instruction"]}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = policy.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= prompt["input_ids"].shape[1] + 5
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model["reward_model"])
    batch = tok([RECORD["output"], "short"], return_tensors="pt", padding=True)
    scores = rm(**batch).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()
