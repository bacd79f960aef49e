"""data_process: OpenR1-Math shards → CoT Alpaca SFT records, preference pairs, prompt sets.

Reads shards one record batch at a time and writes every output incrementally, so peak memory does not
grow with the input. Each input row ends up in exactly one place of the row accounting:

    rows_read = rows_kept + Σ rows_dropped[reason]

Kept rows become prompts (train or test split). Train-split rows additionally yield SFT records (verified
correct, complete traces within the token limit) and preference pairs; what happened to each is counted
under `sft` and `pairs` in the manifest. The manifest also says which input files were read and which were
skipped and why (`input_files`, see openr1.plan_shards), and how many well-formed rows and traces lack a
per-trace flag (`missing_flags`, see records.missing_row_flags): such rows are kept, not dropped.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from core.artifacts import (
    Manifest,
    ParquetSink,
    fingerprint_files,
    read_manifest,
    sha256_file,
)
from core.chat import ChatRenderer
from core.lifecycle import StageRun
from core.models import chat_renderer, load_tokenizer
from core.verifier import verify_batch
from data_process import records, synthetic
from data_process.config import BENCHMARK_DIR, DataProcessConfig
from data_process.dedup import Decontaminator, NearDuplicateIndex, exact_key, read_eval_prompts
from data_process.openr1 import iter_batches, plan_shards, validate_shards

log = logging.getLogger(__name__)
STAGE = "data_process"


def unit_hash(*parts: Any) -> float:
    """Deterministic uniform number in [0, 1) for a key: splits and samples that do not depend on order."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def synthetic_run(cfg: DataProcessConfig) -> StageRun:
    return StageRun("synthetic_openr1", cfg.synthetic, Path(cfg.synthetic.output_dir), inputs={})


def ensure_synthetic_input(cfg: DataProcessConfig) -> Path:
    """Generate the synthetic OpenR1 shards (once; skipped when their manifest matches)."""
    spec_cfg = cfg.synthetic
    stage = synthetic_run(cfg)
    out = stage.out
    if stage.begin() is not None:
        return out
    spec = synthetic.SyntheticSpec(
        num_problems=spec_cfg.num_problems,
        seed=spec_cfg.seed,
        min_ops=spec_cfg.min_ops,
        max_ops=spec_cfg.max_ops,
        max_operand=spec_cfg.max_operand,
        story_prob=spec_cfg.story_prob,
        min_generations=spec_cfg.min_generations,
        max_generations=spec_cfg.max_generations,
        duplicate_prob=spec_cfg.duplicate_prob,
        verbose_words=spec_cfg.verbose_words,
        mix=synthetic.TraceMix(p_correct=spec_cfg.p_correct, p_unfinished=spec_cfg.p_unfinished),
    )
    log.info("generating %d synthetic OpenR1-schema problems into %s", spec.num_problems, out)
    files = synthetic.write_shards(spec, out, shard_rows=spec_cfg.shard_rows)
    stage.finish({f.path: f for f in files}, {"rows": sum(f.rows or 0 for f in files)})
    return out


