"""Chaos-tested resume: SIGKILL the whole pipeline at seeded random moments, resume, and check the result.

Runs a small pipeline (every stage: tiny model, data, round 0 SFT, reward model, evaluation, rejection
sampling, round 1's SFT and compute-matched control side by side, its reward model and evaluations, GRPO,
its evaluation, the report) once uninterrupted as the reference, in its own run directory, while a watcher
records when each step ran and when each of its phases began (the files a phase leaves: sample parts,
verified samples, reward-model scores, checkpoints, the saved model). Then it runs the same command in a
fresh run directory and SIGKILLs the pipeline's whole process group (started with `start_new_session`) at
N moments drawn with the seed from that timeline: a (step, phase, delay) each, the delay a random fraction
of the phase's reference duration, counted from when the phase's files appear. After every kill it runs the
same command again (resume); after the last, once more to completion. Every kill is recorded where it
actually landed: which steps were running and which phase files existed. Then it checks:

a. every step of the final pipeline.json has status done;
b. every step's work was done exactly once: the watcher reads each step's manifest.json all along, and
   once a manifest has appeared its content (finished_at, config_hash, outputs) never changes and it never
   disappears;
c. every manifest's outputs exist with their recorded bytes and sha256, and parquet outputs with the
   recorded rows and columns (pyarrow metadata);
d. every samples file (rejection sampling's and the evaluations' samples, scored, greedy) holds exactly n
   samples per prompt, sample_idx 0..n-1, no duplicate (id, sample_idx), for the prompts the manifest counts;
e. the results equal the uninterrupted run's: every parquet table, every weight and tokenizer file, every
   metric but timings and paths, bit for bit, for every step (`EXACT`: they are all deterministic here; a
   step left out of it is held to `within_noise` instead). `KNOWN_DIFFERENCES` lists the metrics of a
   training run resumed from a checkpoint that transformers reports differently (reported, not failed on).

    # the bench (15 min on 2 shared cores: the reference, 4.7 min, then the run with 8 kills and its resumes)
    .venv/bin/python bench/chaos_resume.py --kills 8 --seed 0
    # smoke (CI, 1.5 min): tiny model and data only, 1 kill
    .venv/bin/python bench/chaos_resume.py --smoke

tests/test_chaos.py runs the loop with 2 kills up to round 0's evaluation (`CI_UNTIL`), with the kills drawn
from the timeline this bench recorded (`--recorded-timeline`) and the reference run beside the chaos run.
Writes bench/results/chaos_resume.json (`--out`): the kills per stage and phase, each check's result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pyarrow.parquet as pq  # noqa: E402

# The small pipeline: every stage of the offline default, two rounds (round 1's SFT and its control run side
# by side), sizes cut so that a step is a few seconds of work beyond its process start-up. Checkpoints every
# few steps, so that a kill inside training resumes from one. 288 rejection-sampling prompts make two
# sample.py chunks (256 prompts each); rm_score_all makes the reward model score every sample, in rejection
# sampling and in every evaluation (the barely trained policy solves almost nothing, and only prompts with a
# correct sample are scored otherwise).
SMALL_PIPELINE = (
    "rounds=2",
    "next_round_steps=12",
    "data_process.synthetic.num_problems=400",
    "data_process.sft_fraction=0.3",
    "train_sft.sft.max_steps=12",
    "train_sft.sft.per_device_train_batch_size=16",
    "train_sft.sft.save_steps=4",
    "reward_model.rm.max_steps=6",
    "reward_model.rm.per_device_train_batch_size=8",
    "reward_model.rm.save_steps=2",
    "reject_sampling.prompts.max_prompts=288",
    "reject_sampling.sampling.n=2",
    "reject_sampling.sampling.max_new_tokens=48",
    "reject_sampling.sampling.backend=transformers",
    "reject_sampling.rm_score_all=true",
    "evaluate.prompts.max_prompts=24",
    "evaluate.sampling.n=2",
    "evaluate.rm_score_all=true",
    "grpo.grpo.max_steps=4",
    "grpo.grpo.per_device_train_batch_size=32",
    "grpo.grpo.save_steps=2",
    "grpo.generation.backend=transformers",
)
# The CI form (tests/test_chaos.py): the same pipeline up to round 0's evaluation, which still has training
# (SFT, reward model) and, in the evaluation, sampling, verification and reward scoring.
CI_UNTIL = "eval/round_0_sft"

POLL_S = 0.02
# A phase shorter than this in the reference is not drawn at random (a kill would rarely land inside it);
# the required targets below are drawn whatever their length.
MIN_PHASE_S = 1.0
TRAINING = ("train_sft", "reward_model", "grpo")
SAMPLING = ("reject_sampling", "evaluate")
# Timings, paths and what a resume changes by design: never compared between the two runs.
VOLATILE = re.compile(
    r"(^|_)(s|seconds|time|runtime|per_second|tokens_per_second|rows_per_second|memory|peak_memory|"
    r"resumed_from|step_time_s|train_runtime_s|records_read|policy_dir|reward_model_dir)$"
)


# ---------------------------------------------------------------------------------------------- phases


def _exists(d: Path, *names: str) -> list[str]:
    return [n for n in names if (d / n).exists()]


def markers(stage: str, d: Path) -> list[str]:
    """The phase files present in a step's directory (`.lock` files and logs of the process are ignored)."""
    found = _exists(d, "manifest.json")
    if stage in TRAINING:
        ckpt = d / "checkpoints"
        if ckpt.is_dir():
            found.append("checkpoints/")
            done = sorted(p.name for p in ckpt.glob("checkpoint-*") if (p / "trainer_state.json").is_file())
            found += [f"checkpoints/{n}" for n in done]
        found += [n + "/" for n in _exists(d, "model", "adapter") if (d / n).is_dir()]
    elif stage in SAMPLING:
        found += _exists(
            d,
            "samples.parquet.parts",
            "samples.parquet",
            "verified.parquet",
            "rm_input.parquet",
            "rm_scores.parquet.parts",
            "rm_scores.parquet",
            "logs/rm_score.log",
            "scored.parquet",
            "greedy.parquet.parts",
            "greedy.parquet",
        )
    return found


