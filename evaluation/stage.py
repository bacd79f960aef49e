"""Evaluation: sampling and verification on held-out prompts or a benchmark, → metrics.

    python -m evaluation name=round_0_sft model.path=runs/default/round_0/sft/model
    python -m evaluation name=final sampling.n=16 use_reward_model=true \
        reward_model.path=runs/default/round_1/reward_model/model prompts.path=my_questions.jsonl prompts.split=null
    python -m evaluation name=r1_math500 benchmark=math500 sampling=default model.path=/models/x
    python -m evaluation benchmark=aime24 protocol=greedy model.path=/models/x
    python -m evaluation benchmark=my_set.jsonl benchmark.problem_field=question model.path=...

Writes `runs/<run>/eval/<name>/`: samples.parquet (+ greedy.parquet), scored.parquet, metrics.json,
metrics.md and the manifest (+ benchmark.jsonl, the benchmark's problems and normalised golds as sampled).
Metrics (see reject_sampling.metrics): pass@1 at the sampling temperature averaged over n samples with its
standard error over prompts, pass@k, maj@k, best-of-N by reward model (with use_reward_model), greedy
accuracy (with greedy=true), truncation rate and completion lengths; a benchmark adds its name, protocol and
size, and by_<field> breakdowns (MATH-500: by_subject, by_level).

A benchmark (evaluation.benchmarks) is loaded and every gold checked with the verifier before a model
loads, then written as a prompt file in the output directory that sample.py samples like any other; so
sampling, resuming and the manifest's input identity work as for held-out prompts, and `prompts.max_prompts`
still caps the problems (the first N).

What this reuses from reject_sampling, and why it stays there: evaluation is the rejection-sampling stage's
sample → verify → (reward-model) score, with metrics at the end instead of a selection. So it calls the same
steps, reject_sampling.scoring (draw_samples through sample.py, verify_and_score, check_inputs,
clear_intermediates, the table helpers; each step's file reused only under its fingerprint, core.chunks), and samples with the same `SamplingConfig` and reads
prompts through the same `PromptSource` (reject_sampling.config): a pass@1 here measures exactly the decoding
that made the training data, and a fix to either stage's sampling or scoring is a fix to both. The metrics
(reject_sampling.metrics: pass@k, maj@k, best-of-N) stay in reject_sampling too, because the
rejection-sampling stage reports the same numbers on its own samples (`sample_metrics`), and scoring uses its
`answer_key`. Only what no other stage uses lives here: this run function, the benchmarks
(evaluation.benchmarks) and their config (evaluation.config).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pandas as pd

from core.artifacts import atomic_path, describe_file, write_json_atomic
from core.chunks import digest, read_fingerprint
from core.judge import use as use_judge
from core.lifecycle import StageRun
from core.models import chat_renderer, load_tokenizer
from evaluation.benchmarks import Benchmark, load_benchmark, write_prompts
from evaluation.config import EvaluateConfig
from reject_sampling.config import PromptSource
from reject_sampling.metrics import breakdown_metrics, metrics_markdown, sample_metrics
from reject_sampling.scoring import (
    check_inputs,
    clear_intermediates,
    describe_table,
    draw_samples,
    sample_preview,
    verify_and_score,
    verify_samples,
    write_table,
)

log = logging.getLogger(__name__)
STAGE = "evaluate"
INTERMEDIATES = [
    "samples.parquet",
    "samples.parquet.parts",
    "greedy.parquet",
    "greedy.parquet.parts",
    "verified.parquet",
    "scored.parquet",
    "rm_input.parquet",
    "rm_scores.parquet",
    "rm_scores.parquet.parts",
]
BENCHMARK_PROMPTS = "benchmark.jsonl"


def draw(cfg: EvaluateConfig, out: Path, name: str, greedy: bool) -> Path:
    sampling = dataclasses.replace(cfg.sampling, n=1, temperature=0.0) if greedy else cfg.sampling
    return draw_samples(cfg, sampling, out / f"{name}.parquet", log_file=out / f"logs/{name}.log")


def use_benchmark(
    cfg: EvaluateConfig, out: Path, check_golds: bool = True
) -> tuple[EvaluateConfig, Benchmark | None]:
    """The config to run: with a benchmark, its prompts are the benchmark's problems (written to
    `out/benchmark.jsonl`, the first `prompts.max_prompts` of them kept) and its verifier judges them."""
    if cfg.benchmark is None:
        return cfg, None
    bench = load_benchmark(cfg.benchmark, cfg.verifier, check=check_golds)
    out.mkdir(parents=True, exist_ok=True)
    prompts = PromptSource(
        path=str(write_prompts(bench, out / BENCHMARK_PROMPTS)),
        split=None,
        max_prompts=cfg.prompts.max_prompts,
    )
    return dataclasses.replace(cfg, prompts=prompts, verifier=bench.verifier), bench


def judge(samples: pd.DataFrame, cfg: EvaluateConfig, bench: Benchmark | None) -> pd.DataFrame:
    """Verdicts against the gold answers. A benchmark's verifier may need another gold than the one shown
    (reasoning-gym's entry as JSON): it is given that one, and the table keeps the shown gold."""
    if bench is None:
        return verify_samples(samples, cfg.verifier, cfg.verifier_workers)
    golds = bench.golds
    verified = verify_samples(
        samples.assign(answer=samples["id"].map(golds)), cfg.verifier, cfg.verifier_workers
    )
    return verified.assign(answer=samples["answer"])


def benchmark_metrics(cfg: EvaluateConfig, bench: Benchmark, scored: pd.DataFrame) -> dict:
    """The benchmark's name, protocol and size, and pass@1 by each breakdown field."""
    metrics: dict = {
        "benchmark": bench.name,
        "protocol": cfg.protocol,
        "benchmark_problems": len(bench.items),
    }
    for name in bench.breakdown:
        groups = {item.id: item.groups[name] for item in bench.items}
        metrics[f"by_{name}"] = breakdown_metrics(scored, groups)
    return metrics


def check(cfg: EvaluateConfig, check_golds: bool = True) -> tuple[EvaluateConfig, Benchmark | None, StageRun]:
    """At the door: the benchmark (its golds checked, its prompt file written) or the prompts, and the
    models, before anything is loaded. Returns the config to run, the benchmark and the run's identity."""
    cfg, bench = use_benchmark(cfg, Path(cfg.output_dir), check_golds)
    _, inputs = check_inputs(cfg, needs_gold=True)
    return cfg, bench, StageRun(STAGE, cfg, Path(cfg.output_dir), inputs)


def identify(cfg: EvaluateConfig) -> StageRun:
    """What `run` would be (the pipeline's skip check). The golds are not verified again (seconds for
    MATH-500; the run that finished checked them); a benchmark's prompt file is written only if it changed
    (evaluation.benchmarks.write_prompts), and its content is the identity."""
    return check(cfg, check_golds=False)[2]


def run(cfg: EvaluateConfig) -> dict:
    out = Path(cfg.output_dir)
    cfg, bench, stage = check(cfg)
    use_judge(cfg.verifier, cfg.judge)
    if (done := stage.begin()) is not None:
        return done.metrics
    clear_intermediates(out, INTERMEDIATES, force=cfg.force)

    samples_path = draw(cfg, out, "samples", greedy=False)
    scored = verify_and_score(
        samples_path, out, verifier=cfg.verifier, verifier_workers=cfg.verifier_workers,
        reward_model=cfg.reward_model if cfg.use_reward_model else None, every_row=cfg.rm_score_all,
        max_length=cfg.rm_max_length, batch_tokens=cfg.rm_batch_tokens, use_cpu=cfg.use_cpu,
        progress=cfg.progress, log_file=out / "logs/rm_score.log",
        judge=None if bench is None else lambda samples: judge(samples, cfg, bench),
        judge_identity=None if bench is None else f"{bench.name}:{digest(bench.golds)}",
    )  # fmt: skip
    scored_file = describe_table(scored, out / "scored.parquet")
    outputs = {"samples": describe_file(samples_path, out), "scored": scored_file}
    if bench is not None:
        outputs["benchmark"] = describe_file(out / BENCHMARK_PROMPTS, out)
    (out / "verified.parquet").unlink(missing_ok=True)  # scored.parquet holds the same rows and more
    metrics = {
        "name": cfg.name,
        "policy": cfg.model.name,
        **(benchmark_metrics(cfg, bench, scored) if bench is not None else {}),
        **sample_metrics(scored, cfg.maj_ks or None, best_of_n=cfg.use_reward_model),
        "preview": sample_preview(chat_renderer(cfg.model, load_tokenizer(cfg.model)), scored),
    }
    if cfg.greedy:
        greedy_path = draw(cfg, out, "greedy", greedy=True)
        greedy = judge(pd.read_parquet(greedy_path), cfg, bench)
        metrics["greedy_accuracy"] = float(greedy["correct"].fillna(False).astype(bool).mean())
        # Judged in place under sample.py's fingerprint, so a rerun after a kill keeps it, not resamples.
        outputs["greedy"] = write_table(greedy, greedy_path, read_fingerprint(greedy_path))
    write_json_atomic(out / "metrics.json", metrics)
    title = f"Evaluation: {cfg.name}" + (f" on {bench.name}" if bench is not None else "")
    with atomic_path(out / "metrics.md") as tmp:
        tmp.write_text(metrics_markdown(metrics, title))
    outputs["metrics"] = describe_file(out / "metrics.json", out)
    log.info(
        "%s %s%s: pass@1 %.3f%s over %d prompts x %d samples (%s)",
        STAGE, cfg.name, f" on {bench.name}" if bench is not None else "", metrics["pass@1"],
        f", greedy {metrics['greedy_accuracy']:.3f}" if cfg.greedy else "",
        metrics["prompts"], metrics["samples_per_prompt"], out,
    )  # fmt: skip
    stage.finish(outputs, metrics)
    return metrics
