"""Chat formatting shared by every stage: the renderer of every text a model sees (`ChatRenderer`), `<think>`
handling, pad tokens, and chat-template presets for base models.

All artifacts store the bare problem text (`instruction` / `prompt`) and whole traces; the math instruction
suffix is added here, when a record becomes a user turn, and the generation prompt's prefill is removed
here, when a trace is rendered after it. SFT, sampling, reward scoring and GRPO all render through
`ChatRenderer`, so the policy is trained on exactly the sequences it is sampled from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_BOXED = "\\boxed"
_BRACE = re.compile(r"[{}]")


def user_content(instruction: str, input: str = "", suffix: str = "") -> str:
    """The user turn: problem, optional extra input, then the instruction suffix, blank-line separated."""
    parts = [instruction.strip()]
    if input and input.strip():
        parts.append(input.strip())
    if suffix:
        parts.append(suffix)
    return "\n\n".join(parts)


def prompt_messages(instruction: str, input: str = "", suffix: str = "") -> list[dict[str, str]]:
    return [{"role": "user", "content": user_content(instruction, input, suffix)}]


def record_to_messages(record: dict[str, Any], suffix: str = "") -> list[dict[str, str]]:
    """A CoT Alpaca record (instruction | input | output) as a user/assistant conversation."""
    messages = prompt_messages(record["instruction"], record.get("input") or "", suffix)
    messages.append({"role": "assistant", "content": record["output"]})
    return messages


def messages_to_record(messages: list[dict[str, str]], suffix: str = "") -> dict[str, str]:
    """Inverse of `record_to_messages` for a single-turn conversation (suffix stripped if present)."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    assistants = [m["content"] for m in messages if m["role"] == "assistant"]
    if len(users) != 1 or len(assistants) != 1:
        raise ValueError(
            f"expected one user and one assistant turn, got {len(users)} user and {len(assistants)} assistant"
        )
    instruction = users[0]
    if suffix and instruction.endswith(suffix):
        instruction = instruction[: -len(suffix)].rstrip()
    return {"instruction": instruction, "input": "", "output": assistants[0]}


@dataclass(frozen=True)
class ThinkSplit:
    """A completion split at its reasoning: `reasoning` is None when there is no `<think>` block."""

    reasoning: str | None
    answer: str
    closed: bool


