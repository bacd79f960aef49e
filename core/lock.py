"""One live run per directory: a lock file with the holder's pid, taken for the life of the process.

    hold(run_dir, "pipeline")        # the pipeline, on its run directory
    hold(out, "train_sft")           # every stage, on its output directory (core.lifecycle.StageRun)
    hold(out, "sample", name=".samples.parquet.lock")   # one output file (core.chunks.ChunkedOutput)

The lock is an exclusive `flock` on `<dir>/.lock`, which also records who holds it (pid, host, what, since
when). The kernel releases a flock when its process dies, however it dies, so a lock left by a SIGKILLed
run is free at once: the next run takes it over (and logs whose it was). Nothing has to guess from a pid
whether the old holder is still alive, which a pid reused by an unrelated process would defeat. A run
that ends removes its lock file, so a `.lock` left in a directory marks a run that is live or was killed.
(Removing it is safe: a process that locked the file just as it was removed sees that the path no longer
names the file it locked, and locks the new one.)

A directory is also busy when a directory above it is held by another process: a stage started by hand
inside a run directory that a live pipeline is writing fails, while the pipeline's own children do not.
A process passes the locks it holds to its children in the environment (`RUN_LOCKS`), so a stage the
pipeline starts, the ranks `accelerate launch` starts, and the sampling process rejection sampling starts
all count as the holder. Only the main rank of a multi-process run takes a lock (the ranks share the
output directory).

flock works on local file systems; on NFS it depends on the mount (`local_lock`, NFSv4 locking), so on a
cluster put run directories on a file system whose locks reach every node, or run one pipeline per
run directory by convention.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"
ENV = "RUN_LOCKS"  # lock files held by this process's ancestors, os.pathsep-separated

_held: dict[Path, IO[str]] = {}  # lock file -> its open file (the flock lives as long as it stays open)
_ancestors: frozenset[Path] | None = None  # what ENV held when this process first looked


class DirectoryBusy(RuntimeError):
    """Another live process is writing the directory."""


def hold(directory: str | os.PathLike, what: str, name: str = LOCK_NAME) -> bool:
    """Take `directory`'s lock until `release` or the end of this process, or raise DirectoryBusy naming
    the holder. False (and nothing is taken) when this process or an ancestor already holds it: only the
    caller that took a lock releases it. Another `name` locks one output in the directory (the directory
    itself and those above it must then be free or this process's)."""
    directory = Path(directory).resolve()
    lock = directory / name
    if lock in _held or lock in inherited():
        return False
    for above in (directory, *directory.parents):
        if above / LOCK_NAME != lock:
            _check_free(above / LOCK_NAME, directory)
    directory.mkdir(parents=True, exist_ok=True)
    f = _lock(lock, directory)
    if previous := _read(f):
        log.info("%s: taking over %s from %s, which is no longer running", what, lock, _who(previous))
    f.seek(0)
    f.truncate()
    record = {"pid": os.getpid(), "host": socket.gethostname(), "what": what, "since": time.time()}
    f.write(json.dumps(record) + "\n")
    f.flush()
    _held[lock] = f
    _export()
    return True


def release(directory: str | os.PathLike, name: str = LOCK_NAME) -> None:
    """Give back a lock `hold` took (a run that ends): its file is removed, then the lock let go."""
    lock = Path(directory).resolve() / name
    f = _held.pop(lock, None)
    if f is not None:
        lock.unlink(missing_ok=True)
        f.close()
        _export()


def _lock(lock: Path, directory: Path) -> IO[str]:
    """The lock file, open and flocked; retried if the file was removed (by a holder that ended) between
    opening and locking it, so the lock taken is always the one the path names."""
    while True:
        f = open(lock, "a+")  # noqa: SIM115 (kept open: closing it would release the lock)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(f)
            f.close()
            raise DirectoryBusy(_busy(directory, lock, holder)) from None
        try:
            if os.stat(lock).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()


def inherited() -> frozenset[Path]:
    """The locks this process's ancestors hold (read from ENV the first time, before this process adds its
    own)."""
    global _ancestors
    if _ancestors is None:
        _ancestors = frozenset(Path(p) for p in os.environ.get(ENV, "").split(os.pathsep) if p)
    return _ancestors


def _export() -> None:
    """ENV for the children this process starts: its ancestors' locks and its own."""
    os.environ[ENV] = os.pathsep.join(sorted(map(str, inherited() | set(_held))))


def _check_free(lock: Path, directory: Path) -> None:
    """Raise if `lock` (a directory above `directory`) is held by a process other than this one's line."""
    if lock in _held or lock in inherited() or not lock.is_file():
        return
    with open(lock) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryBusy(_busy(directory, lock, _read(f))) from None


def _read(f: IO[str]) -> dict | None:
    f.seek(0)
    try:
        return json.loads(f.read() or "null")
    except json.JSONDecodeError:
        return None


def _who(holder: dict | None) -> str:
    if not holder:
        return "an unknown process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"{holder.get('what', '?')} (pid {holder.get('pid')} on {holder.get('host')}, since {since})"


def _busy(directory: Path, lock: Path, holder: dict | None) -> str:
    return (
        f"{directory} is being written by {_who(holder)}, which holds {lock}. Wait for it to finish, stop "
        f"it, or give this run another output directory"
    )
