"""Chat formatting: records ⇄ messages, <think> splitting, pad tokens, exact template token counts."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from core.chat import (
    ChatRenderer,
    ensure_pad_token,
    last_boxed,
    messages_to_record,
    record_to_messages,
    split_think,
    user_content,
)
from core.config import MATH_INSTRUCTION_SUFFIX


def test_record_messages_roundtrip_with_suffix():
    record = {"instruction": "Compute 1 + 1.", "input": "", "output": "<think>1+1=2.</think> \\boxed{2}"}
    messages = record_to_messages(record, MATH_INSTRUCTION_SUFFIX)
    assert messages[0]["content"] == "Compute 1 + 1.\n\n" + MATH_INSTRUCTION_SUFFIX
    assert messages_to_record(messages, MATH_INSTRUCTION_SUFFIX) == record
    assert user_content("Q", "extra", "") == "Q\n\nextra"
    with pytest.raises(ValueError, match="one user and one assistant"):
        messages_to_record(messages[:1])


@pytest.mark.parametrize(
    ("text", "reasoning", "answer", "closed"),
    [
        ("<think>a</think> b", "a", "b", True),
        ("a</think> b", "a", "b", True),  # template put <think> in the prompt
        ("<think>a b", "a b", "", False),
        ("plain \\boxed{1}", None, "plain \\boxed{1}", True),
    ],
)
def test_split_think(text, reasoning, answer, closed):
    s = split_think(text)
    assert (s.reasoning, s.answer, s.closed) == (reasoning, answer, closed)


def test_last_boxed_balanced_braces():
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert last_boxed("\\boxed {x}") == "x"
    assert last_boxed("\\boxed{unclosed") is None


def test_ensure_pad_token_never_eos(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model["policy"])
    tok.pad_token = tok.eos_token
    ensure_pad_token(tok)
    assert tok.pad_token == "<|endoftext|>" != tok.eos_token


def test_renderer_counts_equal_the_rendered_template(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model["policy"])
    renderer = ChatRenderer(tok, MATH_INSTRUCTION_SUFFIX)
    assert renderer._prompt_parts is not None  # the sentinel shortcut held for this template
    pairs = [("Compute 61 + 38.", "<think>61+38=99.</think> The answer is \\boxed{99}."), ("Q?", "A.")]
    for (instruction, output), n in zip(pairs, renderer.count(pairs), strict=True):
        messages = record_to_messages({"instruction": instruction, "output": output}, MATH_INSTRUCTION_SUFFIX)
        assert n == len(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
