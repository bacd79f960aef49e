"""Reward functions of the GRPO stage: plain functions `(completions, **columns) -> list[float | None]` in a
registry keyed by name, as TRL's GRPOTrainer calls them (dataset columns arrive as keyword lists).

`None` means "cannot judge" (the gold answer does not parse, the verifier ran out of time). TRL turns it into
NaN, and NaN rewards are skipped, not counted as wrong: the weighted sum over reward functions is a `nansum`
(so the other functions still score that completion), the group baseline is a `nanmean`, and a completion
every function declined gets advantage 0. Logged means (`rewards/<name>/mean`) are over judged completions.

The reward model is not a function here: TRL scores with a sequence-classification model itself when it is
given one in place of a function (`load_reward_model`).

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


@register_reward("accuracy")
def accuracy(
    completions: Sequence[Any],
    answer: Sequence[str],
    data_source: Sequence[str] | None = None,
    correct: float = 1.0,
    wrong: float = 0.0,
    **columns: Any,
) -> list[float | None]:
    """`correct` / `wrong` by the verifier of each row's data_source (math by default); None when it cannot judge."""
    texts = [completion_text(c) for c in completions]
    verdicts = verify_batch(texts, list(answer), list(data_source) if data_source is not None else None)
    return [None if v is None else (correct if v else wrong) for v in verdicts]


@register_reward("format")
def format_reward(
    completions: Sequence[Any], require_think: bool = True, **columns: Any
) -> list[float | None]:
    """1 for closed reasoning and exactly one \\boxed{} answer after it, else 0."""
    return [float(format_ok(completion_text(c), require_think)) for c in completions]


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


def build_reward_functions(rewards: Any, max_completion_length: int) -> tuple[list[Any], list[float]]:
    """The configured reward functions (parameters bound) and their weights, in the order of
    `rewards.weights`. `reward_model` becomes the loaded sequence-classification model, which TRL scores
    itself (the text as the chat template renders prompt + completion, the score of its last token)."""
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
            functions.append(load_reward_model(rewards.reward_model_path))
        else:
            functions.append(functools.partial(REWARDS[name], **params[name]))
        weights.append(float(weight))
    return functions, weights


def load_reward_model(path: str) -> Any:
    from transformers import AutoModelForSequenceClassification

    from core.models import require_model_dir

    require_model_dir(path, "reward model")
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, local_files_only=True)


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
