"""How long re-running a finished pipeline takes, against one `python -c "import torch"`, side by side.

    python bench/resume_skip.py                          # the offline default: runs it first (~7 min here)
    python bench/resume_skip.py --run-dir runs/default   # a run `bash train.sh` already finished
    python bench/resume_skip.py --smoke                  # two steps (tiny_model, data): CI
    python bench/resume_skip.py --run-dir D rounds=2 ...  # pipeline overrides: those the run was made with

The pipeline asks each step's stage whether its output is complete before it starts the step's process
(pipeline/run.py `complete`), so a finished pipeline re-runs in about the time its configs take to
compose. The goal (issue R4) is at most 3x one `import torch`. Beside it, the way it was done before:
the same composed steps, each started in its own process (core.launch.run_stage_process, as the
pipeline launches a step), where the stage finds its manifest and skips itself. Each timing is the
median of `--repeats` runs.
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


def one_process_per_step(run_dir: Path, overrides: list[str], repeats: int) -> float:
    """Median seconds to compose the steps and start every step's process, each skipping itself."""
    sys.path.insert(0, str(REPO))
    from core.config import compose, to_typed
    from core.launch import run_stage_process
    from core.stages import register_schemas, stage
    from pipeline.config import PipelineConfig, command_line_overrides
    from pipeline.run import compose_steps, plan

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        register_schemas()
        cfg = to_typed(
            compose("pipeline", command_line_overrides([f"run_dir={run_dir}", *overrides])), PipelineConfig
        )
        steps = plan(cfg)
        if cfg.until is not None:
            steps = steps[: [s.name for s in steps].index(cfg.until) + 1]
        compose_steps(steps)
        for step in steps:
            s = stage(step.stage)
            run_stage_process(s.run, s.schema, step.cfg, log_file=run_dir / "logs" / "resume_skip.log")
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", default=None, help="a finished run (default: run the pipeline first)")
    parser.add_argument("--until", default=None, help="the pipeline's `until` (a shorter pipeline)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="the pipeline's overrides (those of --run-dir's run)")
    args = parse_args(parser, argv, SMOKE)
    out = results_path(args, "resume_skip")
    scratch = Path(tempfile.mkdtemp(prefix="resume_skip_"))
    run_dir = Path(args.run_dir or scratch / "run").resolve()
    pipeline = [sys.executable, "-m", "pipeline", f"run_dir={run_dir}", *args.overrides]
    overrides = [*args.overrides, *([f"until={args.until}"] if args.until else [])]
    pipeline += [f"until={args.until}"] if args.until else []
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
    results["one_process_per_step_s"] = one_process_per_step(run_dir, overrides, args.repeats)
    results["one_process_per_step_over_import_torch"] = (
        results["one_process_per_step_s"] / results["import_torch_s"]
    )
    results["speedup"] = results["one_process_per_step_s"] / results["rerun_s"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"results: {out}")
    return results


if __name__ == "__main__":
    main()
