"""`python -m pipeline ... dry_run=true`: compose every step, write its resolved config, print the plan with
each step's amount of work, and run nothing (no child process, no stage started, no pipeline.json).

A dry run comes before the data exists, so the amounts are the ones the configs fix: steps x global batch
for training (or epochs x a record count data_process will decide), prompts x samples x the new-token cap
for sampling and evaluation, and a benchmark's own problem count (its file is there already). Generated
tokens are upper bounds (every sample at its cap); a step that samples every prompt of its split (no
`prompts.max_prompts`) is bounded per prompt only, and the summary line names it. Each step's config goes
to `<run_dir>/plan/<step>.yaml` (`plan/round_0/sft.yaml`, `plan/eval/round_0_sft.yaml`,
`plan/bench/grpo/math500.yaml`), exactly what the step would be given; the folder is cleared first, so a
file left by an earlier plan (a round since dropped) never sits beside this one's.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from core.config import CONF_DIR, write_resolved_config
from core.stages import stage as registered
from pipeline.config import PipelineConfig
from pipeline.run import Step, complete, launched, trl_section

PLAN_DIR = "plan"


@dataclass
class Work:
    text: str
    tokens: int | None = None  # most new tokens the step generates (every sample at its cap)
    uncapped: bool = False  # samples every prompt of its split: bounded per prompt only


def count(n: float) -> str:
    """1234 -> 1,234; 268435456 -> 268.4M; 1.2e9 -> 1.20B."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n:,.0f}"


def accelerate_processes(path: str) -> int:
    """`num_processes` of an accelerate config, found like `accelerate launch` finds it (from the working
    directory), or else from the repository root."""
    for candidate in (Path(path), CONF_DIR.parent / path):
        if candidate.is_file():
            return int(OmegaConf.load(candidate).get("num_processes", 1))
    raise ValueError(f"accelerate_config {path} not found")


def processes(cfg: PipelineConfig, stage: str) -> int:
    """How many processes a training step is launched with: the accelerate config's; under launcher=ray
    `ray_train.num_workers` (null: the cluster decides when the step starts, checked here as one)."""
    if not launched(cfg, registered(stage)):
        return 1
    if cfg.launcher == "ray":
        return cfg.ray_train.num_workers or 1
    return accelerate_processes(str(cfg.accelerate_config))


def epochs(n: float) -> str:
    return f"{n:g} epoch{'' if n == 1 else 's'}"


def training(h: Any, procs: int, unit: str, records: str) -> str:
    """'800 steps x global batch 16 (1 per device x 16 accumulation x 1 process) = 12,800 sequences', or
    with epochs (max_steps <= 0) the records they pass over, whose count data_process decides."""
    batch = h.per_device_train_batch_size * h.gradient_accumulation_steps * procs
    how = (
        f"global batch {batch} ({h.per_device_train_batch_size} per device x "
        f"{h.gradient_accumulation_steps} accumulation x {procs} process{'es' if procs > 1 else ''})"
    )
    if h.max_steps > 0:
        return f"{h.max_steps:,} steps x {how} = {h.max_steps * batch:,} {unit}"
    return f"{epochs(h.num_train_epochs)} over {records} (counted when they exist) at {how}"


def short(path: str, run_dir: str) -> str:
    return path.removeprefix(f"{run_dir}/")


def tiny_model_work(cfg: Any, procs: int) -> Work:
    s = cfg.shape
    return Work(
        f"builds the tiny policy + reward model ({s.num_hidden_layers} layers, hidden {s.hidden_size}, "
        f"vocab {s.vocab_size}) and their tokenizer"
    )


def data_work(cfg: Any, procs: int) -> Work:
    if cfg.input_dir:
        source = f"OpenR1-Math parquet in {cfg.input_dir}"
    else:
        source = f"synthetic, {cfg.synthetic.num_problems:,} problems"
    cap = f" (at most {cfg.max_sft_records:,})" if cfg.max_sft_records is not None else ""
    f = cfg.filters
    sources = [*f.decontaminate_benchmarks, *f.decontaminate]
    decontam = f"decontaminated against {', '.join(sources)}" if sources else "no decontamination"
    return Work(
        f"input {source}; tokenizer {cfg.model.tokenizer_dir}; SFT examples <= {f.max_tokens:,} "
        f"tokens; {cfg.eval_fraction:.0%} of problems held out, traces of {cfg.sft_fraction:.0%} of the "
        f"train problems become SFT records{cap}; {decontam} ({f.decontam_ngram}-grams)"
    )


