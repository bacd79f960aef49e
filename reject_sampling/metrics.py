"""Accuracy metrics over N samples per prompt: pass@1, pass@k, maj@k, best-of-N, length and truncation.

Everything works on a scored samples table (columns id, sample_idx, correct, answer_key, n_tokens,
finish_reason and, for best-of-N, rm_score). A verdict of None (the verifier could not judge) counts as
not correct, like a wrong answer, and is reported separately as `unverifiable_rate`.

- pass@k is the unbiased estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k) per prompt, averaged.
  pass@1 is then the mean per-prompt share of correct samples (accuracy at the sampling temperature).
- pass@1_stderr is the standard error of that mean over prompts: the sample standard deviation (ddof=1) of
  the per-prompt shares divided by sqrt(prompts). Prompts are the unit that varies (the n samples of one
  prompt are not independent draws of the benchmark), so this is the error bar of comparing two models on
  the same problems; None with a single prompt, where it is undefined.
- by-group pass@1 (`breakdown_metrics`: MATH-500 by subject and by level) is the same mean and standard error
  over each group's prompts.
- maj@k: the N samples of a prompt are cut into ⌊N/k⌋ disjoint groups of k (in sample order); each group
  votes on the normalised final answer (samples without one do not vote; ties go to the answer seen first)
  and is right when the winning answer's first sample is correct. The prompt's score is the mean over its
  groups, so maj@k uses all N samples instead of only the first k.
- best-of-N: the sample with the highest reward-model score per prompt (ties: lowest sample_idx).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from core.verifier import extract_answer

_SPACE = re.compile(r"\s+")


def answer_key(completion: str) -> str | None:
    """The final answer normalised for voting (whitespace and a trailing period removed), or None."""
    answer = extract_answer(completion)
    if answer is None:
        return None
    key = _SPACE.sub("", answer).rstrip(".")
    return key or None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one prompt with c correct out of n samples."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per prompt, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_correct(keys: list[str | None], correct: list[bool]) -> bool:
    """One vote among samples: is the most common final answer (first seen wins ties) a correct one?"""
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return False
    best = max(counts.values())
    winner = next(k for k in keys if k is not None and counts[k] == best)
    return bool(correct[keys.index(winner)])


def maj_at_k(keys: list[str | None], correct: list[bool], k: int) -> float:
    groups = len(keys) // k
    if groups == 0:
        raise ValueError(f"maj@{k} needs at least {k} samples per prompt, got {len(keys)}")
    return float(
        np.mean(
            [majority_correct(keys[g * k : (g + 1) * k], correct[g * k : (g + 1) * k]) for g in range(groups)]
        )
    )


def per_prompt_accuracy(samples: pd.DataFrame) -> pd.Series:
    """id -> share of its samples judged correct (None verdicts count as not correct)."""
    return (
        samples.assign(_c=samples["correct"].fillna(False).astype(bool))
        .groupby("id", sort=False)["_c"]
        .mean()
    )


def mean_stderr(values: Any) -> float | None:
    """Standard error of the mean: sample std (ddof=1) / sqrt(count); None for fewer than two values."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    return float(values.std(ddof=1) / math.sqrt(len(values)))


def breakdown_metrics(samples: pd.DataFrame, groups: dict[str, str]) -> dict[str, dict[str, Any]]:
    """{group: {pass@1, pass@1_stderr, prompts}} over the prompts of each group (`groups`: id -> group),
    groups in natural order (levels 1, 2, ..., 10 numerically)."""
    accuracy = per_prompt_accuracy(samples)
    unknown = sorted(set(accuracy.index) - set(groups))
    if unknown:
        raise ValueError(f"{len(unknown)} prompt id(s) without a group, e.g. {unknown[:3]}")
    by_group = accuracy.groupby(accuracy.index.map(groups))
    out = {
        str(g): {"pass@1": float(acc.mean()), "pass@1_stderr": mean_stderr(acc), "prompts": len(acc)}
        for g, acc in by_group
    }
    return dict(sorted(out.items(), key=lambda kv: _natural(kv[0])))


def _natural(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def default_ks(n: int) -> list[int]:
    """1, 2, 4, … up to n, plus n itself."""
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) <= n]
    return ks if ks[-1] == n else [*ks, n]