class _Processor:
    """Holds the streaming state: dedup indexes, output sinks, counters."""

    def __init__(
        self, cfg: DataProcessConfig, out: Path, counter: ChatRenderer, decontam: Decontaminator | None
    ):
        self.cfg, self.counter, self.decontam = cfg, counter, decontam
        self.drops: Counter[str] = Counter()
        # Rows removed per evaluation source they overlap (a row overlapping two counts under both).
        self.decontaminated: Counter[str] = Counter(
            {name: 0 for name in (decontam.names if decontam else [])}
        )
        self.sft_stats: Counter[str] = Counter()
        self.pair_stats: Counter[str] = Counter()
        self.split_counts: Counter[str] = Counter()
        self.missing_rows: Counter[str] = Counter()
        self.missing_traces: Counter[str] = Counter()
        self.rows_checked = self.traces_checked = 0
        self.rows_read = self.rows_kept = self.sft_tokens = 0
        self.exact_seen: set[bytes] = set()
        self.near = (
            NearDuplicateIndex(threshold=cfg.filters.near_threshold) if cfg.filters.dedup_near else None
        )
        self.ids: set[str] = set()
        self.renamed_ids = 0
        self.sinks = {
            "sft": ParquetSink(out / "sft.parquet", records.SFT_SCHEMA),
            "prompts": ParquetSink(out / "prompts.parquet", records.PROMPTS_SCHEMA),
        }
        if cfg.pairs.enabled:
            self.sinks["pairs"] = ParquetSink(out / "pairs.parquet", records.PAIRS_SCHEMA)

    # ------------------------------------------------------------------ admission (row accounting)

    def drop_reason(self, row: dict[str, Any]) -> str | None:
        reason = records.malformed_reason(row)
        if reason:
            return reason
        self.count_missing_flags(row)
        f = self.cfg.filters
        if f.question_types and row.get("question_type") not in f.question_types:
            return "question_type"
        if (f.sources and row.get("source") not in f.sources) or row.get("source") in f.exclude_sources:
            return "source"
        problem = row["problem"]
        # Before deduplication, so every copy of a benchmark problem is counted as contaminated (and the
        # dedup indexes never hold one).
        if self.decontam is not None and (sources := self.decontam.overlaps(problem)):
            self.decontaminated.update(sources)
            return "contaminated"
        if f.dedup_exact:
            key = exact_key(problem)
            if key in self.exact_seen:
                return "duplicate_exact"
            self.exact_seen.add(key)
        if self.near is not None and not self.near.add_if_new(problem):
            return "duplicate_near"
        return None

    def count_missing_flags(self, row: dict[str, Any]) -> None:
        """Gaps in the per-trace flags of a well-formed row, counted before the filters: they describe the
        input data, whatever the filters later keep."""
        self.missing_rows.update(records.missing_row_flags(row))
        self.missing_traces.update(records.missing_trace_flags(row))
        self.rows_checked += 1
        self.traces_checked += len(row["generations"])

    def missing_flags_metrics(self) -> dict[str, Any]:
        return {
            "rows_checked": self.rows_checked,
            "traces_checked": self.traces_checked,
            "rows": dict(sorted(self.missing_rows.items())),
            "traces": dict(sorted(self.missing_traces.items())),
        }

    def unique_id(self, row: dict[str, Any]) -> str:
        base = row.get("uuid") or "p-" + exact_key(row["problem"]).hex()
        uid, n = base, 1
        while uid in self.ids:
            uid, n = f"{base}-{n}", n + 1
        self.renamed_ids += uid != base
        self.ids.add(uid)
        return uid

    # ------------------------------------------------------------------ one record batch

    def process_batch(self, rows: list[dict[str, Any]]) -> None:
        self.rows_read += len(rows)
        kept = []
        for row in rows:
            reason = self.drop_reason(row)
            if reason:
                self.drops[reason] += 1
            else:
                kept.append(row)
        self.rows_kept += len(kept)
        train = []
        for row in kept:
            row["_id"] = self.unique_id(row)
            split = (
                "test"
                if unit_hash(self.cfg.split_seed, "split", row["problem"]) < self.cfg.eval_fraction
                else "train"
            )
            self.split_counts[split] += 1
            self.sinks["prompts"].write(
                {
                    "id": row["_id"],
                    "prompt": row["problem"],
                    "answer": str(row["answer"]).strip(),
                    "source": row.get("source") or "",
                    "split": split,
                }
            )
            if split == "train":
                train.append(row)
        verdicts = self.verify(train)
        candidates: list[tuple[dict[str, Any], int, str]] = []
        for row, row_verdicts in zip(train, verdicts, strict=True):
            correct_flags = records.correctness(row, self.cfg.traces.correctness, row_verdicts)
            complete = [records.generation_finished(row, i) for i in range(len(row["generations"]))]
            good = [i for i, (c, ok) in enumerate(zip(correct_flags, complete, strict=True)) if c and ok]
            self.write_pairs(row, good, complete, row_verdicts)
            if not good:
                self.sft_stats["no_correct_complete_trace"] += 1
                continue
            if unit_hash(self.cfg.split_seed, "sft", row["problem"]) >= self.cfg.sft_fraction:
                self.sft_stats["prompt_only"] += 1
                continue
            chosen = records.select_traces(
                row["generations"], good, self.cfg.traces.selection, self.cfg.traces.max_per_problem
            )
            for i in chosen:
                sft_id = row["_id"] if len(chosen) == 1 else f"{row['_id']}-t{i}"
                candidates.append((row, i, sft_id))
        self.write_sft(candidates)

    def verify(self, rows: list[dict[str, Any]]) -> list[list[bool | None] | None]:
        if self.cfg.traces.correctness != "verifier" or not rows:
            return [None] * len(rows)
        completions = [g for row in rows for g in row["generations"]]
        golds = [str(row["answer"]) for row in rows for _ in row["generations"]]
        flat = verify_batch(completions, golds, workers=self.cfg.verifier_workers)
        out, pos = [], 0
        for row in rows:
            out.append(flat[pos : pos + len(row["generations"])])
            pos += len(row["generations"])
        return out

    def write_pairs(
        self, row: dict[str, Any], good: list[int], complete: list[bool], verdicts: list[bool | None] | None
    ) -> None:
        if "pairs" not in self.sinks:
            return
        wrong_flags = records.wrong_flags(row, verdicts)
        allow_unfinished = self.cfg.pairs.allow_unfinished_rejected
        wrong = [i for i, w in enumerate(wrong_flags) if w and (complete[i] or allow_unfinished)]
        pairs = records.select_pairs(row["generations"], good, wrong, self.cfg.pairs.max_per_problem)
        if not pairs:
            self.pair_stats["no_pair"] += 1
        for k, (c, r) in enumerate(pairs):
            self.sinks["pairs"].write(
                {
                    "id": row["_id"] if k == 0 else f"{row['_id']}-p{k}",
                    "prompt": row["problem"],
                    "chosen": row["generations"][c],
                    "rejected": row["generations"][r],
                    "answer": str(row["answer"]).strip(),
                    "source": row.get("source") or "",
                }
            )
            self.pair_stats["written"] += 1

    def write_sft(self, candidates: list[tuple[dict[str, Any], int, str]]) -> None:
        n_tokens = self.counter.count([(row["problem"], row["generations"][i]) for row, i, _ in candidates])
        cap = self.cfg.max_sft_records
        for (row, i, sft_id), n in zip(candidates, n_tokens, strict=True):
            if n > self.cfg.filters.max_tokens:
                self.sft_stats["too_long"] += 1
                continue
            if cap is not None and self.sft_stats["written"] >= cap:
                self.sft_stats["capped"] += 1
                continue
            self.sinks["sft"].write(
                {
                    "id": sft_id,
                    "instruction": row["problem"],
                    "input": "",
                    "output": row["generations"][i],
                    "answer": str(row["answer"]).strip(),
                    "source": row.get("source") or "",
                    "n_tokens": n,
                }
            )
            self.sft_stats["written"] += 1
            self.sft_tokens += n

    def close(self) -> dict[str, Any]:
        return {name: sink.close() for name, sink in self.sinks.items()}

    def abort(self) -> None:
        for sink in self.sinks.values():
            sink.abort()


