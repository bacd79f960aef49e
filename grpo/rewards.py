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

TRL's own reward library (`trl.rewards`, TRL 1.16) is used where it computes the same thing: `overlong` is
TRL's `get_soft_overlong_punishment` behind a thin adapter. `accuracy` and `format` are ours, because TRL's
`accuracy_reward` / `reasoning_accuracy_reward` and `think_format_reward` score some traces differently;
each docstring lists the differences and tests/test_grpo_rewards.py runs ours and TRL's side by side on them.
TRL's other rewards (`get_repetition_penalty_reward`, `get_cosine_scaled_reward`) have no counterpart here.
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
    verifier: str | None = None,
    **columns: Any,
) -> list[float | None]:
    """`correct` / `wrong` by the verifier of each row's data_source (math by default; `verifier`, when given,
    judges the math rows instead: the LLM judge, core/judge.py); None when it cannot judge.

    Not TRL's `accuracy_reward` nor `reasoning_accuracy_reward` (math-verify on a `solution` column): the
    answer judged is the one core.verifier.extract_answer reads, as reject_sampling and the benchmarks judge
    it, so GRPO optimises the verdict the pipeline reports. Where they differ (tests/test_grpo_rewards.py):
    - a box inside the reasoning: `accuracy_reward` gives math-verify the whole completion, whose pick (the
      rightmost, widest boxed match) can take in several boxes: `<think>maybe \\boxed{18}</think> \\boxed{19}`
      parses as the set {18, 19}, wrong for gold 19 (across lines it parses as 19). Ours reads only the
      text after `</think>`.
    - several boxes after `</think>`: ours judges the last (the final answer); TRL's read
      `\\boxed{18} no, \\boxed{19}` as {18, 19}, wrong whichever of the two is the gold.
    - no box: ours falls back to the last number after `</think>` ("The answer is 19."); TRL's score 0.
    - unclosed reasoning (`<think>... \\boxed{19}`, a truncated trace): wrong here and in
      `reasoning_accuracy_reward`; `accuracy_reward` credits the box inside the unfinished reasoning.
    - no think tags at all: judged on the whole text here and in `accuracy_reward`;
      `reasoning_accuracy_reward` scores 0 ("incomplete reasoning").
    - a comparison that runs out of time is None here (skipped; core.verifier's limit, in any thread);
      TRL's count it wrong (math-verify's `verify` returns False on its SIGALRM time-out) and set no
      limit at all off the main thread.
    - rows carry a `data_source` (reasoning-gym rows use the package's scorer), `correct` / `wrong` scale
      the verdict (RLinf's +5 / -5), and the R1 prefill is joined back. TRL's read `completion[0]["content"]`:
      conversational completions only, while the stage's are plain strings.
    """
    texts = traces(completions, prefill)
    sources = list(data_source) if data_source is not None else ["math"] * len(texts)
    if verifier is not None:
        sources = [verifier if s == "math" else s for s in sources]
    verdicts = verify_batch(texts, list(answer), sources)
    return [None if v is None else (correct if v else wrong) for v in verdicts]


@register_reward("format")
def format_reward(
    completions: Sequence[Any],
    prefill: Sequence[str] | None = None,
    require_think: bool = True,
    **columns: Any,
) -> list[float | None]:
    """1 for closed reasoning and exactly one \\boxed{} answer after it, else 0 (core.verifier.format_ok on
    the whole trace; `require_think=False` also accepts a trace without any think tags).

    Not TRL's `think_format_reward`, which is 1 when the completion matches
    `^<think>(?!.*<think>)(.*?)</think>.*$` and checks no answer. Ours is about the answer the accuracy
    reward reads: it splits the trace as extract_answer does (first `<think>`, last `</think>`) and wants
    exactly one box in what follows. Where they differ (tests/test_grpo_rewards.py):
    - the answer: TRL's is 1 with no box, two boxes, the box only inside the reasoning, or a `</think>`
      after the box (the answer region after the last `</think>` is then empty); ours 0.
    - the opening tag: TRL's wants `<think>` at character 0 of what it is given, so it scores 0 on an R1
      completion as generated (its `<think>\n` is in the prompt; hence the prefill joined back here) and
      on leading whitespace. Ours accepts those, and a trace that only closes (`...</think> \\boxed{19}`).
    - repeated tags: TRL's is 0 when a second `<think>` appears anywhere (nested, two blocks, a stray one
      after the answer); ours does not look at them, as extract_answer does not.
    - plain-string completions (what the stage hands over) are a TypeError for TRL's.
    """
    return [float(format_ok(t, require_think)) for t in traces(completions, prefill)]


@register_reward("overlong")
def overlong_penalty(
    completions: Sequence[Any],
    completion_ids: Sequence[Sequence[int]],
    max_completion_length: int,
    overlong_buffer: int,
    **columns: Any,
) -> list[float | None]:
    """DAPO's soft overlong punishment (Eq. 13): 0 up to max - buffer tokens, then falling linearly to -1 at
    max (a completion cut at max_completion_length gets -1).

    TRL's `get_soft_overlong_punishment(max_completion_len, soft_punish_cache)` under our config's names. It
    returns the same floats as the formula it replaced (`0 if n <= start else max(-1, (start - n) / buffer)`):
    tests/test_grpo_rewards.py checks every length 0 .. max + 4 for every buffer 1 .. max (the config's
    bounds) at max 1 .. 40, and at max 1024 and 27648 for buffers 1, 16, 256, 4096 and max. Lengths are the generated tokens TRL
    hands over (`completion_ids`), so the prefill, part of the prompt, is not counted: max_completion_length
    bounds what is generated. The callable is built per call (it only holds the two numbers); trl is
    imported here, not at module load, so grpo.data (which imports this module) stays light."""
    from trl.rewards import get_soft_overlong_punishment

    return get_soft_overlong_punishment(max_completion_length, overlong_buffer)(completion_ids=completion_ids)


def build_reward_functions(
    rewards: Any, max_completion_length: int, model: Any, use_cpu: bool
) -> tuple[list[Any], list[float]]:
    """The configured reward functions (parameters bound) and their weights, in the order of
    `rewards.weights`; `model` is the policy's ModelConfig (its instruction suffix and template options)."""
    params = {
        "accuracy": {"correct": rewards.correct, "wrong": rewards.wrong, "verifier": rewards.verifier},
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
