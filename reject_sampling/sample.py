"""sample.py: N completions per prompt from a local model, with vLLM or transformers, into one parquet.

    python -m reject_sampling.sample                                     # offline default (conf/sample.yaml)
    python -m reject_sampling.sample model.path=/models/Qwen2.5-1.5B-Instruct sampling=default \
        prompts.path=problems.jsonl output=runs/x/samples.parquet
    # 4 GPUs / nodes: one shard each, then merge (checks every prompt has exactly n samples)
    python -m reject_sampling.sample num_shards=4 shard_index=0 ...      # ... shard_index=3
    python -m reject_sampling.sample num_shards=4 merge=true ...

Output columns: id, prompt (the question as in the prompt source), answer, sample_idx, completion,
finish_reason ("stop" | "length"), n_tokens (completion tokens), policy; rows in prompt order, then
sample_idx. Decisions:
- Prompts are checked (file, columns, empty questions, duplicate ids) before a model loads.
- Shards are contiguous ranges of prompts, so shard k's file is rows [k·N/S, (k+1)·N/S) of the prompt set
  and merging is concatenation in shard order, checked against the prompt set.
- Work is done in chunks of `chunk_prompts` prompts, each written atomically to `<output>.parts/` beside a
  `plan.json` fingerprint (prompts, sampling settings, model); killed and started again, finished chunks
  are skipped, and parts from different settings are refused rather than mixed. The parts are merged into
  the output at the end and removed. Seeds: see reject_sampling/backends.py.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from core.artifacts import atomic_path, sha256_text, write_json_atomic
from core.chat import ChatRenderer
from core.config import hashed_view
from core.models import chat_renderer, load_tokenizer, require_model_dir
from core.training import resolve_use_cpu
from reject_sampling.backends import Completion, make_backend
from reject_sampling.config import SampleConfig
from reject_sampling.prompts import Prompt, load_prompts

log = logging.getLogger(__name__)

SAMPLES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("answer", pa.string()),
        ("sample_idx", pa.int32()),
        ("completion", pa.string()),
        ("finish_reason", pa.string()),
        ("n_tokens", pa.int32()),
        ("policy", pa.string()),
    ]
)


class SampleError(ValueError):
    """Samples that do not cover the prompt set exactly (missing shard, missing or duplicated prompts)."""


def shard_bounds(n_prompts: int, num_shards: int, shard_index: int) -> tuple[int, int]:
    """[start, stop) of a contiguous shard; shard sizes differ by at most one prompt."""
    return n_prompts * shard_index // num_shards, n_prompts * (shard_index + 1) // num_shards


def shard_output_path(output: str | Path, shard_index: int, num_shards: int) -> Path:
    """`samples.parquet` → `samples.shard-00001-of-00004.parquet` (0-based index), next to it."""
    output = Path(output)
    return output.with_name(f"{output.stem}.shard-{shard_index:05d}-of-{num_shards:05d}{output.suffix}")


def render_prompts(renderer: ChatRenderer, questions: list[str]) -> list[str]:
    """Each question (+ instruction suffix) as the model's native generation prompt (core.chat.ChatRenderer)."""
    return [renderer.prompt(q) for q in questions]


def check_samples(table: pa.Table, ids: list[str], n: int, where: str) -> None:
    """Every id exactly once per sample_idx 0..n-1, nothing else; else a SampleError naming the ids."""
    expected = set(ids)
    counts: dict[str, int] = {}
    pairs: set[tuple[str, int]] = set()
    duplicated: set[str] = set()
    for i, k in zip(table.column("id").to_pylist(), table.column("sample_idx").to_pylist(), strict=True):
        counts[i] = counts.get(i, 0) + 1
        if (i, k) in pairs or not 0 <= k < n:
            duplicated.add(i)
        pairs.add((i, k))
    missing = [i for i in ids if counts.get(i, 0) == 0]
    unknown = sorted(set(counts) - expected)
    duplicated |= {i for i, c in counts.items() if i in expected and c > n}
    short = [i for i in ids if 0 < counts.get(i, 0) < n]
    problems = []
    for label, found in (
        ("missing", missing),
        ("duplicated", sorted(duplicated)),
        (f"with fewer than n={n} samples", short),
        ("not in the prompt set", unknown),
    ):
        if found:
            problems.append(
                f"{len(found)} prompt id(s) {label}: {found[:10]}{' ...' if len(found) > 10 else ''}"
            )
    if problems:
        raise SampleError(f"{where}: " + "; ".join(problems))


