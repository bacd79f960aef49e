"""Throughput and peak-memory benchmark of the data_process stage (a benchmark, not a test).

Goal: the stage streams OpenR1-Math shards one record batch at a time, so its peak RSS must stay below
2 GB *regardless of input size*, while processing real-length R1 traces (thousands of tokens each) fast
enough to be a non-issue next to training.

What it does:
1. generates (once; cached under --work-dir) `--rows` synthetic rows in the exact OpenR1 schema with
   real-length traces (`SyntheticSpec(verbose_words=N)`: median ~N words per trace, lognormal, 2-4 traces
   per row), written as shards of `--shard-rows` rows; generation time is reported, not counted;
2. sets up each tokenizer of `--tokenizers` under --work-dir: `tiny` is the tiny model's byte-level BPE
   (tiny_model/model.py, 384 tokens; or --tiny-dir's), `qwen2.5` the real Qwen2.5-Instruct tokenizer and
   chat template vendored in tests/realdata/ (unpacked by tests/families.py, as the tests do). The stage
   only needs a tokenizer, so no model weights are built for it. Both by default, because the tiny
   tokenizer alone says little about a real run: its tiny vocabulary cuts text into ~4x more tokens, which
   is where the stage spends its time, while the real one holds a 151k-entry vocabulary in memory;
3. runs `data_process.stage.run` on a subset of the shards (`--small-rows`) and on all of them, with each
   tokenizer, each in its own subprocess so that peak RSS is that process's own (`ru_maxrss` from
   `os.wait4`, cross-checked by psutil polling); measures wall time, rows/s, SFT tokens/s (manifest
   `sft.tokens`), input MB/s;
4. prints a markdown table (command line first) and writes bench/results/data_process_throughput.json
   (`--out`; a `--smoke` run writes to a temporary folder).

Stage config: progress=False, force=True, filters.max_tokens=--max-tokens (32768, so long traces are not
all dropped), sft_fraction=1.0 (the dataclass default, not conf/data_process.yaml's 0.25).

Run (from the repository root):
    source .venv/bin/activate
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
    python bench/data_process_throughput.py [--rows 50000] [--verbose-words 3000] [--work-dir /tmp/bench_data_process]
    python bench/data_process_throughput.py --smoke   # seconds: 100 and 200 rows, both tokenizers (CI)
Add `--profile` to run the stage under cProfile as well (top functions printed, .prof kept in --work-dir).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _common import parse_args, results_path  # noqa: E402  (bench/ is the script's own folder)

RSS_GOAL_MIB = 2048
TOKENIZERS = ("tiny", "qwen2.5")
# Smoke keeps the small run (one shard of two): the subset of shards is what a full-size-only run never touches.
SMOKE = {"rows": 200, "small_rows": 100, "shard_rows": 100, "verbose_words": 50}
MiB = 1024 * 1024


# ---------------------------------------------------------------------------------------------- setup


def command_line() -> str:
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(Path.cwd())
    return " ".join(shlex.quote(a) for a in ["python", str(script), *sys.argv[1:]])


def ensure_input(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The synthetic OpenR1 shards for these args, generated once; a marker file written last = complete."""
    from data_process import synthetic

    root = Path(args.work_dir) / (
        f"openr1_rows{args.rows}_vw{args.verbose_words}_seed{args.seed}_shard{args.shard_rows}"
    )
    marker = root / "bench_input.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if all((root / f).exists() for f in info["files"]):
            return root, {**info, "cached": True}
    spec = synthetic.SyntheticSpec(num_problems=args.rows, seed=args.seed, verbose_words=args.verbose_words)
    print(f"generating {args.rows} rows (verbose_words={args.verbose_words}) into {root} ...", flush=True)
    started = time.perf_counter()
    files = synthetic.write_shards(spec, root, shard_rows=args.shard_rows)
    info = {
        "rows": args.rows,
        "verbose_words": args.verbose_words,
        "seed": args.seed,
        "shard_rows": args.shard_rows,
        "files": [f.path for f in files],  # relative to root, subset folder included
        "seconds": round(time.perf_counter() - started, 1),
    }
    marker.write_text(json.dumps(info, indent=2) + "\n")
    return root, {**info, "cached": False}


