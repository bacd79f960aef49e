"""sample.py's throughput on every backend, in one run, same prompts: local, Ray, an OpenAI-compatible server.

Every configuration is one real `python -m reject_sampling.sample` command on the same prompt file
(chat-rendered "What is a + b - c?" problems), the same n, max_new_tokens, chunks and seed: the local
transformers backend on one thread and on every core, local vLLM (its in-process CPU engine uses one
thread), the Ray backend with transformers and with vLLM engines, one engine per core of a local
cluster that the bench starts with `ray start --head` (its start is timed apart) and stops at the end, and
`sampling.backend=openai` against vLLM's own OpenAI server on the same model, one thread, started by the
bench on localhost (its start timed apart too).
Reported per configuration: the command's wall seconds (imports, model load, engine start, generation,
writing), sample.py's own generation figure (from the first chunk handed out to the last one written, engine
start included, so a Ray run pays its actors' start there) and whether its samples equal the local backend of
the same engine (they must: the same chunks are the same generate() calls with the same seeds).

    .venv/bin/python bench/sampling_backends.py            # the tiny model, built fresh (~5 min on 2 busy cores)
    .venv/bin/python bench/sampling_backends.py --smoke    # CI: 8 prompts, 8 new tokens, transformers only
    .venv/bin/python bench/sampling_backends.py --model /models/Qwen2.5-1.5B-Instruct --prompts 1024
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import parse_args, results_path  # bench/, the script's own folder
from generation_throughput import questions

ROOT = Path(__file__).resolve().parent.parent

# name -> (sample.py overrides, threads of the command, the local configuration its samples must equal)
CONFIGS = {
    "transformers, 1 thread": (["sampling.backend=transformers"], 1, None),
    "transformers, all cores": (["sampling.backend=transformers"], 0, None),
    "vllm": (["sampling.backend=vllm"], 1, None),
    "ray, transformers engines": (
        ["sampling.backend=ray", "sampling.ray.engine=transformers"],
        1,
        "transformers, 1 thread",
    ),
    "ray, vllm engines": (["sampling.backend=ray", "sampling.ray.engine=vllm"], 1, "vllm"),
    "openai, vllm server": (["sampling.backend=openai", "sampling.openai.base_url={server}"], 1, "vllm"),
}
SMOKE = {
    "prompts": 8,
    "max_new_tokens": 8,
    "chunk_prompts": 4,
    "configs": "transformers, 1 thread;ray, transformers engines",
}
GENERATION = re.compile(r"sample: (\d+) completion tokens in ([\d.]+) s")


def start_cluster(temp: Path, cpus: int) -> tuple[str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = str(Path(sys.executable).with_name("ray"))
    t0 = time.perf_counter()
    subprocess.run(
        [ray, "start", "--head", f"--port={port}", f"--num-cpus={cpus}", "--num-gpus=0",
         "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return f"127.0.0.1:{port}", round(time.perf_counter() - t0, 1)


def start_server(model: str, max_model_len: int, log: Path) -> tuple[str, float, subprocess.Popen]:
    """vLLM's OpenAI server on `model` with the in-process CPU engine's settings; (base URL, start s, process)."""
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
        "--port", str(port), "--dtype", "float32", "--max-model-len", str(max_model_len),
        "--no-enable-chunked-prefill",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
            return url, round(time.perf_counter() - t0, 1), proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM's server exited:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.5)


def run_config(overrides: list[str], threads: int, common: list[str], address: str | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads or os.cpu_count())}
    if address:
        env["RAY_ADDRESS"] = address
    cmd = [sys.executable, "-m", "reject_sampling.sample", *common, *overrides]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{overrides} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    tokens, seconds = GENERATION.search(done.stdout + done.stderr).groups()
    return {
        "wall_s": round(wall, 1),
        "generation_s": float(seconds),
        "tokens": int(tokens),
        "tokens_per_s_generation": round(int(tokens) / float(seconds), 1),
        "tokens_per_s_wall": round(int(tokens) / wall, 1),
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="local model dir; default: build the tiny model")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--chunk-prompts", type=int, default=32, help="sample.py's chunk: Ray's unit of work")
    parser.add_argument("--engines", type=int, default=None, help="Ray engines; default: one per core")
    parser.add_argument(
        "--configs", default=";".join(CONFIGS), help="';'-separated names of " + str(list(CONFIGS))
    )
    args = parse_args(parser, argv, SMOKE)
    chosen = [c for c in args.configs.split(";") if c]
    if unknown := sorted(set(chosen) - set(CONFIGS)):
        parser.error(f"--configs: unknown {unknown}; choose from {list(CONFIGS)}")
    import importlib.util

    import pyarrow as pa
    import pyarrow.parquet as pq

    if importlib.util.find_spec("vllm") is None:
        chosen = [c for c in chosen if "vllm" not in c]
    cores = len(os.sched_getaffinity(0))
    engines = args.engines or cores
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    load_before = os.getloadavg()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="ray-bench-", dir="/tmp") as tmp:
        tmp_path = Path(tmp)
        model = args.model
        if model is None:
            from tiny_model.config import TinyModelConfig
            from tiny_model.model import build

            model = build(TinyModelConfig(tokenizer_corpus_problems=500), tmp_path / "tiny")["policy"]
        prompts = tmp_path / "prompts.parquet"
        rows = [{"id": f"q{i}", "prompt": q, "answer": "0"} for i, q in enumerate(questions(args.prompts))]
        pq.write_table(pa.Table.from_pylist(rows), prompts)
        common = [
            f"model.path={model}", f"prompts.path={prompts}", "prompts.split=null", f"sampling.n={args.n}",
            f"sampling.max_new_tokens={args.max_new_tokens}", "sampling.temperature=1.0",
            f"sampling.ray.num_engines={engines}", f"sampling.transformers_batch_size={args.chunk_prompts}",
            f"chunk_prompts={args.chunk_prompts}", "progress=false", "show=0", f"hydra.run.dir={tmp}/logs",
        ]  # fmt: skip
        address, cluster_start, server, server_start = None, None, None, None
        if any(c.startswith("ray") for c in chosen):
            address, cluster_start = start_cluster(tmp_path / "ray", cores)
        if any(c.startswith("openai") for c in chosen):
            url, server_start, server = start_server(model, 512, tmp_path / "server.log")
        try:
            for name in chosen:
                overrides, threads, same_as = CONFIGS[name]
                if server is not None:
                    overrides = [o.format(server=url) for o in overrides]
                output = tmp_path / f"{len(results)}.parquet"
                results[name] = run_config([*overrides, f"output={output}"], threads, common, address)
                results[name]["output"] = str(output)
                if same_as in results:
                    reference = pq.read_table(results[same_as]["output"])
                    results[name]["same_samples_as"] = same_as
                    results[name]["identical"] = pq.read_table(output).equals(reference)
                print(name, json.dumps(results[name]), flush=True)
        finally:
            if server is not None:
                os.killpg(server.pid, 9)
                server.wait()
            if address:
                ray = str(Path(sys.executable).with_name("ray"))
                subprocess.run([ray, "stop", "--force"], capture_output=True, check=False)
        for r in results.values():
            del r["output"]
    summary = {
        "args": vars(args),
        "cores": cores,
        "ray_engines": engines,
        "ray_cluster_start_s": cluster_start,
        "openai_server_start_s": server_start,
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "results": results,
    }
    print(
        "\n| configuration | wall s | generation s | tokens | tok/s (generation) | tok/s (wall) | identical |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        same = {True: "yes", False: "NO"}.get(r.get("identical"), "")
        print(
            f"| {name} | {r['wall_s']} | {r['generation_s']} | {r['tokens']} | {r['tokens_per_s_generation']} | "
            f"{r['tokens_per_s_wall']} | {same} |"
        )
    out = results_path(args, "sampling_backends")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nresults written to {out}")
    if any(r.get("identical") is False for r in results.values()):
        raise SystemExit(
            "a Ray or server configuration drew other samples than the local backend of its engine"
        )
    return summary


if __name__ == "__main__":
    main()
