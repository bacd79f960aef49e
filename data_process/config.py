"""Typed config of the data_process stage (schema `data_process_schema`, YAML conf/data_process.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.config import ModelConfig, help_field

CORRECTNESS_POLICIES = ("math_verify", "llama", "either", "both", "verifier")
# The test sets vendored in data/benchmarks/ (see its README), which training data is decontaminated against.
BENCHMARK_DIR = Path(__file__).resolve().parent.parent / "data" / "benchmarks"
BENCHMARKS = ("math500", "aime24", "aime25", "amc23", "gsm8k")
SELECTIONS = ("shortest", "first", "all")


@dataclass
class SyntheticConfig:
    """The offline default data (used when `input_dir` is null): see data_process/synthetic.py."""

    num_problems: int = help_field(4000, help="Problems to generate.")
    seed: int = help_field(0)
    min_ops: int = help_field(1, help="Fewest + / - operations per problem (difficulty level).")
    max_ops: int = help_field(3, help="Most operations per problem.")
    max_operand: int = help_field(99)
    story_prob: float = help_field(0.2, help="Share of problems written as a short story.")
    min_generations: int = help_field(2)
    max_generations: int = help_field(4)
    p_correct: float = help_field(0.65, help="Chance a one-step problem's trace is correct.")
    p_unfinished: float = help_field(0.1, help="Chance a trace is cut off (finish reason 'length').")
    duplicate_prob: float = help_field(0.02, help="Chance a problem repeats an earlier one.")
    verbose_words: int = help_field(0, help="Median filler words per trace (0: compact traces).")
    shard_rows: int = help_field(5000, help="Rows per parquet shard.")
    output_dir: str = help_field(
        "${run_dir}/raw", help="Where the synthetic OpenR1 shards are written.", hashed=False
    )

    def __post_init__(self) -> None:
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"need 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}")
        if not 1 <= self.min_generations <= self.max_generations:
            raise ValueError("need 1 <= min_generations <= max_generations")


@dataclass
class FilterConfig:
    question_types: list[str] = help_field(
        ["math-word-problem"], help="Keep only these question_type values; [] keeps all."
    )
    exclude_sources: list[str] = help_field([], help="Drop problems from these sources.")
    sources: list[str] = help_field([], help="Keep only these sources; [] keeps all.")
    max_tokens: int = help_field(
        16384,
        help="Longest SFT example (prompt + trace in the chat template), in tokens; longer are dropped.",
    )
    dedup_exact: bool = help_field(True, help="Drop problems equal after normalisation.")
    dedup_near: bool = help_field(True, help="Drop near-duplicate problems (MinHash-LSH).")
    near_threshold: float = help_field(0.8, help="Estimated Jaccard similarity that counts as duplicate.")
    decontaminate_benchmarks: list[str] = help_field(
        list(BENCHMARKS),
        help="Vendored test sets (data/benchmarks/<name>.jsonl) whose problems are removed from the data "
        "(word n-gram overlap) and counted per benchmark in the manifest; [] turns this off.",
    )
    decontaminate: list[str] = help_field(
        [], help="More evaluation prompt files (parquet / jsonl / txt); overlapping problems are dropped."
    )
    decontam_ngram: int = help_field(8, help="Word n-gram size for decontamination (open-r1 uses 8).")

    def __post_init__(self) -> None:
        if not 0 < self.near_threshold <= 1:
            raise ValueError(f"near_threshold must be in (0, 1], got {self.near_threshold}")
        if self.max_tokens < 16:
            raise ValueError(f"max_tokens {self.max_tokens} is too small to hold any example")
        if unknown := [b for b in self.decontaminate_benchmarks if b not in BENCHMARKS]:
            raise ValueError(
                f"filters.decontaminate_benchmarks: unknown {unknown}; the vendored benchmarks are "
                f"{list(BENCHMARKS)} (data/benchmarks/); other files go to filters.decontaminate"
            )
        if self.decontam_ngram < 1:
            raise ValueError(f"filters.decontam_ngram must be >= 1, got {self.decontam_ngram}")


@dataclass
class TraceConfig:
    correctness: str = help_field(
        "math_verify",
        help="Which flag marks a trace correct: math_verify | llama | either | both | verifier "
        "(re-check every trace with this project's verifier).",
    )
    selection: str = help_field("shortest", help="Which correct trace(s) to keep: shortest | first | all.")
    max_per_problem: int = help_field(1, help="With selection=all: keep at most this many traces.")

    def __post_init__(self) -> None:
        if self.correctness not in CORRECTNESS_POLICIES:
            raise ValueError(
                f"traces.correctness must be one of {CORRECTNESS_POLICIES}, got '{self.correctness}'"
            )
        if self.selection not in SELECTIONS:
            raise ValueError(f"traces.selection must be one of {SELECTIONS}, got '{self.selection}'")
        if self.max_per_problem < 1:
            raise ValueError("traces.max_per_problem must be >= 1")


@dataclass
class PairsConfig:
    enabled: bool = help_field(True, help="Write preference pairs (chosen correct vs rejected wrong).")
    max_per_problem: int = help_field(1, help="Pairs per problem at most.")
    allow_unfinished_rejected: bool = help_field(
        False, help="Also use truncated (unfinished) traces as the rejected side."
    )


@dataclass
class DataProcessConfig:
    """OpenR1-Math shards → CoT Alpaca SFT records, preference pairs and prompt sets."""

    # Locations are not part of the config hash: moving a run does not change what it computed.
    run_name: str = help_field("default", help="Run name; outputs go under runs/<run_name>/.", hashed=False)
    run_dir: str = help_field("runs/${run_name}", hashed=False)
    input_dir: str | None = help_field(
        None,
        help="OpenR1-Math root (default/ + extended/, or data/ + extended/ + all/), a folder of shards or "
        "one parquet file; null = synthetic.",
    )
    subsets: list[str] = help_field(
        [],
        help="OpenR1 configs to read: default (data/ or default/), extended, all (both); other names select "
        "top folders by name; [] reads all, each row once.",
    )
    output_dir: str = help_field("${run_dir}/data", hashed=False)
    model: ModelConfig = field(default_factory=ModelConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    traces: TraceConfig = field(default_factory=TraceConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    eval_fraction: float = help_field(0.1, help="Share of kept problems held out as the test prompt split.")
    split_seed: int = help_field(0, help="Salt of the hash that assigns problems to splits.")
    sft_fraction: float = help_field(
        1.0,
        help="Share of train problems whose traces become SFT records (hash-sampled); the rest are "
        "prompts only, for rejection sampling and RL.",
    )
    max_sft_records: int | None = help_field(None, help="Cap on SFT records (first in input order).")
    batch_size: int = help_field(256, help="Rows per record batch read.", hashed=False)
    verifier_workers: int = help_field(2, help="Processes for traces.correctness=verifier.", hashed=False)
    progress: bool = help_field(True, help="Show a progress bar.", hashed=False)
    force: bool = help_field(False, help="Redo the stage even if a matching manifest exists.", hashed=False)

    def __post_init__(self) -> None:
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not 0 <= self.sft_fraction <= 1:
            raise ValueError(f"sft_fraction must be in [0, 1], got {self.sft_fraction}")
        if self.max_sft_records is not None and self.max_sft_records < 0:
            raise ValueError("max_sft_records must be >= 0 or null")
        if any(not str(s).strip() for s in self.subsets):
            raise ValueError(f"subsets must be non-empty names, got {self.subsets}")
