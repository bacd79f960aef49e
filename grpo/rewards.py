"""Reward functions of the GRPO stage: plain functions `(completions, **columns) -> list[float | None]` in a
registry keyed by name, as TRL's GRPOTrainer calls them (dataset columns arrive as keyword lists).

`None` means "cannot judge" (the gold answer does not parse, the verifier ran out of time). TRL turns it into
NaN, and NaN rewards are skipped, not counted as wrong: the weighted sum over reward functions is a `nansum`
(so the other functions still score that completion), the group baseline is a `nanmean`, and a completion
every function declined gets advantage 0. Logged means (`rewards/<name>/mean`) are over judged completions.

Completions arrive as generated; where the generation prompt pre-filled part of the turn (R1's `<think>\n`,
the dataset's `prefill` column), every function judges `prefill + completion`, the whole trace.

The reward model is a function too (`RewardModelReward`), not a model handed to TRL: TRL would re-render
prompt + completion through the chat template, which for R1-Distill strips the reasoning, so the model
would score other text than it was trained on. Here it scores exactly what reward_model trained on and
reject_sampling scores: core.chat.ChatRenderer's prompt + completion + end of turn.

reasoning-gym rows are verified through core.verifier's registry too (`data_source="reasoning_gym"`); their
"gold" is the generator's JSON entry, which the package's own `score_answer` needs. The answer compared is the
one `extract_answer` takes from a completion (the last \\boxed{} after </think>), exactly as for math rows;
a score of 1.0 counts as correct (some generators give partial credit below that; it is not used).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

from core.verifier import extract_answer, format_ok, register_verifier, verify_batch

RewardFn = Callable[..., list[float | None]]
REWARDS: dict[str, RewardFn] = {}
REASONING_GYM = "reasoning_gym"


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    def decorator(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn

    return decorator


def completion_text(completion: Any) -> str:
    """TRL passes a conversational completion as a list of messages, a plain one as a string."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if m.get("role", "assistant") == "assistant")


def traces(completions: Sequence[Any], prefill: Sequence[str] | None) -> list[str]:
    """Each completion as the whole assistant turn: the row's prefill joined back once."""
    texts = [completion_text(c) for c in completions]
    if prefill is None:
        return texts
    return [p + t for p, t in zip(prefill, texts, strict=True)]


@register_reward("accuracy")
def accuracy(
    completions: Sequence[Any],
    answer: Sequence[str],
    data_source: Sequence[str] | None = None,
    prefill: Sequence[str] | None = None,
    correct: float = 1.0,
    wrong: float = 0.0,
    **columns: Any,
) -> list[float | None]:
    """`correct` / `wrong` by the verifier of each row's data_source (math by default); None when it cannot judge."""
    texts = traces(completions, prefill)
    verdicts = verify_batch(texts, list(answer), list(data_source) if data_source is not None else None)
    return [None if v is None else (correct if v else wrong) for v in verdicts]


@register_reward("format")
def format_reward(
    completions: Sequence[Any],
    prefill: Sequence[str] | None = None,
    require_think: bool = True,
    **columns: Any,
) -> list[float | None]:
    """1 for closed reasoning and exactly one \\boxed{} answer after it, else 0."""
    return [float(format_ok(t, require_think)) for t in traces(completions, prefill)]


@register_reward("overlong")
def overlong_penalty(
    completions: Sequence[Any],
    completion_ids: Sequence[Sequence[int]],
    max_completion_length: int,
    overlong_buffer: int,
    **columns: Any,
) -> list[float | None]:
    """DAPO's soft overlong punishment: 0 up to max - buffer tokens, then falling linearly to -1 at max
    (a completion cut at max_completion_length gets -1)."""
    start = max_completion_length - overlong_buffer
    return [
        0.0 if len(ids) <= start else max(-1.0, (start - len(ids)) / overlong_buffer)
        for ids in completion_ids
    ]


def build_reward_functions(
    rewards: Any, max_completion_length: int, model: Any, use_cpu: bool
) -> tuple[list[Any], list[float]]:
    """The configured reward functions (parameters bound) and their weights, in the order of
    `rewards.weights`; `model` is the policy's ModelConfig (its instruction suffix and template options)."""
    params = {
        "accuracy": {"correct": rewards.correct, "wrong": rewards.wrong},
        "format": {"require_think": rewards.require_think},
        "overlong": {
            "max_completion_length": max_completion_length,
            "overlong_buffer": rewards.overlong_buffer,
        },
    }
    functions, weights = [], []
    for name, weight in rewards.weights.items():
        if name == "reward_model":
            functions.append(
                RewardModelReward(rewards.reward_model_path, model, rewards.reward_model_max_length, use_cpu)
            )
        else:
            functions.append(functools.partial(REWARDS[name], **params[name]))
        weights.append(float(weight))
    return functions, weights


class RewardModelReward:
    """The reward model's score of `question` + the whole trace, rendered as reward_model trained on it."""

    __name__ = "reward_model"

    def __init__(self, path: str, model: Any, max_length: int, use_cpu: bool, batch_tokens: int = 16384):
        import dataclasses

        import torch
        from transformers import AutoModelForSequenceClassification

        from core.models import chat_renderer, load_tokenizer, require_model_dir
        from reward_model.data import SequenceEncoder

        require_model_dir(path, "reward model")
        rm_model = dataclasses.replace(model, path=path, tokenizer_path=None)
        tokenizer = load_tokenizer(rm_model)
        self.encoder = SequenceEncoder(
            chat_renderer(rm_model, tokenizer), max_length, "middle", 1, keep_tail_when_dropped=True
        )
        self.device = "cuda" if torch.cuda.is_available() and not use_cpu else "cpu"
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, local_files_only=True
        ).to(self.device)
        self.model.eval()
        self.model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last non-pad token
        self.pad_id, self.batch_tokens = tokenizer.pad_token_id, batch_tokens

    def __call__(
        self,
        completions: Sequence[Any],
        question: Sequence[str],
        prefill: Sequence[str] | None = None,
        **_: Any,
    ) -> list[float | None]:
        from reward_model.score import score_ids

        ids, _counts = self.encoder.encode(list(question), traces(completions, prefill))
        return score_ids(self.model, ids, self.pad_id, self.batch_tokens, self.device)


# ---------------------------------------------------------------------------------------------- reasoning-gym


@functools.cache
def _score_answer_fn(dataset: str) -> Callable[[str | None, dict[str, Any]], float]:
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(dataset)


@register_verifier(REASONING_GYM)
def verify_reasoning_gym(completion: str, gold: str) -> bool | None:
    """`gold` is the generator's entry as JSON (question, answer, metadata.source_dataset)."""
    entry = json.loads(gold)
    answer = extract_answer(completion)
    if answer is None:
        return False
    return _score_answer_fn(entry["metadata"]["source_dataset"])(answer, entry) >= 1.0
