"""The OpenR1-Math-220k parquet layout: its schema, shard discovery, up-front validation, streaming reads.

The Hub repository's layout depends on the revision:

    early revisions                      later revisions (e.g. 075afe0)
    default/train-*.parquet  (93,733)    data/train-*.parquet          config `default`
    extended/train-*.parquet (131,396)   extended/train-*.parquet      config `extended`
                                         all/default-*, all/extended-* config `all`: the same rows again

`plan_shards` maps both onto the two subsets `default` and `extended` and reads each subset from one
place only: `data/` (or `default/`) and `extended/`; `all/` only for a subset whose own folder is absent
(a partial download). Reading every file (`rglob`) would read each row twice: the exact-duplicate
filter would then drop the second copies and report 225k "duplicates" the data does not have (or, with
dedup off, every problem would be trained on twice). Any other
folder (the synthetic `raw/default/`, a folder of one's own shards) is a subset named after the folder;
files directly under the root are read too; a single file is read as it is. Every file found is either
read or skipped with a reason, and `ShardPlan.describe()` puts both lists in the manifest.

Every shard's schema is checked before the first row is read, so a missing or mistyped column is an error
naming the file and the column, not a crash deep inside pyarrow half-way through. Per-trace list columns
may hold nulls (real row 0 has `finish_reasons` and `correctness_llama` null): that is missing
information about the traces, handled row by row in data_process/records.py, not a schema error.
Rows are read one record batch at a time, so memory stays bounded whatever the input size.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core.artifacts import first_line, read_parquet_schema, undecodable_cells

log = logging.getLogger(__name__)
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


# Where each OpenR1 config lives, preferred folder first: `data/` (later revisions) over `default/` (early).
CONFIG_FOLDERS = {"default": ("data", "default"), "extended": ("extended",)}
COMBINED_FOLDER = "all"  # later revisions' config `all`: default + extended again, as all/<config>-*.parquet
# Names `subsets` accepts besides subset labels; `all` also selects all/ files whose name names no config.
SUBSET_ALIASES = {"data": ("default",), "all": ("default", "extended", COMBINED_FOLDER)}


@dataclass(frozen=True)
class Shard:
    """One parquet file to read. `subset` is the OpenR1 config it holds (`default`, `extended`) for the
    known folders, else the name of its top folder ('' for a file directly under the root)."""

    path: Path
    subset: str
    rows: int


@dataclass(frozen=True)
class _Found:
    path: Path
    folder: str  # top folder under the root; '' for a file directly under it
    subset: str


@dataclass
class ShardPlan:
    """The files to read and, for every other parquet file found, why it is not read."""

    root: Path
    shards: list[Shard]
    skipped: dict[Path, str]

    def _rel(self, path: Path) -> str:
        return path.name if self.root.is_file() else path.relative_to(self.root).as_posix()

    def describe(self) -> dict[str, Any]:
        """For the manifest: {"read": {path: {subset, rows}}, "skipped": {path: reason}}, paths relative
        to the root."""
        return {
            "read": {self._rel(s.path): {"subset": s.subset, "rows": s.rows} for s in self.shards},
            "skipped": {self._rel(p): reason for p, reason in sorted(self.skipped.items())},
        }

    def summary(self) -> list[str]:
        """Log lines: files and rows read per folder, files skipped per reason."""
        read: Counter[str] = Counter()
        rows: Counter[str] = Counter()
        for s in self.shards:
            folder = str(Path(self._rel(s.path)).parent)
            read[folder] += 1
            rows[folder] += s.rows
        where = {d: "the root" if d == "." else f"{d}/" for d in read}
        lines = [
            f"reading {n} file(s), {rows[d]} rows, from {where[d]} of {self.root}" for d, n in read.items()
        ]
        skipped = Counter(self.skipped.values())
        lines += [f"skipping {n} file(s): {reason}" for reason, n in sorted(skipped.items())]
        return lines


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
    """The shards `plan_shards` reads (the skipped files and their reasons dropped)."""
    return plan_shards(input_dir, subsets).shards


def plan_shards(input_dir: str | Path, subsets: list[str] | None = None) -> ShardPlan:
    """Which parquet files under `input_dir` to read, and why each other one is skipped.

    `subsets` ([] or None: all) names OpenR1 configs (`default` selects `data/` or `default/`, `extended`
    selects `extended/`, `all` both) or, for other layouts, top folders by name. A name that matches
    nothing is an error, so a typo cannot silently read half the data. A single file is read as it is:
    it has no folders for `subsets` to choose from.
    """
    root = Path(input_dir)
    if not root.exists():
        raise FileNotFoundError(f"input_dir {root} does not exist")
    if root.is_file():
        return _with_rows(ShardPlan(root, [_shard(root, "")], {}))
    found, skipped = _find(root)
    wanted = _expand_subsets(subsets, found, root)
    present = {f.folder for f in found}
    shards = []
    for f in found:
        reason = _unselected_reason(f, wanted, subsets) or _duplicate_reason(f, present)
        if reason:
            skipped[f.path] = reason
        else:
            shards.append(_shard(f.path, f.subset))
    if not shards:
        why = "; ".join(sorted(set(skipped.values()))) or "no parquet files"
        raise FileNotFoundError(f"nothing to read under {root}: {why}")
    return _with_rows(ShardPlan(root, sorted(shards, key=_read_order), skipped))


def _with_rows(plan: ShardPlan) -> ShardPlan:
    """The plan, unless its files hold no row at all (empty parquet files): an error naming them, since
    every output would be empty."""
    if not any(s.rows for s in plan.shards):
        names = [plan._rel(s.path) for s in plan.shards][:5]
        raise SchemaError(
            f"nothing to read under {plan.root}: its {len(plan.shards)} parquet file(s) {names} hold 0 rows"
        )
    return plan


def _read_order(shard: Shard) -> tuple[int, str]:
    """Config `default` first, then `extended`, then other subsets, each in path order, whichever folder
    holds them: "first seen" decisions (exact duplicates, `max_sft_records`) do not depend on the layout."""
    configs = list(CONFIG_FOLDERS)
    rank = configs.index(shard.subset) if shard.subset in configs else len(configs)
    return rank, str(shard.path)


def _shard(path: Path, subset: str) -> Shard:
    """The file as a shard to read; an empty, truncated or corrupt file (or one in another format) is a
    SchemaError naming it, before any row is read."""
    read_parquet_schema(path, SchemaError)
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException) as e:
        raise SchemaError(
            f"{path}: not a readable parquet file ({first_line(e)}); re-download or remove it"
        ) from None
    return Shard(path=path, subset=subset, rows=rows)


def _subset_of(folder: str, name: str) -> str:
    """The config a file holds: from its folder, or for `all/` from its name (`all/extended-00001-...`)."""
    for subset, folders in CONFIG_FOLDERS.items():
        if folder in folders:
            return subset
    if folder == COMBINED_FOLDER:
        prefix = name.split("-", 1)[0]
        return prefix if prefix in CONFIG_FOLDERS else COMBINED_FOLDER
    return folder


def _find(root: Path) -> tuple[list[_Found], dict[Path, str]]:
    """Every parquet file under `root`, except hidden ones (`.cache/` of `huggingface-cli download`,
    partly written `.tmp` files), which are returned as skipped."""
    found, skipped = [], {}
    for path in sorted(root.rglob("*.parquet")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            skipped[path] = "hidden file or folder (a cache or a partly written file)"
            continue
        folder = rel.parts[0] if len(rel.parts) > 1 else ""
        found.append(_Found(path=path, folder=folder, subset=_subset_of(folder, path.name)))
    return found, skipped


def _expand_subsets(subsets: list[str] | None, found: list[_Found], root: Path) -> set[str] | None:
    """The subset labels `subsets` selects (None: everything); an error for a name that matches nothing."""
    if not subsets:
        return None
    available = {f.subset for f in found}
    wanted = set()
    for name in subsets:
        labels = set(SUBSET_ALIASES.get(name, (name,)))
        if not labels & available:
            raise FileNotFoundError(
                f"subset '{name}' matches no parquet file under {root}; found subsets {sorted(available)} "
                f"(folders {sorted({f.folder or '.' for f in found})})"
            )
        wanted |= labels
    return wanted


def _unselected_reason(f: _Found, wanted: set[str] | None, subsets: list[str] | None) -> str | None:
    if wanted is None or f.subset in wanted:
        return None
    return f"subset '{f.subset or '.'}' not in subsets {list(subsets or [])}"


def _duplicate_reason(f: _Found, present: set[str]) -> str | None:
    """Why `f` repeats rows that a file in another present folder holds, or None.

    Within a config, the first present folder of CONFIG_FOLDERS wins (`data/` over an early revision's
    `default/`, should both be there). `all/` is read only for a config none of whose folders is present.
    """
    if f.subset in CONFIG_FOLDERS and f.folder in CONFIG_FOLDERS[f.subset]:
        preferred = next(d for d in CONFIG_FOLDERS[f.subset] if d in present)
        if f.folder != preferred:
            return (
                f"{f.folder}/ holds config '{f.subset}' like {preferred}/ (another revision of the same "
                f"rows); only {preferred}/ is read"
            )
        return None
    if f.folder != COMBINED_FOLDER:
        return None
    configs = [f.subset] if f.subset in CONFIG_FOLDERS else list(CONFIG_FOLDERS)
    own = [d for c in configs for d in CONFIG_FOLDERS[c] if d in present]
    if not own:
        return None
    what = f"config '{f.subset}'" if f.subset in CONFIG_FOLDERS else "configs default + extended"
    verb = "holds" if len(own) == 1 else "hold"
    return f"all/ (config all) repeats the {what} rows that {' + '.join(d + '/' for d in own)} {verb}"


def validate_shards(shards: list[Shard], required: tuple[str, ...] = REQUIRED_COLUMNS) -> None:
    for shard in shards:
        validate_schema(shard.path, read_parquet_schema(shard.path, SchemaError), required)


# What a row whose text is not UTF-8 becomes (records.malformed_reason drops it as `invalid_utf8`): the
# column it was found in, nothing else of it can be read.
UNDECODABLE = "_undecodable_column"


def iter_batches(shard: Shard, batch_size: int = 256) -> Iterator[list[dict[str, Any]]]:
    """The columns data_process reads (required + optional ones present), one record batch of row dicts
    at a time: memory is bounded by `batch_size`, whatever the shard's size.

    A row holding text that is not UTF-8 (parquet stores bytes; pyarrow checks nothing on read) comes as
    `{UNDECODABLE: column}`, for the stage to drop and count, and is logged with its file, row and column.
    Data that cannot be read at all (a page corrupt behind a readable footer) is a SchemaError naming the
    file and the rows."""
    pf = pq.ParquetFile(shard.path)
    columns = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in pf.schema_arrow.names]
    batches = pf.iter_batches(batch_size=batch_size, columns=columns)
    start = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as e:
            raise SchemaError(
                f"{shard.path}: cannot read rows {start}-{min(start + batch_size, shard.rows) - 1} of {shard.rows} "
                f"({first_line(e)}); the file "
                f"is corrupt: re-download or remove it"
            ) from None
        try:
            rows = batch.to_pylist()
        except UnicodeDecodeError:
            rows = _rows_with_undecodable_text(shard, batch, start)
        yield rows
        start += batch.num_rows


def _rows_with_undecodable_text(shard: Shard, batch: pa.RecordBatch, start: int) -> list[dict[str, Any]]:
    bad = {}
    for row, column in undecodable_cells(batch):
        bad.setdefault(row, column)
    for row, column in sorted(bad.items()):
        log.warning(
            "%s: row %d, column '%s' is not UTF-8 text: dropped (invalid_utf8)",
            shard.path,
            start + row,
            column,
        )
    good = [i for i in range(batch.num_rows) if i not in bad]
    decoded = iter(batch.take(pa.array(good, pa.int64())).to_pylist())
    return [{UNDECODABLE: bad[i]} if i in bad else next(decoded) for i in range(batch.num_rows)]
