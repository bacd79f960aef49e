"""core.launch: a step runs in a child process where one is needed (GPU, vLLM) and in the caller on a CPU,
leaving the same log either way; a failing child raises and names its log."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.launch import needs_own_process, run_step

log = logging.getLogger(__name__)


@dataclass
class PidConfig:
    out: str
    fail: bool = False


def write_pid(cfg: PidConfig) -> None:
    """The step under test: logs a line, records the process it ran in, optionally fails."""
    log.info("step running in %d", os.getpid())
    if cfg.fail:
        raise SystemExit(3)
    Path(cfg.out).write_text(str(os.getpid()))


TARGET, SCHEMA = "tests.test_launch:write_pid", "tests.test_launch:PidConfig"


def test_child_processes_only_where_needed():
    assert needs_own_process(use_cpu=True) is False
    assert needs_own_process(use_cpu=True, uses_vllm=True) is True
    assert needs_own_process(use_cpu=False) is True  # a GPU asked for: CUDA memory returns at process exit


@pytest.mark.parametrize("own_process", [False, True])
def test_run_step_runs_where_told_and_logs_to_the_same_file(tmp_path, caplog, own_process):
    out, log_file = tmp_path / "pid.txt", tmp_path / "logs" / "step.log"
    caplog.set_level(logging.INFO)
    run_step(TARGET, SCHEMA, PidConfig(out=str(out)), own_process=own_process, log_file=log_file)
    assert (int(out.read_text()) != os.getpid()) is own_process
    assert f"step running in {out.read_text()}" in log_file.read_text()


def test_a_failing_child_raises_naming_its_log(tmp_path):
    log_file = tmp_path / "step.log"
    with pytest.raises(RuntimeError, match=r"exit code 3 \(log: .*step\.log\)"):
        run_step(TARGET, SCHEMA, PidConfig(out="unused", fail=True), own_process=True, log_file=log_file)