def sample_metrics(
    samples: pd.DataFrame, ks: list[int] | None = None, best_of_n: bool | None = None
) -> dict[str, Any]:
    """All metrics of a scored samples table (one row per sample). Returns plain floats and ints.

    `best_of_n`: report best_of_n_rm, the accuracy of each prompt's highest-scored sample; None = when
    `rm_score` has any value. A prompt without scores (the scorer skips prompts whose samples are all
    wrong) counts as its verdicts say: wrong."""
    if samples.empty:
        raise ValueError("no samples to compute metrics on")
    df = samples.sort_values(["id", "sample_idx"], kind="stable")
    correct = df["correct"].fillna(False).astype(bool)
    per_prompt = df.assign(_c=correct).groupby("id", sort=False)
    n_per_prompt = per_prompt.size()
    n = int(n_per_prompt.min())
    if int(n_per_prompt.max()) != n:
        raise ValueError(f"prompts have different sample counts ({n}..{int(n_per_prompt.max())})")
    ks = [k for k in (ks or default_ks(n)) if k <= n]
    c = per_prompt["_c"].sum()
    out: dict[str, Any] = {
        "prompts": len(n_per_prompt),
        "samples": len(df),
        "samples_per_prompt": n,
        "pass@1": float((c / n).mean()),
        "pass@1_stderr": mean_stderr(c / n),
    }
    for k in ks:
        if k > 1:
            out[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(ci), k) for ci in c]))
    keys = df["answer_key"].tolist() if "answer_key" in df else [answer_key(t) for t in df["completion"]]
    keys = [k if isinstance(k, str) else None for k in keys]  # pandas reads a missing string back as NaN
    df = df.assign(_key=keys, _c=correct)
    for k in ks:
        if k > 1:
            out[f"maj@{k}"] = float(
                np.mean(
                    [
                        maj_at_k(g["_key"].tolist(), g["_c"].tolist(), k)
                        for _, g in df.groupby("id", sort=False)
                    ]
                )
            )
    if best_of_n is None:
        best_of_n = "rm_score" in df and bool(df["rm_score"].notna().any())
    if best_of_n:
        best = (
            df.sort_values(["id", "rm_score", "sample_idx"], ascending=[True, False, True])
            .groupby("id")
            .head(1)
        )
        out["best_of_n_rm"] = float(best["_c"].mean())
    out["always_solved_rate"] = float((c == n).mean())
    out["never_solved_rate"] = float((c == 0).mean())
    out["unverifiable_rate"] = float(df["correct"].isna().mean())
    out["truncation_rate"] = float((df["finish_reason"] == "length").mean())
    lengths = df["n_tokens"].to_numpy()
    out["completion_tokens"] = {
        "mean": float(lengths.mean()),
        "p50": float(np.percentile(lengths, 50)),
        "p90": float(np.percentile(lengths, 90)),
        "max": int(lengths.max()),
    }
    if "format_ok" in df:
        out["format_ok_rate"] = float(df["format_ok"].mean())
    return out


def metrics_markdown(metrics: dict[str, Any], title: str) -> str:
    """A small markdown table of the scalar metrics (for evaluate's metrics.md and the run report), then one
    table per breakdown (a dict of dicts, e.g. by_subject)."""
    rows = [f"# {title}", "", "| metric | value |", "|---|---|"]
    sections = []
    for key, value in metrics.items():
        if key == "preview":  # whole texts: in metrics.json, not in a table
            continue
        if value is None:
            rows.append(f"| {key} | - |")
        elif isinstance(value, bool | str):
            rows.append(f"| {key} | {value} |")
        elif isinstance(value, float):
            rows.append(f"| {key} | {value:.4f} |")
        elif isinstance(value, int):
            rows.append(f"| {key} | {value} |")
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            sections.append(_breakdown_table(key, value))
        elif isinstance(value, dict):
            rows.append(
                f"| {key} | "
                + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
                + " |"
            )
    return "\n".join(rows + [line for section in sections for line in ["", *section]]) + "\n"


def _breakdown_table(key: str, groups: dict[str, dict[str, Any]]) -> list[str]:
    columns = list(dict.fromkeys(c for g in groups.values() for c in g))
    lines = [f"## {key}", "", "| group | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in groups.items():
        cells = [_cell(values.get(c)) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