def phase_of(stage: str, found: list[str]) -> str:
    """The phase a step is in, from its markers (the latest phase whose files exist)."""
    has = set(found)
    if "manifest.json" in has:
        return "done"
    if stage in TRAINING:
        if "model/" in has:
            return "save"
        if any(m.startswith("checkpoints/checkpoint-") for m in has):
            return "train_after_checkpoint"
        return "train"
    if stage in SAMPLING:
        if stage == "evaluate" and "greedy.parquet" in has:
            return "finish"
        if stage == "evaluate" and has & {"greedy.parquet.parts", "scored.parquet"}:
            return "greedy"
        if "scored.parquet" in has:
            return "select"
        if has & {"rm_input.parquet", "rm_scores.parquet.parts", "rm_scores.parquet"}:
            return "scoring"
        if "samples.parquet" in has:
            return "verify"
        if "samples.parquet.parts" in has:
            return "sampling"
        return "startup"
    return "work"


PHASES = {
    "train_sft": ("train", "train_after_checkpoint", "save"),
    "reward_model": ("train", "train_after_checkpoint", "save"),
    "grpo": ("train", "train_after_checkpoint", "save"),
    "reject_sampling": ("startup", "sampling", "verify", "scoring", "select"),
    "evaluate": ("startup", "sampling", "verify", "scoring", "greedy", "finish"),
}


def phase_index(stage: str, phase: str) -> int:
    order = PHASES.get(stage, ("work",))
    return order.index(phase) if phase in order else len(order)


# ---------------------------------------------------------------------------------------------- watcher


def manifest_content(path: Path) -> dict[str, Any] | None:
    """What must never change once a step has finished: finished_at, config_hash and outputs."""
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {k: m.get(k) for k in ("finished_at", "config_hash", "outputs")}


@dataclass
class Snapshot:
    t: float  # seconds since the watcher's attempt started
    running: list[str]  # steps pipeline.json (as written by this attempt) marks running; "done" once
    # their manifest is there (the other step of a side-by-side pair may still run)
    phases: dict[str, str]
    markers: dict[str, list[str]]


