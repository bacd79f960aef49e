"""Per-problem decisions: is the row well formed, which traces are correct, which to train on, which pair.

The SFT output of a problem is always one of its DeepSeek-R1 `generations`: verified correct under the
configured policy AND complete (finish reason "stop" where known, else reasoning flagged complete; and
`</think>` present). The short NuminaMath reference `solution` is never a candidate: it has no reasoning
to imitate.

Real OpenR1 rows do not always flag every trace: row 0 of config `default` has `finish_reasons` and
`correctness_llama` null. A missing flag is missing information about that trace, never a reason to drop
the row: a trace without a correctness flag is neither a correct candidate nor a wrong one (unless the
`verifier` policy judges it), a trace without any completeness flag is not complete. Only rows no trace
could come from are dropped (`malformed_reason`). The gaps are counted for the manifest by
`missing_row_flags` and `missing_trace_flags`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa

from core.chat import split_think
from core.verifier import UNJUDGEABLE_GOLDS
from data_process.openr1 import UNDECODABLE

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

# Per-trace columns as they come: each may be null, or shorter than `generations` (then it flags the
# traces it covers, the rest are unknown); only a list LONGER than `generations` makes the row malformed,
# since then no one can say which flag belongs to which trace.
PER_TRACE_COLUMNS = (
    "is_reasoning_complete",
    "finish_reasons",
    "correctness_math_verify",
    "correctness_llama",
)
CORRECTNESS_COLUMNS = ("correctness_math_verify", "correctness_llama")


def malformed_reason(row: dict[str, Any]) -> str | None:
    """Why a row cannot be used at all (a drop reason for the manifest), or None if it is well formed.

    Only what no trace can do without is a drop reason: a problem, a gold answer that can be judged, at
    least one generation, no null generation, text that is UTF-8 (`invalid_utf8`: openr1.iter_batches could
    not decode the row), and per-trace lists that can be lined up with the
    generations. A null or short per-trace list is missing information about some traces (real row 0 has
    `finish_reasons` and `correctness_llama` null): the row is kept and the gap counted by
    `missing_row_flags` / `missing_trace_flags`.
    """
    if UNDECODABLE in row:
        return "invalid_utf8"
    problem, answer, generations = row.get("problem"), row.get("answer"), row.get("generations")
    if not problem or not str(problem).strip():
        return "empty_problem"
    if answer is None or not str(answer).strip():
        return "missing_answer"
    if str(answer).strip().lower() in UNJUDGEABLE_GOLDS:
        return "unverifiable_answer"
    if not generations:
        return "no_generations"
    if any(g is None for g in generations):
        return "null_generation"
    for name in PER_TRACE_COLUMNS:
        if len(row.get(name) or ()) > len(generations):
            return f"{name}_longer_than_generations"
    return None


def flag(row: dict[str, Any], name: str, i: int) -> Any:
    """Trace `i`'s value in per-trace column `name`; None where the column is null, too short or null
    there: the dataset says nothing about that trace."""
    values = row.get(name)
    return values[i] if values is not None and i < len(values) else None


def missing_row_flags(row: dict[str, Any]) -> list[str]:
    """Counter keys for the gaps of a well-formed row: `null_<column>` (the whole list null or absent),
    `short_<column>` (fewer entries than generations), `null_element_<column>` (a null inside the list)."""
    n, notes = len(row["generations"]), []
    for name in PER_TRACE_COLUMNS:
        values = row.get(name)
        if values is None:
            notes.append(f"null_{name}")
            continue
        if len(values) < n:
            notes.append(f"short_{name}")
        if any(v is None for v in values):
            notes.append(f"null_element_{name}")
    return notes


def missing_trace_flags(row: dict[str, Any]) -> Counter[str]:
    """Per-trace consequences of the gaps: traces no correctness flag judges (`no_correctness_flag`, not
    verified unless the `verifier` policy re-checks them), traces with neither completeness flag
    (`no_completeness_flag`, never complete), traces whose completeness comes from
    `is_reasoning_complete` alone (`completeness_from_is_reasoning_complete`)."""
    notes: Counter[str] = Counter()
    for i in range(len(row["generations"])):
        if all(flag(row, name, i) is None for name in CORRECTNESS_COLUMNS):
            notes["no_correctness_flag"] += 1
        finish, flagged = flag(row, "finish_reasons", i), flag(row, "is_reasoning_complete", i)
        if finish is None and flagged is None:
            notes["no_completeness_flag"] += 1
        elif finish is None:
            notes["completeness_from_is_reasoning_complete"] += 1
    return notes


def generation_finished(row: dict[str, Any], i: int) -> bool:
    """Trace `i` ran to its end: its finish reason is "stop" where known, else `is_reasoning_complete`
    says so, and it closes `</think>` (always checked: the SFT target must show the whole reasoning).

    Where both flags are known both must agree: a trace the dataset flags incomplete is never trained
    on, whichever flag says so. A trace with neither flag is not complete: nothing vouches for it.
    """
    finish, flagged = flag(row, "finish_reasons", i), flag(row, "is_reasoning_complete", i)
    if finish is None and flagged is None:
        return False
    if finish is not None and finish != "stop":
        return False
    if flagged is not None and not flagged:
        return False
    generation = row["generations"][i]
    return split_think(generation).closed and "</think>" in generation


def correctness(row: dict[str, Any], policy: str, verdicts: list[bool | None] | None = None) -> list[bool]:
    """Per trace: verified correct under `policy` (see TraceConfig.correctness). A trace the policy's
    flags say nothing about is not verified: `both` needs both flags True, `either` at least one."""
    n = len(row["generations"])
    mv = [flag(row, "correctness_math_verify", i) is True for i in range(n)]
    llama = [flag(row, "correctness_llama", i) is True for i in range(n)]
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
    """Traces known to be wrong: at least one judge (a correctness flag, or the verifier's verdict when
    there is one) says False and none says True. The rejected side of a pair must come from these: a
    trace any judge accepts is never a negative, and neither is a trace no judge looked at, since a
    pair whose "rejected" side is in fact correct teaches the reward model the opposite of the truth."""
    n = len(row["generations"])
    judges = [[flag(row, name, i) for i in range(n)] for name in CORRECTNESS_COLUMNS]
    if verdicts is not None:
        judges.append(list(verdicts))
    return [any(j[i] is False for j in judges) and not any(j[i] is True for j in judges) for i in range(n)]


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
