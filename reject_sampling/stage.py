"""The rejection-sampling stage: sample → verify + reward-model score → select.

    python -m reject_sampling round=0                       # after train_sft and reward_model of round 0
    python -m reject_sampling selection.policy=verified selection.k=2 sampling.n=16

Steps, each resumable on its own, in `runs/<run>/round_<k>/reject_sampling/`:
1. samples.parquet: N completions per prompt from the round's SFT policy (reject_sampling.sample: vLLM
   when importable, in a child process; else transformers).
2. verified.parquet: + `correct` (math verifier vs the gold answer), `format_ok`, `answer_key`.
3. scored.parquet: + `rm_score` from the round's reward model (reward_model.score, in a child process
   on a GPU).
4. selected.parquet (CoT Alpaca records: the next round's SFT data) and pairs.parquet (best correct vs
   worst wrong: the next round's reward-model data), then metrics and the manifest, last.

A killed run started again continues from the last finished step (sampling and scoring also resume
inside their step); a run with a different config or different inputs starts the steps over.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from core.artifacts import Manifest, describe_file
from core.judge import use as use_judge
from core.lifecycle import StageRun
from core.models import chat_renderer, load_tokenizer
from reject_sampling.config import RejectSamplingConfig
from reject_sampling.metrics import sample_metrics
from reject_sampling.prompts import PromptSet
from reject_sampling.scoring import (
    check_inputs,
    clear_intermediates,
    describe_table,
    draw_samples,
    sample_preview,
    verify_and_score,
    write_table,
)
from reject_sampling.select import acceptance, make_pairs, select, to_records

log = logging.getLogger(__name__)
STAGE = "reject_sampling"
INTERMEDIATES = [
    "samples.parquet",
    "samples.parquet.parts",
    "verified.parquet",
    "scored.parquet",
    "rm_input.parquet",
    "rm_scores.parquet",
    "rm_scores.parquet.parts",
]


def score(cfg: RejectSamplingConfig, out: Path, samples_path: Path) -> pd.DataFrame:
    """verified.parquet then scored.parquet, each kept when its recorded fingerprint matches
    (reject_sampling.scoring.verify_and_score)."""
    return verify_and_score(
        samples_path,
        out,
        verifier=cfg.verifier,
        verifier_workers=cfg.verifier_workers,
        reward_model=cfg.reward_model if cfg.use_reward_model else None,
        # rm_threshold ranks samples without the verifier: every score counts.
        every_row=cfg.rm_score_all or cfg.selection.policy == "rm_threshold",
        max_length=cfg.rm_max_length,
        batch_tokens=cfg.rm_batch_tokens,
        use_cpu=cfg.use_cpu,
        progress=cfg.progress,
        log_file=out / "logs/rm_score.log",
    )


def check(cfg: RejectSamplingConfig) -> tuple[PromptSet, StageRun]:
    """At the door: the models and prompts exist and are well formed, before anything is loaded. Returns
    the prompts and the run's identity."""
    prompts, inputs = check_inputs(cfg, needs_gold=cfg.selection.policy != "rm_threshold")
    return prompts, StageRun(STAGE, cfg, Path(cfg.output_dir), inputs, round=cfg.round)


def identify(cfg: RejectSamplingConfig) -> StageRun:
    """What `run` would be (the pipeline's skip check)."""
    return check(cfg)[1]


def run(cfg: RejectSamplingConfig) -> Manifest:
    out = Path(cfg.output_dir)
    prompts, stage = check(cfg)
    use_judge(cfg.verifier, cfg.judge)
    if (done := stage.begin()) is not None:
        return done
    clear_intermediates(out, INTERMEDIATES, force=cfg.force)  # each step keeps its file by fingerprint

    samples_path = draw_samples(cfg, cfg.sampling, out / "samples.parquet", log_file=out / "logs/sample.log")
    scored = score(cfg, out, samples_path)
    scored_file = describe_table(scored, out / "scored.parquet")

    kept = select(scored, cfg.selection)
    renderer = chat_renderer(cfg.model, load_tokenizer(cfg.model))
    n_tokens = renderer.count(list(zip(kept["prompt"], kept["completion"], strict=True)))
    source = {p.id: p.source or "unknown" for p in prompts.prompts}
    records = to_records(kept, n_tokens, sources=[source[i] for i in kept["id"]])
    outputs = {
        "samples": describe_file(samples_path, out),
        "scored": scored_file,
        "selected": write_table(records, out / "selected.parquet"),
    }
    pairs = make_pairs(scored)
    if cfg.selection.pairs:
        outputs["pairs"] = write_table(pairs, out / "pairs.parquet")
    metrics = {
        **sample_metrics(scored, cfg.maj_ks or None, best_of_n=cfg.use_reward_model),
        **acceptance(scored, kept),
        "pairs": len(pairs),
        "policy": cfg.model.name,
        "preview": sample_preview(renderer, scored),
    }
    log.info(
        "%s round %d: pass@1 %.3f, %d prompts -> %d selected records, %d pairs (%s)",
        STAGE, cfg.round, metrics["pass@1"], metrics["prompts"], len(records), len(pairs), out,
    )  # fmt: skip
    (out / "verified.parquet").unlink(missing_ok=True)  # scored.parquet holds the same rows and more
    return stage.finish(outputs, metrics)