def sft_work(cfg: Any, procs: int) -> Work:
    h = trl_section("train_sft", cfg, procs)  # TRL's config: its defaults where `sft` is silent
    data = " + ".join(f"{short(d.path, cfg.run_dir)} x{d.weight:g}" for d in cfg.data)
    return Work(
        f"{training(h, procs, 'sequences', 'the SFT records')}, each <= {h.max_length:,} "
        f"tokens; lr {h.learning_rate:g}, peft {cfg.peft.method}; data {data}"
    )


def rm_work(cfg: Any, procs: int) -> Work:
    h = trl_section("reward_model", cfg, procs)  # TRL's config: its defaults where `rm` is silent
    extra = "".join(f" + {short(p, cfg.run_dir)}" for p in cfg.extra_pairs)
    return Work(
        f"{training(h, procs, 'pairs', 'the pairs')}, each <= {h.max_length:,} tokens; "
        f"lr {h.learning_rate:g}, peft {cfg.peft.method}; pairs {short(cfg.pairs, cfg.run_dir)}{extra}"
    )


def sampling_work(cfg: Any, greedy: bool) -> Work:
    """Prompts (the max_prompts cap, or all of the split) x samples (+ the greedy decode) x new-token cap."""
    s, p = cfg.sampling, cfg.prompts
    per_prompt = s.n + int(greedy)
    decodes = f"({s.n} samples + 1 greedy)" if greedy else f"{s.n} samples"
    prompts = f"{p.max_prompts:,}" if p.max_prompts is not None else "all"
    text = f"{prompts} {p.split or 'all'} prompts x {decodes} x <= {s.max_new_tokens:,} new tokens"
    backend = f"; backend {s.backend}" + (
        f", tensor parallel {s.tensor_parallel_size}" if s.tensor_parallel_size > 1 else ""
    )
    scored = f"; reward model scores <= {cfg.rm_max_length:,} tokens" if cfg.use_reward_model else ""
    if p.max_prompts is None:
        bound = per_prompt * s.max_new_tokens
        return Work(f"{text} = <= {count(bound)} tokens per prompt{backend}{scored}", uncapped=True)
    tokens = p.max_prompts * per_prompt * s.max_new_tokens
    return Work(f"{text} = <= {count(tokens)} tokens{backend}{scored}", tokens=tokens)


def reject_sampling_work(cfg: Any, procs: int) -> Work:
    return sampling_work(cfg, greedy=False)


def benchmark_problems(bench: Any) -> int:
    """Problems of a benchmark config: the non-empty lines of its JSONL file (a relative path from the
    working directory, else the repository root, as evaluation finds it), or its generators' sizes."""
    if bench.reasoning_gym:
        return sum(task.size for task in bench.reasoning_gym)
    path = Path(bench.path)
    if not path.is_file():
        path = CONF_DIR.parent / bench.path
    with path.open() as f:
        return sum(1 for line in f if line.strip())


def benchmark_work(cfg: Any) -> Work:
    """A benchmark's problems (capped by prompts.max_prompts) x samples (+ greedy) x the new-token cap;
    the count is known before the run, so the bound is a number of tokens, not per prompt."""
    s, cap = cfg.sampling, cfg.prompts.max_prompts
    problems = benchmark_problems(cfg.benchmark)
    if cap is not None:
        problems = min(problems, cap)
    per_problem = s.n + int(cfg.greedy)
    decodes = f"({s.n} samples + 1 greedy)" if cfg.greedy else f"{s.n} samples"
    tokens = problems * per_problem * s.max_new_tokens
    name = cfg.benchmark.name or Path(cfg.benchmark.path).stem
    text = (
        f"{name}: {problems:,} problems x {decodes} x <= {s.max_new_tokens:,} new tokens = <= {count(tokens)} "
        f"tokens; protocol {cfg.protocol} (T {s.temperature:g}, top-p {s.top_p:g}); backend {s.backend}"
        + (f", tensor parallel {s.tensor_parallel_size}" if s.tensor_parallel_size > 1 else "")
    )
    return Work(text, tokens=tokens)