class Watcher:
    """Polls a run directory: pipeline.json, every step's markers and manifest.json. Records, per attempt of
    the pipeline command, when each step ran and each phase began; and across attempts, the first content
    of every manifest and every later change or disappearance (check b)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.steps: list[dict[str, str]] = []  # [{name, stage}] in plan order, from pipeline.json
        self.first: dict[str, dict[str, Any]] = {}  # step -> {content, attempt, t}
        self._stat: dict[str, tuple[int, int, int]] = {}
        self.violations: list[dict[str, Any]] = []
        self.timelines: list[dict[str, dict[str, float]]] = []
        self.attempt = -1
        self._t0 = 0.0
        self._t0_ns = 0

    def new_attempt(self) -> None:
        self.attempt += 1
        self._t0, self._t0_ns = time.time(), time.time_ns()
        self.timelines.append({})

    def stage(self, step: str) -> str:
        return next((s["stage"] for s in self.steps if s["name"] == step), "")

    def index(self, step: str) -> int:
        return next((i for i, s in enumerate(self.steps) if s["name"] == step), len(self.steps))

    def done(self, step: str) -> bool:
        return step in self.first

    def _status(self) -> dict[str, Any] | None:
        path = self.run_dir / "pipeline.json"
        try:
            if path.stat().st_mtime_ns < self._t0_ns:
                return None  # the killed attempt's: this attempt has not started a step yet
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _track_manifest(self, step: str, now: float) -> None:
        path = self.run_dir / step / "manifest.json"
        try:
            st = path.stat()
        except FileNotFoundError:
            if step in self.first and self._stat.get(step) != (0, 0, 0):
                self.violations.append(
                    {"step": step, "what": "manifest disappeared", "attempt": self.attempt, "t": now}
                )
                self._stat[step] = (0, 0, 0)
            return
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._stat.get(step) == key:
            return
        self._stat[step] = key
        content = manifest_content(path)
        if content is None:
            return
        if step not in self.first:
            self.first[step] = {"content": content, "attempt": self.attempt, "t": now}
        elif content != self.first[step]["content"]:
            changed = sorted(k for k in content if content[k] != self.first[step]["content"][k])
            self.violations.append(
                {"step": step, "what": f"manifest rewritten ({', '.join(changed)} changed)",
                 "attempt": self.attempt, "t": now}
            )  # fmt: skip
            self.first[step]["content"] = content  # report each rewrite once

    def poll(self) -> Snapshot:
        now = round(time.time() - self._t0, 3)
        status = self._status()
        if status is not None and not self.steps:
            self.steps = [{"name": s["name"], "stage": s["stage"]} for s in status["steps"]]
        for s in self.steps:
            self._track_manifest(s["name"], now)
        running = []
        if status is not None:
            running = [r["name"] for r in status["steps"] if r.get("status") == "running"]
        found = {name: markers(self.stage(name), self.run_dir / name) for name in running}
        phases = {name: phase_of(self.stage(name), found[name]) for name in running}
        timeline = self.timelines[-1] if self.timelines else {}
        for name in running:
            seen = timeline.setdefault(name, {"running": now})
            seen.setdefault(phases[name], now)
        for name in self.first:
            if name in timeline:
                timeline[name].setdefault("done", now)
        return Snapshot(now, running, phases, found)

    def phase_durations(self, attempt: int = 0) -> dict[str, dict[str, float]]:
        """{step: {phase: seconds}} of one attempt: from a phase's first sight to the next one's (or done)."""
        out = {}
        for step, seen in self.timelines[attempt].items():
            order = sorted(((t, p) for p, t in seen.items() if p != "running"), key=lambda x: x[0])
            out[step] = {
                p: round((order[i + 1][0] if i + 1 < len(order) else t) - t, 2)
                for i, (t, p) in enumerate(order)
                if p != "done"
            }
        return out


# ---------------------------------------------------------------------------------------------- kills


@dataclass
class Target:
    step: str
    phase: str
    fraction: float  # of the phase's reference duration
    delay_s: float  # after the phase is first seen in the attempt
    why: str


def required_targets(steps: list[dict[str, str]]) -> list[tuple[str, str, str]]:
    """(step, phase, why) that every chaos run includes, where the plan has the step: inside sampling and
    inside reward scoring of the first rejection sampling (of the first evaluation in a plan without one),
    inside the side-by-side SFT pair, inside GRPO."""
    names = [s["name"] for s in steps]
    out = []
    rs = next((s["name"] for s in steps if s["stage"] == "reject_sampling"), None)
    rs = rs or next((s["name"] for s in steps if s["stage"] == "evaluate"), None)
    if rs:
        out += [(rs, "sampling", "inside sampling"), (rs, "scoring", "inside reward scoring")]
    pair = next((n for n in names if n.endswith("/sft") and n.replace("/sft", "/sft_control") in names), None)
    if pair:
        out.append((pair, "train_after_checkpoint", "inside the side-by-side SFT pair"))
    grpo = next((s["name"] for s in steps if s["stage"] == "grpo"), None)
    if grpo:
        out.append((grpo, "train_after_checkpoint", "inside GRPO"))
    return out


def plan_kills(
    steps: list[dict[str, str]],
    durations: dict[str, dict[str, float]],
    n: int,
    seed: int,
    delay_scale: float = 1.0,
) -> list[Target]:
    """n kill targets drawn with `seed`: the required ones first, then one in every stage not yet hit (a
    random step of it, a random phase), then moments drawn uniformly over the reference run's time. Each
    delay is a random fraction (5-85%) of the phase's reference duration, times `delay_scale`. Sorted in
    pipeline order."""
    rng = random.Random(seed)
    stage_of = {s["name"]: s["stage"] for s in steps}
    picks: list[tuple[str, str, str]] = []
    for step, phase, why in required_targets(steps):
        if phase not in durations.get(step, {}):  # e.g. no checkpoint phase: any phase of the step
            phase = max(durations.get(step, {"train": 0}).items(), key=lambda kv: kv[1])[0]
        picks.append((step, phase, why))
    candidates = [
        (step, phase, d)
        for step, phases in durations.items()
        for phase, d in phases.items()
        if d >= MIN_PHASE_S and step in stage_of
    ]
    stages = list(dict.fromkeys(s["stage"] for s in steps))
    rng.shuffle(stages)
    for stage in stages:
        if any(stage_of[p[0]] == stage for p in picks):
            continue
        options = [c for c in candidates if stage_of[c[0]] == stage]
        if options:
            step, phase, _ = rng.choice(options)
            picks.append((step, phase, f"a {stage} step"))
    while len(picks) < n and candidates:
        step, phase, _ = rng.choices(candidates, weights=[c[2] for c in candidates])[0]
        picks.append((step, phase, "uniform in time"))
    picks = picks[:n]
    targets = []
    for step, phase, why in picks:
        fraction = round(rng.uniform(0.05, 0.85), 3)
        targets.append(
            Target(
                step,
                phase,
                fraction,
                round(fraction * delay_scale * durations.get(step, {}).get(phase, 1.0), 2),
                why,
            )
        )
    order = {s["name"]: i for i, s in enumerate(steps)}
    targets.sort(key=lambda t: (order[t.step], phase_index(stage_of[t.step], t.phase), t.delay_s))
    return targets


def kill_group(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGKILL the process group (the pipeline and every stage it started), wait until none is left."""
    pgid = proc.pid  # start_new_session: the pipeline leads its own group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise RuntimeError(f"process group {pgid} still alive {timeout} s after SIGKILL")


