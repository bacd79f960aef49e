"""SIGKILL helpers for the resume tests: start a command in its own session, wait until a file shows it is
where it should be killed, and kill its whole process group (the command and every process it started)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from core.config import CONF_DIR
from tests.conftest import offline_env

REPO = CONF_DIR.parent


def start(cmd: list[str]) -> subprocess.Popen:
    """`cmd` from the repository root, offline, output discarded, leading a process group of its own."""
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=offline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def kill_when(
    cmd: list[str], ready: Callable[[], bool], what: str, timeout: float, poll: float = 0.02
) -> None:
    """Start `cmd` and SIGKILL its process group as soon as `ready()` is true; fail if the command ends
    first or `timeout` seconds pass (`what` names the awaited moment in the message)."""
    proc = start(cmd)
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"{cmd[2:4]} ended (exit code {proc.returncode}) before {what}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(poll)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def parts_of(output: Path) -> list[Path]:
    """The finished chunk parts (core.chunks) of a chunked output."""
    return sorted(output.with_name(output.name + ".parts").glob("part-*.parquet"))


def kill_after_first_part(cmd: list[str], output: Path, timeout: float = 180) -> int:
    """Run `cmd` (sample.py, reward_model.score: a chunked output), SIGKILL it once the first chunk part of
    `output` exists, check it left no `output`, and return the number of parts it left."""
    kill_when(cmd, lambda: bool(parts_of(output)), f"chunk part of {output}", timeout)
    assert not output.exists(), "the run finished before the kill: give it more work"
    return len(parts_of(output))
