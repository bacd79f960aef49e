"""Prompt loading for sample.py, rejection sampling and evaluation, validated before any model loads.

A prompt source is one of:
- a prompt-set parquet (data_process's `prompts.parquet`: id, prompt, answer, source, split), or a finished
  stage directory whose manifest.json lists a `prompts` output;
- a JSONL file, one object per line (`prompt_column`, `id_column`, `answer_column` name the keys);
- a plain `.txt` file, one question per line (blank lines are skipped).

A missing id (no id column, or a null / empty value) is derived from the question text (`derived_id`), so
the same question gets the same id, and the same samples, in every run. Every problem is reported with the
file, the row (0-based for parquet, 1-based line numbers for JSONL / text) and the column.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.artifacts import (
    read_jsonl,
    read_parquet_rows,
    read_parquet_schema,
    read_text_lines,
    require_text_columns,
    resolve_input,
)
from reject_sampling.config import PromptSource

PROMPTS_OUTPUT = "prompts"
SPLIT_COLUMN = "split"
SOURCE_COLUMN = "source"
SUFFIXES = (".parquet", ".jsonl", ".txt")


class PromptError(ValueError):
    """The prompt source is missing, malformed or empty."""


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    answer: str | None = None
    source: str | None = None


@dataclass
class PromptSet:
    file: Path  # the file read (a stage directory resolved to its prompts parquet)
    identity: str  # upstream manifest content hash, or the file's sha256: for downstream manifests
    prompts: list[Prompt]

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.prompts]


def derived_id(question: str) -> str:
    """A stable id for a question without one: 16 hex digits of the sha256 of its stripped text."""
    return hashlib.sha256(question.strip().encode("utf-8")).hexdigest()[:16]


def resolve_prompt_file(path: str | Path) -> tuple[Path, str]:
    """(file, identity) for a prompt file or a finished stage directory with a `prompts` output."""
    file, identity, output = resolve_input(path, PROMPTS_OUTPUT, "prompt source", PromptError)
    if output is None and file.suffix not in SUFFIXES:
        raise PromptError(f"prompt file {file}: unknown format '{file.suffix}'; expected one of {SUFFIXES}")
    return file, identity


def _parquet_rows(file: Path, src: PromptSource) -> tuple[list[tuple[str, dict[str, Any]]], set[str]]:
    schema = read_parquet_schema(file, PromptError)
    names = schema.names
    if src.prompt_column not in names:
        raise PromptError(
            f"{file}: missing column '{src.prompt_column}' (prompt_column); found {names}. "
            f"Set prompts.prompt_column to the question column."
        )
    wanted = [src.prompt_column, src.id_column, src.answer_column, SPLIT_COLUMN, SOURCE_COLUMN]
    columns = [c for c in dict.fromkeys(wanted) if c in names]
    require_text_columns(file, schema, [src.prompt_column], PromptError)
    rows = read_parquet_rows(file, columns, PromptError)
    return [(f"row {i}", row) for i, row in enumerate(rows)], set(columns)


def _jsonl_rows(file: Path, src: PromptSource) -> tuple[list[tuple[str, dict[str, Any]]], set[str]]:
    rows, keys = [], set()
    for lineno, row in read_jsonl(file, PromptError):
        if src.prompt_column not in row:
            raise PromptError(
                f"{file}: line {lineno} has no '{src.prompt_column}' key (prompt_column); it has {sorted(row)}"
            )
        keys.update(row)
        rows.append((f"line {lineno}", row))
    return rows, keys


def _text_rows(file: Path, src: PromptSource) -> tuple[list[tuple[str, dict[str, Any]]], set[str]]:
    rows = [
        (f"line {lineno}", {src.prompt_column: line})
        for lineno, line in read_text_lines(file, PromptError)
        if line.strip()
    ]
    return rows, {src.prompt_column}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def load_prompts(src: PromptSource) -> PromptSet:
    """Read, filter (split, max_prompts) and validate a prompt source; raise PromptError on the first
    problem. Order is the file's order: outputs keep it."""
    file, identity = resolve_prompt_file(src.path)
    reader = {".parquet": _parquet_rows, ".jsonl": _jsonl_rows, ".txt": _text_rows}[file.suffix]
    rows, columns = reader(file, src)
    if src.split is not None and SPLIT_COLUMN in columns:
        splits = sorted({str(row.get(SPLIT_COLUMN)) for _, row in rows})
        rows = [(where, row) for where, row in rows if row.get(SPLIT_COLUMN) == src.split]
        if not rows:
            raise PromptError(
                f"{file}: no prompts in split '{src.split}'; splits present: {splits} "
                f"(set prompts.split, or prompts.split=null for all rows)"
            )
    if src.max_prompts is not None:
        rows = rows[: src.max_prompts]
    if not rows:
        raise PromptError(f"{file}: no prompts")
    prompts = [_to_prompt(file, where, row, src) for where, row in rows]
    _check_unique(file, [where for where, _ in rows], prompts)
    return PromptSet(file, identity, prompts)


def _to_prompt(file: Path, where: str, row: dict[str, Any], src: PromptSource) -> Prompt:
    question = row.get(src.prompt_column)
    if question is not None and not isinstance(question, str):
        raise PromptError(
            f"{file}: {where}: '{src.prompt_column}' (prompt_column) is a {type(question).__name__}, not text"
        )
    if question is None or not question.strip():
        raise PromptError(f"{file}: {where} has an empty or null '{src.prompt_column}' (prompt_column)")
    given = _text(row.get(src.id_column))
    return Prompt(
        id=given if given and given.strip() else derived_id(question),
        prompt=question,
        answer=_text(row.get(src.answer_column)),
        source=_text(row.get(SOURCE_COLUMN)),
    )


def _check_unique(file: Path, wheres: list[str], prompts: Iterable[Prompt]) -> None:
    first_seen: dict[str, str] = {}
    for where, p in zip(wheres, prompts, strict=True):
        if p.id in first_seen:
            derived = p.id == derived_id(p.prompt)
            why = " (id derived from the question text: the same question appears twice)" if derived else ""
            raise PromptError(f"{file}: duplicate id '{p.id}' at {first_seen[p.id]} and {where}{why}")
        first_seen[p.id] = where