def offline_env() -> dict[str, str]:
    """Offline, and one thread per stage process: on 2 cores shared with other jobs, a second OpenMP thread
    spins at every barrier while another job holds the core (round 0's SFT took 4 s a step instead of
    0.5 s), which would make the timings the kills are drawn from meaningless."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }


def pipeline_command(run_dir: Path, overrides: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "pipeline", f"run_dir={run_dir}", *overrides]


def drive(
    cmd: list[str],
    watcher: Watcher,
    targets: list[Target],
    log_dir: Path,
    timeout: float,
    max_failures: int = 2,
    poll: float = POLL_S,
) -> dict[str, Any]:
    """Run `cmd`; at each target SIGKILL its process group and run it again; then run it to completion.
    Returns the attempts and the kills, each with where it landed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    attempts: list[dict[str, Any]] = []
    kills: list[dict[str, Any]] = []
    pending = list(targets)
    failures = 0
    started = time.time()
    while True:
        watcher.new_attempt()
        log = log_dir / f"attempt_{watcher.attempt}.log"
        t0 = time.time()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=offline_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            target, seen_at, killed = (pending[0] if pending else None), None, None
            while proc.poll() is None:
                if time.time() - started > timeout:
                    kill_group(proc)
                    raise TimeoutError(f"chaos run over {timeout} s; logs in {log_dir}")
                snap = watcher.poll()
                if target is not None:
                    fire, why = False, ""
                    if watcher.done(target.step):
                        fire, why = True, "the target step finished before its phase was reached"
                    elif target.step in snap.running:
                        stage = watcher.stage(target.step)
                        phase = snap.phases[target.step]
                        if seen_at is None and phase == target.phase:
                            seen_at = time.time()
                        if seen_at is not None and time.time() - seen_at >= target.delay_s:
                            fire, why = True, "at the delay"
                        elif seen_at is not None and phase != target.phase:
                            fire, why = True, "the phase ended before the delay"
                        elif seen_at is None and phase_index(stage, phase) > phase_index(stage, target.phase):
                            fire, why = True, "the phase was already over when the step was seen"
                    if fire:
                        kill_group(proc)
                        watcher.poll()
                        after_done = [s for s in snap.running if watcher.done(s)]
                        killed = {
                            "attempt": watcher.attempt,
                            "target": asdict(target),
                            "t_attempt_s": snap.t,
                            "fired": why,
                            "running": snap.running,
                            "phases": snap.phases,
                            "markers": snap.markers,
                            "markers_after_kill": {s: markers(watcher.stage(s), watcher.run_dir / s) for s in snap.running},
                            "hit": target.step in snap.running and snap.phases.get(target.step) == target.phase,
                            # Steps that wrote their manifest between the last look and the kill.
                            "done_after_kill": [s for s in snap.running if s in after_done],
                        }  # fmt: skip
                        kills.append(killed)
                        pending.pop(0)
                        break
                time.sleep(poll)
            rc = proc.wait()
        watcher.poll()
        attempts.append(
            {"attempt": watcher.attempt, "rc": rc, "killed": killed is not None,
             "wall_s": round(time.time() - t0, 1), "log": str(log)}
        )  # fmt: skip
        if killed is not None:
            continue
        if rc != 0:
            failures += 1
            attempts[-1]["log_tail"] = log.read_text(errors="replace")[-3000:]
            if failures >= max_failures:
                break
            continue
        break  # finished: no target left (or the pipeline finished before the last ones)
    return {
        "attempts": attempts,
        "kills": kills,
        "missed_targets": [asdict(t) for t in pending],
        "resume_failures": failures,
        "wall_s": round(time.time() - started, 1),
    }


# ---------------------------------------------------------------------------------------------- checks


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def check_all_done(run_dir: Path) -> dict[str, Any]:
    steps = read_json(run_dir / "pipeline.json")["steps"]
    bad = [f"{s['name']}: {s.get('status')}" for s in steps if s.get("status") != "done"]
    return {"ok": not bad, "steps": len(steps), "not_done": bad}


def check_manifests_once(watcher: Watcher) -> dict[str, Any]:
    """Every step's manifest appeared once and never changed or vanished, polled all along, then read again."""
    names = [s["name"] for s in watcher.steps]
    violations = list(watcher.violations)
    for name in names:
        if name in watcher.first:
            now = manifest_content(watcher.run_dir / name / "manifest.json")
            if now != watcher.first[name]["content"]:
                violations.append({"step": name, "what": "final manifest differs from the first seen"})
    missing = [n for n in names if n not in watcher.first]
    return {
        "ok": not violations and not missing,
        "manifests": len(watcher.first),
        "appeared_in_attempt": {n: watcher.first[n]["attempt"] for n in names if n in watcher.first},
        "violations": violations,
        "never_appeared": missing,
    }


def check_outputs(run_dir: Path, steps: list[dict[str, str]]) -> dict[str, Any]:
    """Every output of every manifest: bytes and sha256, and for parquet, rows and columns."""
    from core.artifacts import read_manifest, sha256_file

    bad, files, tables, unrecorded = [], 0, 0, []
    for s in steps:
        d = run_dir / s["name"]
        m = read_manifest(d)
        if m is None:
            bad.append(f"{s['name']}: no manifest")
            continue
        for out in m.outputs.values():
            path = d / out.path
            files += 1
            if not path.is_file():
                bad.append(f"{s['name']}/{out.path}: missing")
                continue
            if path.stat().st_size != out.bytes:
                bad.append(f"{s['name']}/{out.path}: {path.stat().st_size} bytes, manifest says {out.bytes}")
            if sha256_file(path) != out.sha256:
                bad.append(f"{s['name']}/{out.path}: sha256 differs from the manifest's")
            if path.suffix == ".parquet":
                meta = pq.ParquetFile(path)
                if out.rows is None:
                    unrecorded.append(f"{s['name']}/{out.path}")
                else:
                    tables += 1
                    if meta.metadata.num_rows != out.rows:
                        bad.append(
                            f"{s['name']}/{out.path}: {meta.metadata.num_rows} rows, manifest says {out.rows}"
                        )
                    if out.columns is not None and meta.schema_arrow.names != out.columns:
                        bad.append(
                            f"{s['name']}/{out.path}: columns {meta.schema_arrow.names} != {out.columns}"
                        )
    return {
        "ok": not bad,
        "files": files,
        "tables_with_rows": tables,
        "parquet_without_recorded_rows": unrecorded,
        "bad": bad,
    }


