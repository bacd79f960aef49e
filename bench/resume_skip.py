"""How long re-running a finished pipeline takes, against one `python -c "import torch"`, side by side.

    python bench/resume_skip.py                          # the offline default: runs it first (~7 min here)
    python bench/resume_skip.py --run-dir runs/default   # a run `bash train.sh` already finished
    python bench/resume_skip.py --baseline 4111162       # also time that commit's pipeline on the same run
    python bench/resume_skip.py --smoke                  # two steps (tiny_model, data): CI
    python bench/resume_skip.py --run-dir D rounds=2 ...  # pipeline overrides: those the run was made with

The pipeline asks each step's stage whether its output is complete before it starts the step's process
(pipeline/run.py `complete`), so a finished pipeline re-runs in about the time its configs take to
compose. The goal (issue R4) is at most 3x one `import torch`. `--baseline REV` checks that commit out
into a temporary git worktree and times its pipeline on the same finished run directory with the same
Python, which is how the figure before the change is measured in the same run. Each timing is the median
of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import parse_args, results_path  # bench/, the script's own folder

REPO = Path(__file__).resolve().parent.parent
SMOKE = {"until": "data", "repeats": 1}


def timed(cmd: list[str], cwd: Path, repeats: int) -> float:
    """Median wall seconds of `cmd` over `repeats` runs (each must succeed)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return statistics.median(times)


def worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(where), rev], cwd=REPO, check=True,
                   capture_output=True)  # fmt: skip
    return where


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", default=None, help="a finished run (default: run the pipeline first)")
    parser.add_argument("--until", default=None, help="the pipeline's `until` (a shorter pipeline)")
    parser.add_argument("--baseline", default=None, help="a git revision to time on the same run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="the pipeline's overrides (those of --run-dir's run)")
    args = parse_args(parser, argv, SMOKE)
    out = results_path(args, "resume_skip")
    scratch = Path(tempfile.mkdtemp(prefix="resume_skip_"))
    run_dir = Path(args.run_dir or scratch / "run").resolve()
    pipeline = [sys.executable, "-m", "pipeline", f"run_dir={run_dir}", *args.overrides]
    if args.until:
        pipeline.append(f"until={args.until}")
    if args.run_dir is None:
        print(f"running the pipeline once into {run_dir} ...", flush=True)
        first = timed(pipeline, REPO, 1)
        print(f"  {first:.0f} s", flush=True)
    steps = len(json.loads((run_dir / "pipeline.json").read_text())["steps"])

    results: dict = {"command": " ".join(["python", "bench/resume_skip.py", *(argv or sys.argv[1:])])}
    results["steps"] = steps
    results["import_torch_s"] = timed([sys.executable, "-c", "import torch"], REPO, args.repeats)
    results["rerun_s"] = timed(pipeline, REPO, args.repeats)
    status = json.loads((run_dir / "pipeline.json").read_text())["steps"]
    results["all_skipped"] = all(s.get("skipped") for s in status)
    results["rerun_over_import_torch"] = results["rerun_s"] / results["import_torch_s"]
    if args.baseline:
        tree = worktree(args.baseline, scratch / "baseline")
        try:
            results["baseline"] = args.baseline
            results["baseline_rerun_s"] = timed(pipeline, tree, args.repeats)
            results["baseline_over_import_torch"] = results["baseline_rerun_s"] / results["import_torch_s"]
            results["speedup"] = results["baseline_rerun_s"] / results["rerun_s"]
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"results: {out}")
    return results


if __name__ == "__main__":
    main()
