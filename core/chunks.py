"""Resumable chunked parquet outputs, and the fingerprint that says what a parquet output was made from.

    chunked = ChunkedOutput(output, fingerprint, n_items=len(rows), chunk_size=2048, label="rm_score")
    if chunked.reusable():                  # output there, made from this same fingerprint: nothing to do
        return output
    for k in chunked.start():               # the chunks not done yet (all of them unless resuming)
        start, stop = chunked.bounds(k)
        chunked.write(k, table_of(rows[start:stop]))
    chunked.merge(schema)                   # -> output (zstd, atomic), parts removed

A fingerprint is a JSON-able dict of what the output is made from: the input's identity (its sha256, or the
fingerprint of the step that made it), the config fields that change the output (`core.config.hashed_view`
of them), the model's identity (`core.artifacts.fingerprint_dir`). It is the only thing a resume trusts:

- Parts live in `<output>.parts/part-00000.parquet, ...`; `<output>.parts/fingerprint.json` is written
  (atomically) before any part, so every part was made under a recorded fingerprint.
- A later run with the same fingerprint skips the finished chunks ("resuming: k of n chunks done"). A
  different one removes the old parts and starts over, and the log names the keys that differ
  (`model`, `config.max_length`, ...): mixing parts of two models or two inputs gives an output that
  belongs to neither. A parts directory without a fingerprint (older versions' `plan.json`, hand-made
  parts) is not trusted either. `force` starts over in any case.
- The chunk layout (items, chunk size) is recorded with the parts, under the reserved key `chunks`: parts
  of another layout cover other rows. It is not part of the finished file's fingerprint: the rows are
  the same whatever the chunking (samples drawn by transformers are not, see reject_sampling/backends.py,
  and the old code never cared either: a finished sample file was kept whatever `chunk_prompts`).
- Each part is written under a temporary name and renamed (a kill mid-write leaves a `.tmp` that no run
  counts); chunk k covers items [k·size, (k+1)·size) and the merge concatenates the parts in chunk order,
  so the output's rows are in input order whatever order the chunks were done in.
- The finished file carries its fingerprint in its parquet schema metadata (key `fingerprint`), not in a
  sidecar file: the two cannot disagree, a copy or rename keeps it, and no extra file lands next to the
  outputs. `reusable(path, fingerprint)` is how any step (chunked or not: the rejection-sampling stage's
  verified.parquet, scored.parquet) decides whether a finished file can be kept; a file without one was
  made by something else and is redone.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core.artifacts import atomic_path, sha256_text, write_json_atomic
from core.lock import hold, release

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
METADATA_KEY = b"fingerprint"
LAYOUT_KEY = "chunks"
SHOWN_KEYS = 8


class ChunkError(RuntimeError):
    """Parts that cannot be merged (a chunk missing), or a fingerprint that cannot be recorded."""


# ---------------------------------------------------------------------------------------------- fingerprints


def canonical(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint as it reads back from JSON (tuples as lists, paths as strings), so that a freshly
    computed one compares equal to the recorded one."""
    return json.loads(json.dumps(fingerprint, sort_keys=True, default=str))


def digest(fingerprint: dict[str, Any]) -> str:
    """A short identity of a fingerprint, to use as the `input` of the next step's fingerprint."""
    return sha256_text(json.dumps(canonical(fingerprint), sort_keys=True))[:16]


def differing_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the keys whose values differ (present in one only, or unequal); nested dicts are
    compared key by key so that a message can say `config.sampling.n` rather than `config`."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix or "<value>"]
    paths: list[str] = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in old or key not in new:
            paths.append(path)
        else:
            paths.extend(differing_keys(old[key], new[key], path))
    return paths


def describe_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else "")


