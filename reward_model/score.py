"""Batched reward-model scoring: a parquet of (prompt, completion) rows in, the same rows plus `rm_score` out.

    python -m reward_model.score input=samples.parquet output=scored.parquet \
        model.path=runs/default/round_0/reward_model/model completion_column=completion

- Sequences are rendered and truncated exactly as in training (chat template, cut in the middle).
- Rows are sorted by length and packed into batches of at most `batch_tokens` padded tokens, so little
  compute goes to padding; scores are written back in input order.
- Work is done in chunks of `chunk_rows` rows, each written atomically to `<output>.parts/` under a
  fingerprint (core.chunks): the input file's sha256, the hashed config (columns, max_length,
  batch_tokens, model settings) and the reward model's file identity. Killed and started again with the
  same fingerprint, finished chunks are skipped; with another input, config or model the old parts are
  removed and scoring starts over (before, they were reused whatever model had made them, so a rerun
  with another model mixed two models' scores). The parts are merged into `output` at the end, which
  records the fingerprint; a rerun finding a finished output of the same fingerprint does nothing.
- bf16 on a GPU, float32 on the CPU; meant to run in its own process (e.g. launched by reject_sampling).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from core.artifacts import (
    fingerprint_dir,
    read_parquet_schema,
    read_parquet_table,
    require_text_columns,
    require_text_values,
    sha256_file,
)
from core.chunks import ChunkedOutput
from core.config import hashed_view
from core.models import chat_renderer, load_tokenizer, require_model_dir
from core.training import resolve_use_cpu
from reward_model.config import ScoreConfig
from reward_model.data import SequenceEncoder

log = logging.getLogger(__name__)


def length_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped so that (rows × longest row) stays within batch_tokens; longest first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def score_ids(model: Any, ids: list[list[int]], pad_id: int, batch_tokens: int, device: str) -> list[float]:
    scores = [math.nan] * len(ids)
    for batch in length_batches([len(x) for x in ids], batch_tokens):
        width = max(len(ids[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
            attention[row, : len(ids[i])] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        for row, i in enumerate(batch):
            scores[i] = float(logits[row, 0])
    return scores


def load_scorer(cfg: ScoreConfig) -> tuple[Any, Any, str]:
    from transformers import AutoModelForSequenceClassification

    require_model_dir(cfg.model.path, "reward model")
    tokenizer = load_tokenizer(cfg.model)
    use_cpu = resolve_use_cpu(cfg.use_cpu)
    device = "cpu" if use_cpu else "cuda"
    dtype = torch.float32 if use_cpu else torch.bfloat16
    model = AutoModelForSequenceClassification.from_pretrained(
        cfg.model.path, dtype=dtype, local_files_only=True, trust_remote_code=cfg.model.trust_remote_code
    ).to(device)
    model.eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, device


def fingerprint(cfg: ScoreConfig, input_identity: str) -> dict[str, Any]:
    """What the scores of `cfg` are made from: the input (`input_identity`, the input file's sha256), the
    hashed config without the file paths (the input is identified by content, the output by its place),
    and the identities of the reward model's (and tokenizer's) files: replaced weights at the same path
    are another model."""
    config = hashed_view(cfg)
    del config["input"], config["output"]
    del config["model"]["name"]  # a label in reports: renaming the reward model changes no score
    return {
        "input": input_identity,
        "config": config,
        "model": fingerprint_dir(cfg.model.path),
        "tokenizer": fingerprint_dir(cfg.model.tokenizer_path) if cfg.model.tokenizer_path else None,
    }


class ScoreInputError(ValueError):
    """The rows to score cannot be read or scored: the message names the file, the row and the column."""


def check_input(cfg: ScoreConfig) -> pa.Schema:
    """At the door, before the reward model loads: the input is a readable parquet file whose prompt and
    completion columns are text, every value UTF-8 and not null (an empty completion is scored like any
    other: a model may stop at once). Returns its schema."""
    source = Path(cfg.input)
    if not source.exists():
        raise FileNotFoundError(f"input {source} does not exist")
    schema = read_parquet_schema(source, ScoreInputError)
    columns = [cfg.prompt_column, cfg.completion_column]
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise ScoreInputError(
            f"{source}: missing column(s) {missing}; found {schema.names} (set prompt_column / completion_column)"
        )
    require_text_columns(source, schema, columns, ScoreInputError)
    table = read_parquet_table(source, columns, ScoreInputError)
    require_text_values(source, table, columns, ScoreInputError)
    return schema


def run(cfg: ScoreConfig) -> Path:
    source, output = Path(cfg.input), Path(cfg.output)
    schema = check_input(cfg)
    require_model_dir(cfg.model.path, "reward model")
    chunked = ChunkedOutput(
        output,
        fingerprint(cfg, sha256_file(source)),
        pq.read_metadata(source).num_rows,
        cfg.chunk_rows,
        force=cfg.force,
        label="rm_score",
    )
    if chunked.reusable():
        log.info("rm_score: %s is finished for this input, config and model: skipping", output)
        return output
    todo = chunked.start()
    if todo:
        model, tokenizer, device = load_scorer(cfg)
        encoder = SequenceEncoder(
            chat_renderer(cfg.model, tokenizer), cfg.max_length, "middle", 1, keep_tail_when_dropped=True
        )
        table = pq.read_table(source)
        for k in tqdm(todo, desc="rm_score", unit="chunk", disable=not cfg.progress):
            start, stop = chunked.bounds(k)
            chunk = table.slice(start, stop - start)
            ids, _ = encoder.encode(
                chunk.column(cfg.prompt_column).to_pylist(), chunk.column(cfg.completion_column).to_pylist()
            )
            scores = score_ids(model, ids, tokenizer.pad_token_id, cfg.batch_tokens, device)
            chunked.write(k, chunk.append_column("rm_score", pa.array(scores, pa.float64())))
    scored = chunked.merge(schema.append(pa.field("rm_score", pa.float64())))
    log.info("rm_score: %d rows scored -> %s", scored.num_rows, output)
    return output


if __name__ == "__main__":
    from core.stages import main

    main("rm_score")
