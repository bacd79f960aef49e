"""The whole pipeline: data → rounds of (SFT → reward model → rejection sampling) → GRPO → evaluation → report.

    python -m pipeline                                   # what `bash train.sh` runs: the offline default
    python -m pipeline rounds=3 train_sft.sft.max_steps=800 reject_sampling.sampling.n=8
    python -m pipeline experiment=qwen2.5-1.5b_lora_16k model_path=/models/Qwen2.5-1.5B-Instruct \
        input_dir=/data/OpenR1-Math-220k dry_run=true          # compose, write plan/, print the work
    python -m pipeline -m train_sft.sft.learning_rate=1e-3,3e-3                            # a sweep

Round 0 fine-tunes the base model on the reference traces. Round k > 0 continues from round k-1's model
for `next_round_steps` steps on round k-1's selected samples (mixed with the original records, weight
`mix_original`) and, beside it, a compute-matched control: the same model, the same steps, on the data it
already had. Every SFT model (and control) is evaluated on the held-out prompts with the round's reward
model for best-of-N; GRPO starts from the last round's model and is evaluated last. With
`eval_benchmarks=[math500,aime24]`, round 0's SFT model, the last round's and GRPO's are then evaluated on
those benchmarks (`bench/<model>/<benchmark>`, `python -m evaluation benchmark=<name>`).

On a machine without a GPU, a round's SFT and its control run side by side (then their two evaluations),
each child with half the cores (OMP_NUM_THREADS): the tiny model's small matrices use a second thread
poorly (a training step takes 0.38 s on one thread, 0.25 s on two), so the pair finishes ~25% sooner.

Each stage runs in its own process (a model-loading stage must give its memory back) from a config
composed here exactly as `python -m <stage> <overrides>` would compose it. All configs are composed before
the first stage runs, so a typo fails at once. A step whose output is already complete for its config
and inputs is skipped here, without starting its process: the stage's `identify` (core/stages.py) is
asked in this process, just before the step's turn (an upstream step that ran changes its inputs). So
re-running the same command after a crash resumes at the first unfinished step, and re-running a
finished pipeline costs about the composition of its configs. TRL checks the training steps from the
first unfinished one on (importing trl costs ~7 s; a finished step has been checked by its own run).

One pipeline per run directory: the run holds `runs/<run>/.lock` (core/lock.py) while it runs; a second
pipeline there, or a stage started by hand inside it, fails at once naming this one's pid. The plan, each
stage's wall time and status go to `runs/<run>/pipeline.json` (a step found complete: `skipped: true`,
with the seconds of the run that did it); each stage's output is also kept in
`runs/<run>/logs/pipeline/<step>.log`.

A stage's overrides, in order: `common`, then the stage's section (both from the preset), then the command
line's overrides of those two sections in argv order (`cli_overrides`, see pipeline/config.py), then what
the plan itself sets (round, model paths, data, next-round steps). A later value of the same key replaces
an earlier one in that list (`last_wins`), so a preset's `sft=long_context` survives
`train_sft.sft.max_steps=800` (another key) and is replaced by `train_sft.sft=tiny` (the same key).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from core.artifacts import manifest_path, write_json_atomic
from core.config import CONF_DIR, compose, to_typed
from core.launch import run_stage_process
from core.layout import RunLayout
from core.lock import hold, release
from core.stages import Stage, load, stage
from pipeline.config import PipelineConfig, cli_entries

log = logging.getLogger(__name__)


Setting = tuple[str, Any]  # (dotted key, value): ("sft.max_steps", 800), ("peft", "lora")


@dataclass
class Step:
    name: str  # its directory under the run (core/layout.py): "round_1/sft_control"
    stage: str  # a name in core.stages.STAGES (= its conf/<stage>.yaml)
    settings: list[Setting]  # in order; the last value of a key holds (`last_wins`)
    cfg: Any = field(default=None, repr=False)
    pair: str | None = None  # adjacent steps with the same pair are independent: they may run side by side

    def __post_init__(self) -> None:
        self.settings = last_wins(self.settings)

    @property
    def overrides(self) -> list[str]:
        """The settings as `key=value` lines, for pipeline.json and the dry run's plan (read, not parsed)."""
        return [f"{key}={shown(value)}" for key, value in self.settings]