def read_fingerprint(path: str | os.PathLike) -> dict[str, Any] | None:
    """The fingerprint recorded in a parquet file's metadata; None when it has none or is not a parquet
    file that can be read (both mean: not made by this mechanism, do not trust it)."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return None
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def with_fingerprint(table: pa.Table, fingerprint: dict[str, Any]) -> pa.Table:
    """`table` with `fingerprint` in its schema metadata (other metadata, e.g. pandas', is kept)."""
    metadata = dict(table.schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps(canonical(fingerprint), sort_keys=True).encode()
    return table.replace_schema_metadata(metadata)


def write_parquet(table: pa.Table, path: str | os.PathLike, fingerprint: dict[str, Any]) -> Path:
    """Write `table` atomically (zstd) with its fingerprint recorded in the file (not hashed again here:
    `core.artifacts.write_parquet_atomic` of `with_fingerprint(...)` does that for a manifest entry)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(with_fingerprint(table, fingerprint), tmp, compression="zstd")
    return path


def matches(path: str | os.PathLike, fingerprint: dict[str, Any]) -> bool:
    """True when `path` exists and records exactly `fingerprint` (silent; `reusable` logs)."""
    return Path(path).exists() and read_fingerprint(path) == canonical(fingerprint)


def reusable(path: str | os.PathLike, fingerprint: dict[str, Any], force: bool = False) -> bool:
    """Whether a finished file at `path` can be kept: it records the same fingerprint and `force` is off.
    Otherwise says why in the log (the differing keys); the caller redoes it and overwrites the file."""
    path = Path(path)
    if not path.exists():
        return False
    recorded = read_fingerprint(path)
    if force:
        log.info("%s: force=true: making it again", path)
        return False
    if recorded is None:
        log.info(
            "%s exists but records no fingerprint (written by another program or version): redoing it", path
        )
        return False
    changed = differing_keys(recorded, canonical(fingerprint))
    if changed:
        log.info(
            "%s was made from other inputs, config or model (%s differ): redoing it",
            path,
            describe_keys(changed),
        )
        return False
    return True


# ---------------------------------------------------------------------------------------------- chunked output


class ChunkedOutput:
    """One output parquet built chunk by chunk, resumable under a fingerprint (see the module docstring).

    `n_items` counts what the chunks split (input rows for scoring, prompts for sampling, where a prompt
    gives several rows); an empty input has no chunk and merges to an empty table of the given schema.
    """

    def __init__(
        self,
        output: str | os.PathLike,
        fingerprint: dict[str, Any],
        n_items: int,
        chunk_size: int,
        *,
        force: bool = False,
        label: str = "chunks",
    ):
        if LAYOUT_KEY in fingerprint:
            raise ChunkError(f"{output}: '{LAYOUT_KEY}' is reserved for the chunk layout in a fingerprint")
        if chunk_size < 1:
            raise ChunkError(f"{output}: chunk size must be >= 1, got {chunk_size}")
        self.output = Path(output)
        self.parts_dir = self.output.with_name(self.output.name + ".parts")
        self.fingerprint = canonical(fingerprint)
        self.n_items, self.chunk_size = n_items, chunk_size
        self.n_chunks = math.ceil(n_items / chunk_size)
        self.force, self.label = force, label
        self.lock_name, self._locked = f".{self.output.name}.lock", False

    @property
    def recorded(self) -> dict[str, Any]:
        """What `fingerprint.json` holds: the fingerprint plus the chunk layout."""
        return {**self.fingerprint, LAYOUT_KEY: {"items": self.n_items, "chunk_size": self.chunk_size}}

    def bounds(self, k: int) -> tuple[int, int]:
        """[start, stop) of chunk k in the input's items."""
        return k * self.chunk_size, min((k + 1) * self.chunk_size, self.n_items)

    def part(self, k: int) -> Path:
        return self.parts_dir / f"part-{k:05d}.parquet"

    def reusable(self) -> bool:
        """The output is finished under this fingerprint (and `force` is off): nothing to do. Parts a kill
        left between the final rename and their removal are removed here."""
        if not reusable(self.output, self.fingerprint, self.force):
            return False
        if self.parts_dir.exists():
            shutil.rmtree(self.parts_dir)
        return True

    def start(self) -> list[int]:
        """Make the parts directory ready for this fingerprint and return the chunks still to do.

        Parts recorded under the same fingerprint and layout are kept; under another one, without one, or
        with `force`, the directory is removed first. The fingerprint is recorded before any part exists.
        The output's lock (`.<output>.lock` beside it, core/lock.py) is held from here to `merge`: another
        live process writing the same output, or the directory it is in, fails here.
        """
        self._locked = hold(self.output.parent, self.label, name=self.lock_name)
        if self.parts_dir.exists():
            reason = self._restart_reason()
            if reason is not None:
                n_old = len(list(self.parts_dir.glob("part-*.parquet")))
                log.info(
                    "%s: %s: removing %d part(s) in %s and starting over",
                    self.label,
                    reason,
                    n_old,
                    self.parts_dir,
                )
                shutil.rmtree(self.parts_dir)
        if not self.parts_dir.exists():
            self.parts_dir.mkdir(parents=True)
            write_json_atomic(self.parts_dir / FINGERPRINT_FILE, self.recorded)
        todo = [k for k in range(self.n_chunks) if not self.part(k).exists()]
        if len(todo) < self.n_chunks:
            log.info(
                "%s: resuming: %d of %d chunks done in %s",
                self.label,
                self.n_chunks - len(todo),
                self.n_chunks,
                self.parts_dir,
            )
        return todo

    def _restart_reason(self) -> str | None:
        if self.force:
            return "force=true"
        file = self.parts_dir / FINGERPRINT_FILE
        try:
            stored = json.loads(file.read_text())
        except (OSError, ValueError):
            return (
                f"no readable {FINGERPRINT_FILE} (parts of an older version or another program, not trusted)"
            )
        changed = differing_keys(stored, self.recorded)
        if changed:
            return f"parts of an interrupted run made from other inputs, config or model ({describe_keys(changed)} differ)"
        return None

    def write(self, k: int, table: pa.Table) -> Path:
        """Write chunk k's rows atomically: the part exists complete or not at all."""
        if not 0 <= k < self.n_chunks:
            raise ChunkError(f"{self.parts_dir}: chunk {k} out of range [0, {self.n_chunks})")
        with atomic_path(self.part(k)) as tmp:
            pq.write_table(table, tmp)
        return self.part(k)

    def merge(self, schema: pa.Schema, finish: Callable[[pa.Table], pa.Table] | None = None) -> pa.Table:
        """Concatenate the parts in chunk order (= input order), pass the table through `finish` (a check
        that raises, or a reordering), write it to `output` atomically (zstd) with the fingerprint, remove
        the parts. `schema` is the empty output's (no chunk) schema."""
        missing = [self.part(k).name for k in range(self.n_chunks) if not self.part(k).exists()]
        if missing:
            raise ChunkError(
                f"{self.parts_dir}: cannot merge into {self.output}: {len(missing)} chunk(s) not done "
                f"({', '.join(missing[:SHOWN_KEYS])}{' ...' if len(missing) > SHOWN_KEYS else ''})"
            )
        parts = [pq.read_table(self.part(k)) for k in range(self.n_chunks)]
        table = pa.concat_tables(parts) if parts else schema.empty_table()
        if finish is not None:
            table = finish(table)
        write_parquet(table, self.output, self.fingerprint)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        if self._locked:
            release(self.output.parent, self.lock_name)
            self._locked = False
        return table
