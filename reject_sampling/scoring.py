"""Sampling and scoring of completions, shared by the rejection-sampling stage and evaluation: samples from
reject_sampling.sample, the verifier's verdict and the format check, the reward model's score
(reward_model.score). Sampling and reward scoring run in child processes on a GPU, so the policy, the
reward model and vLLM never share one process's GPU memory, and sampling with vLLM always does; on a CPU
the rest runs in this process (core.launch.needs_own_process).

Every intermediate file of a step (samples, verified, rm_input, rm_scores, scored) records the fingerprint
of what it was made from (core.chunks) and is reused only when a rerun computes the same one; otherwise
the step is done again. The chain: samples' fingerprint is sample.py's (prompts, settings, model files);
verified.parquet's is the samples file's sha256 and the verifier; scored.parquet's is verified's
fingerprint digest, the scoring settings and the reward model's files. So a run that changes the reward
model keeps the samples and scores again; one that changes only the selection keeps everything.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from core.artifacts import (
    OutputFile,
    describe_file,
    fingerprint_dir,
    sha256_file,
    write_parquet_atomic,
)
from core.chat import ChatRenderer
from core.chunks import digest, matches, reusable, with_fingerprint
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
    """`cfg.model`'s samples for `cfg.prompts` in `output`: kept when the file records the fingerprint
    sample.py would give it now (checked here, so that a finished step launches no process); otherwise
    sample.py runs, resuming by chunk or starting over as its parts' fingerprint says."""
    from reject_sampling import sample

    sample_cfg = SampleConfig(
        run_dir=cfg.run_dir, model=cfg.model, prompts=cfg.prompts, sampling=sampling, output=str(output),
        chunk_prompts=cfg.chunk_prompts, show=0, use_cpu=cfg.use_cpu, progress=cfg.progress,
    )  # fmt: skip
    if matches(output, sample.fingerprint(sample_cfg, load_prompts(cfg.prompts).prompts)):
        log.info("%s is finished for these prompts, settings and model: kept", output)
        return output
    # vLLM, and a Ray driver (whose cluster connection and engines end with its process), run on their own.
    own = needs_own_process(cfg.use_cpu, uses_vllm=resolve_backend(sampling.backend) in ("vllm", "ray"))
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


def score_config(
    reward_model: ModelConfig,
    rm_input: Path,
    rm_output: Path,
    max_length: int,
    batch_tokens: int,
    use_cpu: bool | None,
    progress: bool,
) -> Any:
    from reward_model.config import ScoreConfig

    return ScoreConfig(
        input=str(rm_input), output=str(rm_output), model=reward_model, max_length=max_length,
        batch_tokens=batch_tokens, use_cpu=use_cpu, progress=progress,
    )  # fmt: skip


def scored_fingerprint(score_cfg: Any, verified_identity: str, every_row: bool) -> dict[str, Any]:
    """scored.parquet's: reward_model.score's fingerprint (scoring config, reward model files) with the
    verified samples' identity as the input, and which rows were picked."""
    from reward_model.score import fingerprint

    return {**fingerprint(score_cfg, verified_identity), "every_row": every_row}


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
    verified_identity: str | None = None,
) -> pd.DataFrame:
    """The rows of `verified_path` plus `rm_score`: for every row with `every_row`, else for the rows
    `needs_reward_score` picks (the others keep a null score). reward_model.score reads and writes the
    picked rows through two intermediate files next to `output`, so a killed scoring run resumes.

    `output` is kept when it records this fingerprint; `verified_identity` identifies the verified rows
    (the sha256 of `verified_path` when not given: then the file must exist). rm_input.parquet is reused
    only under the same verified rows and pick, and reward_model.score itself restarts its parts when the
    reward model changed, so a killed run resumed with another reward model gives that model's scores."""
    rm_input, rm_output = output.with_name("rm_input.parquet"), output.with_name("rm_scores.parquet")
    cfg = score_config(reward_model, rm_input, rm_output, max_length, batch_tokens, use_cpu, progress)
    identity = verified_identity or sha256_file(verified_path)
    fingerprint = scored_fingerprint(cfg, identity, every_row)
    if reusable(output, fingerprint):
        log.info("%s is finished for these samples and this reward model: kept", output)
        return pd.read_parquet(output)
    verified = pd.read_parquet(verified_path)
    picked = pd.Series(True, index=verified.index) if every_row else needs_reward_score(verified)
    scores = pd.Series(float("nan"), index=verified.index)
    if picked.any():
        input_fingerprint = {"input": identity, "every_row": every_row}
        if not reusable(rm_input, input_fingerprint):
            write_table(verified.loc[picked, ["prompt", "completion"]], rm_input, input_fingerprint)
        from reward_model.score import fingerprint as rm_fingerprint

        if not matches(rm_output, rm_fingerprint(cfg, sha256_file(rm_input))):
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
    write_table(scored, output, fingerprint)
    for path in (rm_input, rm_output):
        path.unlink(missing_ok=True)
    return scored


