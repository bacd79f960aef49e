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
- Work is done in chunks of `chunk_prompts` prompts, each written atomically to `<output>.parts/` under a
  fingerprint of what the samples are made from (the prompts with their answers, the hashed config:
  model settings, adapter, sampling; the model's, adapter's and tokenizer's file identities), with
  core.chunks. Killed and started again with the same fingerprint, finished chunks are skipped; with
  another one (other prompts, settings or model weights), the old parts are removed and sampling starts
  over, the log naming what changed. The parts are merged into the output at the end and removed.
- A finished output is kept only when the fingerprint it records matches (a rerun with another model
  samples again instead of keeping the first model's file). The merge of shards refuses a shard sampled
  from other prompts or settings; it does not compare model file identities, which differ between
  machines that each hold their own copy of the model (the model path and name are in the settings).
  Seeds: see reject_sampling/backends.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from core.artifacts import fingerprint_dir, sha256_text
from core.chat import ChatRenderer
from core.chunks import (
    ChunkedOutput,
    canonical,
    describe_keys,
    differing_keys,
    read_fingerprint,
    reusable,
    write_parquet,
)
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


def prompts_identity(prompts: list[Prompt]) -> str:
    """Content hash of the prompts as sampled: id, question and gold answer (the answer is an output column,
    so a corrected gold answer is another input too)."""
    return sha256_text(json.dumps([[p.id, p.prompt, p.answer] for p in prompts]))


def settings_view(cfg: SampleConfig) -> dict[str, Any]:
    """The hashed config (core.config.hashed_view): model settings (name = the `policy` column, chat
    template and options, instruction suffix), adapter, sampling, shards. The prompt source is left out:
    the prompts it yields are hashed instead, so moving the file changes nothing."""
    view = hashed_view(cfg)
    del view["prompts"]
    return view


def settings_fingerprint(cfg: SampleConfig, prompts: list[Prompt]) -> dict[str, Any]:
    """The part of the fingerprint that travels between machines: the prompts and the settings."""
    return {"input": prompts_identity(prompts), "config": settings_view(cfg)}


def fingerprint(cfg: SampleConfig, prompts: list[Prompt]) -> dict[str, Any]:
    """What this shard's samples are made from (core.chunks): its prompts, the settings, and the identities
    of the model, adapter and tokenizer files, so replaced weights at the same path count as a change."""
    return {
        **settings_fingerprint(cfg, prompts),
        "model": fingerprint_dir(cfg.model.path),
        "adapter": fingerprint_dir(cfg.adapter) if cfg.adapter else None,
        "tokenizer": fingerprint_dir(cfg.model.tokenizer_path) if cfg.model.tokenizer_path else None,
    }


def merged_fingerprint(cfg: SampleConfig, prompts: list[Prompt]) -> dict[str, Any]:
    """The merged file's: all prompts and the settings but the shard index. No model file identity: each
    shard may be sampled on a machine with its own copy of the model (other mtimes, other paths); the
    merge checks each shard's prompts and settings (`stale_shard`)."""
    merged = settings_fingerprint(cfg, prompts)
    del merged["config"]["shard_index"]
    return merged


def context_limit(cfg: SampleConfig, longest_prompt: int, which: str = "the longest prompt") -> int | None:
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
            f"{which} has {longest_prompt} tokens, no room to generate within a context of {limit}; "
            f"raise sampling.max_model_len, or shorten or drop the prompt"
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


def ordered_samples(table: pa.Table, prompts: list[Prompt], n: int, where: str) -> pa.Table:
    """Check against the prompts (check_samples), then order by (prompt order, sample_idx)."""
    check_samples(table, [p.id for p in prompts], n, where)
    position = {p.id: i for i, p in enumerate(prompts)}
    keys = [
        (position[i], k)
        for i, k in zip(table["id"].to_pylist(), table["sample_idx"].to_pylist(), strict=True)
    ]
    return table.take(sorted(range(table.num_rows), key=keys.__getitem__))


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
    require_model_dir(cfg.model.path, "policy model")
    if cfg.adapter is not None and not (Path(cfg.adapter) / "adapter_config.json").exists():
        raise FileNotFoundError(f"adapter {cfg.adapter}: no adapter_config.json there (a PEFT adapter dir)")
    chunked = ChunkedOutput(
        output, fingerprint(cfg, prompts), len(prompts), cfg.chunk_prompts, force=cfg.force, label="sample"
    )
    if chunked.reusable():
        log.info(
            "%s is finished for these prompts, settings and model: skipping (force=true samples again)",
            output,
        )
        return output
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

    todo = chunked.start()
    if todo:
        tokenizer = load_tokenizer(cfg.model)
        renderer = chat_renderer(cfg.model, tokenizer)
        rendered = render_prompts(renderer, [p.prompt for p in prompts])
        log.info("sample: first prompt as given to the model:\n%s", rendered[0])
        lengths = [len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        which = (
            f"prompt '{prompts[longest].id}' (the longest; {prompt_set.file}, "
            f"column '{cfg.prompts.prompt_column}')"
        )
        chunks = {k: chunked.bounds(k) for k in todo}
        generated = generate_chunks(
            cfg,
            {k: (rendered[a:b], [p.id for p in prompts[a:b]]) for k, (a, b) in chunks.items()},
            max_model_len=context_limit(cfg, lengths[longest], which),
            tokenizer=tokenizer,
        )
        policy = cfg.model.name or cfg.model.path
        started, tokens = time.time(), 0
        for k, completions in tqdm(
            generated, total=len(todo), desc="sample", unit="chunk", disable=not cfg.progress
        ):
            first, last = chunks[k]
            table = samples_table(prompts[first:last], completions, policy, renderer.prefill)
            tokens += sum(table.column("n_tokens").to_pylist())
            chunked.write(k, table)
        seconds = time.time() - started
        log.info("sample: %d completion tokens in %.1f s (%.0f tokens/s)", tokens, seconds, tokens / seconds)
    table = chunked.merge(
        SAMPLES_SCHEMA, finish=lambda t: ordered_samples(t, prompts, cfg.sampling.n, str(output))
    )
    truncated = sum(r == "length" for r in table.column("finish_reason").to_pylist())
    log.info("sample: %d samples (%d cut at max_new_tokens) -> %s", table.num_rows, truncated, output)
    show_samples(table, cfg.show)
    return output


def generate_chunks(
    cfg: SampleConfig,
    chunks: dict[int, tuple[list[str], list[str]]],
    max_model_len: int | None,
    tokenizer: Any,
) -> Iterator[tuple[int, list[list[Completion]]]]:
    """(chunk index, completions per prompt) for each chunk ({index: (rendered prompts, ids)}): one local
    backend, chunk after chunk, or (sampling.backend=ray) a pool of engines across a Ray cluster, chunks in
    the order they finish (reject_sampling/ray_sampling.py)."""
    use_cpu = resolve_use_cpu(cfg.use_cpu)
    if cfg.sampling.backend == "ray":
        from reject_sampling import ray_sampling

        yield from ray_sampling.generate_chunks(
            cfg.model, cfg.sampling, adapter=cfg.adapter, use_cpu=use_cpu, max_model_len=max_model_len,
            chunks=chunks, progress=cfg.progress,
        )  # fmt: skip
        return
    backend = make_backend(
        cfg.model,
        cfg.sampling,
        tokenizer,
        adapter=cfg.adapter,
        use_cpu=use_cpu,
        max_model_len=max_model_len,
        progress=False,
    )
    for k, (prompts, ids) in chunks.items():
        yield k, backend.generate(prompts, ids)
    backend.close()


def stale_shard(shard: Path, cfg: SampleConfig, prompts: list[Prompt]) -> str | None:
    """Why shard file `shard` (of cfg.shard_index) cannot be merged for `cfg`, or None. Its recorded prompts
    and settings must be this shard's; model file identities are not compared (see merged_fingerprint)."""
    recorded = read_fingerprint(shard)
    if recorded is None:
        return f"{shard.name} records no fingerprint (not written by this sample.py)"
    expected = canonical(settings_fingerprint(cfg, prompts))
    changed = differing_keys({k: recorded.get(k) for k in expected}, expected)
    if changed:
        return f"{shard.name} was sampled from other prompts or settings ({describe_keys(changed)} differ)"
    return None


def merge_shards(cfg: SampleConfig, prompts: list[Prompt] | None = None) -> Path:
    """Concatenate the `num_shards` shard files into `output`, checking that every prompt of the prompt set
    is there exactly once with exactly n samples, and that each shard was sampled from its prompts with
    these settings. The shard files are kept."""
    prompts = load_prompts(cfg.prompts).prompts if prompts is None else prompts
    output = Path(cfg.output)
    merged = merged_fingerprint(cfg, prompts)
    if reusable(output, merged, cfg.force):
        log.info(
            "%s is merged for these prompts and settings: skipping the merge (force=true merges again)",
            output,
        )
        return output
    shards = [shard_output_path(output, k, cfg.num_shards) for k in range(cfg.num_shards)]
    missing = [k for k, path in enumerate(shards) if not path.exists()]
    if missing:
        raise SampleError(
            f"cannot merge into {output}: shard(s) {missing} of {cfg.num_shards} not finished "
            f"(no {shards[missing[0]].name}); run them with shard_index=<k> num_shards={cfg.num_shards}"
        )
    table = pa.concat_tables([pq.read_table(path) for path in shards])
    table = ordered_samples(table, prompts, cfg.sampling.n, str(output))
    for k, path in enumerate(shards):
        start, stop = shard_bounds(len(prompts), cfg.num_shards, k)
        problem = stale_shard(path, dataclasses.replace(cfg, shard_index=k), prompts[start:stop])
        if problem is not None:
            raise SampleError(
                f"cannot merge into {output}: {problem}; sample it again with shard_index={k} "
                f"num_shards={cfg.num_shards} force=true"
            )
    write_parquet(table, output, merged)
    log.info("merged %d shards: %d samples -> %s", cfg.num_shards, table.num_rows, output)
    return output


if __name__ == "__main__":
    from core.stages import main

    main("sample")
