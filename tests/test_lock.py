"""One live run per directory (core/lock.py): a second writer fails at once naming the first, a lock left by a
SIGKILLed run is taken over, and the holder's children (the pipeline's stages, accelerate's ranks) count as
the holder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from core import lock
from core.config import CONF_DIR
from core.lifecycle import StageRun
from tests.conftest import offline_env

REPO = CONF_DIR.parent


@dataclass
class Demo:
    x: int = 1


HOLD = """
import sys, time
from core.lock import hold
hold(sys.argv[1], "holder", *sys.argv[2:])
print("held", flush=True)
time.sleep(120)
"""


def start_holder(directory: Path, env: dict[str, str] | None = None, *name: str) -> subprocess.Popen:
    """A process that takes `directory`'s lock (or its lock `name`) and sleeps; returns once it holds it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory), *name],
        cwd=REPO,
        env=env or offline_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def holder(tmp_path):
    procs: list[subprocess.Popen] = []

    def start(directory: Path, env: dict[str, str] | None = None, *name: str) -> subprocess.Popen:
        procs.append(start_holder(directory, env, *name))
        return procs[-1]

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_a_second_writer_fails_naming_the_first_and_a_killed_ones_lock_is_taken_over(
    tmp_path, holder, caplog
):
    run_dir = tmp_path / "run"
    first = holder(run_dir)
    with pytest.raises(lock.DirectoryBusy, match=rf"{run_dir}.*holder \(pid {first.pid} on"):
        lock.hold(run_dir, "second")
    record = json.loads((run_dir / lock.LOCK_NAME).read_text())
    assert record["pid"] == first.pid and record["what"] == "holder"

    first.send_signal(signal.SIGKILL)
    first.wait()
    with caplog.at_level("INFO", logger="core.lock"):
        assert lock.hold(run_dir, "second") is True
    try:
        assert f"taking over {run_dir / lock.LOCK_NAME} from holder (pid {first.pid}" in caplog.text
        assert json.loads((run_dir / lock.LOCK_NAME).read_text())["pid"] == os.getpid()
        assert lock.hold(run_dir, "again") is False  # this process holds it already: nothing more taken
    finally:
        lock.release(run_dir)