def verify_and_score(
    samples_path: Path,
    out: Path,
    *,
    verifier: str,
    verifier_workers: int,
    reward_model: ModelConfig | None,
    every_row: bool,
    max_length: int,
    batch_tokens: int,
    use_cpu: bool | None,
    progress: bool,
    log_file: Path | None = None,
    judge: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    judge_identity: str | None = None,
) -> pd.DataFrame:
    """The stage's steps 2 and 3: `out/verified.parquet` (+ correct, format_ok, answer_key) and
    `out/scored.parquet` (+ rm_score; null for every row without `reward_model`), each kept when its
    recorded fingerprint matches. `judge` replaces the verifier call (evaluation judges a benchmark against
    its own golds); `judge_identity` says what else its verdicts depend on.

    Verification is a function of the samples and the verifier, so verified's fingerprint (samples'
    sha256, verifier) can be computed without the file, and its digest is the input scored.parquet is
    keyed by. So scored.parquet, which outlives verified.parquet (the stage removes that at the end), is
    reused without verifying again, and verification runs only when the scores must be made again."""
    verified_path, scored_path = out / "verified.parquet", out / "scored.parquet"
    verified_fingerprint = {"input": sha256_file(samples_path), "verifier": verifier, "judge": judge_identity}
    identity = digest(verified_fingerprint)

    def ensure_verified() -> None:
        if not reusable(verified_path, verified_fingerprint):
            samples = pd.read_parquet(samples_path)
            verified = judge(samples) if judge else verify_samples(samples, verifier, verifier_workers)
            write_table(verified, verified_path, verified_fingerprint)

    if reward_model is None:
        fingerprint = {"input": identity, "rm_score": None}
        if reusable(scored_path, fingerprint):
            return pd.read_parquet(scored_path)
        ensure_verified()
        scored = pd.read_parquet(verified_path).assign(rm_score=float("nan"))
        write_table(scored, scored_path, fingerprint)
        return scored
    cfg = score_config(reward_model, out / "rm_input.parquet", out / "rm_scores.parquet", max_length,
                       batch_tokens, use_cpu, progress)  # fmt: skip
    if not matches(scored_path, scored_fingerprint(cfg, identity, every_row)):
        ensure_verified()
    return score_with_reward_model(
        verified_path, scored_path, reward_model, every_row=every_row, max_length=max_length,
        batch_tokens=batch_tokens, use_cpu=use_cpu, progress=progress, log_file=log_file,
        verified_identity=identity,
    )  # fmt: skip


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
        "policy": fingerprint_dir(cfg.model.path),
        "prompts": f"{prompts.identity}:{cfg.prompts.split}:{cfg.prompts.max_prompts}",
    }
    if cfg.use_reward_model:
        inputs["reward_model"] = fingerprint_dir(cfg.reward_model.path)
    return prompts, inputs


def write_table(df: pd.DataFrame, path: Path, fingerprint: dict[str, Any] | None = None) -> OutputFile:
    """`df` written atomically (zstd); with `fingerprint`, recorded in the file (core.chunks) so that a
    later run can tell whether the file may be reused."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    return write_parquet_atomic(with_fingerprint(table, fingerprint) if fingerprint else table, path)


def describe_table(df: pd.DataFrame, path: Path) -> OutputFile:
    """The manifest entry of `df`, already written to `path` by `write_table` (no second write)."""
    return describe_file(path, path.parent, rows=len(df), columns=list(df.columns))


def clear_intermediates(out: Path, intermediates: list[str], force: bool = False) -> None:
    """The start of rejection sampling and evaluation: each step keeps or redoes its own file by fingerprint,
    so nothing is removed here but with `force` (every listed file or directory goes: every step is done
    again) and the `.progress.json` of older versions, which no step reads any more."""
    out.mkdir(parents=True, exist_ok=True)
    (out / ".progress.json").unlink(missing_ok=True)
    if force:
        _remove(out, intermediates)


def _remove(out: Path, names: list[str]) -> None:
    for name in names:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def sample_preview(renderer: ChatRenderer, samples: pd.DataFrame) -> dict[str, str]:
    """The first prompt exactly as the model was given it, and its first sample (the whole trace)."""
    if samples.empty:
        return {}
    first = samples.iloc[0]
    return {"prompt": renderer.prompt(first["prompt"]), "completion": first["completion"]}
