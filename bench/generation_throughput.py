"""Generation throughput: vLLM against transformers `generate`, through sample.py's own backends.

Same model, same prompts (chat-rendered "What is a + b - c?" problems with the math instruction suffix, as
sample.py renders them), temperature 1, the same max_new_tokens; n = 1, 4 and 16 samples per prompt; vLLM
with prefix caching on and off (transformers has none). Each backend runs in its own process (vLLM's
engine holds memory and threads until the process ends); start-up is timed apart from generation, and each
process generates once unmeasured first. On a CPU both get `--threads` threads (default 1: vLLM's in-process
CPU engine drops to one thread by itself, and on a 2-core machine shared with other jobs a second thread
mostly waits on the busy core). tokens/s = completion tokens generated / wall seconds, the median
of `--repeats` calls (the same seeds each time, so the same tokens).

    # CPU, a fresh untrained tiny model (~5 minutes on 2 busy cores)
    .venv/bin/python bench/generation_throughput.py
    # smoke (CI, seconds): 4 prompts, 8 new tokens, one repeat, transformers and vLLM with prefix caching
    .venv/bin/python bench/generation_throughput.py --smoke [--model DIR]
    # any local model, e.g. on a GPU machine with vLLM installed
    python bench/generation_throughput.py --model /models/Qwen2.5-1.5B-Instruct --prompts 256 --max-new-tokens 1024

An untrained model rarely emits its end-of-turn token, so almost every completion runs to max_new_tokens:
the lengths are the same for both backends, which is what a throughput comparison needs.

`--backends` picks the configurations (default: all three; the vLLM ones only where vLLM imports). The smoke
run leaves out "vllm, prefix caching off": it is the same code with one flag flipped, and every vLLM engine
start costs a CPU machine several seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
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

NS = (1, 4, 16)
# --backends name -> (display name, worker kind, prefix caching)
BACKENDS = {
    "transformers": ("transformers", "transformers", "off"),
    "vllm-prefix-on": ("vllm, prefix caching on", "vllm", "on"),
    "vllm-prefix-off": ("vllm, prefix caching off", "vllm", "off"),
}
SMOKE = {"prompts": 4, "max_new_tokens": 8, "repeats": 1, "backends": "transformers,vllm-prefix-on"}


def questions(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        f"What is {rng.randint(1, 99)} + {rng.randint(1, 99)} - {rng.randint(1, 99)}?" for _ in range(count)
    ]


def worker(args: argparse.Namespace) -> dict:
    """One backend in this process: start it, warm it up, then time one generate() per n."""
    import torch

    from core.config import ModelConfig
    from core.models import chat_renderer, load_tokenizer
    from reject_sampling.backends import TransformersBackend, VLLMBackend
    from reject_sampling.config import SamplingConfig
    from reject_sampling.sample import render_prompts

    use_cpu = not torch.cuda.is_available()
    torch.set_num_threads(args.threads)
    model = ModelConfig(path=args.model)
    tokenizer = load_tokenizer(model)
    prompts = render_prompts(chat_renderer(model, tokenizer), questions(args.prompts))
    ids = [str(i) for i in range(len(prompts))]
    sampling = SamplingConfig(
        temperature=1.0,
        max_new_tokens=args.max_new_tokens,
        enable_prefix_caching=args.prefix_caching == "on",
        transformers_batch_size=args.prompts,
    )
    started = time.perf_counter()
    if args.worker == "vllm":
        prompt_len = max(len(e) for e in tokenizer(prompts, add_special_tokens=False)["input_ids"])
        backend = VLLMBackend(
            model,
            sampling,
            tokenizer,
            use_cpu=use_cpu,
            max_model_len=prompt_len + args.max_new_tokens,
            progress=False,
        )
    else:
        backend = TransformersBackend(model, sampling, tokenizer, use_cpu=use_cpu)
    result: dict = {"startup_s": round(time.perf_counter() - started, 1), "runs": {}}
    backend.sampling = dataclasses.replace(sampling, n=1)
    backend.generate(prompts[:4], ids[:4])  # warm-up
    for n in NS:
        backend.sampling = dataclasses.replace(sampling, n=n)
        rates, seconds = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = backend.generate(prompts, ids)
            seconds.append(time.perf_counter() - t0)
            tokens = sum(c.n_tokens for samples in out for c in samples)
            rates.append(tokens / seconds[-1])
        result["runs"][str(n)] = {
            "samples": sum(len(s) for s in out),
            "tokens": tokens,
            "seconds": [round(x, 2) for x in seconds],
            "tokens_per_s": round(statistics.median(rates), 1),  # median of the repeats
            "truncated": round(
                sum(c.finish_reason == "length" for s in out for c in s) / sum(map(len, out)), 3
            ),
        }
    return result


def run_worker(kind: str, prefix: str, model: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--prefix-caching",
        prefix,
        "--model",
        model,
        "--prompts",
        str(args.prompts),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="local model dir; default: build the tiny model")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed generate() calls per n; the median counts"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of each backend (vLLM's in-process CPU engine uses 1)",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated, of {', '.join(BACKENDS)} (vLLM ones are skipped where vLLM is not installed)",
    )
    parser.add_argument("--worker", choices=["transformers", "vllm"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prefix-caching", choices=["on", "off"], default="on", help=argparse.SUPPRESS)
    args = parse_args(parser, argv, SMOKE)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return {}
    chosen = [b for b in args.backends.split(",") if b]
    if unknown := sorted(set(chosen) - set(BACKENDS)):
        parser.error(f"--backends: unknown {unknown}; choose from {list(BACKENDS)}")

    import importlib.util

    import torch

    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    has_vllm = importlib.util.find_spec("vllm") is not None
    configs = {BACKENDS[b][0]: BACKENDS[b][1:] for b in chosen if BACKENDS[b][1] != "vllm" or has_vllm}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from tiny_model.config import TinyModelConfig
            from tiny_model.model import build

            model = build(TinyModelConfig(tokenizer_corpus_problems=500), Path(tmp) / "tiny")["policy"]
        results = {name: run_worker(kind, prefix, model, args) for name, (kind, prefix) in configs.items()}
    summary = {
        "args": {k: v for k, v in vars(args).items() if k not in ("worker", "prefix_caching")},
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu ({os.cpu_count()} cores)",
        "vllm_installed": has_vllm,
        # Other jobs on a shared machine slow every number down: the 1-minute load before and after.
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "results": results,
    }
    print("\n| backend | start-up s | n=1 tok/s | n=4 tok/s | n=16 tok/s |\n|---|---|---|---|---|")
    for name, r in results.items():
        rates = " | ".join(str(r["runs"][str(n)]["tokens_per_s"]) for n in NS)
        print(f"| {name} | {r['startup_s']} | {rates} |")
    out = results_path(args, "generation_throughput_cpu")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nresults written to {out}")
    return summary


if __name__ == "__main__":
    main()
