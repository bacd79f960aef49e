"""Selection: which scored samples become the next round's SFT data, and which make reward-model pairs.

Input is the scored samples table (one row per sample: id, prompt, answer, sample_idx, completion,
finish_reason, n_tokens, correct, format_ok, rm_score). Policies (`selection.policy`):

- best_of_n_rm (default): among the verified-correct samples of a prompt, the one the reward model scores
  highest. The verifier guards correctness; the reward model picks the best-written correct trace.
- verified: up to k distinct verified-correct samples per prompt, in sample order (RAFT / ReST-EM).
- rm_threshold: up to k samples with rm_score >= threshold, highest first; needs no gold answer.

Every policy first drops samples cut off at max tokens (`drop_truncated`) and, with `require_format`,
samples without closed thinking and exactly one boxed answer. `drop_always_solved` skips prompts whose
every sample was correct: the model already knows them, training on them mostly sharpens what it has.

Pairs (`pairs`): per prompt with at least one correct and one wrong sample, the best correct one (highest
rm_score, else the first) against the worst wrong one (lowest rm_score, else the first). A verdict of None
(unverifiable) is neither correct nor wrong and never enters a pair.
"""

from __future__ import annotations

import pandas as pd

from reject_sampling.config import SelectionConfig

SELECTED_COLUMNS = [
    "id",
    "instruction",
    "input",
    "output",
    "answer",
    "source",
    "n_tokens",
    "sample_idx",
    "rm_score",
]
PAIR_COLUMNS = ["id", "prompt", "chosen", "rejected"]


def _eligible(samples: pd.DataFrame, cfg: SelectionConfig) -> pd.Series:
    keep = pd.Series(True, index=samples.index)
    if cfg.drop_truncated:
        keep &= samples["finish_reason"] != "length"
    if cfg.require_format:
        keep &= samples["format_ok"].astype(bool)
    if cfg.drop_always_solved:
        solved = samples.groupby("id")["correct"].transform(
            lambda c: bool(c.fillna(False).astype(bool).all())
        )
        keep &= ~solved.astype(bool)
    return keep


def select(samples: pd.DataFrame, cfg: SelectionConfig) -> pd.DataFrame:
    """The kept samples (a subset of rows of `samples`, same columns), ordered by prompt then rank."""
    df = samples[_eligible(samples, cfg)]
    is_correct = df["correct"].eq(True)
    if cfg.policy == "best_of_n_rm":
        df = df[is_correct].sort_values(["id", "rm_score", "sample_idx"], ascending=[True, False, True])
        return df.groupby("id", sort=False).head(1)
    if cfg.policy == "verified":
        df = df[is_correct].sort_values(["id", "sample_idx"])
        df = df.drop_duplicates(["id", "completion"])
        return df.groupby("id", sort=False).head(cfg.k)
    df = df[df["rm_score"] >= cfg.threshold].sort_values(
        ["id", "rm_score", "sample_idx"], ascending=[True, False, True]
    )
    return df.groupby("id", sort=False).head(cfg.k)


def to_records(kept: pd.DataFrame, n_tokens: list[int], sources: list[str]) -> pd.DataFrame:
    """Kept samples as CoT Alpaca records (the columns data_process writes, plus where each came from)."""
    return pd.DataFrame(
        {
            "id": kept["id"].astype(str).to_numpy(),
            "instruction": kept["prompt"].to_numpy(),
            "input": "",
            "output": kept["completion"].to_numpy(),
            "answer": kept["answer"].to_numpy(),
            "source": sources,
            "n_tokens": pd.array(n_tokens, dtype="int64"),
            "sample_idx": kept["sample_idx"].astype("int32").to_numpy(),
            "rm_score": kept["rm_score"].astype("float64").to_numpy() if "rm_score" in kept else float("nan"),
        },
        columns=SELECTED_COLUMNS,
    )


def make_pairs(samples: pd.DataFrame) -> pd.DataFrame:
    """Best correct vs worst wrong sample per prompt (see the module docstring)."""
    # Scores may be missing on prompts with no correct sample (scoring.needs_reward_score): no pair forms there.
    has_rm = "rm_score" in samples and bool(samples["rm_score"].notna().any())
    order = ["id", "rm_score", "sample_idx"] if has_rm else ["id", "sample_idx"]
    correct = samples[samples["correct"].eq(True)]
    wrong = samples[samples["correct"].eq(False)]
    best = correct.sort_values(order, ascending=[True, False, True] if has_rm else True).groupby("id").head(1)
    worst = wrong.sort_values(order, ascending=True).groupby("id").head(1)
    pairs = best.merge(worst[["id", "completion"]], on="id", suffixes=("_chosen", "_rejected"))
    return pd.DataFrame(
        {
            "id": pairs["id"].astype(str),
            "prompt": pairs["prompt"],
            "chosen": pairs["completion_chosen"],
            "rejected": pairs["completion_rejected"],
        },
        columns=PAIR_COLUMNS,
    ).reset_index(drop=True)


def acceptance(samples: pd.DataFrame, kept: pd.DataFrame) -> dict[str, float | int]:
    prompts = samples["id"].nunique()
    return {
        "selected_records": len(kept),
        "selected_prompts": int(kept["id"].nunique()),
        "acceptance_rate": float(kept["id"].nunique() / prompts) if prompts else 0.0,
        "sample_acceptance_rate": float(len(kept) / len(samples)) if len(samples) else 0.0,
    }
