"""SFT throughput: this project's train_sft trainer against plain TRL SFTTrainer with its defaults.

Same model, same data (synthetic traces with the length distribution of real R1 traces, scaled to the
chosen max length), same max length, one process, one run. Reports non-padding tokens/s, peak memory and,
on a GPU, MFU against the dense bf16 peak.

    # CPU, tiny model (what a laptop or CI machine can run; ~3 minutes)
    .venv/bin/python bench/sft_throughput.py
    # GPU, a Qwen2.5-1.5B-shaped model (random weights; shape is what matters for speed) at 4k and 16k
    python bench/sft_throughput.py --model qwen2.5-1.5b-shape --max-length 4096 --peft lora --steps 20
    python bench/sft_throughput.py --model qwen2.5-1.5b-shape --max-length 16384 --peft lora --steps 10
    # smoke (CI, seconds, CPU): 40 examples of <= 128 tokens, 1 warm-up step + 2 measured, results in a temp dir
    .venv/bin/python bench/sft_throughput.py --smoke [--model qwen2.5-1.5b-shape] [--tiny-dir DIR]

With --smoke, a shape other than `tiny` keeps its architecture (Qwen2), bf16 weights and the way it is
built and saved, but shrinks to 2 layers of hidden size 64 and a 512-token vocabulary (SMOKE_SHAPE): the
GPU benchmark's model code then runs on a CPU in seconds. What a CPU cannot exercise is the CUDA side
(synchronisation, peak GPU memory, MFU) and the real vocabulary's memory.

FLOPs per trained token = 6·N (N: non-embedding parameters) + 12·L·d·T̄ (attention, T̄: mean length of
the sequence the token sits in; PaLM's convention, not halved for causality). MFU = achieved / peak,
peak = 989 TFLOP/s (H100 dense bf16) unless --peak-tflops says otherwise. Goals (issue P2): ≥ 2.5× the
padded plain-TRL baseline at 4k and ≥ 25% MFU at 16k.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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
import torch
from _common import parse_args, results_path  # bench/, the script's own folder

from core.artifacts import write_parquet_atomic
from core.config import ModelConfig
from tiny_model.config import TinyModelConfig
from tiny_model.model import build

SMOKE = {"max_length": 128, "steps": 3, "warmup": 1, "examples": 40}
# What --smoke shrinks a shape to: head_dim 32 like the tests' family models, and a vocabulary just above
# the tiny tokenizer's, because a bf16 151,936-row LM head makes each CPU step take seconds.
SMOKE_SHAPE = dict(
    vocab_size=512,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=128,
)
SHAPES = {
    "tiny": None,
    # Qwen2.5-1.5B: hidden 1536, 28 layers, 12 heads / 2 KV heads, MLP 8960, tied embeddings.
    "qwen2.5-1.5b-shape": dict(
        hidden_size=1536,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        intermediate_size=8960,
    ),
}


def make_model(shape: str, work: Path, tiny_dir: str | None = None, smoke: bool = False) -> Path:
    """The tiny policy (`tiny_dir`, else built), or a random-weight model of `shape` around its tokenizer."""
    policy = Path(tiny_dir or build(TinyModelConfig(tokenizer_corpus_problems=500), work / "tiny")["policy"])
    if SHAPES[shape] is None:
        return policy
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(policy)
    config = Qwen2Config(
        **{
            "vocab_size": 151936,
            "max_position_embeddings": 32768,
            "tie_word_embeddings": True,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
            **(SMOKE_SHAPE if smoke else SHAPES[shape]),
        }
    )
    out = work / shape
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_data(work: Path, max_length: int, n: int, seed: int = 0) -> Path:
    """R1-like lengths: log-normal, median ≈ 45% of max_length, ~10% over it (those are dropped)."""
    rng = random.Random(seed)
    words = [
        "so",
        "we",
        "add",
        "the",
        "numbers",
        "and",
        "check",
        "the",
        "result",
        "again",
        "carefully",
        "before",
        "moving",
        "on",
    ]
    rows = []
    for i in range(n):
        target_tokens = min(int(rng.lognormvariate(0, 0.55) * 0.45 * max_length), 4 * max_length)
        body = " ".join(rng.choice(words) for _ in range(max(8, int(target_tokens / 1.6))))
        rows.append(
            {
                "id": str(i),
                "instruction": f"Compute {i} + 1.",
                "input": "",
                "output": f"<think>{body} {i}+1={i + 1}.</think> The answer is \\boxed{{{i + 1}}}.",
            }
        )
    path = work / "data.parquet"
    write_parquet_atomic(pa.Table.from_pylist(rows), path)
    return path


def flops_per_token(model, mean_len: float) -> float:
    c = model.config
    n_params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
    return 6 * n_params + 12 * c.num_hidden_layers * c.hidden_size * mean_len


def measure(trainer, steps: int, warmup: int = 5) -> dict:
    """Steady-state throughput: tokens and seconds from the end of step `warmup` to the last step."""
    from transformers import TrainerCallback

    marks: dict[str, tuple[float, int]] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (warmup, steps):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                marks[str(state.global_step)] = (time.time(), int(state.num_input_tokens_seen))

    trainer.add_callback(Clock())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    (t0, n0), (t1, n1) = marks[str(warmup)], marks[str(steps)]
    out = {
        "steps": steps - warmup,
        "seconds": round(t1 - t0, 2),
        "tokens": n1 - n0,
        "tokens_per_s": round((n1 - n0) / (t1 - t0), 1),
    }
    if torch.cuda.is_available():
        out["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
    else:
        import resource

        out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)
    return out


def run_ours(model_dir: Path, data: Path, args, work: Path) -> tuple[dict, float, object]:
    from core.config import compose, to_typed
    from core.models import chat_renderer, load_tokenizer
    from train_sft import stage
    from train_sft.data import prepare, resolve_source

    overrides = [
        f"run_dir={work}",
        f"model.path={model_dir}",
        f"data=[{{path: {data}}}]",
        f"peft={'full' if args.peft == 'none' else args.peft}",
        f"sft.max_length={args.max_length}",
        f"sft.max_steps={args.steps}",
        f"sft.per_device_train_batch_size={args.ours_batch}",
        "sft.gradient_accumulation_steps=1",
        "sft.report_to=[none]",
        "sft.save_steps=100000",
        f"sft.gradient_checkpointing={str(args.max_length >= 8192).lower()}",
        "sft.use_liger_kernel=true",
        "sft.logging_steps=1000",
    ]
    cfg = to_typed(compose("train_sft", overrides), stage.SFTStageConfig)
    tokenizer = load_tokenizer(ModelConfig(path=str(model_dir)))
    prepared = prepare(
        [resolve_source(s) for s in cfg.data], chat_renderer(cfg.model, tokenizer), args.max_length, "drop", 0
    )
    trainer = stage.build_trainer(cfg, tokenizer, prepared, work / "ours")
    mean_len = prepared.stats["tokens"] / prepared.stats["examples"]
    return measure(trainer, args.steps, args.warmup), mean_len, trainer.model


def run_plain_trl(model_dir: Path, data: Path, args, work: Path) -> dict:
    """TRL's defaults, as a user gluing scripts together would run it: padded batches, no packing."""
    import pyarrow.parquet as pq
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = pq.read_table(data).to_pylist()
    dataset = Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": r["instruction"]},
                    {"role": "assistant", "content": r["output"]},
                ]
            }
            for r in rows
        ]
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    config = SFTConfig(
        output_dir=str(work / "plain"),
        max_length=args.max_length,
        max_steps=args.steps,
        per_device_train_batch_size=args.plain_batch,
        report_to=[],
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
        include_num_input_tokens_seen="non_padding",
        logging_steps=1000,
    )
    peft_config = (
        LoraConfig(r=16, lora_alpha=32, target_modules="all-linear") if args.peft != "none" else None
    )
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    return measure(trainer, args.steps, args.warmup)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--warmup", type=int, default=5, help="steps before the clock starts (must be < --steps)"
    )
    parser.add_argument("--examples", type=int, default=600)
    parser.add_argument("--peft", choices=["none", "lora"], default="none")
    parser.add_argument(
        "--ours-batch", type=int, default=8, help="rows per step (packed rows with flash attention)"
    )
    parser.add_argument("--plain-batch", type=int, default=8, help="padded examples per step (TRL default 8)")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument(
        "--tiny-dir", default=None, help="an already built tiny policy dir (default: build one)"
    )
    args = parse_args(parser, argv, SMOKE)
    if not 0 < args.warmup < args.steps:
        parser.error(f"need 0 < --warmup < --steps, got {args.warmup} and {args.steps}")
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = make_model(args.model, work, args.tiny_dir, args.smoke)
        data = make_data(work, args.max_length, args.examples)
        ours, mean_len, model = run_ours(model_dir, data, args, work)
        flops = flops_per_token(model, mean_len)
        del model
        plain = run_plain_trl(model_dir, data, args, work)
    results = {
        "args": vars(args),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "flops_per_token": flops,
        "mean_example_tokens": round(mean_len, 1),
        "ours": ours,
        "plain_trl": plain,
        "speedup": round(ours["tokens_per_s"] / plain["tokens_per_s"], 2),
    }
    for name in ("ours", "plain_trl"):
        achieved = results[name]["tokens_per_s"] * flops
        results[name]["tflops"] = round(achieved / 1e12, 4)
        if torch.cuda.is_available():
            results[name]["mfu"] = round(achieved / (args.peak_tflops * 1e12), 4)
    print("\n| run | tokens/s | steps | peak memory | TFLOP/s | MFU |\n|---|---|---|---|---|---|")
    for name in ("ours", "plain_trl"):
        r = results[name]
        mem = r.get("peak_gpu_gb", r.get("peak_rss_gb"))
        print(
            f"| {name} | {r['tokens_per_s']} | {r['steps']} | {mem} GB | {r['tflops']} | {r.get('mfu', 'n/a')} |"
        )
    print(
        f"\nspeed-up of ours over plain TRL: {results['speedup']}x (max_length {args.max_length}, {results['device']})"
    )
    out = results_path(args, "sft_throughput")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {out}")
    return results


if __name__ == "__main__":
    main()