def test_a_directory_inside_a_held_one_is_busy_except_for_the_holders_children(tmp_path, holder):
    run_dir = tmp_path / "run"
    pipeline = holder(run_dir)
    with pytest.raises(lock.DirectoryBusy, match=rf"pid {pipeline.pid}.*holds {run_dir / lock.LOCK_NAME}"):
        lock.hold(run_dir / "round_0" / "sft", "train_sft")

    # A child of the holder inherits RUN_LOCKS: its stage directory and the run directory are its own.
    child_env = {**offline_env(), lock.ENV: str((run_dir / lock.LOCK_NAME).resolve())}
    child = holder(run_dir / "round_0" / "sft", env=child_env)
    assert json.loads((run_dir / "round_0/sft" / lock.LOCK_NAME).read_text())["pid"] == child.pid
    check = subprocess.run(
        [sys.executable, "-c", f"from core.lock import hold; print(hold({str(run_dir)!r}, 'x'))"],
        cwd=REPO,
        env=child_env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and check.stdout.strip() == "False", check.stderr


def test_a_stage_run_holds_its_output_until_it_finishes(tmp_path, holder):
    """StageRun.begin() takes the output directory's lock (failing while another process writes there),
    finish() gives it back; a run that only finds its output complete takes nothing for long."""
    out = tmp_path / "stage"
    other = holder(out)
    with pytest.raises(lock.DirectoryBusy, match=f"pid {other.pid}"):
        StageRun("demo", Demo(), out, {}).begin()
    assert not (out / "manifest.json").exists()
    other.kill()
    other.wait()

    run = StageRun("demo", Demo(), out, {})
    assert run.begin() is None
    assert (out / lock.LOCK_NAME).resolve() in lock._held
    run.finish()
    assert (out / lock.LOCK_NAME).resolve() not in lock._held
    assert not (out / lock.LOCK_NAME).exists()  # a .lock left behind marks a live or a killed run
    again = StageRun("demo", Demo(), out, {})
    assert again.begin() is not None and (out / lock.LOCK_NAME).resolve() not in lock._held


def test_a_chunked_output_is_locked_beside_it_and_inside_a_held_directory(tmp_path, holder):
    """sample.py and reward-model scoring write one file chunk by chunk (core.chunks): a second writer of
    that file fails, and so does one in a directory a live stage holds; another file beside it is free."""
    from core.chunks import ChunkedOutput

    output = tmp_path / "out" / "samples.parquet"
    other = holder(output.parent, None, ".samples.parquet.lock")
    with pytest.raises(lock.DirectoryBusy, match=f"pid {other.pid}"):
        ChunkedOutput(output, {"a": 1}, n_items=4, chunk_size=2).start()
    beside = ChunkedOutput(output.with_name("greedy.parquet"), {"a": 1}, n_items=4, chunk_size=2)
    assert beside.start() == [0, 1]
    other.kill()
    other.wait()

    stage = holder(tmp_path / "stage")
    with pytest.raises(lock.DirectoryBusy, match=f"pid {stage.pid}"):
        ChunkedOutput(tmp_path / "stage" / "samples.parquet", {"a": 1}, n_items=4, chunk_size=2).start()


def test_only_the_main_rank_takes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    run = StageRun("demo", Demo(), tmp_path / "stage", {})
    assert run.begin() is None
    assert not (tmp_path / "stage" / lock.LOCK_NAME).exists()


def test_two_pipelines_on_one_run_dir_then_the_finished_run_again(tmp_path):
    """The second fails at once naming the first one's pid, so does a stage started by hand inside the
    run directory; the first finishes undisturbed. Then the finished run's steps skip in the pipeline's own
    process (pipeline/run.py `complete`), one run serving both tests (a pipeline run costs ~30 s here)."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipeline", f"run_dir={run_dir}", "until=data", "report=false"]
    first = subprocess.Popen(
        cmd, cwd=REPO, env=offline_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 120
    while not (run_dir / lock.LOCK_NAME).is_file() or not (run_dir / lock.LOCK_NAME).read_text():
        assert first.poll() is None and time.time() < deadline, "the first pipeline never took its lock"
        time.sleep(0.2)
    second = subprocess.run(cmd, cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=120)
    by_hand = subprocess.run(
        [sys.executable, "-m", "tiny_model", f"run_dir={run_dir}"],
        cwd=REPO,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    for other in (second, by_hand):
        assert other.returncode != 0
        assert f"is being written by pipeline (pid {first.pid} on" in other.stderr + other.stdout
    assert (run_dir / "data" / "manifest.json").is_file()

    # The finished run again: both steps are found complete in the pipeline's process (no step's process
    # starts: their logs do not grow); a changed setting runs its step, and only that one.
    logs = {name: run_dir / "logs" / "pipeline" / f"{name}.log" for name in ("tiny_model", "data")}
    sizes = {name: log.stat().st_size for name, log in logs.items()}
    dry = subprocess.run([*cmd, "dry_run=true"], cwd=REPO, env=offline_env(), capture_output=True, text=True)
    assert (
        "[1/2] tiny_model (tiny_model) [complete]" in dry.stdout
        and "[2/2] data (data_process) [complete]" in dry.stdout
    )
    again = subprocess.run(cmd, cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {name: log.stat().st_size for name, log in logs.items()} == sizes
    steps = json.loads((run_dir / "pipeline.json").read_text())["steps"]
    assert [(s["status"], s.get("skipped")) for s in steps] == [("done", True), ("done", True)]
    changed = subprocess.run(
        [*cmd, "data_process.sft_fraction=0.5"], cwd=REPO, env=offline_env(), capture_output=True, text=True
    )
    assert changed.returncode == 0, changed.stderr[-3000:]
    steps = json.loads((run_dir / "pipeline.json").read_text())["steps"]
    assert [(s["status"], s.get("skipped")) for s in steps] == [("done", True), ("done", None)]
    assert logs["tiny_model"].stat().st_size == sizes["tiny_model"]
    assert logs["data"].stat().st_size > sizes["data"]
