"""Benchmarks for evaluation: standard math test sets (data/benchmarks/), one's own JSONL file, or
reasoning-gym generators, loaded into one shape and checked before any model loads.

    python -m evaluation benchmark=math500 model.path=...    # conf/benchmark/math500.yaml
    python -m evaluation benchmark=my_set.jsonl benchmark.answer_field=final model.path=...
    python -m evaluation benchmark=reasoning_gym model.path=...

Decisions:
- Gold answers are normalised once, here (`normalise_answer`): GSM8K's rationale becomes the number after
  `####` without thousands separators, AMC's float 27.0 becomes "27", AIME's zero-padded "025" becomes "25",
  MATH-500's LaTeX strings stay exactly as written. scored.parquet shows these golds.
- Every gold is then checked with the verifier that will judge the answers (`check_golds`): a boxed copy of
  the gold must verify against it. A gold the verifier cannot parse would make every answer to its problem
  unjudgeable (None, counted as not correct): a silent 0 on that problem, so it is an error naming the file
  and the line instead.
- A problem file is any JSONL whose field names the config gives (`problem_field`, `answer_field`,
  `id_field`); a field no row has is reported as a wrong field name, a row without it as that row's error.
- Ids: the file's id field, else the 0-based row number (stable for a file that does not change).
- reasoning-gym items come from grpo.data.reasoning_gym_rows, the function GRPO trains on, so a generator
  list means the same items in both. The verifier's gold is the generator's entry as JSON (its scorer needs
  the metadata); the gold shown in scored.parquet is the entry's `answer`.
- `benchmark=FILE.jsonl` on the command line: a Hydra group choice names a config file in conf/benchmark/,
  so a path cannot be one. `expand_benchmark_overrides` rewrites it to `benchmark=file benchmark.path=FILE`
  before Hydra parses the command line (it is the `evaluate` stage's argv hook in core.stages, so `python -m
  evaluation` calls it; the pipeline can too), so the file option keeps its default protocol, its field
  names stay under `benchmark.` and everything else is composed and validated by Hydra as usual. The alternatives were a second key (`benchmark_file=`: two
  spellings of one thing, and the field names would live outside the benchmark node) or a Hydra config
  source plugin that synthesises a config for any path (machinery for one argument).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import grpo.rewards  # noqa: F401  registers the reasoning_gym verifier in core.verifier's registry
from core.artifacts import atomic_path, read_jsonl
from core.config import CONF_DIR
from core.verifier import verify_batch
from evaluation.config import BenchmarkConfig

BENCHMARK_DIR = CONF_DIR / "benchmark"
FILE_OPTION = "file"  # conf/benchmark/file.yaml: a JSONL file given by path
_OVERRIDE = re.compile(r"^(\+{0,2})benchmark=(.*)$")
_INTEGER = re.compile(r"[+-]?\d+")
_GSM8K_FINAL = "####"


class BenchmarkError(ValueError):
    """A benchmark that cannot be evaluated: unknown name, missing file or field, a bad or unparseable gold."""


@dataclass(frozen=True)
class BenchmarkItem:
    id: str
    problem: str
    answer: str  # the normalised gold, as scored.parquet shows it
    gold: str  # what the verifier is given: the answer, or reasoning-gym's entry as JSON
    where: str  # "line 12" of the file, or "item 3 of chain_sum": for messages
    groups: dict[str, str] = field(default_factory=dict)  # breakdown field -> value


@dataclass
class Benchmark:
    name: str
    source: str  # the file read, or the generators
    verifier: str
    breakdown: list[str]
    items: list[BenchmarkItem]

    @property
    def golds(self) -> dict[str, str]:
        """id -> the verifier's gold."""
        return {item.id: item.gold for item in self.items}


# ---------------------------------------------------------------------------------------------- names


def known_benchmarks() -> list[str]:
    """The named benchmarks of conf/benchmark/ (the `file` option takes a path instead)."""
    return sorted(p.stem for p in BENCHMARK_DIR.glob("*.yaml") if p.stem != FILE_OPTION)


