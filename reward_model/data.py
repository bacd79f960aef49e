"""Reward-model inputs: preference pairs → token ids, with truncation that never cuts the answer away.

An R1 trace ends with its final answer, so a pair longer than `max_length` keeps the prompt and the END
of the completion and loses reasoning from the middle (`truncation=middle`); a prompt so long that fewer
than `min_completion_tokens` of the completion would remain drops the pair instead. Both are counted.
Sequences are rendered by core.chat.ChatRenderer exactly as the policy generated them (native generation
prompt + the completion as generated + end of turn, R1's `<think>\n` prefill kept once, its reasoning
kept), so training, rejection-sampling scores and GRPO's reward-model reward all see the same text.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.artifacts import (
    fingerprint_dir,
    read_parquet_rows,
    read_parquet_schema,
    require_text_columns,
    resolve_input,
)
from core.chat import ChatRenderer
from core.lifecycle import StageRun
from core.models import require_model_dir
from reward_model.config import RMStageConfig

STAGE = "reward_model"
PAIR_COLUMNS = ("prompt", "chosen", "rejected")


class PairsError(ValueError):
    """The preference pairs are missing, malformed or empty."""


@dataclass
class EncodedPairs:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)


def resolve_pairs(path: str | Path) -> tuple[Path, str]:
    """(parquet file, identity) for a pairs file or a finished stage directory with a `pairs` output."""
    file, identity, _ = resolve_input(path, "pairs", "pairs source", PairsError)
    return file, identity


def stage_run(cfg: RMStageConfig, model_dir: Path, sources: list[tuple[Path, str]]) -> StageRun:
    """The run's identity: the config, the base model directory and every pairs source."""
    inputs = {
        "model": fingerprint_dir(model_dir),
        "pairs": "+".join(identity for _, identity in sources),
    }
    return StageRun(STAGE, cfg, Path(cfg.output_dir), inputs, round=cfg.round)


def identify(cfg: RMStageConfig) -> StageRun:
    """What reward_model.stage.run would be, from its inputs alone (the pipeline's skip check)."""
    sources = [resolve_pairs(p) for p in [cfg.pairs, *cfg.extra_pairs]]
    return stage_run(cfg, require_model_dir(cfg.model.path, "model"), sources)


def read_pairs(path: Path) -> list[dict[str, Any]]:
    schema = read_parquet_schema(path, PairsError)
    names = schema.names
    missing = [c for c in PAIR_COLUMNS if c not in names]
    if missing:
        raise PairsError(
            f"{path}: missing column(s) {missing}; pairs need {list(PAIR_COLUMNS)}; found {names}"
        )
    require_text_columns(path, schema, PAIR_COLUMNS, PairsError)
    rows = read_parquet_rows(path, [c for c in ("id", *PAIR_COLUMNS) if c in names], PairsError)
    for i, row in enumerate(rows):
        for c in PAIR_COLUMNS:
            if not isinstance(row[c], str) or not row[c].strip():
                raise PairsError(f"{path}: row {i} has an empty or null '{c}'")
        row.setdefault("id", str(i))
    return rows


def is_eval(pair_id: str, fraction: float, seed: int) -> bool:
    digest = hashlib.blake2b(f"{seed}\x1f{pair_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


class SequenceEncoder:
    """(prompt, trace) → ids under the renderer, cut in the middle when too long."""

    def __init__(
        self,
        renderer: ChatRenderer,
        max_length: int,
        truncation: str,
        min_completion: int,
        keep_tail_when_dropped: bool = False,
    ):
        self.renderer, self.max_length = renderer, max_length
        self.truncation, self.min_completion = truncation, min_completion
        # Scoring must give every row a score: where training would drop a sequence, keep its last tokens.
        self.keep_tail_when_dropped = keep_tail_when_dropped

    def encode(
        self, prompts: list[str], completions: list[str]
    ) -> tuple[list[list[int] | None], Counter[str]]:
        """Ids per row (None: dropped), and counts of what was truncated or dropped and why."""
        out: list[list[int] | None] = []
        counts: Counter[str] = Counter()
        for e in self.renderer.encode(list(zip(prompts, completions, strict=True))):
            ids = e.input_ids
            if len(ids) <= self.max_length:
                out.append(ids)
                continue
            keep = self.max_length - e.prompt_length
            if self.truncation == "drop" or keep < self.min_completion:
                if self.keep_tail_when_dropped:
                    counts["kept_tail"] += 1
                    out.append(ids[-self.max_length :])
                    continue
                counts["dropped_too_long" if self.truncation == "drop" else "dropped_prompt_too_long"] += 1
                out.append(None)
                continue
            counts["truncated_middle"] += 1
            out.append(ids[: self.max_length - keep] + ids[-keep:])
        return out, counts


def encode_pairs(
    rows: list[dict[str, Any]], encoder: SequenceEncoder, eval_fraction: float, seed: int
) -> EncodedPairs:
    prompts = [r["prompt"] for r in rows]
    chosen, c_counts = encoder.encode(prompts, [r["chosen"] for r in rows])
    rejected, r_counts = encoder.encode(prompts, [r["rejected"] for r in rows])
    train, evaluation, dropped = [], [], 0
    for row, c, r in zip(rows, chosen, rejected, strict=True):
        if c is None or r is None:
            dropped += 1
            continue
        example = {"chosen_ids": c, "rejected_ids": r}
        (evaluation if is_eval(row["id"], eval_fraction, seed) else train).append(example)
    if not train or not evaluation:
        raise PairsError(
            f"{len(rows)} pairs gave {len(train)} train and {len(evaluation)} held-out pairs after {dropped} were "
            f"dropped as too long; need both. Add pairs, change train.eval_fraction or raise rm.max_length"
        )
    stats = {
        "pairs_read": len(rows),
        "pairs_train": len(train),
        "pairs_eval": len(evaluation),
        "pairs_dropped": dropped,
        "sequences": {"chosen": dict(c_counts), "rejected": dict(r_counts)},
    }
    return EncodedPairs(train, evaluation, stats)
