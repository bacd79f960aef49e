"""SFT inputs: resolve and validate the data sources, mix them by weight, account for over-long examples.

Everything here runs before a model is loaded, so bad input costs seconds, not a model load.
Examples are token ids built by core.chat.ChatRenderer: the native generation prompt, the whole trace (a
prefill such as R1's `<think>\n` kept once) and the end-of-turn token, with the loss on the trace and the
end of turn only. Length accounting is exact: these are the ids the trainer sees. Over-long examples are
dropped or truncated as configured, and counted; nothing is cut silently.
"""

from __future__ import annotations

import logging
import random
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
from train_sft.config import DataSource, SFTStageConfig

log = logging.getLogger(__name__)
STAGE = "train_sft"
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


def stage_run(cfg: SFTStageConfig, model_dir: Path, sources: list[ResolvedSource]) -> StageRun:
    """The run's identity: the config, the base model directory and every data source."""
    inputs = {
        "model": fingerprint_dir(model_dir),
        **{f"data_{i}": s.identity for i, s in enumerate(sources)},
    }
    return StageRun(STAGE, cfg, Path(cfg.output_dir), inputs, round=cfg.round)


def identify(cfg: SFTStageConfig) -> StageRun:
    """What train_sft.stage.run would be, from its inputs alone (the pipeline's skip check)."""
    return stage_run(cfg, require_model_dir(cfg.model.path, "model"), [resolve_source(s) for s in cfg.data])


def read_records(source: ResolvedSource) -> list[dict[str, Any]]:
    schema = read_parquet_schema(source.file, DataError)
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise DataError(
            f"{source.file}: missing column(s) {missing}; SFT records need {list(REQUIRED_COLUMNS)} "
            f"(+ optional input, id); found {schema.names}"
        )
    require_text_columns(source.file, schema, (*REQUIRED_COLUMNS, "input"), DataError)
    columns = [c for c in ("id", "instruction", "input", "output") if c in schema.names]
    rows = read_parquet_rows(source.file, columns, DataError)
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
    renderer: ChatRenderer,
    max_length: int,
    overlength: str,
    seed: int,
) -> PreparedData:
    """Records → token-id examples (`input_ids`, `completion_mask`), with per-source counts and over-length
    handling. A source with no rows (a round whose sampling kept nothing) is allowed while another has rows."""
    loaded = [(s, read_records(s)) for s in sources]
    for source, rows in loaded:
        if not rows:
            log.warning(
                "SFT data: %s holds no records (a round that selected nothing); training on the rest",
                source.file,
            )
    rows = mix(loaded, seed)
    encoded = renderer.encode([(user_text(r), r["output"]) for r in rows])
    examples, dropped, truncated, tokens = [], 0, 0, 0
    for e in encoded:
        n = len(e.input_ids)
        if n > max_length:
            if overlength == "drop":
                dropped += 1
                continue
            truncated += 1
        tokens += min(n, max_length)
        examples.append({"input_ids": e.input_ids, "completion_mask": e.completion_mask})
    stats = {
        "records_read": {str(s.file): len(r) for s, r in loaded},
        "examples_after_mixing": len(rows),
        "dropped_overlength": dropped,
        "truncated_overlength": truncated,
        "examples": len(examples),
        "tokens": tokens,
        "max_example_tokens": max((len(e.input_ids) for e in encoded), default=0),
    }
    if not examples:
        raise DataError(
            f"no SFT examples left: {len(rows)} read, {dropped} longer than max_length={max_length} dropped. "
            f"Raise sft.max_length, set train.overlength=truncate, or check the inputs {[str(s.file) for s in sources]}"
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


def user_text(record: dict[str, Any]) -> str:
    """The problem with the record's optional extra input (the renderer adds the instruction suffix)."""
    extra = (record.get("input") or "").strip()
    return f"{record['instruction'].strip()}\n\n{extra}" if extra else record["instruction"]


def preview(example: dict[str, Any], tokenizer: Any) -> dict[str, str]:
    """The first training example as the model sees it, and the part of it the loss covers."""
    ids, mask = example["input_ids"], example["completion_mask"]
    return {
        "text": tokenizer.decode(ids),
        "trained": tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m]),
    }
