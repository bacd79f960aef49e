"""Sampling and scoring of completions, shared by the rejection-sampling stage and evaluation: samples from
reject_sampling.sample, the verifier's verdict and the format check, the reward model's score
(reward_model.score). Sampling and reward scoring run in child processes on a GPU, so the policy, the
reward model and vLLM never share one process's GPU memory, and sampling with vLLM always does; on a CPU
the rest runs in this process (core.launch.needs_own_process)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from core.artifacts import OutputFile, describe_file, fingerprint_files, sha256_text, write_parquet_atomic
from core.chat import ChatRenderer
from core.config import ModelConfig
from core.launch import needs_own_process, run_step
from core.models import require_model_dir
from core.verifier import format_ok, verify_batch
from reject_sampling.backends import resolve_backend
from reject_sampling.config import SampleConfig, SamplingConfig
from reject_sampling.metrics import answer_key
from reject_sampling.prompts import PromptSet, load_prompts

log = logging.getLogger(__name__)


def draw_samples(cfg: Any, sampling: SamplingConfig, output: Path, log_file: Path) -> Path:
    """`cfg.model`'s samples for `cfg.prompts` in `output` (kept when it exists: sample.py resumes by chunk)."""
    if not output.exists():
        sample_cfg = SampleConfig(
            run_dir=cfg.run_dir, model=cfg.model, prompts=cfg.prompts, sampling=sampling, output=str(output),
            show=0, use_cpu=cfg.use_cpu, progress=cfg.progress,
        )  # fmt: skip
        own = needs_own_process(cfg.use_cpu, uses_vllm=resolve_backend(sampling.backend) == "vllm")
        run_step(
            "reject_sampling.sample:run",
            "reject_sampling.config:SampleConfig",
            sample_cfg,
            own_process=own,
            log_file=log_file,
        )
    return output


def verify_samples(samples: pd.DataFrame, verifier: str, workers: int) -> pd.DataFrame:
    """Adds `correct` (True / False / None), `format_ok` and `answer_key` (the normalised final answer)."""
    golds = samples["answer"].tolist()
    judged = [i for i, g in enumerate(golds) if not pd.isna(g) and str(g).strip()]
    verdicts: list[bool | None] = [None] * len(samples)
    completions = samples["completion"].tolist()
    results = verify_batch(
        [completions[i] for i in judged],
        [str(golds[i]) for i in judged],
        [verifier] * len(judged),
        workers=workers,
    )
    for i, v in zip(judged, results, strict=True):
        verdicts[i] = v
    return samples.assign(
        correct=pd.array(verdicts, dtype="boolean"),
        format_ok=[format_ok(c) for c in completions],
        answer_key=[answer_key(c) for c in completions],
    )


def needs_reward_score(verified: pd.DataFrame) -> pd.Series:
    """Rows whose reward-model score can change a result: every row of a prompt with at least one sample the
    verifier did not judge wrong. On a prompt whose samples are all wrong, no choice of sample is correct
    (best-of-N scores 0 whatever the ranking), none is selected and no pair forms; the reward model would
    spend most of its time there on a hard prompt set (69% of the default's prompts at n=8)."""
    wrong = verified["correct"].eq(False).fillna(False).astype(bool)
    return ~wrong.groupby(verified["id"]).transform("all").astype(bool)