def check_samples(run_dir: Path, steps: list[dict[str, str]]) -> dict[str, Any]:
    """Samples files: n samples per prompt (1 for greedy), sample_idx 0..n-1, no duplicate (id, sample_idx),
    as many prompts as the manifest's metrics say; scored.parquet holds the same (id, sample_idx) as samples."""
    from core.artifacts import read_manifest

    bad, checked = [], []
    for s in steps:
        if s["stage"] not in SAMPLING:
            continue
        d = run_dir / s["name"]
        m = read_manifest(d)
        if m is None:
            continue
        n = int(m.config["sampling"]["n"])
        keys = {}
        for name in ("samples", "scored", "greedy"):
            if name not in m.outputs:
                continue
            want = 1 if name == "greedy" else n
            t = pq.read_table(d / m.outputs[name].path, columns=["id", "sample_idx"])
            pairs = list(zip(t.column("id").to_pylist(), t.column("sample_idx").to_pylist(), strict=True))
            per_prompt = Counter(i for i, _ in pairs)
            label = f"{s['name']}/{m.outputs[name].path}"
            dupes = len(pairs) - len(set(pairs))
            if dupes:
                bad.append(f"{label}: {dupes} duplicate (id, sample_idx)")
            wrong = {i: c for i, c in per_prompt.items() if c != want}
            if wrong:
                bad.append(
                    f"{label}: {len(wrong)} prompts without {want} samples, e.g. {next(iter(wrong.items()))}"
                )
            idx = {j for _, j in pairs}
            if pairs and idx != set(range(want)):
                bad.append(f"{label}: sample_idx {sorted(idx)} != 0..{want - 1}")
            prompts = m.metrics.get("prompts")
            if isinstance(prompts, int) and len(per_prompt) != prompts:
                bad.append(f"{label}: {len(per_prompt)} prompts, metrics say {prompts}")
            keys[name] = set(pairs)
            checked.append({"file": label, "rows": len(pairs), "prompts": len(per_prompt), "n": want})
        if "samples" in keys and "scored" in keys and keys["samples"] != keys["scored"]:
            bad.append(f"{s['name']}: scored.parquet's (id, sample_idx) differ from samples.parquet's")
    return {"ok": not bad, "files": checked, "bad": bad}


# -- against the reference


def _norm(value: Any, run_dir: str) -> Any:
    if isinstance(value, dict):
        return {k: _norm(v, run_dir) for k, v in value.items() if not VOLATILE.search(str(k))}
    if isinstance(value, list):
        return [_norm(v, run_dir) for v in value]
    if isinstance(value, str):
        return value.replace(run_dir, "<run>")
    return value