def expand_benchmark_overrides(args: list[str]) -> list[str]:
    """`benchmark=FILE.jsonl` -> `benchmark=file benchmark.path=FILE.jsonl`; an unknown name is an error
    that lists the known ones. Every other argument is returned unchanged."""
    out = []
    for arg in args:
        match = _OVERRIDE.match(arg)
        if match is None:
            out.append(arg)
            continue
        prefix, value = match.groups()
        choices = [v.strip() for v in value.split(",")]
        files = [v for v in choices if v.endswith(".jsonl")]
        if files and len(choices) > 1:
            raise BenchmarkError(
                f"benchmark={value}: a sweep over files is written benchmark=file "
                f"benchmark.path={','.join(files)} (named benchmarks sweep as benchmark=math500,aime24)"
            )
        if files:
            out += [f"{prefix}benchmark={FILE_OPTION}", f"benchmark.path={files[0]}"]
            continue
        unknown = [v for v in choices if v not in known_benchmarks() and v != FILE_OPTION and v != "null"]
        if unknown and not value.startswith(("choice(", "range(", "glob(")):
            raise BenchmarkError(
                f"unknown benchmark '{unknown[0]}'; known benchmarks: {', '.join(known_benchmarks())}, "
                "or benchmark=FILE.jsonl for a file of your own"
            )
        out.append(arg)
    return out


def resolve_path(path: str) -> Path:
    """A benchmark file: as given (absolute, or from the working directory), else from the repository root,
    where the built-in benchmarks' relative paths point."""
    for candidate in (Path(path), CONF_DIR.parent / path):
        if candidate.is_file():
            return candidate
    raise BenchmarkError(
        f"benchmark file {path} not found (looked in the working directory and in {CONF_DIR.parent})"
    )


# ---------------------------------------------------------------------------------------------- answers