def evaluate_work(cfg: Any, procs: int) -> Work:
    if getattr(cfg, "benchmark", None) is not None:
        return benchmark_work(cfg)
    return sampling_work(cfg, greedy=cfg.greedy)


def grpo_work(cfg: Any, procs: int) -> Work:
    """Completions an optimizer step trains on: per device x accumulation x processes; each generation
    batch is trained on num_iterations times, so it generates that many fewer."""
    h = trl_section("grpo", cfg, procs)  # TRL's config: its defaults where `grpo` is silent
    per_step = h.per_device_train_batch_size * h.gradient_accumulation_steps * procs
    group = f"{per_step // h.num_generations} prompts x {h.num_generations}"
    cap = f"<= {h.max_completion_length:,} new tokens"
    backend = f"; generation {cfg.generation.backend}, lr {h.learning_rate:g}, peft {cfg.peft.method}"
    if h.max_steps <= 0:
        prompts = f"{cfg.data.sample_prompts:,}" if cfg.data.sample_prompts is not None else "all"
        text = f"{epochs(h.num_train_epochs)} of {prompts} prompts x {h.num_generations} completions x {cap}"
        return Work(text + backend, uncapped=cfg.data.sample_prompts is None)
    tokens = h.max_steps * per_step * h.max_completion_length // h.num_iterations
    text = f"{h.max_steps:,} steps x {per_step} completions ({group}) x {cap} = <= {count(tokens)} tokens"
    return Work(text + backend, tokens=tokens)


WORK: dict[str, Callable[[Any, int], Work]] = {
    "tiny_model": tiny_model_work,
    "data_process": data_work,
    "train_sft": sft_work,
    "reward_model": rm_work,
    "reject_sampling": reject_sampling_work,
    "grpo": grpo_work,
    "evaluate": evaluate_work,
}


def summary(steps: list[Step], works: list[Work]) -> str:
    tokens = sum(w.tokens or 0 for w in works)
    uncapped = [s.name for s, w in zip(steps, works, strict=True) if w.uncapped]
    line = f"generation: <= {count(tokens)} new tokens in all (every sample at its cap)"
    if uncapped:
        line += (
            f", plus every prompt of the split in {', '.join(uncapped)} (no max_prompts: bounded per prompt)"
        )
    return line


def dry_run(cfg: PipelineConfig, steps: list[Step]) -> dict[str, Any]:
    """Write `plan/<step>.yaml` for the composed `steps`, print the plan, return it (nothing runs)."""
    plan_dir = Path(cfg.run_dir) / PLAN_DIR
    works = [WORK[s.stage](s.cfg, processes(cfg, s.stage)) for s in steps]
    shutil.rmtree(plan_dir, ignore_errors=True)
    for step in steps:
        write_resolved_config(plan_dir, step.cfg, f"{step.name}.yaml")
    # Complete now: a run would skip it unless a step before it runs again (its inputs would change).
    done = [complete(s) for s in steps]
    print(f"dry run: {len(steps)} steps, nothing runs; each step's resolved config in {plan_dir}/<step>.yaml")
    for i, (step, work, finished) in enumerate(zip(steps, works, done, strict=True), 1):
        mark = " [complete]" if finished else ""
        print(f"[{i}/{len(steps)}] {step.name} ({step.stage}){mark}: {work.text}")
    print(summary(steps, works), flush=True)
    return {
        "dry_run": True,
        "plan_dir": str(plan_dir),
        "steps": [
            {"name": s.name, "stage": s.stage, "overrides": s.overrides, "work": w.text, "complete": c}
            for s, w, c in zip(steps, works, done, strict=True)
        ],
    }
