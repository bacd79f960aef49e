"""Every text a model sees, on the real tokenizers and chat templates of four families and a base model:
prompts equal the native generation prompt, trained spans are the whole trace + end of turn and never a
prompt or role token, R1's prefilled `<think>\\n` is kept exactly once, Qwen3's empty think block never
appears, pad tokens reuse an unused token, and model directories that cannot work fail before training."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoTokenizer

from core.chat import THINK_OPEN, ChatRenderer, TemplateError
from core.config import MATH_INSTRUCTION_SUFFIX, ModelConfig
from core.models import chat_renderer, load_tokenizer
from reject_sampling.backends import Completion
from reject_sampling.prompts import Prompt
from reject_sampling.sample import samples_table
from reject_sampling.select import to_records
from tests.conftest import family_model_config
from tests.families import CHAT_FAMILIES, FAMILIES

ALL = (*CHAT_FAMILIES, "base")
QUESTION = "Compute 17 + 25."
TRACE = "<think>\n17 + 25 = 42.\n</think>\n\nThe answer is \\boxed{42}."
# Templates that write the assistant's content as it is: there the renderer must equal the template.
VERBATIM = ("qwen2.5", "llama3", "base")


def loaded(family_models, name: str, **fields):
    model = family_model_config(family_models, name, **fields)
    tokenizer = load_tokenizer(model)
    return tokenizer, chat_renderer(model, tokenizer)


def user_turn(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{question}\n\n{MATH_INSTRUCTION_SUFFIX}"}]


@pytest.mark.parametrize("name", ALL)
def test_prompt_is_the_native_generation_prompt(family_models, name):
    tokenizer, renderer = loaded(family_models, name)
    native = tokenizer.apply_chat_template(user_turn(QUESTION), tokenize=False, add_generation_prompt=True)
    assert renderer.prompt(QUESTION) == native
    assert renderer._prompt_parts is not None  # the sentinel shortcut was checked equal and kept


@pytest.mark.parametrize("name", VERBATIM)
def test_text_equals_the_template_where_it_keeps_the_assistant_turn(family_models, name):
    tokenizer, renderer = loaded(family_models, name)
    conversation = [*user_turn(QUESTION), {"role": "assistant", "content": TRACE}]
    assert renderer.text(QUESTION, TRACE) == tokenizer.apply_chat_template(conversation, tokenize=False)


@pytest.mark.parametrize("name", ALL)
def test_trained_span_is_the_whole_trace_and_the_end_of_turn(family_models, name):
    tokenizer, renderer = loaded(family_models, name)
    (encoded,) = renderer.encode([(QUESTION, TRACE)])
    ids, mask = encoded.input_ids, encoded.completion_mask
    prompt_ids = tokenizer(renderer.prompt(QUESTION), add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids and not any(mask[: len(prompt_ids)])
    trained = [t for t, m in zip(ids, mask, strict=True) if m]
    assert tokenizer.decode(trained) == renderer.completion(TRACE) + renderer.eot
    assert trained[-1] == renderer.eot_id
    # What the model sees is prompt + the trace once (prefill included) + end of turn.
    assert tokenizer.decode(ids) == renderer.text(QUESTION, TRACE)
    assert tokenizer.decode(ids).count(THINK_OPEN) == 1
    assert renderer.trace(renderer.completion(TRACE)) == TRACE


def test_r1_prefill_is_not_trained_and_not_lost(family_models):
    tokenizer, renderer = loaded(family_models, "r1")
    assert renderer.prefill == "<think>\n"
    assert renderer.prompt(QUESTION).endswith("<｜Assistant｜><think>\n")
    (encoded,) = renderer.encode([(QUESTION, TRACE)])
    trained = tokenizer.decode(
        [t for t, m in zip(encoded.input_ids, encoded.completion_mask, strict=True) if m]
    )
    assert trained == "17 + 25 = 42.\n</think>\n\nThe answer is \\boxed{42}.<｜end▁of▁sentence｜>"
    assert "<｜Assistant｜>" not in trained
    # A trace written without the newline after <think> still continues the prefill, not a second block.
    assert renderer.text(QUESTION, "<think>17 + 25 = 42.</think> 42").count(THINK_OPEN) == 1


def test_qwen3_reward_text_has_no_empty_think_block(family_models):
    tokenizer, renderer = loaded(family_models, "qwen3")
    text = renderer.text(QUESTION, TRACE)
    assert "<think>\n\n</think>" not in text and text.count(THINK_OPEN) == 1
    # The template itself would write one before an assistant turn without reasoning: the renderer never
    # renders conversations through it.
    conversation = [*user_turn(QUESTION), {"role": "assistant", "content": "42"}]
    assert "<think>\n\n</think>" in tokenizer.apply_chat_template(conversation, tokenize=False)


def test_qwen3_thinking_off_prefills_the_empty_block(family_models):
    _, renderer = loaded(family_models, "qwen3", chat_template_kwargs={"enable_thinking": False})
    assert renderer.prompt(QUESTION).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert renderer.prefill == "<think>\n\n</think>\n\n"
    assert renderer.trace("42") == "<think>\n\n</think>\n\n42"


def test_r1_sample_round_trip_becomes_a_record_that_trains_the_whole_trace(family_models):
    """sample.py stores prefill + generated text; the record selected from it renders exactly as generated."""
    tokenizer, renderer = loaded(family_models, "r1")
    generated = "17 + 25 = 42.\n</think>\n\nThe answer is \\boxed{42}."  # what vLLM returns after <think>\n
    table = samples_table(
        [Prompt("p0", QUESTION, "42")], [[Completion(generated, "stop", 12)]], "r1", renderer.prefill
    )
    samples = table.to_pandas()
    assert samples["completion"][0] == "<think>\n" + generated
    record = to_records(samples.assign(rm_score=0.0), [0], ["test"]).iloc[0]
    assert record["output"].startswith("<think>\n")
    (encoded,) = renderer.encode([(record["instruction"], record["output"])])
    assert (
        tokenizer.decode(encoded.input_ids) == renderer.prompt(QUESTION) + generated + "<｜end▁of▁sentence｜>"
    )
    trained = [t for t, m in zip(encoded.input_ids, encoded.completion_mask, strict=True) if m]
    assert tokenizer.decode(trained) == generated + "<｜end▁of▁sentence｜>"


def test_pad_tokens_reuse_unused_tokens_without_growing_the_vocabulary(family_models):
    expected = {
        "llama3": "<|reserved_special_token_250|>",
        "qwen2.5": "<|endoftext|>",
        "r1": "<|vision_pad|>",
    }
    for name, pad in expected.items():
        tokenizer, renderer = loaded(family_models, name)
        raw = AutoTokenizer.from_pretrained(family_models[name])
        assert tokenizer.pad_token == pad
        assert len(tokenizer) == len(raw)  # nothing added, no embedding resize
        assert tokenizer.pad_token not in (tokenizer.eos_token, renderer.eot)


def test_end_of_turn_per_family(family_models):
    ends = {
        "qwen2.5": ("<|im_end|>", "\n"),
        "qwen3": ("<|im_end|>", "\n"),
        "llama3": ("<|eot_id|>", ""),
        "r1": ("<｜end▁of▁sentence｜>", ""),
        "base": ("<|im_end|>", "\n"),
    }
    for name, (eot, tail) in ends.items():
        _, renderer = loaded(family_models, name)
        assert (renderer.eot, renderer.end) == (eot, eot + tail), name
        assert renderer.eot_id in FAMILIES[name].eos_token_id or name == "base"


# ------------------------------------------------------------------------------------------ bad input


def test_base_model_without_a_template_fails_naming_the_directory_and_the_fix(family_models):
    path = family_models["base"]
    with pytest.raises(TemplateError, match=rf"{path}.*model.chat_template=chatml"):
        load_tokenizer(ModelConfig(path=str(path)))
    tokenizer = load_tokenizer(ModelConfig(path=str(path), chat_template="r1"))
    renderer = ChatRenderer(tokenizer, MATH_INSTRUCTION_SUFFIX)
    assert renderer.prompt(QUESTION).endswith("Assistant: <think>\n") and renderer.prefill == "<think>\n"
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        load_tokenizer(ModelConfig(path=str(path), chat_template="no-such-template"))


def test_model_dir_without_tokenizer_files_fails_naming_it(family_models, tmp_path):
    bare = tmp_path / "weights_only"
    bare.mkdir()
    for f in family_models["qwen2.5"].glob("*.json"):
        if not f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, bare / f.name)
    with pytest.raises(FileNotFoundError, match=rf"{bare} has no tokenizer files.*model.tokenizer_path"):
        load_tokenizer(ModelConfig(path=str(bare)))


def test_tokenizer_larger_than_the_model_vocab_fails_before_training(family_models, tmp_path):
    small = tmp_path / "small_vocab"
    shutil.copytree(family_models["qwen2.5"], small)
    config = json.loads((small / "config.json").read_text())
    config["vocab_size"] = 1000
    (small / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=rf"{small} has 151665 tokens but the model in {small} has vocab_size 1000"
    ):
        load_tokenizer(ModelConfig(path=str(small)))