def score_with_reward_model(
    verified_path: Path,
    output: Path,
    reward_model: ModelConfig,
    *,
    every_row: bool,
    max_length: int,
    batch_tokens: int,
    use_cpu: bool | None,
    progress: bool,
    log_file: Path | None = None,
) -> pd.DataFrame:
    """The rows of `verified_path` plus `rm_score`: for every row with `every_row`, else for the rows
    `needs_reward_score` picks (the others keep a null score). reward_model.score reads and writes the
    picked rows through two intermediate files next to `output`, so a killed scoring run resumes."""
    from reward_model.config import ScoreConfig

    if output.exists():
        return pd.read_parquet(output)
    verified = pd.read_parquet(verified_path)
    picked = pd.Series(True, index=verified.index) if every_row else needs_reward_score(verified)
    scores = pd.Series(float("nan"), index=verified.index)
    if picked.any():
        rm_input, rm_output = output.with_name("rm_input.parquet"), output.with_name("rm_scores.parquet")
        if not rm_input.exists():
            write_table(verified.loc[picked, ["prompt", "completion"]], rm_input)
        cfg = ScoreConfig(
            input=str(rm_input),
            output=str(rm_output),
            model=reward_model,
            max_length=max_length,
            batch_tokens=batch_tokens,
            use_cpu=use_cpu,
            progress=progress,
        )
        if not rm_output.exists():
            run_step(
                "reward_model.score:run",
                "reward_model.config:ScoreConfig",
                cfg,
                own_process=needs_own_process(use_cpu),
                log_file=log_file,
            )
        scores[picked] = pd.read_parquet(rm_output, columns=["rm_score"])["rm_score"].to_numpy()
    log.info("rm_score: %d of %d rows scored (the rest belong to prompts with no correct sample)",
             int(picked.sum()), len(verified))  # fmt: skip
    scored = verified.assign(rm_score=scores.to_numpy())
    write_table(scored, output)
    for name in ("rm_input.parquet", "rm_scores.parquet"):
        output.with_name(name).unlink(missing_ok=True)
    return scored


def check_inputs(cfg: Any, needs_gold: bool) -> tuple[PromptSet, dict[str, str]]:
    """At the door of the stage and of evaluation, before any model loads: the model directories exist,
    the prompts are well formed (and have gold answers when the verifier needs them). Returns the prompts
    and the identities of the inputs, for the manifest and the skip check."""
    require_model_dir(cfg.model.path, "policy")
    if cfg.use_reward_model:
        require_model_dir(cfg.reward_model.path, "reward model")
    prompts = load_prompts(cfg.prompts)
    if needs_gold and all(p.answer is None for p in prompts.prompts):
        raise ValueError(
            f"prompts {cfg.prompts.path}: no gold answers in column '{cfg.prompts.answer_column}'; "
            "the verifier needs them"
        )
    inputs = {
        "policy": model_fingerprint(cfg.model.path),
        "prompts": f"{prompts.identity}:{cfg.prompts.split}:{cfg.prompts.max_prompts}",
    }
    if cfg.use_reward_model:
        inputs["reward_model"] = model_fingerprint(cfg.reward_model.path)
    return prompts, inputs


def model_fingerprint(path: str) -> str:
    return fingerprint_files([p for p in Path(path).iterdir() if p.is_file()])


def write_table(df: pd.DataFrame, path: Path) -> OutputFile:
    return write_parquet_atomic(pa.Table.from_pandas(df, preserve_index=False), path)


def describe_table(df: pd.DataFrame, path: Path) -> OutputFile:
    """The manifest entry of `df`, already written to `path` by `write_table` (no second write)."""
    return describe_file(path, path.parent, rows=len(df), columns=list(df.columns))


def restart_if_changed(out: Path, key: dict, intermediates: list[str], force: bool = False) -> None:
    """Intermediate files of an interrupted run are reused only when config and inputs are unchanged.

    `key` (config hash + input identities) is recorded in `out/.progress.json` before any work; when a
    later run finds a different key (or `force` is set), the listed intermediates (files or directories)
    are removed first.
    """
    out.mkdir(parents=True, exist_ok=True)
    marker = out / ".progress.json"
    digest = sha256_text(json.dumps(key, sort_keys=True))
    if not force and marker.exists() and json.loads(marker.read_text()).get("key") == digest:
        return
    for name in intermediates:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    if marker.exists():
        log.info("%s: config or inputs changed since the interrupted run; starting over", out)
    marker.write_text(json.dumps({"key": digest}))


def sample_preview(renderer: ChatRenderer, samples: pd.DataFrame) -> dict[str, str]:
    """The first prompt exactly as the model was given it, and its first sample (the whole trace)."""
    if samples.empty:
        return {}
    first = samples.iloc[0]
    return {"prompt": renderer.prompt(first["prompt"]), "completion": first["completion"]}