def decontamination_sources(cfg: DataProcessConfig) -> dict[str, Path]:
    """Every evaluation source the data is decontaminated against: the vendored benchmarks by name, then
    the user's files by the path given. A missing file is an error here, before any row is read."""
    sources = {name: BENCHMARK_DIR / f"{name}.jsonl" for name in cfg.filters.decontaminate_benchmarks}
    sources.update({p: Path(p) for p in cfg.filters.decontaminate})
    for name, path in sources.items():
        if not path.is_file():
            raise FileNotFoundError(f"decontamination source {name}: {path} does not exist")
    return sources


def decontamination_inputs(cfg: DataProcessConfig, sources: dict[str, Path]) -> dict[str, str]:
    """The stage inputs that identify the decontamination sources. Benchmarks by content (sha256: they sit
    in the repository, where a checkout changes mtimes), user files by path, size and mtime like every
    other raw input."""
    inputs = {}
    if cfg.filters.decontaminate_benchmarks:
        inputs["benchmarks"] = ",".join(
            f"{name}:{sha256_file(sources[name])[:16]}" for name in cfg.filters.decontaminate_benchmarks
        )
    if cfg.filters.decontaminate:
        inputs["decontaminate"] = fingerprint_files([Path(p) for p in cfg.filters.decontaminate])
    return inputs


def build_decontaminator(cfg: DataProcessConfig, sources: dict[str, Path]) -> Decontaminator | None:
    """The n-gram index of every source, its build time in `index_seconds` (~0.1 s for the five benchmarks'
    1,919 problems on one core)."""
    if not sources:
        return None
    started = time.perf_counter()
    decontam = Decontaminator(
        {name: read_eval_prompts(path) for name, path in sources.items()}, ngram=cfg.filters.decontam_ngram
    )
    decontam.index_seconds = round(time.perf_counter() - started, 3)
    log.info(
        "data_process: decontaminating against %s (%d-grams: %d entries, built in %.2f s)",
        ", ".join(sources), decontam.ngram, len(decontam), decontam.index_seconds,
    )  # fmt: skip
    return decontam