def ensure_tokenizer(name: str, work_dir: Path, tiny_dir: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The directory the stage's `model.path` points at for tokenizer `name` (see the module docstring)."""
    if name == "tiny" and tiny_dir:
        return Path(tiny_dir), {"cached": True, "seconds": 0.0, "source": tiny_dir}
    policy = work_dir / "tiny_model" / "policy" if name == "tiny" else work_dir / f"tokenizer_{name}"
    if (policy / "tokenizer.json").exists() and (policy / "tokenizer_config.json").exists():
        return policy, {"cached": True, "seconds": 0.0}
    started = time.perf_counter()
    if name == "tiny":
        from tiny_model.config import TinyModelConfig
        from tiny_model.model import build

        print(f"building the tiny tokenizer/model into {policy.parent} ...", flush=True)
        policy = Path(build(TinyModelConfig(), policy.parent)["policy"])
    else:
        from tests.families import FAMILIES, write_tokenizer

        print(f"unpacking the vendored {name} tokenizer into {policy} ...", flush=True)
        write_tokenizer(FAMILIES[name], policy)
    return policy, {"cached": False, "seconds": round(time.perf_counter() - started, 1)}


def subset_input(full_root: Path, files: list[str], n_shards: int, work_dir: Path) -> Path:
    """A folder holding symlinks to the first `n_shards` shards (the same rows as a smaller generation)."""
    root = work_dir / f"subset_{full_root.name}_{n_shards}shards"
    sub = root / "default"
    sub.mkdir(parents=True, exist_ok=True)
    for old in sub.iterdir():
        old.unlink()
    for rel in files[:n_shards]:
        (sub / Path(rel).name).symlink_to(full_root / rel)
    return root


def input_stats(root: Path) -> dict[str, Any]:
    """Rows, shards, bytes on disk, and uncompressed bytes of the columns the stage reads."""
    import pyarrow.parquet as pq

    from data_process.openr1 import OPTIONAL_COLUMNS, REQUIRED_COLUMNS

    read_columns = {*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS}

    files = sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))
    rows = disk = uncompressed = 0
    for f in files:
        md = pq.ParquetFile(f).metadata
        rows += md.num_rows
        disk += f.stat().st_size
        for rg in range(md.num_row_groups):
            group = md.row_group(rg)
            for c in range(group.num_columns):
                col = group.column(c)
                if col.path_in_schema.split(".")[0] in read_columns:
                    uncompressed += col.total_uncompressed_size
    return {"rows": rows, "shards": len(files), "disk_mb": disk / MiB, "read_columns_mb": uncompressed / MiB}


# ---------------------------------------------------------------------------------------------- measuring


