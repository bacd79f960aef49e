"""The OpenR1-Math-220k parquet layout: its schema, shard discovery, up-front validation, streaming reads.

Real layout: `<root>/default/train-0000k-of-00010.parquet` (93,733 rows) and `<root>/extended/...`
(131,396 rows). Every shard's schema is checked before the first row is read, so a missing or mistyped
column is an error naming the file and the column, not a crash deep inside pyarrow half-way through.
Rows are read one record batch at a time, so memory stays bounded whatever the input size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MESSAGE_TYPE = pa.struct([("content", pa.string()), ("role", pa.string())])

OPENR1_SCHEMA = pa.schema(
    [
        ("problem", pa.string()),
        ("solution", pa.string()),
        ("answer", pa.string()),
        ("problem_type", pa.string()),
        ("question_type", pa.string()),
        ("source", pa.string()),
        ("uuid", pa.string()),
        ("is_reasoning_complete", pa.list_(pa.bool_())),
        ("generations", pa.list_(pa.string())),
        ("correctness_math_verify", pa.list_(pa.bool_())),
        ("correctness_llama", pa.list_(pa.bool_())),
        ("finish_reasons", pa.list_(pa.string())),
        ("correctness_count", pa.int64()),
        ("messages", pa.list_(MESSAGE_TYPE)),
    ]
)

# Columns data_process reads; the others (solution, messages, ...) are never needed, never loaded.
REQUIRED_COLUMNS = (
    "problem",
    "answer",
    "problem_type",
    "question_type",
    "source",
    "uuid",
    "is_reasoning_complete",
    "generations",
    "correctness_math_verify",
    "finish_reasons",
)
OPTIONAL_COLUMNS = ("correctness_llama",)


class SchemaError(ValueError):
    """An input file does not have the OpenR1-Math columns and types this stage needs."""


@dataclass(frozen=True)
class Shard:
    path: Path
    subset: str
    rows: int


def _kind(t: pa.DataType) -> str:
    """Coarse type used for validation: string and large_string are the same column to us."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{_kind(t.value_type)}>"
    if pa.types.is_null(t):
        return "null"
    return str(t)


EXPECTED_KINDS = {f.name: _kind(f.type) for f in OPENR1_SCHEMA}


def validate_schema(path: Path, schema: pa.Schema, required: tuple[str, ...]) -> None:
    """Raise SchemaError naming the file and the first missing or mistyped column."""
    for name in required:
        if name not in schema.names:
            raise SchemaError(
                f"{path}: missing required column '{name}' (expected {EXPECTED_KINDS[name]}); "
                f"found columns {schema.names}"
            )
    for name in (*required, *OPTIONAL_COLUMNS):
        if name not in schema.names:
            continue
        found = _kind(schema.field(name).type)
        # An all-null column is stored as `null` (or list<null>) by some writers: accept it, rows decide.
        if found != EXPECTED_KINDS[name] and found not in ("null", "list<null>"):
            raise SchemaError(
                f"{path}: column '{name}' has type {schema.field(name).type} ({found}), "
                f"expected {EXPECTED_KINDS[name]}"
            )


def discover_shards(input_dir: str | Path, subsets: list[str] | None) -> list[Shard]:
    """Every parquet file under `input_dir`, optionally only under the named subset folders."""
    root = Path(input_dir)
    if not root.exists():
        raise FileNotFoundError(f"input_dir {root} does not exist")
    files = sorted(root.rglob("*.parquet")) if root.is_dir() else [root]
    files = [f for f in files if not f.name.startswith(".")]
    shards = []
    for f in files:
        subset = f.relative_to(root).parts[0] if root.is_dir() and len(f.relative_to(root).parts) > 1 else ""
        if subsets and subset not in subsets:
            continue
        shards.append(Shard(path=f, subset=subset, rows=pq.ParquetFile(f).metadata.num_rows))
    if not shards:
        wanted = f" in subsets {subsets}" if subsets else ""
        raise FileNotFoundError(f"no parquet files found under {root}{wanted}")
    return shards


def validate_shards(shards: list[Shard], required: tuple[str, ...] = REQUIRED_COLUMNS) -> None:
    for shard in shards:
        validate_schema(shard.path, pq.read_schema(shard.path), required)


def iter_batches(shard: Shard, batch_size: int = 256) -> Iterator[list[dict[str, Any]]]:
    """The columns data_process reads (required + optional ones present), one record batch of row dicts
    at a time: memory is bounded by `batch_size`, whatever the shard's size."""
    pf = pq.ParquetFile(shard.path)
    columns = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in pf.schema_arrow.names]
    for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
        yield batch.to_pylist()