def decontamination_metrics(decontam: Decontaminator | None) -> dict[str, Any]:
    """What the index held: per source its problems, those under n words (matched whole) and the n-grams it
    added to the index, and the seconds the index took to build."""
    if decontam is None:
        return {"sources": {}}
    return {"ngram": decontam.ngram, "sources": decontam.stats, "index_seconds": decontam.index_seconds}


def stage_run(
    cfg: DataProcessConfig, input_dir: Path, shards: list[Any], decontam_sources: dict[str, Path]
) -> StageRun:
    """The run's identity: the raw input (its manifest's content hash when a stage wrote it, else its
    shards' sizes and mtimes), the tokenizer's files, the decontamination sources."""
    upstream = read_manifest(input_dir)
    inputs = {
        "raw": upstream.content_hash()
        if upstream
        else fingerprint_files([s.path for s in shards], input_dir),
        "tokenizer": fingerprint_files(
            [
                p
                for p in Path(cfg.model.tokenizer_dir).iterdir()
                if p.name.startswith(("tokenizer", "chat_template"))
            ]
        ),
    }
    inputs.update(decontamination_inputs(cfg, decontam_sources))
    return StageRun(STAGE, cfg, Path(cfg.output_dir), inputs)


def identify(cfg: DataProcessConfig) -> StageRun | None:
    """What `run` would be, without reading a row (the pipeline's skip check). None while the synthetic
    input of the offline default is still to be generated."""
    if not cfg.input_dir and not synthetic_run(cfg).complete():
        return None
    input_dir = Path(cfg.input_dir or cfg.synthetic.output_dir)
    shards = plan_shards(input_dir, cfg.subsets or None).shards
    return stage_run(cfg, input_dir, shards, decontamination_sources(cfg))


def run(cfg: DataProcessConfig) -> Manifest:
    out = Path(cfg.output_dir)
    # Everything that can be wrong with the inputs is checked before the first row is read, the shards
    # first (seconds), then the tokenizer (importing transformers takes longer).
    input_dir = Path(cfg.input_dir) if cfg.input_dir else ensure_synthetic_input(cfg)
    plan = plan_shards(input_dir, cfg.subsets or None)
    for line in plan.summary():
        log.info("data_process: %s", line)
    shards = plan.shards
    validate_shards(shards)
    decontam_sources = decontamination_sources(cfg)
    decontam = build_decontaminator(cfg, decontam_sources)  # ~0.1 s; a bad file fails before any row is read
    tokenizer = load_tokenizer(cfg.model)
    stage = stage_run(cfg, input_dir, shards, decontam_sources)
    if (done := stage.begin()) is not None:
        return done

    processor = _Processor(cfg, out, chat_renderer(cfg.model, tokenizer), decontam)
    total = sum(s.rows for s in shards)
    processing_started = time.time()
    try:
        with tqdm(total=total, unit="rows", desc="data_process", disable=not cfg.progress) as bar:
            for shard in shards:
                for rows in iter_batches(shard, cfg.batch_size):
                    processor.process_batch(rows)
                    bar.update(len(rows))
        outputs = processor.close()
    except BaseException:
        processor.abort()
        raise
    elapsed = time.time() - processing_started
    dropped = dict(sorted(processor.drops.items()))
    if processor.rows_read != processor.rows_kept + sum(dropped.values()):
        raise RuntimeError(
            f"row accounting broken: {processor.rows_read} read, {processor.rows_kept} kept, {dropped}"
        )
    metrics = {
        "rows_read": processor.rows_read,
        "rows_kept": processor.rows_kept,
        "rows_dropped": dropped,
        "input_files": plan.describe(),
        "missing_flags": processor.missing_flags_metrics(),
        "renamed_duplicate_ids": processor.renamed_ids,
        "decontaminated": dict(processor.decontaminated),
        "decontamination": decontamination_metrics(decontam),
        "prompts": dict(processor.split_counts),
        "sft": {
            **processor.sft_stats,
            "written": processor.sft_stats["written"],
            "tokens": processor.sft_tokens,
        },
        "pairs": {**processor.pair_stats, "written": processor.pair_stats["written"]},
        "seconds": round(elapsed, 2),  # reading, filtering, tokenizing, writing (not input generation)
        "rows_per_second": round(processor.rows_read / max(elapsed, 1e-9), 1),
    }
    manifest = stage.finish(outputs, metrics)
    log.info(
        "data_process: %d rows read, %d kept, %d SFT records, %d pairs, %d prompts -> %s",
        processor.rows_read,
        processor.rows_kept,
        processor.sft_stats["written"],
        processor.pair_stats["written"],
        processor.rows_kept,
        out,
    )
    return manifest