def _decimal_text(value: Decimal) -> str:
    """27.0 -> '27', 2.50 -> '2.5', -0 -> '0'."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _number(value: Any) -> str:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is a boolean, not a number")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number")
        return _decimal_text(Decimal(repr(value)))
    if isinstance(value, str):
        try:
            parsed = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a plain number") from None
        if not parsed.is_finite():
            raise ValueError(f"{value!r} is not a finite number")
        return _decimal_text(parsed)
    raise ValueError(f"{value!r} is a {type(value).__name__}, not a number")


def _integer(value: Any) -> str:
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return str(int(value.strip()))
    text = _number(value)
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"{value!r} is not an integer")
    return text


def _gsm8k(value: Any) -> str:
    if not isinstance(value, str) or _GSM8K_FINAL not in value:
        raise ValueError(f"no '{_GSM8K_FINAL} N' final line in {str(value)[-80:]!r}")
    final = value.rsplit(_GSM8K_FINAL, 1)[1].strip()
    return _number(final.replace(",", ""))


def _latex(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is a {type(value).__name__}, not a string (answer_format latex)")
    return value


def normalise_answer(value: Any, answer_format: str) -> str:
    """The gold as the verifier and scored.parquet get it; ValueError says why a value does not fit."""
    if answer_format == "auto":
        answer_format = "latex" if isinstance(value, str) else "number"
    text = {"latex": _latex, "integer": _integer, "number": _number, "gsm8k": _gsm8k}[answer_format](value)
    if not text.strip():
        raise ValueError("the answer is empty")
    return text


# ---------------------------------------------------------------------------------------------- loading


def _jsonl(file: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = read_jsonl(file, BenchmarkError)
    if not rows:
        raise BenchmarkError(f"{file}: no rows")
    return rows


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _file_items(cfg: BenchmarkConfig, file: Path) -> list[BenchmarkItem]:
    rows = _jsonl(file)
    seen = sorted({k for _, row in rows for k in row})
    # (config key, field name, what a row lacking it lacks)
    needed = [("problem_field", cfg.problem_field, "problem"), ("answer_field", cfg.answer_field, "answer")]
    needed += [("breakdown", name, f"'{name}' (breakdown)") for name in cfg.breakdown]
    for key, name, _ in needed:
        if not any(name in row for _, row in rows):
            raise BenchmarkError(
                f"{file}: no row has the field '{name}' (benchmark.{key}); the rows have the fields {seen}. "
                f"Set benchmark.{key} to the right field name."
            )
    items = []
    for index, (lineno, row) in enumerate(rows):
        where = f"line {lineno}"
        for _, name, what in needed:
            if not _present(row.get(name)):
                raise BenchmarkError(
                    f"{file}: {where} has no {what}: field '{name}' is missing, null or empty"
                )
        problem = row[cfg.problem_field]
        if not isinstance(problem, str):
            raise BenchmarkError(f"{file}: {where}: the problem ('{cfg.problem_field}') is not a string")
        try:
            answer = normalise_answer(row[cfg.answer_field], cfg.answer_format)
        except ValueError as e:
            raise BenchmarkError(
                f"{file}: {where}: gold answer '{cfg.answer_field}' does not fit answer_format "
                f"{cfg.answer_format}: {e}"
            ) from None
        given = row.get(cfg.id_field) if cfg.id_field else None
        items.append(
            BenchmarkItem(
                id=str(given) if _present(given) else str(index),
                problem=problem,
                answer=answer,
                gold=answer,
                where=where,
                groups={name: str(row[name]) for name in cfg.breakdown},
            )
        )
    return items


def _reasoning_gym_items(cfg: BenchmarkConfig) -> list[BenchmarkItem]:
    from grpo.data import PromptsError, reasoning_gym_rows

    try:
        rows = reasoning_gym_rows(cfg.reasoning_gym, cfg.seed)
    except PromptsError as e:
        raise BenchmarkError(f"benchmark {cfg.name}: {e}") from None
    items, counts = [], {}
    for row in rows:
        entry = json.loads(row["answer"])
        task = entry["metadata"]["source_dataset"]
        counts[task] = counts.get(task, 0) + 1
        fields = {"task": task, **entry["metadata"]}
        missing = [name for name in cfg.breakdown if name not in fields]
        if missing:
            raise BenchmarkError(
                f"benchmark {cfg.name}: breakdown field(s) {missing} are not in {task}'s items; "
                f"they have task and the metadata {sorted(entry['metadata'])}"
            )
        items.append(
            BenchmarkItem(
                id=row["id"],
                problem=row["prompt"],
                answer=str(entry["answer"]),
                gold=row["answer"],
                where=f"item {counts[task] - 1} of {task}",
                groups={name: str(fields[name]) for name in cfg.breakdown},
            )
        )
    return items


def load_benchmark(cfg: BenchmarkConfig, default_verifier: str = "math", check: bool = True) -> Benchmark:
    """Read and normalise a benchmark; with `check`, every gold must verify against a boxed copy of itself."""
    if cfg.reasoning_gym:
        name = cfg.name or "reasoning_gym"
        source = "reasoning-gym " + ", ".join(f"{t.name}:{t.size}" for t in cfg.reasoning_gym)
        items = _reasoning_gym_items(cfg)
    else:
        file = resolve_path(str(cfg.path))
        if file.suffix != ".jsonl":
            raise BenchmarkError(f"benchmark file {file}: expected a .jsonl file (one JSON object per line)")
        name, source = cfg.name or file.stem, str(file)
        items = _file_items(cfg, file)
    first: dict[str, str] = {}
    for item in items:
        if item.id in first:
            raise BenchmarkError(f"{source}: duplicate id '{item.id}' at {first[item.id]} and {item.where}")
        first[item.id] = item.where
    bench = Benchmark(name, source, cfg.verifier or default_verifier, list(cfg.breakdown), items)
    if check:
        check_golds(bench)
    return bench


def boxed(answer: str) -> str:
    return f"\\boxed{{{answer}}}"


def check_golds(bench: Benchmark) -> None:
    """Every gold parses with the benchmark's verifier: a completion answering exactly the gold is judged
    correct. A None (the gold does not parse) or False (not even equal to itself) is an error naming the
    source and the row."""
    verdicts = verify_batch(
        [boxed(item.answer) for item in bench.items],
        [item.gold for item in bench.items],
        [bench.verifier] * len(bench.items),
    )
    for item, verdict in zip(bench.items, verdicts, strict=True):
        if verdict is not True:
            why = (
                "does not parse (or ran out of time)" if verdict is None else "is not judged equal to itself"
            )
            raise BenchmarkError(
                f"{bench.source}: {item.where} (id {item.id}): gold answer {item.answer!r} {why} with the "
                f"'{bench.verifier}' verifier, so no answer to this problem could be judged"
            )


def write_prompts(bench: Benchmark, path: Path) -> Path:
    """The benchmark as a prompt file (JSONL: id, prompt, answer) for sample.py; an unchanged file is left
    as it is, so its identity and timestamps stay those of the run that wrote it."""
    text = "".join(
        json.dumps({"id": item.id, "prompt": item.problem, "answer": item.answer}, ensure_ascii=False) + "\n"
        for item in bench.items
    )
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return path
