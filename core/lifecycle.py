"""The lifecycle every stage shares: identify the work, skip it if it is done, clear the way, write last.

    stage = StageRun(STAGE, cfg, out, inputs, round=cfg.round)
    if (done := stage.begin()) is not None:
        return done                     # finished earlier with this config and these inputs
    ...                                 # the stage's own work, writing its outputs atomically
    return stage.finish(outputs, metrics)

`begin()` is `done()` then `start()`; a stage with checks that read its inputs whole (tokenizing every SFT
record) calls the two itself with those checks between them, so a finished run skips them and a bad
input fails while the previous run's manifest still stands.

- Identity: the hash of the config's hashed fields (core.config.hashed_view) and the identities of its
  inputs (upstream manifests' content hashes, file hashes, model-directory fingerprints).
- `begin()` returns the manifest of a finished run with that identity (nothing else happens), or removes the
  old manifest before any output is rewritten, so a crash half-way cannot leave an old manifest vouching
  for new, half-written files. `force=true` in a config redoes the work.
- `finish()` writes the resolved config.yaml beside the outputs, then the manifest, last: its presence is
  what marks the stage complete (core/artifacts.py).
- `complete()` is the same check as `begin()`'s without touching anything: the pipeline asks it of each
  step, through the stage's `identify(cfg)` (core/stages.py), before it starts the step's process.
- One run per output directory: `begin()` takes the directory's lock (core/lock.py) and fails at once,
  naming the other process, if a live one holds it or a directory above it; `finish()` gives it back.

Every rank of a multi-process training run calls these; only the main process takes the lock and removes
or writes the manifest (the ranks share the output directory).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.artifacts import (
    Manifest,
    OutputFile,
    describe_dirs,
    invalidate,
    is_complete,
    read_manifest,
    write_manifest,
)
from core.config import stage_config_hash, to_dict, write_resolved_config
from core.lock import hold, release

log = logging.getLogger(__name__)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class StageRun:
    """One run of a stage into `out`. `hashed` is what the config hash covers (default: all of `cfg`)."""

    stage: str
    cfg: Any
    out: Path
    inputs: dict[str, str]
    round: int | None = None
    hashed: Any = None
    config_hash: str = field(init=False)
    started_at: float = field(init=False)
    _locked: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.config_hash = stage_config_hash(self.cfg if self.hashed is None else self.hashed)
        self.started_at = time.time()

    def complete(self) -> bool:
        """Whether `out` holds a finished run with this identity (and `force` is not set)."""
        return not getattr(self.cfg, "force", False) and is_complete(self.out, self.config_hash, self.inputs)

    def begin(self) -> Manifest | None:
        """The manifest of a finished run with this identity, or None once the way is clear for a new one."""
        if (manifest := self.done()) is not None:
            return manifest
        self.start()
        return None

    def done(self) -> Manifest | None:
        """Take the output directory's lock (core.lock.DirectoryBusy if another live process is writing
        it); the manifest of a finished run with this identity, or None."""
        if is_main_process():
            self._locked = hold(self.out, self.stage)
        if not self.complete():
            return None
        log.info("%s: %s is complete for this config and inputs; skipping", self.stage, self.out)
        self._release()
        return read_manifest(self.out)

    def start(self) -> None:
        """The old manifest goes before any output is rewritten (the main process's part)."""
        if is_main_process():
            invalidate(self.out)

    def _release(self) -> None:
        if self._locked:
            release(self.out)
            self._locked = False

    def finish(
        self,
        outputs: dict[str, OutputFile] | None = None,
        metrics: dict[str, Any] | None = None,
        dirs: dict[str, Path] | None = None,
    ) -> Manifest:
        """config.yaml, then the manifest (last). `dirs` (saved models) are listed file by file. On another
        rank than the main one nothing is written or hashed: the manifest returned has no outputs."""
        manifest = Manifest(
            stage=self.stage,
            round=self.round,
            config_hash=self.config_hash,
            config=to_dict(self.cfg),
            inputs=self.inputs,
            metrics=metrics or {},
            started_at=self.started_at,
        )
        if not is_main_process():
            return manifest
        manifest.outputs = {**(outputs or {}), **(describe_dirs(dirs, self.out) if dirs else {})}
        write_resolved_config(self.out, self.cfg)
        write_manifest(self.out, manifest)
        self._release()
        return manifest