class RssPoller(threading.Thread):
    """Samples the RSS of a process (and its descendants) every `interval` seconds, as a cross-check."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MiB)
        self.done = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            proc = psutil.Process(self.pid)
        except psutil.Error:
            return
        start = time.perf_counter()
        while not self.done.is_set():
            try:
                rss = proc.memory_info().rss
                for child in proc.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        rss += child.memory_info().rss
            except psutil.Error:
                break
            self.samples.append((round(time.perf_counter() - start, 2), round(rss / MiB, 1)))
            self.done.wait(self.interval)


def run_stage(
    label: str, tokenizer: str, input_dir: Path, policy: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Run the stage in a child process; wall time, peak RSS (wait4 ru_maxrss) and the manifest metrics."""
    work = Path(args.work_dir)
    out_dir = work / "runs" / label / "data"
    spec = {
        "label": label,
        "input_dir": str(input_dir),
        "output_dir": str(out_dir),
        "run_dir": str(work / "runs" / label),
        "policy": str(policy),
        "max_tokens": args.max_tokens,
        "batch_size": args.batch_size,
        "profile": str(work / f"{label}.prof") if args.profile else None,
        "timings": str(work / f"{label}.child.json"),
    }
    spec_path = work / f"{label}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    log_path = work / f"{label}.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    print(f"[{label}] running data_process on {input_dir} (log: {log_path}) ...", flush=True)
    load_before = os.getloadavg()[0]  # other work on the machine skews the timings: recorded, shown
    with open(log_path, "w") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--_child", str(spec_path)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        poller = RssPoller(proc.pid)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the max over all children
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        poller.done.set()
        poller.join()
    if proc.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"[{label}] stage exited with {proc.returncode}; log tail:\n{tail}")
    manifest = json.loads((out_dir / "manifest.json").read_text())
    child = json.loads(Path(spec["timings"]).read_text())
    metrics = manifest["metrics"]
    stats = input_stats(input_dir)
    stage_s = metrics["seconds"]
    outputs = {
        k: {"rows": v["rows"], "mb": round(v["bytes"] / MiB, 1)} for k, v in manifest["outputs"].items()
    }
    polled_peak = max((mib for _, mib in poller.samples), default=0.0)
    step = max(1, len(poller.samples) // 200)
    return {
        "label": label,
        "tokenizer": tokenizer,
        "input": {k: round(v, 1) if isinstance(v, float) else v for k, v in stats.items()},
        "wall_s": round(wall, 2),
        "stage_s": stage_s,
        "child_startup_s": child["startup_s"],
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        # On a machine shared with other jobs the wall clock measures the load as much as the stage; the
        # child's own CPU seconds (all its threads, start-up and imports included) hardly depend on it.
        "rows_per_cpu_s": round(metrics["rows_read"] / max(usage.ru_utime + usage.ru_stime, 1e-9), 1),
        "rows_per_s": round(metrics["rows_read"] / stage_s, 1),
        "rows_per_s_wall": round(metrics["rows_read"] / wall, 1),
        "sft_tokens_per_s": round(metrics["sft"]["tokens"] / stage_s, 0),
        "input_disk_mb_per_s": round(stats["disk_mb"] / stage_s, 2),
        "input_read_columns_mb_per_s": round(stats["read_columns_mb"] / stage_s, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "peak_rss_polled_mib": polled_peak,
        "rss_samples_mib": poller.samples[::step],
        "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "metrics": metrics,
        "outputs": outputs,
    }


def child_main(spec_path: str) -> None:
    """Inside the subprocess: build the config, run the stage (optionally under cProfile)."""
    t0 = time.perf_counter()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(spec_path).read_text())
    from core.config import ModelConfig
    from data_process.config import DataProcessConfig, FilterConfig
    from data_process.stage import run

    cfg = DataProcessConfig(
        run_name=spec["label"],
        run_dir=spec["run_dir"],
        input_dir=spec["input_dir"],
        output_dir=spec["output_dir"],
        model=ModelConfig(path=spec["policy"]),
        filters=FilterConfig(max_tokens=spec["max_tokens"]),
        batch_size=spec["batch_size"],
        progress=False,
        force=True,
    )
    startup = time.perf_counter() - t0
    if spec["profile"]:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(run, cfg)
        profiler.dump_stats(spec["profile"])
        for key in ("tottime", "cumulative"):
            print(f"\n==== cProfile top 30 by {key} ====")
            pstats.Stats(profiler).sort_stats(key).print_stats(30)
    else:
        run(cfg)
    Path(spec["timings"]).write_text(json.dumps({"startup_s": round(startup, 2)}))


# ---------------------------------------------------------------------------------------------- report


def markdown(runs: list[dict[str, Any]]) -> str:
    head = (
        "| run | tokenizer | rows | shards | input MB (disk / read cols) | wall s | stage s | rows/s | SFT records "
        "| SFT tokens | SFT tok/s | input MB/s (disk / read cols) | peak RSS MiB (wait4 / polled) | CPU s | rows / CPU s | load avg before / after |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        i, m = r["input"], r["metrics"]
        lines.append(
            f"| {r['label']} | {r['tokenizer']} | {i['rows']:,} | {i['shards']} | {i['disk_mb']:,.0f} / {i['read_columns_mb']:,.0f} "
            f"| {r['wall_s']:.1f} | {r['stage_s']:.1f} | {r['rows_per_s']:,.0f} | {m['sft']['written']:,} "
            f"| {m['sft']['tokens']:,} | {r['sft_tokens_per_s']:,.0f} "
            f"| {r['input_disk_mb_per_s']:.1f} / {r['input_read_columns_mb_per_s']:.1f} "
            f"| {r['peak_rss_mib']:,.0f} / {r['peak_rss_polled_mib']:,.0f} | {r['cpu_s']:.0f} | {r['rows_per_cpu_s']:,.0f} "
            f"| {r['loadavg_1min_before_after'][0]:.1f} / {r['loadavg_1min_before_after'][1]:.1f} |"
        )
    lines += [
        "",
        "| run | rows kept | dropped | sft | pairs | prompts | outputs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        m = r["metrics"]
        sft = {k: v for k, v in m["sft"].items() if k != "tokens"}
        outs = ", ".join(f"{k} {v['rows']:,} rows / {v['mb']:.0f} MB" for k, v in r["outputs"].items())
        lines.append(
            f"| {r['label']} | {m['rows_kept']:,} | {json.dumps(m['rows_dropped'])} | {json.dumps(sft)} "
            f"| {json.dumps(m['pairs'])} | {json.dumps(m['prompts'])} | {outs} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000, help="Rows of the full-size run.")
    parser.add_argument("--small-rows", type=int, default=10_000, help="Rows of the small run (0: skip).")
    parser.add_argument("--verbose-words", type=int, default=3000, help="Median filler words per trace.")
    parser.add_argument("--shard-rows", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=32768, help="filters.max_tokens of the stage.")
    parser.add_argument(
        "--batch-size", type=int, default=256, help="Stage batch_size (rows per record batch)."
    )
    parser.add_argument(
        "--tokenizers",
        default=",".join(TOKENIZERS),
        help=f"Comma-separated, each run once per tokenizer: {', '.join(TOKENIZERS)}.",
    )
    parser.add_argument(
        "--tiny-dir",
        default=None,
        help="An already built tiny policy dir (default: build one in --work-dir).",
    )
    parser.add_argument(
        "--work-dir", default=None, help="Default /tmp/bench_data_process (smoke: a temp dir)."
    )
    parser.add_argument("--profile", action="store_true", help="Run the stage under cProfile too.")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parse_args(parser, argv, SMOKE)
    if args._child:
        child_main(args._child)
        return {}
    tokenizers = [t for t in args.tokenizers.split(",") if t]
    if unknown := sorted(set(tokenizers) - set(TOKENIZERS)):
        parser.error(f"--tokenizers: unknown {unknown}; choose from {list(TOKENIZERS)}")
    if args.work_dir is None:
        args.work_dir = (
            tempfile.mkdtemp(prefix="bench_data_process_") if args.smoke else "/tmp/bench_data_process"
        )

    cmd = command_line()
    print(f"$ {cmd}\n", flush=True)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    full_root, gen = ensure_input(args)
    policies = {name: ensure_tokenizer(name, work, args.tiny_dir) for name in tokenizers}
    print(
        f"input: {'cached' if gen['cached'] else 'generated'} ({gen['seconds']} s to generate, not counted); "
        + "; ".join(
            f"tokenizer {name}: {'cached' if tok['cached'] else 'set up'} ({tok['seconds']} s)"
            for name, (_, tok) in policies.items()
        ),
        flush=True,
    )

    inputs = []
    if 0 < args.small_rows < args.rows:
        n_shards = -(-args.small_rows // args.shard_rows)
        small = subset_input(full_root, gen["files"], n_shards, work)
        inputs.append((f"small_{n_shards * args.shard_rows / 1000:g}k", small))
    inputs.append((f"full_{args.rows / 1000:g}k", full_root))
    runs = [
        run_stage(f"{size}_{name}", name, root, policy, args)
        for name, (policy, _) in policies.items()
        for size, root in inputs
    ]

    from core.artifacts import git_revision, library_versions

    verdicts = []
    for name in policies:
        mine = [r for r in runs if r["tokenizer"] == name]
        peak = max(r["peak_rss_mib"] for r in mine)
        verdict = (
            f"{name}: peak RSS max {peak:,.0f} MiB (goal < {RSS_GOAL_MIB} MiB: "
            f"{'PASS' if peak < RSS_GOAL_MIB else 'FAIL'})"
        )
        if len(mine) > 1:
            growth = mine[-1]["peak_rss_mib"] / mine[0]["peak_rss_mib"]
            ratio = mine[-1]["input"]["rows"] / mine[0]["input"]["rows"]
            verdict += f"; {ratio:.1f}x the rows -> {growth:.2f}x the peak RSS"
        verdicts.append(verdict)
    verdict = "\n".join(verdicts)
    table = markdown(runs)
    print(f"\n$ {cmd}\n\n{table}\n\n{verdict}")
    if args.profile:
        print(f"\ncProfile output is in the logs and .prof files under {work}")

    out = results_path(args, "data_process_throughput")
    results = {
        "command": cmd,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "goal": f"peak RSS < {RSS_GOAL_MIB} MiB regardless of input size",
        "verdict": verdict,
        "host": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "git_revision": git_revision(),
            "versions": library_versions(),
        },
        "args": {k: v for k, v in vars(args).items() if k != "_child"},
        "generation": gen,
        "tokenizers": {name: {**tok, "policy_dir": str(policy)} for name, (policy, tok) in policies.items()},
        "runs": runs,
        "markdown": table,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults written to {out}")
    return results


if __name__ == "__main__":
    main()