def plan_fingerprint(cfg: SampleConfig, prompts: list[Prompt]) -> dict[str, Any]:
    """What the parts of an interrupted run must have been made with, for a resume to continue them."""
    return {
        "prompts": sha256_text(json.dumps([[p.id, p.prompt] for p in prompts])),
        "n_prompts": len(prompts),
        "chunk_prompts": cfg.chunk_prompts,
        "sampling": hashed_view(cfg.sampling),
        "model": cfg.model.path,
        "adapter": cfg.adapter,
        "instruction_suffix": cfg.model.instruction_suffix,
        # What the prompts are rendered with: another template or its options is another prompt set.
        "chat_template": cfg.model.chat_template,
        "chat_template_kwargs": cfg.model.chat_template_kwargs,
    }


def prepare_parts_dir(parts_dir: Path, plan: dict[str, Any], force: bool) -> None:
    plan_file = parts_dir / "plan.json"
    if force and parts_dir.exists():
        shutil.rmtree(parts_dir)
    if plan_file.exists():
        if json.loads(plan_file.read_text()) != json.loads(json.dumps(plan)):
            raise SampleError(
                f"{parts_dir} holds parts of an interrupted run with other prompts or settings; "
                f"delete it or pass force=true to start over"
            )
        return
    parts_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan_file, plan)


