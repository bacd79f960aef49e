"""The run report (pipeline/report.py) on fabricated runs: standard errors on every accuracy, how each was
obtained, the benchmark table beside published numbers, and plots at one round and at five."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.artifacts import Manifest, write_manifest
from pipeline.report import collect, write_report

BENCH_MODELS = ("round_0_sft", "last_sft", "grpo")


def _write(run_dir: Path, rel: str, metrics: dict[str, Any], scored: pd.DataFrame | None = None) -> None:
    write_manifest(run_dir / rel, Manifest(stage=rel, config_hash="h", config={}, metrics=metrics))
    if scored is not None:
        scored.to_parquet(run_dir / rel / "scored.parquet")


def _scored(rng: np.random.Generator, ease: np.ndarray, accuracy: float, samples: int) -> pd.DataFrame:
    """One row per sample: prompt i is solved with probability min(1, 2 * accuracy * ease_i)."""
    p = np.clip(2 * accuracy * ease, 0, 1)
    correct = rng.random((len(ease), samples)) < p[:, None]
    return pd.DataFrame(
        {
            "id": np.repeat([f"p{i}" for i in range(len(ease))], samples),
            "sample_idx": np.tile(np.arange(samples), len(ease)),
            "correct": correct.ravel(),
        }
    )


def _eval_metrics(scored: pd.DataFrame, rng: np.random.Generator, **extra: Any) -> dict[str, Any]:
    rates = scored.groupby("id")["correct"].mean()
    p = float(rates.mean())
    return {
        "prompts": len(rates),
        "samples_per_prompt": int(scored.groupby("id").size().iloc[0]),
        "pass@1": p,
        "greedy_accuracy": float((rng.random(len(rates)) < min(1, 1.2 * p)).mean()),
        "best_of_n_rm": float((rng.random(len(rates)) < min(1, 1.1 * p)).mean()),
        "maj@4": float((rates > 0.5).mean()),
        "truncation_rate": 0.01,
        **extra,
    }


def fabricate_run(
    run_dir: Path, rounds: int, prompts: int = 446, benchmarks: bool = True, published_as: str | None = None
) -> dict[str, pd.DataFrame]:
    """A finished run's manifests (and evaluations' scored.parquet) with plausible numbers: pass@1 rising
    round by round above each control, GRPO on top; benchmarks of round 0, the last round and GRPO.
    Returns the scored tables by evaluation name."""
    rng = np.random.default_rng(rounds)
    ease = rng.random(prompts)
    steps, scored_by_name = ["data"], {}
    _write(run_dir, "data", {"rows_read": 6000, "rows_kept": 4307, "decontaminated": {"math500": 0}})

    def evaluation(name: str, accuracy: float) -> None:
        scored = _scored(rng, ease, accuracy, 4)
        scored_by_name[name] = scored
        _write(run_dir, f"eval/{name}", _eval_metrics(scored, rng, name=name), scored)
        steps.append(f"eval/{name}")

    for k in range(rounds):
        sft_loss = [[s, 2.0 * math.exp(-s / 100) + 0.05] for s in range(1, 401, 40)]
        _write(run_dir, f"round_{k}/sft", {"global_step": 400 if k == 0 else 300, "loss": {"curve": sft_loss, "last_tenth_mean": 0.05}})  # fmt: skip
        _write(run_dir, f"round_{k}/reward_model", {"eval_accuracy": 0.56 + 0.02 * k, "eval_curve": [[100, 0.56 + 0.02 * k]], "data": {"pairs_eval": 200}})  # fmt: skip
        steps += [f"round_{k}/sft", f"round_{k}/reward_model"]
        if k > 0:
            _write(run_dir, f"round_{k}/sft_control", {"global_step": 300, "loss": {"curve": sft_loss}})
            steps.append(f"round_{k}/sft_control")
            evaluation(f"round_{k}_control", 0.10 + 0.03 * k)
        evaluation(f"round_{k}_sft", 0.10 + 0.05 * k)
        if k < rounds - 1 or rounds == 1:
            tokens = {"mean": 24.0 + k, "p50": 22.0, "p90": 33.0 + 2 * k, "max": 64}
            rs = {"acceptance_rate": 0.3 + 0.05 * k, "pass@1": 0.2 + 0.05 * k, "truncation_rate": 0.01,
                  "completion_tokens": tokens, "selected_records": 1168, "pairs": 900}  # fmt: skip
            _write(run_dir, f"round_{k}/reject_sampling", rs)
            steps.append(f"round_{k}/reject_sampling")
    last = rounds - 1
    _write(run_dir, f"round_{last}/grpo", {"reward_curves": {"accuracy": [[1, 0.2], [20, 0.3], [40, 0.35]]}})
    steps.append(f"round_{last}/grpo")
    evaluation("grpo", 0.12 + 0.05 * last)
    if benchmarks:
        models = {"round_0_sft": 0.3, f"round_{last}_sft": 0.35, "grpo": 0.4} if last else {"round_0_sft": 0.3, "grpo": 0.4}  # fmt: skip
        for model, accuracy in models.items():
            for bench, n, k in (("math500", 500, 4), ("aime24", 30, 16)):
                scored = _scored(rng, rng.random(n), accuracy / (1 if bench == "math500" else 3), k)
                rates = scored.groupby("id")["correct"].mean()
                metrics = {"benchmark": bench, "protocol": "r1", "prompts": n, "samples_per_prompt": k,
                           "pass@1": float(rates.mean()), "pass@1_stderr": float(rates.std(ddof=1) / math.sqrt(n))}  # fmt: skip
                if (model, bench) == ("grpo", "aime24"):
                    del metrics["pass@1_stderr"]  # an evaluation that wrote none: from scored.parquet
                _write(run_dir, f"bench/{model}/{bench}", metrics, scored)
                scored_by_name[f"bench/{model}/{bench}"] = scored
                steps.append(f"bench/{model}/{bench}")
    timing = {"steps": [{"name": s, "seconds": 10.0} for s in steps], "total_seconds": 10.0 * len(steps)}
    if published_as:
        timing["published_as"] = published_as
    (run_dir / "pipeline.json").write_text(json.dumps(timing))
    return scored_by_name


def stderr_of(scored: pd.DataFrame) -> float:
    rates = scored.groupby("id")["correct"].mean()
    return float(rates.std(ddof=1) / math.sqrt(len(rates)))


def test_every_accuracy_carries_its_standard_error(tmp_path):
    scored = fabricate_run(tmp_path, rounds=2, benchmarks=False)
    report = write_report(tmp_path).read_text()
    summary = json.loads((tmp_path / "report/summary.json").read_text())
    r1 = summary["evals"]["round_1_sft"]
    # pass@1 from the scored samples (this evaluation wrote no pass@1_stderr): std of per-prompt rates.
    assert r1["stderr_how"]["pass@1"] == "scored.parquet"
    assert r1["stderr"]["pass@1"] == pytest.approx(stderr_of(scored["round_1_sft"]))
    p, n = r1["greedy_accuracy"], r1["prompts"]
    assert r1["stderr"]["greedy_accuracy"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
    assert set(r1["stderr"]) == {"pass@1", "greedy_accuracy", "best_of_n_rm", "maj@4"}
    row = next(line for line in report.splitlines() if line.startswith("| round_1_sft |"))
    assert row.count("±") == 4 and f"{r1['pass@1']:.3f} ± {r1['stderr']['pass@1']:.3f}" in row
    assert "std of the per-prompt pass rates in scored.parquet" in report
    # Differences: paired over the shared prompts, smaller than the two errors combined.
    gain = next(g for g in summary["gains"] if g["b"] == "round_1_control")
    a, b = (scored[x].groupby("id")["correct"].mean() for x in ("round_1_sft", "round_1_control"))
    assert gain["stderr"] == pytest.approx(float((a - b).std(ddof=1) / math.sqrt(len(a))))
    assert gain["how"] == "paired, 446 prompts"
    assert (
        f"Round 1 vs its compute-matched control: {gain['diff'] * 100:+.1f} ± {gain['stderr'] * 100:.1f} points"
        in report
    )
    for png in ("accuracy.png", "curves.png", "rounds.png"):
        assert (tmp_path / "report" / png).stat().st_size > 10_000, png


def test_pass1_stderr_from_the_evaluation_first_else_a_bound(tmp_path):
    fabricate_run(tmp_path, rounds=1, benchmarks=False)
    (tmp_path / "eval/grpo/scored.parquet").unlink()
    manifest = json.loads((tmp_path / "eval/round_0_sft/manifest.json").read_text())
    manifest["metrics"]["pass@1_stderr"] = 0.0123
    (tmp_path / "eval/round_0_sft/manifest.json").write_text(json.dumps(manifest))
    evals = collect(tmp_path)["evals"]
    assert (evals["round_0_sft"]["stderr"]["pass@1"], evals["round_0_sft"]["stderr_how"]["pass@1"]) == (
        0.0123,
        "metrics",
    )
    grpo = evals["grpo"]
    assert grpo["stderr_how"]["pass@1"] == "bound"
    p, n = grpo["pass@1"], grpo["prompts"]
    assert grpo["stderr"]["pass@1"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
    gain = collect(tmp_path)["gains"][0]
    assert gain["how"] == "unpaired"
    assert gain["stderr"] == pytest.approx(math.hypot(0.0123, grpo["stderr"]["pass@1"]))


def test_benchmark_table_beside_the_published_numbers(tmp_path):
    scored = fabricate_run(tmp_path, rounds=2, published_as="DeepSeek-R1-Distill-Qwen-1.5B")
    report = write_report(tmp_path).read_text()
    lines = report.splitlines()
    header = lines.index("## Benchmarks")
    assert lines[header + 2] == "| model | math500 | aime24 |"
    rows = {line.split(" | ")[0][2:]: line for line in lines[header + 4 : header + 8]}
    assert list(rows) == ["round_0_sft", "round_1_sft", "grpo", "published: DeepSeek-R1-Distill-Qwen-1.5B"]
    assert rows["published: DeepSeek-R1-Distill-Qwen-1.5B"].endswith("| 83.9 | 28.9 |")
    summary = json.loads((tmp_path / "report/summary.json").read_text())
    m = summary["benchmarks"]["round_1_sft"]["math500"]
    assert f"{100 * m['pass@1']:.1f} ± {100 * m['pass@1_stderr']:.1f} (500 × 4)" in rows["round_1_sft"]
    grpo_aime = summary["benchmarks"]["grpo"]["aime24"]  # wrote no pass@1_stderr: from its scored.parquet
    assert grpo_aime["stderr_how"]["pass@1"] == "scored.parquet"
    assert grpo_aime["stderr"]["pass@1"] == pytest.approx(stderr_of(scored["bench/grpo/aime24"]))
    assert "DeepSeek-R1 (arXiv:2501.12948)" in report and "decoding protocol of these runs: r1" in report
    assert (tmp_path / "report/benchmarks.png").stat().st_size > 10_000
    # A name the table does not hold is said, not guessed.
    report = write_report(tmp_path, published_as="Qwen2.5-1.5B-Instruct").read_text()
    assert "No published numbers for `Qwen2.5-1.5B-Instruct` in pipeline/published.yaml" in report


@pytest.mark.parametrize("rounds", [1, 5])
def test_report_at_one_round_and_at_five(tmp_path, rounds):
    fabricate_run(tmp_path, rounds=rounds, published_as="DeepSeek-R1-Distill-Qwen-7B")
    report = write_report(tmp_path).read_text()
    summary = json.loads((tmp_path / "report/summary.json").read_text())
    assert list(summary["rounds"]) == [str(k) for k in range(rounds)]  # JSON keys
    evals = ["round_0_sft", *[f"round_{k}_{s}" for k in range(1, rounds) for s in ("control", "sft")], "grpo"]
    assert sorted(summary["evals"]) == sorted(evals)
    tables = report[: report.index("## Rounds")].splitlines()  # held-out accuracy, then benchmarks
    rows = [line for line in tables if line.startswith(("| round_", "| grpo |"))]
    benchmarked = len(BENCH_MODELS) - (rounds == 1)  # round 0 is the last round
    assert len(rows) == len(evals) + benchmarked
    assert all(row.count("±") >= 2 for row in rows)
    assert len(summary["gains"]) == rounds  # the final model vs round 0, then every round vs its control
    for png in ("accuracy.png", "benchmarks.png", "curves.png", "rounds.png"):
        assert (tmp_path / "report" / png).stat().st_size > 10_000, png