def differing(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += differing(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            p for i, (x, y) in enumerate(zip(a, b, strict=True)) for p in differing(x, y, f"{prefix}[{i}]")
        ]
    return [] if a == b else [prefix or "<value>"]


def _tables_equal(a: Path, b: Path) -> bool:
    """Equal rows and columns; the schema metadata (the resume fingerprint, which names model files by
    their path and mtime) differs between two run directories by construction."""
    return (
        pq.read_table(a).replace_schema_metadata(None).equals(pq.read_table(b).replace_schema_metadata(None))
    )


def compare_step(ref_dir: Path, run_dir: Path, step: str) -> dict[str, Any]:
    """Tables (parquet content), weights (safetensors, tokenizer files by sha256) and metrics (timings and
    paths left out) of one step in two runs."""
    from core.artifacts import read_manifest

    a, b = read_manifest(ref_dir / step), read_manifest(run_dir / step)
    if a is None or b is None:
        return {"tables": [], "weights": [], "differing": ["<no manifest>"], "metrics": ["<no manifest>"]}
    tables, weights, diff = [], [], []
    for name, out in a.outputs.items():
        if out.path.startswith("logs/"):
            continue  # tensorboard files are named by time and pid; a resumed run has one more
        other = b.outputs.get(name)
        if other is None:
            diff.append(name)
            continue
        if out.path.endswith(".parquet"):
            tables.append(out.path)
            if not _tables_equal(ref_dir / step / out.path, run_dir / step / other.path):
                diff.append(out.path)
        elif out.path.endswith((".safetensors", "tokenizer.json", "chat_template.jinja")):
            weights.append(out.path)
            if out.sha256 != other.sha256:
                diff.append(out.path)
    metrics = differing(_norm(a.metrics, str(ref_dir)), _norm(b.metrics, str(run_dir)))
    known = [m for m in metrics if known_difference(m, b.metrics)]
    return {
        "tables": tables,
        "weights": weights,
        "differing": diff,
        "metrics": [m for m in metrics if m not in known],
        "known_metric_differences": known,
    }


# Steps whose results must be bit-identical to the uninterrupted run's, kills and resumes included: all of
# them. Nothing depends on timing: the synthetic data, the tiny model and every trainer are seeded (the
# reward model's new score head too, since core.training seeds before the model loads), every stage process
# has one thread (a round's SFT and its control, side by side, as well), a training run resumed from a
# checkpoint restores its RNG states and data order (measured: the same weights, byte for byte), and
# sampling seeds each generate call from the seed and the first prompt's id, so a chunk drawn again after a
# kill is the same. A stage that is not (vLLM on a GPU, several threads) would be matched to
# `within_noise` instead, by leaving it out of this pattern.
EXACT = re.compile(r".*")
# Metrics of a training run resumed from a checkpoint that differ from the uninterrupted run's for a known
# reason, with identical weights: reported, not failed on (docs/results.md, "Resume under SIGKILL").
KNOWN_DIFFERENCES = {
    "train_loss": "transformers' TrainOutput.training_loss of a resumed run sums the losses of the steps "
    "run since the resume only, then divides by every step",
    "loss": "the first loss transformers logs after a resume is the mean of the steps since the resume, "
    "not of the logging_steps window, so that curve point and the summaries that include it differ",
    "accuracy": "TRL's logged training accuracy: the same window as the loss",
}


def known_difference(metric: str, metrics: dict[str, Any]) -> str | None:
    """Why `metric` (a dotted path) of a step's metrics may differ from the uninterrupted run's, or None."""
    if not metrics.get("resumed_from"):
        return None
    return KNOWN_DIFFERENCES.get(re.split(r"[.\[]", metric, maxsplit=1)[0])


def within_noise(stage: str, ref: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """The tolerance for a step left out of `EXACT` (none of this pipeline's): pass@1 within three standard
    errors of the difference of two independent binomial estimates (at least 2 samples' worth, for pass@1
    near 0 or 1: two runs of a nondeterministic sampler are two draws); the last logged training loss within
    10% (relative) or 0.05, GRPO's last reward within 50% or 0.1 (a few steps of a tiny model: the loss
    moves by about that from one batch order to another)."""
    if stage in SAMPLING and "pass@1" in ref:
        p, q, n, m = ref["pass@1"], run["pass@1"], ref["samples"], run["samples"]
        tol = max(3 * math.sqrt(p * (1 - p) / n + q * (1 - q) / m), 2 / min(n, m))
        return {"metric": "pass@1", "ref": p, "run": q, "tolerance": round(tol, 4), "ok": abs(p - q) <= tol}
    key = "loss" if "loss" in ref else None
    if key and "last" in ref[key]:
        p, q = ref[key]["last"], run[key]["last"]
        tol = max(0.1 * abs(p), 0.05)
        return {
            "metric": "loss.last",
            "ref": p,
            "run": q,
            "tolerance": round(tol, 4),
            "ok": abs(p - q) <= tol,
        }
    if stage == "grpo":
        p, q = ref["curves"]["reward"]["last"], run["curves"]["reward"]["last"]
        tol = max(0.5 * abs(p), 0.1)
        return {
            "metric": "reward.last",
            "ref": p,
            "run": q,
            "tolerance": round(tol, 4),
            "ok": abs(p - q) <= tol,
        }
    return {"metric": None, "ok": True}


def check_against_reference(ref_dir: Path, run_dir: Path, steps: list[dict[str, str]]) -> dict[str, Any]:
    from core.artifacts import read_manifest

    rows, bad = [], []
    for s in steps:
        name, stage = s["name"], s["stage"]
        cmp = compare_step(ref_dir, run_dir, name)
        exact = bool(EXACT.match(name))
        row = {"step": name, "expect": "identical" if exact else "within noise", **cmp}
        if exact:
            row["ok"] = not cmp["differing"] and not cmp["metrics"]
        else:
            a, b = read_manifest(ref_dir / name), read_manifest(run_dir / name)
            row["noise"] = within_noise(stage, a.metrics, b.metrics) if a and b else {"ok": False}
            row["ok"] = row["noise"]["ok"]
        row["identical"] = not cmp["differing"] and not cmp["metrics"]
        if cmp["known_metric_differences"]:
            reasons = {m.split(".")[0].split("[")[0] for m in cmp["known_metric_differences"]}
            row["known"] = {m: KNOWN_DIFFERENCES[m] for m in sorted(reasons)}
        rows.append(row)
        if not row["ok"]:
            bad.append(name)
    return {"ok": not bad, "steps": rows, "bad": bad}


# ---------------------------------------------------------------------------------------------- the whole loop


def kills_table(kills: list[dict[str, Any]], stage_of: dict[str, str]) -> list[dict[str, Any]]:
    """Kills per (stage, phase) where they landed; a kill with two steps running (the SFT pair, its two
    evaluations) counts once, under the pair."""
    counts: Counter = Counter()
    for k in kills:
        if not k["running"]:
            counts[("pipeline", "between steps")] += 1
            continue
        stages = sorted({stage_of[s] for s in k["running"]})
        phases = sorted({k["phases"][s] for s in k["running"]})
        label = " + ".join(stages) + (" (side by side)" if len(k["running"]) > 1 else "")
        counts[(label, "/".join(phases))] += 1
    return [{"stage": s, "phase": p, "kills": c} for (s, p), c in sorted(counts.items())]


def _sizes(overrides: Sequence[str]) -> list[str]:
    """The overrides that set what a step does: not where the plan stops or which base model it starts from."""
    return [
        o
        for o in overrides
        if o.split("=", 1)[0] not in ("until", "build_tiny_model", "model_path", "report")
    ]


def stored_timeline(overrides: Sequence[str], path: Path | None = None) -> dict[str, Any] | None:
    """The reference timeline (steps and phase durations) of the bench's recorded run
    (bench/results/chaos_resume.json) when it ran the same pipeline (the same sizes: `until`, and a base
    model given instead of the tiny model built, may differ), cut to this run's steps; else None."""
    path = path or BENCH / "results" / "chaos_resume.json"
    try:
        recorded = read_json(path)
    except (OSError, ValueError):
        return None
    until = next((o.split("=", 1)[1] for o in overrides if o.startswith("until=")), None)
    if _sizes(overrides) != _sizes(recorded.get("overrides", [])):
        return None
    steps = recorded["reference"]["steps"]
    if any(o == "build_tiny_model=false" for o in overrides):
        steps = [s for s in steps if s["stage"] != "tiny_model"]
    names = [s["name"] for s in steps]
    if until is not None:
        if until not in names:
            return None
        steps = steps[: names.index(until) + 1]
    phases = recorded["reference"]["phase_seconds"]
    return {"steps": steps, "phase_seconds": {s["name"]: phases[s["name"]] for s in steps}, "from": str(path)}


def run_chaos(
    work_dir: Path,
    overrides: Sequence[str] = SMALL_PIPELINE,
    kills: int = 8,
    seed: int = 0,
    timeout: float = 3600,
    log: Any = print,
    timeline: dict[str, Any] | None = None,
    delay_scale: float = 1.0,
) -> dict[str, Any]:
    """The reference run, the chaos run (kills and resumes) and the checks, in `work_dir`; the report.
    `delay_scale` shortens the kills' delays (plan_kills) for a machine faster than the timeline's.

    Without `timeline` the reference runs first and the kills are drawn from its timeline. With one
    (`stored_timeline`: the same pipeline's reference, recorded earlier) the kills are drawn from it and
    the reference runs beside the chaos run, which only needs it for check (e); the two share the cores,
    so phases last longer than recorded and a delay lands earlier in its phase."""
    import threading

    work_dir = Path(work_dir)
    ref_dir, run_dir = work_dir / "reference", work_dir / "chaos"
    for d in (ref_dir, run_dir):
        if d.exists():
            raise FileExistsError(f"{d} exists: the chaos bench needs fresh run directories")
    ref_cmd, run_cmd = pipeline_command(ref_dir, overrides), pipeline_command(run_dir, overrides)
    ref = Watcher(ref_dir)
    reference: dict[str, Any] = {}

    def run_reference() -> None:
        # Polled less often: its timeline needs no finer grain than the kills' delays (tenths of seconds).
        reference.update(drive(ref_cmd, ref, [], work_dir / "logs" / "reference", timeout, poll=0.05))

    log(f"reference: {shlex.join(ref_cmd)}")
    beside = None
    if timeline is None:
        run_reference()
        steps, durations = ref.steps, ref.phase_durations(0)
    else:
        beside = threading.Thread(target=run_reference, daemon=True)
        beside.start()
        steps, durations = timeline["steps"], timeline["phase_seconds"]
        log(f"kills drawn from the recorded reference timeline {timeline.get('from')}; reference run beside")
    targets = plan_kills(steps, durations, kills, seed, delay_scale)
    log(
        "kill targets (step, phase, delay): "
        + "; ".join(f"{t.step} {t.phase} +{t.delay_s}s" for t in targets)
    )
    log(f"chaos: {shlex.join(run_cmd)}")
    watcher = Watcher(run_dir)
    chaos = drive(run_cmd, watcher, targets, work_dir / "logs" / "chaos", timeout)
    for i, k in enumerate(chaos["kills"], 1):
        log(f"kill {i}: target {k['target']['step']} {k['target']['phase']} +{k['target']['delay_s']}s -> "
            f"running {k['running']} phases {k['phases']} ({k['fired']})")  # fmt: skip
    if beside is not None:
        beside.join()
    if not reference.get("attempts") or reference["attempts"][-1]["rc"] != 0:
        raise RuntimeError(f"the reference run failed: {reference.get('attempts')}")
    status = read_json(ref_dir / "pipeline.json")
    log(f"reference: {reference['wall_s']} s; steps: " + ", ".join(
        f"{s['name']} {s.get('seconds')}" for s in status["steps"]))  # fmt: skip
    log(f"chaos: {chaos['wall_s']} s, {len(chaos['attempts'])} attempts")

    stage_of = {s["name"]: s["stage"] for s in watcher.steps}
    final_ok = bool(chaos["attempts"]) and chaos["attempts"][-1]["rc"] == 0
    checks = {
        "resumes_succeeded": {
            "ok": final_ok and chaos["resume_failures"] == 0,
            "failures": chaos["resume_failures"],
            "attempts": len(chaos["attempts"]),
        },
        "a_all_done": check_all_done(run_dir),
        "b_done_once": check_manifests_once(watcher),
        "c_outputs_match_manifests": check_outputs(run_dir, watcher.steps),
        "d_samples": check_samples(run_dir, watcher.steps),
        "e_vs_reference": check_against_reference(ref_dir, run_dir, watcher.steps),
        "reference_done_once": check_manifests_once(ref),
        "kills_landed": {
            "ok": len(chaos["kills"]) == len(targets) and not chaos["missed_targets"],
            "kills": len(chaos["kills"]),
            "targets": len(targets),
            "hit_target_phase": sum(k["hit"] for k in chaos["kills"]),
        },
    }
    leftovers = sorted(
        str(p.relative_to(run_dir))
        for pattern in (
            "**/checkpoints",
            "**/*.parts",
            "**/rm_input.parquet",
            "**/verified.parquet",
            "**/.*.tmp",
        )
        for p in run_dir.glob(pattern)
    )
    return {
        "overrides": list(overrides),
        "seed": seed,
        "kills_requested": kills,
        "reference": {
            "run_dir": str(ref_dir),
            "command": shlex.join(ref_cmd),
            "beside_the_chaos_run": beside is not None,
            "wall_s": reference["wall_s"],
            "total_seconds": status.get("total_seconds"),
            "steps": ref.steps,
            "step_seconds": {s["name"]: s.get("seconds") for s in status["steps"]},
            "phase_seconds": ref.phase_durations(0),
        },
        "kills_drawn_from": "this reference run" if timeline is None else timeline.get("from"),
        "chaos": {
            "run_dir": str(run_dir),
            "command": shlex.join(run_cmd),
            **chaos,
            "targets": [asdict(t) for t in targets],
            "leftover_intermediates": leftovers,
        },
        "kills_table": kills_table(chaos["kills"], stage_of),
        "checks": checks,
        "ok": all(c["ok"] for c in checks.values()),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = ["| stage | phase (where it landed) | kills |", "| --- | --- | --- |"]
    lines += [f"| {r['stage']} | {r['phase']} | {r['kills']} |" for r in report["kills_table"]]
    lines += ["", "| check | result | details |", "| --- | --- | --- |"]
    for name, c in report["checks"].items():
        details = {k: v for k, v in c.items() if k not in ("ok", "steps", "files", "appeared_in_attempt")}
        lines.append(f"| {name} | {'pass' if c['ok'] else 'FAIL'} | {json.dumps(details)[:300]} |")
    rows = report["checks"]["e_vs_reference"]["steps"]
    lines += ["", "| step | expected | identical | tolerance check |", "| --- | --- | --- | --- |"]
    for r in rows:
        noise = r.get("noise", {})
        tol = (
            f"{noise['metric']}: {noise['ref']:.4g} vs {noise['run']:.4g} (tol {noise['tolerance']})"
            if noise.get("metric")
            else ""
        )
        same = "yes" if r["identical"] else "no: " + ", ".join((r["differing"] + r["metrics"])[:4])
        if r.get("known"):
            same += f" (known: {', '.join(r['known'])} differs)"
        lines.append(f"| {r['step']} | {r['expect']} | {same} | {tol} |")
    return "\n".join(lines)


SMOKE = {"kills": 1, "until": "data"}


def command_line() -> str:
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(Path.cwd())
    return shlex.join(["python", str(script), *sys.argv[1:]])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    sys.path.insert(0, str(BENCH))
    from _common import parse_args, results_path

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=8, help="SIGKILLs of the chaos run")
    parser.add_argument("--seed", type=int, default=0, help="draws the kill targets")
    parser.add_argument("--until", default=None, help="stop the pipeline after this step (pipeline until=)")
    parser.add_argument("--work-dir", default=None, help="default: a fresh folder under /tmp")
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds for each of the two runs")
    parser.add_argument(
        "--recorded-timeline",
        action="store_true",
        help="draw the kills from the reference timeline recorded in bench/results/chaos_resume.json (same "
        "pipeline) and run the reference beside the chaos run, not before it (what tests/test_chaos.py does)",
    )
    parser.add_argument("overrides", nargs="*", help="more pipeline overrides, after the small pipeline's")
    args = parse_args(parser, argv, SMOKE)
    cmd = command_line()
    print(f"$ {cmd}\n", flush=True)
    overrides = [*SMALL_PIPELINE, *args.overrides] + ([f"until={args.until}"] if args.until else [])
    work = (
        Path(args.work_dir) if args.work_dir else Path(f"/tmp/chaos_resume_{time.strftime('%Y%m%d_%H%M%S')}")
    )
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    timeline = None
    if args.recorded_timeline:
        timeline = stored_timeline(overrides)
        if timeline is None:
            parser.error("no recorded reference timeline of this pipeline in bench/results/chaos_resume.json")
    report = run_chaos(
        work,
        overrides,
        args.kills,
        args.seed,
        args.timeout,
        log=lambda m: print(m, flush=True),
        timeline=timeline,
    )
    from core.artifacts import git_revision, library_versions

    summary = {
        "command": cmd,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "git_revision": git_revision(),
            "versions": library_versions(),
        },
        "load_average": [load_before, os.getloadavg()[0]],
        "args": vars(args),
        **report,
    }
    summary["markdown"] = markdown(report)
    out = results_path(args, "chaos_resume")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(f"\n{summary['markdown']}\n\nall checks: {'pass' if report['ok'] else 'FAIL'}")
    print(f"command: {cmd}\nresults written to {out}")
    return summary


if __name__ == "__main__":
    summary = main()
    sys.exit(0 if summary["ok"] else 1)
