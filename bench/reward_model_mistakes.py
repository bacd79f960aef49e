"""Which mistakes can the reward model learn to see? Held-out pairwise accuracy per kind of wrong trace.

For each mistake kind of the synthetic data (data_process/synthetic.py: an arithmetic slip, a misread
operand, an operation left out) it trains the reward-model stage on pairs of a correct trace against a
wrong one of that kind only, from the same model, and reports held-out accuracy and margin.

    # CPU, the untrained tiny model (~4 minutes on 2 cores)
    .venv/bin/python bench/reward_model_mistakes.py
    # from an SFT'd policy, more pairs and steps
    .venv/bin/python bench/reward_model_mistakes.py --model runs/default/round_0/sft/model --pairs 6000 --steps 400
    # smoke (CI, seconds): 60 pairs and 3 steps per mistake kind, results in a temp dir
    .venv/bin/python bench/reward_model_mistakes.py --smoke [--model DIR]

Writes bench/results/reward_model_mistakes.json (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa
import pyarrow.parquet as pq
from _common import parse_args, results_path  # bench/, the script's own folder

from core.config import compose, to_typed
from data_process.synthetic import WRONG_KINDS, mistake_pairs
from reward_model import stage
from reward_model.config import RMStageConfig
from tiny_model.config import TinyModelConfig
from tiny_model.model import build

SMOKE = {"pairs": 60, "steps": 3}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="policy directory to start from; default: a fresh untrained tiny model"
    )
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--learning-rate", type=float, default=None, help="default: conf/rm/tiny.yaml's")
    args = parse_args(parser, argv, SMOKE)
    with tempfile.TemporaryDirectory(prefix="rm_mistakes_") as tmp:
        results = run(args, Path(tmp))
    report = {"model": args.model or "untrained tiny model", "pairs": args.pairs, "steps": args.steps}
    out = results_path(args, "reward_model_mistakes")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**report, "results": results}, indent=1) + "\n")
    print(f"\n{report}")
    print("| mistake | held-out pairs | accuracy | margin |\n| --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['mistake']} | {r['held_out_pairs']} | {r['accuracy']:.3f} | {r['margin']:.3f} |")
    print(f"\nresults written to {out}")
    return {**report, "results": results}


def run(args, work: Path) -> list[dict]:
    """One reward-model stage run per mistake kind, on pairs of that kind only."""
    model = args.model or build(TinyModelConfig(), work / "tiny_model")["policy"]
    results = []
    for k, kind in enumerate(WRONG_KINDS):
        weights = tuple(1.0 if i == k else 0.0 for i in range(len(WRONG_KINDS)))
        pairs = work / f"{kind}.parquet"
        pq.write_table(pa.Table.from_pylist(mistake_pairs(args.pairs, weights)), pairs)
        overrides = [
            f"run_dir={work}", f"output_dir={work}/{kind}", f"model.path={model}", f"pairs={pairs}",
            f"rm.max_steps={args.steps}", "rm.report_to=[none]", "use_cpu=true",
        ]  # fmt: skip
        if args.learning_rate is not None:
            overrides.append(f"rm.learning_rate={args.learning_rate}")
        started = time.time()
        metrics = stage.run(to_typed(compose("reward_model", overrides), RMStageConfig)).metrics
        results.append(
            {
                "mistake": kind,
                "held_out_pairs": metrics["data"]["pairs_eval"],
                "accuracy": round(metrics["eval_accuracy"], 3),
                "margin": round(metrics["eval_margin"], 3),
                "curve": metrics.get("eval_curve"),
                "seconds": round(time.time() - started, 1),
            }
        )
    return results


if __name__ == "__main__":
    main()
