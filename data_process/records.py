"""Per-problem decisions: is the row well formed, which traces are correct, which to train on, which pair.

The SFT output of a problem is always one of its DeepSeek-R1 `generations`: verified correct under the
configured policy AND complete (reasoning flagged complete, finish reason "stop", `</think>` present).
The short NuminaMath reference `solution` is never a candidate: it has no reasoning to imitate.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from core.chat import split_think
from core.verifier import UNJUDGEABLE_GOLDS

SFT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("output", pa.string()),
        ("answer", pa.string()),
        ("source", pa.string()),
        ("n_tokens", pa.int64()),
    ]
)
PAIRS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("answer", pa.string()),
        ("source", pa.string()),
    ]
)
PROMPTS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("answer", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
    ]
)

_PER_TRACE_LISTS = ("is_reasoning_complete", "correctness_math_verify", "finish_reasons")


def malformed_reason(row: dict[str, Any]) -> str | None:
    """Why a row cannot be used at all (a drop reason for the manifest), or None if it is well formed."""
    problem, answer, generations = row.get("problem"), row.get("answer"), row.get("generations")
    if not problem or not str(problem).strip():
        return "empty_problem"
    if answer is None or not str(answer).strip():
        return "missing_answer"
    if str(answer).strip().lower() in UNJUDGEABLE_GOLDS:
        return "unverifiable_answer"
    if not generations:
        return "no_generations"
    for name in _PER_TRACE_LISTS:
        values = row.get(name)
        if values is None:
            return f"null_{name}"
        if len(values) != len(generations):
            return "list_length_mismatch"
    llama = row.get("correctness_llama")
    if llama is not None and len(llama) != len(generations):
        return "list_length_mismatch"
    if any(g is None for g in generations):
        return "null_generation"
    return None


def is_complete(row: dict[str, Any], i: int) -> bool:
    return (
        bool(row["is_reasoning_complete"][i])
        and row["finish_reasons"][i] == "stop"
        and split_think(row["generations"][i]).closed
        and "</think>" in row["generations"][i]
    )


def correctness(row: dict[str, Any], policy: str, verdicts: list[bool | None] | None = None) -> list[bool]:
    """Per-trace correctness under `policy` (see TraceConfig.correctness)."""
    n = len(row["generations"])
    mv = [v is True for v in row["correctness_math_verify"]]
    llama = [v is True for v in (row.get("correctness_llama") or [None] * n)]
    if policy == "math_verify":
        return mv
    if policy == "llama":
        return llama
    if policy == "either":
        return [a or b for a, b in zip(mv, llama, strict=True)]
    if policy == "both":
        return [a and b for a, b in zip(mv, llama, strict=True)]
    if policy == "verifier":
        if verdicts is None:
            raise ValueError("policy 'verifier' needs verdicts")
        return [v is True for v in verdicts]
    raise ValueError(f"unknown correctness policy '{policy}'")


def wrong_flags(row: dict[str, Any], verdicts: list[bool | None] | None = None) -> list[bool]:
    """Traces no judge calls correct. The rejected side of a pair must come from these: a trace that any
    judge accepts is never used as a negative, whatever policy picks the positives."""
    n = len(row["generations"])
    judges = [row["correctness_math_verify"], row.get("correctness_llama") or [None] * n]
    if verdicts is not None:
        judges.append(verdicts)
    return [all(j[i] is not True for j in judges) for i in range(n)]


def select_traces(generations: list[str], candidates: list[int], selection: str, k: int) -> list[int]:
    """Indices of the traces to train on. 'shortest' compares characters, a free proxy for tokens."""
    if not candidates:
        return []
    if selection == "first":
        return candidates[:1]
    if selection == "shortest":
        return [min(candidates, key=lambda i: len(generations[i]))]
    return candidates[:k]


def select_pairs(
    generations: list[str], correct: list[int], wrong: list[int], max_pairs: int
) -> list[tuple[int, int]]:
    """(chosen, rejected) index pairs: shortest correct traces, each against the remaining wrong trace
    closest to it in length, so the reward model cannot learn "shorter is better" from our pairing."""
    pairs, remaining = [], list(wrong)
    for c in sorted(correct, key=lambda i: len(generations[i]))[:max_pairs]:
        if not remaining:
            break
        r = min(remaining, key=lambda i: abs(len(generations[i]) - len(generations[c])))
        remaining.remove(r)
        pairs.append((c, r))
    return pairs
