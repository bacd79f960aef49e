"""SFT inputs: resolve and validate the data sources, mix them by weight, account for over-long examples.

Everything here runs before a model is loaded, so bad input costs seconds, not a model load.
Length accounting is exact: tokens are counted as the model's chat template renders prompt + answer,
the same sequence the trainer sees. Over-long examples are dropped or truncated as configured, and
counted; nothing is cut silently.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from core.artifacts import resolve_input
from core.chat import ChatTokenCounter, record_to_messages
from train_sft.config import DataSource

log = logging.getLogger(__name__)
REQUIRED_COLUMNS = ("instruction", "output")
# Outputs of upstream stages that hold SFT records, in order of preference.
SFT_OUTPUT_NAMES = ("selected", "sft")


class DataError(ValueError):
    """The SFT input is missing, malformed or empty."""


@dataclass
class ResolvedSource:
    file: Path
    weight: float
    identity: str  # upstream manifest content hash, or the file's sha256


@dataclass
class PreparedData:
    examples: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)


def resolve_source(source: DataSource) -> ResolvedSource:
    file, identity, _ = resolve_input(source.path, SFT_OUTPUT_NAMES, "data source", DataError)
    return ResolvedSource(file, source.weight, identity)


def read_records(source: ResolvedSource) -> list[dict[str, Any]]:
    schema = pq.read_schema(source.file)
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise DataError(
            f"{source.file}: missing column(s) {missing}; SFT records need {list(REQUIRED_COLUMNS)} "
            f"(+ optional input, id); found {schema.names}"
        )
    columns = [c for c in ("id", "instruction", "input", "output") if c in schema.names]
    rows = pq.read_table(source.file, columns=columns).to_pylist()
    for i, row in enumerate(rows):
        for c in REQUIRED_COLUMNS:
            if not isinstance(row[c], str) or not row[c].strip():
                raise DataError(f"{source.file}: row {i} has an empty or null '{c}'")
    return rows


def mix(sources: list[tuple[ResolvedSource, list[dict[str, Any]]]], seed: int) -> list[dict[str, Any]]:
    """Concatenate sources, each repeated floor(w) times plus a seeded (w - floor(w)) sample of it."""
    rng = random.Random(seed)
    mixed: list[dict[str, Any]] = []
    for source, rows in sources:
        whole, fraction = divmod(source.weight, 1.0)
        mixed.extend(rows * int(whole))
        if fraction > 0:
            mixed.extend(rng.sample(rows, round(fraction * len(rows))))
    return mixed


def prepare(
    sources: list[ResolvedSource],
    tokenizer: Any,
    suffix: str,
    max_length: int,
    overlength: str,
    seed: int,
) -> PreparedData:
    """Records → chat examples, with per-source counts and over-length handling."""
    loaded = [(s, read_records(s)) for s in sources]
    rows = mix(loaded, seed)
    counter = ChatTokenCounter(tokenizer, suffix)
    lengths = counter.count([(r["instruction"], r["output"]) for r in rows]) if rows else []
    examples, dropped, truncated, tokens = [], 0, 0, 0
    for row, n in zip(rows, lengths, strict=True):
        if n > max_length:
            if overlength == "drop":
                dropped += 1
                continue
            truncated += 1
        tokens += min(n, max_length)
        record = {"instruction": row["instruction"], "input": row.get("input") or "", "output": row["output"]}
        examples.append({"messages": record_to_messages(record, suffix)})
    stats = {
        "records_read": {str(s.file): len(r) for s, r in loaded},
        "examples_after_mixing": len(rows),
        "dropped_overlength": dropped,
        "truncated_overlength": truncated,
        "examples": len(examples),
        "tokens": tokens,
        "max_example_tokens": max(lengths, default=0),
    }
    if not examples:
        raise DataError(
            f"no SFT examples left: {len(rows)} read, {dropped} longer than max_length={max_length} dropped. "
            f"Raise sft.max_length, set sft.overlength=truncate, or check the inputs {[str(s.file) for s in sources]}"
        )
    log.info(
        "SFT data: %d examples (%d dropped, %d truncated over %d tokens), %d tokens",
        len(examples),
        dropped,
        truncated,
        max_length,
        tokens,
    )
    return PreparedData(examples, stats)