def context_limit(cfg: SampleConfig, longest_prompt: int) -> int | None:
    """vLLM's max_model_len: the configured one, else longest prompt + max_new_tokens, capped at the model's
    context (a completion that reaches it ends with finish_reason 'length')."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        cfg.model.path, local_files_only=True, trust_remote_code=cfg.model.trust_remote_code
    )
    model_max = getattr(config.get_text_config(), "max_position_embeddings", None)
    limit = cfg.sampling.max_model_len or longest_prompt + cfg.sampling.max_new_tokens
    if model_max is not None and limit > model_max:
        log.warning("context %d capped at the model's max_position_embeddings %d", limit, model_max)
        limit = model_max
    if longest_prompt >= limit:
        raise ValueError(
            f"the longest prompt has {longest_prompt} tokens, no room to generate within a context of {limit}; "
            f"raise sampling.max_model_len or shorten the prompts"
        )
    return limit


def samples_table(
    prompts: list[Prompt], completions: list[list[Completion]], policy: str, prefill: str = ""
) -> pa.Table:
    """One row per sample. `completion` is the whole assistant turn: the generation prompt's prefill (R1's
    `<think>\n`) joined back to what was generated, so verifier, selection and the next round's SFT records
    all see the whole trace; `n_tokens` counts the generated tokens."""
    rows = [
        {
            "id": p.id,
            "prompt": p.prompt,
            "answer": p.answer,
            "sample_idx": k,
            "completion": prefill + c.text,
            "finish_reason": c.finish_reason,
            "n_tokens": c.n_tokens,
            "policy": policy,
        }
        for p, samples in zip(prompts, completions, strict=True)
        for k, c in enumerate(samples)
    ]
    return pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA)


def show_samples(table: pa.Table, count: int) -> None:
    """Print the first `count` samples for a quick look at what the model writes."""
    for i, row in enumerate(table.slice(0, count).to_pylist()):
        print(
            f"\n=== sample {i + 1}/{min(count, table.num_rows)}: id {row['id']}, sample_idx {row['sample_idx']}, "
            f"{row['finish_reason']}, {row['n_tokens']} tokens, answer {row['answer']!r}"
        )
        print(f"--- prompt\n{row['prompt']}\n--- completion\n{row['completion']}")


def _write_final(parts: list[Path], output: Path, prompts: list[Prompt], n: int) -> pa.Table:
    """Concatenate, check against the prompts, order by (prompt order, sample_idx), write atomically."""
    table = pa.concat_tables([pq.read_table(p) for p in parts]) if parts else SAMPLES_SCHEMA.empty_table()
    check_samples(table, [p.id for p in prompts], n, str(output))
    position = {p.id: i for i, p in enumerate(prompts)}
    keys = [
        (position[i], k)
        for i, k in zip(table["id"].to_pylist(), table["sample_idx"].to_pylist(), strict=True)
    ]
    table = table.take(sorted(range(table.num_rows), key=keys.__getitem__))
    with atomic_path(output) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return table


def run(cfg: SampleConfig) -> Path:
    """Sample cfg.sampling.n completions for every prompt of this shard (or merge the shards: merge=true).
    Returns the file written (the shard's file when num_shards > 1)."""
    prompt_set = load_prompts(cfg.prompts)  # bad input fails here, before a model loads
    if cfg.merge:
        return merge_shards(cfg, prompt_set.prompts)
    start, stop = shard_bounds(len(prompt_set.prompts), cfg.num_shards, cfg.shard_index)
    prompts = prompt_set.prompts[start:stop]
    output = Path(cfg.output)
    if cfg.num_shards > 1:
        output = shard_output_path(output, cfg.shard_index, cfg.num_shards)
    if output.exists() and not cfg.force:
        log.info("%s exists: skipping (force=true samples again)", output)
        return output
    require_model_dir(cfg.model.path, "policy model")
    if cfg.adapter is not None and not (Path(cfg.adapter) / "adapter_config.json").exists():
        raise FileNotFoundError(f"adapter {cfg.adapter}: no adapter_config.json there (a PEFT adapter dir)")
    log.info(
        "sample: %d prompts (shard %d/%d: [%d, %d) of %d from %s), n=%d",
        len(prompts),
        cfg.shard_index,
        cfg.num_shards,
        start,
        stop,
        len(prompt_set.prompts),
        prompt_set.file,
        cfg.sampling.n,
    )

    parts_dir = output.with_name(output.name + ".parts")
    prepare_parts_dir(parts_dir, plan_fingerprint(cfg, prompts), cfg.force)
    n_chunks = math.ceil(len(prompts) / cfg.chunk_prompts)
    parts = [parts_dir / f"part-{k:05d}.parquet" for k in range(n_chunks)]
    todo = [k for k in range(n_chunks) if not parts[k].exists()]
    if len(todo) < n_chunks:
        log.info("resuming: %d of %d chunks already done in %s", n_chunks - len(todo), n_chunks, parts_dir)
    if todo:
        tokenizer = load_tokenizer(cfg.model)
        renderer = chat_renderer(cfg.model, tokenizer)
        rendered = render_prompts(renderer, [p.prompt for p in prompts])
        log.info("sample: first prompt as given to the model:\n%s", rendered[0])
        longest = max(len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"])
        backend = make_backend(
            cfg.model,
            cfg.sampling,
            tokenizer,
            adapter=cfg.adapter,
            use_cpu=resolve_use_cpu(cfg.use_cpu),
            max_model_len=context_limit(cfg, longest),
            progress=False,
        )
        policy = cfg.model.name or cfg.model.path
        started, tokens = time.time(), 0
        for k in tqdm(todo, desc="sample", unit="chunk", disable=not cfg.progress):
            chunk = slice(k * cfg.chunk_prompts, (k + 1) * cfg.chunk_prompts)
            completions = backend.generate(rendered[chunk], [p.id for p in prompts[chunk]])
            table = samples_table(prompts[chunk], completions, policy, renderer.prefill)
            tokens += sum(table.column("n_tokens").to_pylist())
            with atomic_path(parts[k]) as tmp:
                pq.write_table(table, tmp)
        backend.close()
        seconds = time.time() - started
        log.info("sample: %d completion tokens in %.1f s (%.0f tokens/s)", tokens, seconds, tokens / seconds)
    table = _write_final(parts, output, prompts, cfg.sampling.n)
    shutil.rmtree(parts_dir)
    truncated = sum(r == "length" for r in table.column("finish_reason").to_pylist())
    log.info("sample: %d samples (%d cut at max_new_tokens) -> %s", table.num_rows, truncated, output)
    show_samples(table, cfg.show)
    return output


def merge_shards(cfg: SampleConfig, prompts: list[Prompt] | None = None) -> Path:
    """Concatenate the `num_shards` shard files into `output`, checking that every prompt of the prompt set
    is there exactly once with exactly n samples. The shard files are kept."""
    prompts = load_prompts(cfg.prompts).prompts if prompts is None else prompts
    output = Path(cfg.output)
    if output.exists() and not cfg.force:
        log.info("%s exists: skipping the merge (force=true merges again)", output)
        return output
    shards = [shard_output_path(output, k, cfg.num_shards) for k in range(cfg.num_shards)]
    missing = [k for k, path in enumerate(shards) if not path.exists()]
    if missing:
        raise SampleError(
            f"cannot merge into {output}: shard(s) {missing} of {cfg.num_shards} not finished "
            f"(no {shards[missing[0]].name}); run them with shard_index=<k> num_shards={cfg.num_shards}"
        )
    table = _write_final(shards, output, prompts, cfg.sampling.n)
    log.info("merged %d shards: %d samples -> %s", cfg.num_shards, table.num_rows, output)
    return output


if __name__ == "__main__":
    from core.stages import main

    main("sample")