def split_think(text: str) -> ThinkSplit:
    """Separate the `<think>…</think>` reasoning from the final answer text.

    R1 traces open with `<think>`; chat templates sometimes put it in the prompt, so a completion may start
    inside the reasoning with only `</think>` present. An unclosed block means the answer never came.
    """
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        start = text.find(THINK_OPEN)
        body_start = start + len(THINK_OPEN) if 0 <= start < close else 0
        return ThinkSplit(text[body_start:close].strip(), text[close + len(THINK_CLOSE) :].strip(), True)
    if THINK_OPEN in text:
        return ThinkSplit(text.split(THINK_OPEN, 1)[1].strip(), "", False)
    return ThinkSplit(None, text.strip(), True)


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (balanced braces) in `text`, or None.

    Linear in the text's length: every brace is matched once, in one pass, before the boxes are looked at
    from the last one back. (Scanning forward from each box for its closing brace took quadratic time: a
    sampled completion of 20,000 unclosed `\\boxed{` took five minutes, outside any verifier time limit.)
    """
    idx = text.rfind(_BOXED)
    if idx < 0:
        return None
    closing = _matching_braces(text, text.find(_BOXED))
    while idx >= 0:
        i = idx + len(_BOXED)
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{" and i in closing:
            return text[i + 1 : closing[i]]
        idx = text.rfind(_BOXED, 0, idx)
    return None


def _matching_braces(text: str, start: int) -> dict[int, int]:
    """Position of each `{` at or after `start` -> the position of the `}` that closes it (unclosed ones are
    left out; a `}` with nothing open is ignored)."""
    closing: dict[int, int] = {}
    open_at: list[int] = []
    for m in _BRACE.finditer(text, start):
        if m.group() == "{":
            open_at.append(m.start())
        elif open_at:
            closing[open_at.pop()] = m.start()
    return closing


def count_boxed(text: str) -> int:
    return len(re.findall(r"\\boxed\s*\{", text))


# `model.chat_template` presets for base models (a tokenizer without a template of its own).
CHAT_TEMPLATES = {
    # ChatML without a system prompt (Qwen base models have <|im_start|> / <|im_end|> in their vocabulary).
    "chatml": (
        "{%- for message in messages %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    ),
    # Plain-text turns as DeepSeek-R1-Zero trained a base model: the generation prompt pre-fills <think> as
    # R1's template does, and a turn ends with the tokenizer's eos.
    "r1": (
        "{%- if bos_token %}{{- bos_token }}{%- endif %}"
        "{%- for message in messages %}"
        "{%- if message['role'] == 'user' %}{{- 'User: ' + message['content'] + '\\n' }}"
        "{%- elif message['role'] == 'assistant' %}{{- 'Assistant: ' + message['content'] + eos_token }}"
        "{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- 'Assistant: <think>\\n' }}{%- endif %}"
    ),
}


def resolve_chat_template(value: str) -> str:
    """`model.chat_template`: a preset name (chatml, r1), a path to a Jinja file, or the template itself."""
    from pathlib import Path

    if value in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[value]
    if "{" not in value:
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(
                f"model.chat_template={value!r} is neither a preset ({', '.join(CHAT_TEMPLATES)}), a Jinja "
                f"template, nor an existing file"
            )
        return path.read_text()
    return value


# Tried in order before any other unused token: the names families give their padding token.
PAD_CANDIDATES = ("<|endoftext|>", "<|finetune_right_pad_id|>", "<｜▁pad▁｜>", "<|pad|>", "<pad>")
_RESERVED = re.compile(r"<\|reserved_special_token_(\d+)\|>")


def _unused_pad_candidates(tokenizer: Any, taken: set[str]) -> list[str]:
    """Existing tokens that can pad: the usual names, then added tokens named *pad*, then Llama-3's reserved
    special tokens (the highest-numbered first). None of them is eos, bos or the end of turn."""
    vocab = tokenizer.get_vocab()
    added = [t.content for _, t in sorted(tokenizer.added_tokens_decoder.items())]
    reserved = sorted(
        (t for t in added if _RESERVED.fullmatch(t)), key=lambda t: -int(_RESERVED.fullmatch(t).group(1))
    )
    named = [t for t in added if "pad" in t.lower()]
    ordered = [t for t in PAD_CANDIDATES if t in vocab] + named + reserved
    return [t for t in dict.fromkeys(ordered) if t not in taken]


def ensure_pad_token(tokenizer: Any, end_of_turn: str | None = None) -> Any:
    """Give the tokenizer a pad token distinct from eos and from the end-of-turn token.

    With pad == eos (R1-Distill) or no pad at all (Llama-3), collators mask every eos out of the labels and the
    model never learns to stop. An existing unused token is preferred (Llama-3 has 250 reserved ones), so the
    vocabulary, the embeddings and a LoRA adapter keep their sizes; `<|pad|>` is added only when none exists.
    """
    taken = {t for t in (tokenizer.eos_token, tokenizer.bos_token, end_of_turn) if t}
    if tokenizer.pad_token is not None and tokenizer.pad_token not in taken:
        return tokenizer
    candidates = _unused_pad_candidates(tokenizer, taken)
    if candidates:
        tokenizer.pad_token = candidates[0]
    else:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return tokenizer


@dataclass(frozen=True)
class Encoded:
    """One conversation as token ids; `completion_mask` is 1 on the trained tokens (completion + end of turn)."""

    input_ids: list[int]
    completion_mask: list[int]

    @property
    def prompt_length(self) -> int:
        return self.completion_mask.index(1) if 1 in self.completion_mask else len(self.input_ids)


class TemplateError(ValueError):
    """A chat template this pipeline cannot render single-turn conversations with."""


class ChatRenderer:
    """Every text a model sees, exactly as it generates it: the native generation prompt, the completion as
    generated, then the family's end of turn.

    - `prompt(q)` is `apply_chat_template([user], add_generation_prompt=True)`: Qwen2.5's default system prompt,
      Llama-3's bos, R1's `<｜Assistant｜><think>\n`, Qwen3 with thinking on unless `template_kwargs` say otherwise.
    - A trace is the whole assistant turn (`<think>reasoning</think>answer`), which artifacts store. Where the
      generation prompt pre-fills part of it (`prefill`: R1's `<think>\n`), the model generates only the rest:
      `completion(trace)` drops the prefill once and `trace(completion)` puts it back, so it is never doubled
      (as rendering the conversation through the template would) nor lost.
    - `end` is what the template writes after the assistant content (`<|im_end|>\n`, `<|eot_id|>`,
      `<｜end▁of▁sentence｜>`); `eot` is its first special token, where generation stops. Training covers the
      completion and `eot`, never the prompt and never what follows `eot`.

    The conversation is not rendered through the template because templates rewrite assistant turns: R1's
    strips the reasoning, Qwen3's moves it and writes an empty think block. For templates that do not
    (Qwen2.5, Llama-3, ChatML) `text()` equals `apply_chat_template` of the conversation. Prompts are rendered
    once with a sentinel and split around it (Jinja per row is the slow part of counting millions of
    tokens); the shortcut is checked equal to the template at start-up and dropped where it is not.
    """

    _USER, _ASSISTANT = "\x00USER\x00", "\x00ASSISTANT\x00"
    _PROBE = "Compute 1 + 1."

    def __init__(self, tokenizer: Any, suffix: str = "", template_kwargs: dict[str, Any] | None = None):
        if tokenizer.chat_template is None:
            raise TemplateError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template: set "
                f"model.chat_template (chatml, r1, or a Jinja file) for a base model"
            )
        self.tokenizer, self.suffix = tokenizer, suffix
        self.template_kwargs = dict(template_kwargs or {})
        gen = self._template([{"role": "user", "content": self._USER}], add_generation_prompt=True)
        self._prompt_parts: tuple[str, str] | None = None
        if gen.count(self._USER) == 1:
            before, after = gen.split(self._USER)
            self._prompt_parts = (before, after)
            if self.prompt(self._PROBE) != self._render_prompt(self._PROBE):
                self._prompt_parts = None
        generation_prompt, probe = self._render_prompt(self._PROBE), user_content(self._PROBE, "", suffix)
        after_user = generation_prompt[generation_prompt.rfind(probe) + len(probe) :]
        open_at = after_user.find(THINK_OPEN)
        self.prefill = after_user[open_at:] if open_at >= 0 else ""
        self.end, self.eot = self._end_of_turn()
        self.eot_id: int = tokenizer.convert_tokens_to_ids(self.eot)

    def _template(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **self.template_kwargs
        )

    def _render_prompt(self, instruction: str, input: str = "") -> str:
        return self._template(prompt_messages(instruction, input, self.suffix), add_generation_prompt=True)

    def _end_of_turn(self) -> tuple[str, str]:
        rendered = self._template(
            [{"role": "user", "content": self._USER}, {"role": "assistant", "content": self._ASSISTANT}],
            add_generation_prompt=False,
        )
        if rendered.count(self._ASSISTANT) != 1:
            raise TemplateError(
                f"the chat template of {getattr(self.tokenizer, 'name_or_path', '')!r} does not write the "
                f"assistant's content verbatim, so its end of turn cannot be found"
            )
        end = rendered.split(self._ASSISTANT)[1]
        specials = {t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special}
        found = sorted((end.find(t), -len(t), t) for t in specials if t in end)
        if not found:
            raise TemplateError(
                f"the chat template ends an assistant turn with {end!r}, which holds no special token of the "
                f"tokenizer: generation would never stop at the end of a turn"
            )
        at, _, eot = found[0]
        return end, end[: at + len(eot)]

    def prompt(self, instruction: str, input: str = "") -> str:
        """The user turn followed by the assistant's generation prompt: what a policy is sampled from."""
        if self._prompt_parts is None:
            return self._render_prompt(instruction, input)
        before, after = self._prompt_parts
        return f"{before}{user_content(instruction, input, self.suffix)}{after}"

    def completion(self, trace: str) -> str:
        """What the model generates for this trace after the prompt: the trace without the prefill."""
        if not self.prefill:
            return trace
        if trace.startswith(self.prefill):
            return trace[len(self.prefill) :]
        opening = self.prefill.strip()
        if opening and trace.lstrip().startswith(opening):
            return trace.lstrip()[len(opening) :].lstrip()
        return trace

    def trace(self, completion: str) -> str:
        """A generated completion as the whole assistant turn (the prefill joined back once)."""
        return self.prefill + completion

    def text(self, instruction: str, trace: str, input: str = "") -> str:
        """prompt + completion + end of turn: the whole sequence, as the model generated it."""
        return f"{self.prompt(instruction, input)}{self.completion(trace)}{self.end}"

    def encode(self, rows: list[tuple[str, str]]) -> list[Encoded]:
        """(instruction, trace) pairs as ids with their trained span: the prompt, the completion with the end of
        turn, and what follows it are tokenized apart, as a model sees a prompt and then its own tokens."""
        if not rows:
            return []
        tok = self.tokenizer
        tail = self.end[len(self.eot) :]
        prompts = tok([self.prompt(q) for q, _ in rows], add_special_tokens=False)["input_ids"]
        completions = tok([self.completion(t) + self.eot for _, t in rows], add_special_tokens=False)[
            "input_ids"
        ]
        tail_ids = tok(tail, add_special_tokens=False)["input_ids"] if tail else []
        return [
            Encoded(p + c + tail_ids, [0] * len(p) + [1] * len(c) + [0] * len(tail_ids))
            for p, c in zip(prompts, completions, strict=True)
        ]

    def count(self, rows: list[tuple[str, str]]) -> list[int]:
        """Token counts of (instruction, trace) pairs as `text()` renders them."""
        if not rows:
            return []
        texts = [self.text(q, t) for q, t in rows]
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and hasattr(backend, "encode_batch_fast"):
            # The Rust tokenizer directly, without offsets or Python id lists: 2-3x faster on long traces.
            return [len(e) for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