def shown(value: Any) -> str:
    if isinstance(value, str):
        return value
    return (
        json.dumps(value) if isinstance(value, list | dict) else str(OmegaConf.create({"v": value}).v).lower()
    )


def settings(section: dict[str, Any], prefix: str = "") -> list[Setting]:
    """{sft: {learning_rate: 0.001}, peft: lora} -> [("sft.learning_rate", 0.001), ("peft", "lora")]."""
    out: list[Setting] = []
    for key, value in section.items():
        if isinstance(value, dict) and value:
            out += settings(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def override_key(override: str) -> str:
    """What an override line sets: `++sft.max_steps=8` and `sft.max_steps=9` set one key, `sft=long_context`
    (the group choice) another."""
    return override.partition("=")[0].lstrip("+~")


def last_wins(items: list[Setting]) -> list[Setting]:
    """Drop every setting whose key comes again later: the value that holds is the last one, and the list a
    step records (pipeline.json, the dry run's plan) shows each key once, with its value."""
    last = {key: i for i, (key, _) in enumerate(items)}
    return [kv for i, kv in enumerate(items) if last[kv[0]] == i]


def stage_settings(cfg: PipelineConfig, section: str) -> list[Setting]:
    """The user's settings of one stage: the preset's `common` and `section`, then the command line's
    overrides of either in argv order (what was typed beats the preset it was typed against)."""
    out = [*settings(cfg.common), *settings(getattr(cfg, section))]
    for name, value in cli_entries(cfg.cli_overrides):
        if name in ("common", section):
            out += settings(value)
    return out


_OPTION = re.compile(r"[\w.\-+]+")


def compose_step(step: Step) -> Any:
    """The step's config, composed as `python -m <stage>` composes it, its settings handed over as values.

    Group choices (`sft: long_context`: a key naming a folder of conf/) are what Hydra composes; every
    other setting is then set on the composed config as the value it is (a string with quotes, commas or
    backslashes included), so nothing is written in Hydra's override grammar and nothing needs quoting. The
    config stays closed: a key the stage does not have fails here, as it would on its command line."""
    groups = [
        (k, v) for k, v in step.settings if "." not in k and isinstance(v, str) and (CONF_DIR / k).is_dir()
    ]
    for key, option in groups:
        if not _OPTION.fullmatch(option):
            raise ValueError(f"{key}={option!r} is not the name of a file in conf/{key}/")
    composed = compose(step.stage, [f"{key}={option}" for key, option in groups])
    for key, value in step.settings:
        if (key, value) not in groups:
            OmegaConf.update(composed, key, value, merge=True)
    return to_typed(composed, stage(step.stage).load_schema())


def sft_data(layout: RunLayout, round: int, mix_original: float) -> Setting:
    sources = [{"path": layout.round_dir(round - 1, "reject_sampling"), "weight": 1.0}]
    if mix_original > 0:
        sources.insert(0, {"path": layout.data, "weight": mix_original})
    return ("data", sources)


def plan(cfg: PipelineConfig) -> list[Step]:
    """Every stage of the run, in order, with its settings (nothing is composed or run here). A step's name
    is its directory under the run (core/layout.py)."""
    run: list[Setting] = [("run_name", cfg.run_name), ("run_dir", cfg.run_dir)]
    at = RunLayout(cfg.run_dir)

    def user(section: str) -> list[Setting]:
        return [*run, *stage_settings(cfg, section)]

    steps: list[Step] = []
    if cfg.build_tiny_model:
        steps.append(Step("tiny_model", "tiny_model", list(run)))
    base_model = [("model.path", cfg.model_path)] if cfg.model_path else []
    data = [*user("data_process"), *base_model]
    if cfg.input_dir:
        data.append(("input_dir", cfg.input_dir))
    steps.append(Step("data", "data_process", data))

    def evaluate(name: str, model_dir: str, rm_round: int | None) -> Step:
        over = [*user("evaluate"), ("name", name), ("model.name", name), ("model.path", model_dir)]
        if rm_round is not None:
            over += [("use_reward_model", True), ("reward_model.path", at.model(rm_round, "reward_model"))]
        return Step(at.eval_step(name), "evaluate", over)

    for k in range(cfg.rounds):
        sft = [*user("train_sft"), ("round", k)]
        evals: list[Step] = []
        rm_round = k if cfg.use_reward_model else None
        if k == 0:
            steps.append(Step(at.round_step(0, "sft"), "train_sft", [*sft, *base_model]))
        else:
            more = [("model.path", at.model(k - 1)), ("sft.max_steps", cfg.next_round_steps)]
            if cfg.next_round_learning_rate is not None:
                more.append(("sft.learning_rate", cfg.next_round_learning_rate))
            steps.append(
                Step(at.round_step(k, "sft"), "train_sft", [*sft, *more, sft_data(at, k, cfg.mix_original)])
            )
            if cfg.control:
                control = [
                    *sft,
                    *more,
                    ("output_dir", at.round_dir(k, "sft_control")),
                    ("data", [{"path": at.data}]),
                ]
                steps.append(Step(at.round_step(k, "sft_control"), "train_sft", control))
                evals.append(evaluate(f"round_{k}_control", at.model(k, "sft_control"), rm_round))
                steps[-2].pair = steps[-1].pair = at.round_step(k, "sft")
        evals.insert(0, evaluate(f"round_{k}_sft", at.model(k), rm_round))
        if len(evals) == 2:
            evals[0].pair = evals[1].pair = f"eval/round_{k}"
        if cfg.use_reward_model:
            rm = [*user("reward_model"), ("round", k)]
            if k > 0:
                # The original pairs plus the previous round's on-policy ones (a weak policy yields few).
                rm.append(("extra_pairs", [at.round_dir(k - 1, "reject_sampling")]))
            steps.append(Step(at.round_step(k, "reward_model"), "reward_model", rm))
        steps += evals
        if k == cfg.rounds - 1 and not cfg.last_round_sampling:
            continue
        rs = [*user("reject_sampling"), ("round", k)]
        if not cfg.use_reward_model:
            rs += [("use_reward_model", False), ("selection.policy", "verified")]
        steps.append(Step(at.round_step(k, "reject_sampling"), "reject_sampling", rs))
    if cfg.run_grpo:
        # GRPO belongs to the last round: it starts from that round's SFT model (its config's default).
        last = cfg.rounds - 1
        steps.append(Step(at.round_step(last, "grpo"), "grpo", [*user("grpo"), ("round", last)]))
        steps.append(evaluate("grpo", at.model(last, "grpo"), last if cfg.use_reward_model else None))
    return steps + benchmark_steps(cfg, run)


def benchmarked_models(cfg: PipelineConfig) -> dict[str, str]:
    """The models `eval_benchmarks` evaluates, by the name the report shows: the base model (with
    `benchmark_base_model`), round 0's SFT model, the last round's (when it is another) and GRPO's."""
    at, last = RunLayout(cfg.run_dir), cfg.rounds - 1
    models = {}
    if cfg.benchmark_base_model:
        models["base"] = cfg.model_path or at.tiny_policy
    models["round_0_sft"] = at.model(0)
    if last > 0:
        models[f"round_{last}_sft"] = at.model(last)
    if cfg.run_grpo:
        models["grpo"] = at.model(last, "grpo")
    return models


def benchmark_steps(cfg: PipelineConfig, run: list[Setting]) -> list[Step]:
    """`bench/<model>/<benchmark>` for every benchmarked model and benchmark, after every other step: the
    held-out evaluations already tell how the run went, and on a GPU a benchmark at 32k tokens is the
    longest evaluation, which should not hold back training.

    Each is `python -m evaluation benchmark=<name>` with `common` and the `benchmarks`
    section (not `evaluate`'s: the held-out prompt cap or the offline 64-token limit is not the benchmark's
    protocol)."""
    at = RunLayout(cfg.run_dir)
    out = []
    for model, path in benchmarked_models(cfg).items():
        for bench in cfg.eval_benchmarks:
            over = [
                *run,
                *stage_settings(cfg, "benchmarks"),
                ("benchmark", bench),
                ("name", f"{model}_{bench}"),
                ("model.name", model),
                ("model.path", path),
                ("output_dir", at.bench_dir(model, bench)),
            ]
            out.append(Step(at.bench_step(model, bench), "evaluate", over))
    return out


def compose_all(steps: list[Step], cfg: PipelineConfig | None = None) -> None:
    """Compose and type every stage's config up front, then have TRL check each training step's TRL section
    (`check_trl`): a typo or a bad value fails before any work."""
    compose_steps(steps)
    check_trl(steps, cfg)


def compose_steps(steps: list[Step]) -> None:
    for step in steps:
        try:
            step.cfg = compose_step(step)
        except Exception as e:
            raise ValueError(
                f"pipeline step {step.name}: conf/{step.stage}.yaml {step.overrides}: {e}"
            ) from e


def check_trl(steps: list[Step], cfg: PipelineConfig | None) -> None:
    """TRL's own checks of each training step's TRL section (`trl_section`). `cfg` says how many processes
    each training step is launched with (launcher, accelerate_config); without it, one each."""
    for step in steps:
        if step.stage in TRL_SECTIONS:
            from pipeline.dry_run import processes  # imports this module: not at the top

            n = processes(cfg, step.stage) if cfg is not None else 1
            try:
                trl_section(step.stage, step.cfg, n)
            except Exception as e:
                raise ValueError(
                    f"pipeline step {step.name} ({n} process{'es' if n > 1 else ''}): {e}"
                ) from e


# Training stage -> the function building its TRL config from its composed config (validated for N processes).
TRL_SECTIONS = {
    "train_sft": "train_sft.stage:training_args",
    "reward_model": "reward_model.stage:training_args",
    "grpo": "grpo.stage:training_args",
}


def trl_section(stage_name: str, cfg: Any, processes: int) -> Any:
    """What a training stage checks at its door, here before any stage runs: its TRL section built into
    TRL's config class as the stage will build it from its composed config `cfg`, with `processes` as TRL's
    world size (the number the step is launched with, not this process's), so TRL's own checks (a name it
    lacks, GRPO's generation batch not holding whole groups) fail now. Returns that config (the dry run
    reads its batch sizes). It touches no device and starts no process group; the first call imports trl
    (~7 s), after every step has composed."""
    import importlib

    module, _, function = TRL_SECTIONS[stage_name].partition(":")
    build = getattr(importlib.import_module(module), function)
    return build(cfg, Path(cfg.output_dir), processes=processes)


def complete(step: Step) -> bool:
    """Whether the step's output is complete for its config and inputs, asked of its stage's `identify` in
    this process (no process start, no torch). What keeps the answer from being yes (an upstream output
    not there yet, an input that fails its check) makes it no: the step's own process then runs it, and
    says what is wrong."""
    s = stage(step.stage)
    if s.identify is None or not manifest_path(step.cfg.output_dir).is_file():
        return False
    try:
        run = load(s.identify)(step.cfg)
    except Exception as e:  # the stage's own run reports it, with its context
        log.debug("%s: not checked here (%s: %s); its process will run", step.name, type(e).__name__, e)
        return False
    return run is not None and run.complete()


def previous_records(status_path: Path) -> dict[str, dict[str, Any]]:
    """The step records of an earlier pipeline.json, by step name (a skipped step keeps its seconds)."""
    try:
        return {r["name"]: r for r in json.loads(status_path.read_text())["steps"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def launched(cfg: PipelineConfig, s: Stage) -> bool:
    """Whether a step is started by the launcher (a training stage, `launcher=accelerate` or `ray`)."""
    return cfg.launcher != "python" and s.training


def batches(steps: list[Step], side_by_side: bool) -> list[list[int]]:
    """Indices of the steps to run together: adjacent steps of one `pair` with `side_by_side`, else one by one."""
    out: list[list[int]] = []
    for i, step in enumerate(steps):
        if side_by_side and out and step.pair is not None and steps[out[-1][-1]].pair == step.pair:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def run(cfg: PipelineConfig) -> dict[str, Any]:
    steps = plan(cfg)
    if cfg.until is not None:
        names = [s.name for s in steps]
        if cfg.until not in names:
            raise ValueError(f"until={cfg.until} is not a step of this pipeline; steps: {names}")
        steps = steps[: names.index(cfg.until) + 1]
    compose_steps(steps)
    if cfg.dry_run:
        from pipeline.dry_run import dry_run  # imports this module: not at the top

        check_trl(steps, cfg)
        return dry_run(cfg, steps)
    run_dir = Path(cfg.run_dir)
    took_lock = hold(run_dir, "pipeline")
    try:
        return run_steps(cfg, steps, run_dir)
    finally:
        if took_lock:
            release(run_dir)


def run_steps(cfg: PipelineConfig, steps: list[Step], run_dir: Path) -> dict[str, Any]:
    started = time.time()
    first = next((i for i, s in enumerate(steps) if not complete(s)), len(steps))
    check_trl(steps[first:], cfg)
    status_path = run_dir / "pipeline.json"
    before = previous_records(status_path)
    status: dict[str, Any] = {
        "steps": [{"name": s.name, "stage": s.stage, "overrides": s.overrides} for s in steps]
    }
    if cfg.published_as:
        status["published_as"] = cfg.published_as  # the report reads it (pipeline/published.yaml)
    records = status["steps"]
    side_by_side = False
    if first < len(steps) and cfg.side_by_side and cfg.launcher == "python":
        from core.training import resolve_use_cpu  # imports torch: only when a step is to run

        side_by_side = resolve_use_cpu(None)
    cores = len(os.sched_getaffinity(0))

    def launch(step: Step, tee: bool, env: dict[str, str] | None = None) -> float:
        t0 = time.time()
        s = stage(step.stage)
        run_stage_process(
            s.run,
            s.schema,
            step.cfg,
            log_file=RunLayout(cfg.run_dir).step_log(step.name),
            tee=tee,
            accelerate_config=cfg.accelerate_config if launched(cfg, s) else None,
            ray_train=cfg.ray_train if launched(cfg, s) and cfg.launcher == "ray" else None,
            env=env,
        )
        return time.time() - t0

    for batch in batches(steps, side_by_side):
        for i in [i for i in batch if i < first or complete(steps[i])]:
            print(f"==== [{i + 1}/{len(steps)}] {steps[i].name}: complete, skipped ====", flush=True)
            seconds = before.get(steps[i].name, {}).get("seconds")
            records[i].update(status="done", skipped=True, **({"seconds": seconds} if seconds else {}))
            batch.remove(i)
        if not batch:
            continue
        group = [steps[i] for i in batch]
        where = f"{batch[0] + 1}" + (f"-{batch[-1] + 1}" if len(batch) > 1 else "")
        print(
            f"\n==== [{where}/{len(steps)}] {' + '.join(f'{s.name} ({s.stage})' for s in group)} ====",
            flush=True,
        )
        for i in batch:
            records[i]["status"] = "running"
        write_json_atomic(status_path, status)
        if len(group) == 1:
            outcomes: list[float | BaseException] = []
            try:
                outcomes.append(launch(group[0], tee=True))
            except RuntimeError as e:
                outcomes.append(e)
        else:
            # Side by side, each with its share of the cores; their output goes to their logs only.
            threads = str(max(1, cores // len(group)))
            print(
                f"side by side, {threads} thread(s) each; logs: {[RunLayout(cfg.run_dir).step_log(s.name) for s in group]}",
                flush=True,
            )
            with ThreadPoolExecutor(len(group)) as pool:
                futures = [pool.submit(launch, s, False, {"OMP_NUM_THREADS": threads}) for s in group]
            outcomes = [f.exception() or f.result() for f in futures]
        for i, step, outcome in zip(batch, group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                records[i]["status"] = "failed"
            else:
                records[i].update(status="done", seconds=round(outcome, 1))
                print(f"==== {step.name} done in {outcome:.0f} s ====", flush=True)
        status["total_seconds"] = round(time.time() - started, 1)
        write_json_atomic(status_path, status)
        if failed := [o for o in outcomes if isinstance(o, BaseException)]:
            raise failed[0]
    status["total_seconds"] = round(time.time() - started, 1)
    write_json_atomic(status_path, status)
    if cfg.report:
        from pipeline.report import write_report

        report = write_report(run_dir)
        print(f"\nreport: {report}", flush=True)
    log.info("pipeline finished in %.0f s; steps and timings in %s", time.time() - started, status_path)
    return status
