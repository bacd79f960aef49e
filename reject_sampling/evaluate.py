"""Evaluation: the rejection-sampling stage's sampling and verification on held-out prompts.

    python -m reject_sampling.evaluate name=round_0_sft model.path=runs/default/round_0/sft/model
    python -m reject_sampling.evaluate name=final sampling.n=16 use_reward_model=true \
        reward_model.path=runs/default/round_1/reward_model/model prompts.path=my_questions.jsonl prompts.split=null

Writes `runs/<run>/eval/<name>/`: samples.parquet (+ greedy.parquet), scored.parquet, metrics.json,
metrics.md and the manifest. Metrics (see reject_sampling.metrics): pass@1 at the sampling temperature
averaged over n samples, pass@k, maj@k, best-of-N by reward model (with use_reward_model), greedy accuracy
(with greedy=true), truncation rate and completion lengths.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import pandas as pd

from core.artifacts import describe_file, invalidate, is_complete, read_manifest, write_json_atomic
from core.config import finish_stage, hydra_entry, stage_config_hash
from core.models import chat_renderer, load_tokenizer
from reject_sampling.config import EvaluateConfig
from reject_sampling.metrics import metrics_markdown, sample_metrics
from reject_sampling.scoring import (
    check_inputs,
    describe_table,
    draw_samples,
    restart_if_changed,
    sample_preview,
    score_with_reward_model,
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


def draw(cfg: EvaluateConfig, out: Path, name: str, greedy: bool) -> Path:
    sampling = dataclasses.replace(cfg.sampling, n=1, temperature=0.0) if greedy else cfg.sampling
    return draw_samples(cfg, sampling, out / f"{name}.parquet", log_file=out / f"logs/{name}.log")


def run(cfg: EvaluateConfig) -> dict:
    started = time.time()
    out = Path(cfg.output_dir)
    _, inputs = check_inputs(cfg, needs_gold=True)
    chash = stage_config_hash(cfg)
    if not cfg.force and is_complete(out, chash, inputs):
        log.info("%s: %s is complete for this config and inputs; skipping", STAGE, out)
        return read_manifest(out).metrics  # type: ignore[union-attr]
    invalidate(out)
    restart_if_changed(out, {"config": chash, "inputs": inputs}, INTERMEDIATES, force=cfg.force)

    samples_path = draw(cfg, out, "samples", greedy=False)
    verified_path = out / "verified.parquet"
    if not verified_path.exists():
        write_table(
            verify_samples(pd.read_parquet(samples_path), cfg.verifier, cfg.verifier_workers), verified_path
        )
    if cfg.use_reward_model:
        scored = score_with_reward_model(
            verified_path, out / "scored.parquet", cfg.reward_model, every_row=cfg.rm_score_all,
            max_length=cfg.rm_max_length,
            batch_tokens=cfg.rm_batch_tokens, use_cpu=cfg.use_cpu, progress=cfg.progress,
            log_file=out / "logs/rm_score.log",
        )  # fmt: skip
        scored_file = describe_table(scored, out / "scored.parquet")
    else:
        scored = pd.read_parquet(verified_path)
        scored_file = write_table(scored, out / "scored.parquet")
    outputs = {"samples": describe_file(samples_path, out), "scored": scored_file}
    verified_path.unlink()
    metrics = {
        "name": cfg.name,
        "policy": cfg.model.name,
        **sample_metrics(scored, cfg.maj_ks or None, best_of_n=cfg.use_reward_model),
        "preview": sample_preview(chat_renderer(cfg.model, load_tokenizer(cfg.model)), scored),
    }
    if cfg.greedy:
        greedy_path = draw(cfg, out, "greedy", greedy=True)
        greedy = verify_samples(pd.read_parquet(greedy_path), cfg.verifier, cfg.verifier_workers)
        metrics["greedy_accuracy"] = float(greedy["correct"].fillna(False).astype(bool).mean())
        outputs["greedy"] = write_table(greedy, greedy_path)
    write_json_atomic(out / "metrics.json", metrics)
    (out / "metrics.md").write_text(metrics_markdown(metrics, f"Evaluation: {cfg.name}"))
    outputs["metrics"] = describe_file(out / "metrics.json", out)
    log.info(
        "%s %s: pass@1 %.3f%s over %d prompts x %d samples (%s)",
        STAGE, cfg.name, metrics["pass@1"],
        f", greedy {metrics['greedy_accuracy']:.3f}" if cfg.greedy else "",
        metrics["prompts"], metrics["samples_per_prompt"], out,
    )  # fmt: skip
    finish_stage(
        out,
        cfg,
        stage=STAGE,
        cfg_hash=chash,
        inputs=inputs,
        outputs=outputs,
        metrics=metrics,
        started_at=started,
    )
    return metrics


if __name__ == "__main__":
    hydra_entry("evaluate", EvaluateConfig, run)
