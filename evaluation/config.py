"""Typed config of evaluation (`python -m evaluation`, conf/evaluate.yaml).

- `EvaluateConfig`: pass@1 / maj@k / best-of-N on held-out prompts, or on a benchmark.
- `BenchmarkConfig` (group conf/benchmark/; decoding presets in conf/protocol/): which test set, and how its
  golds are read (`answer_format`, ANSWER_FORMATS).

Only evaluation reads these, so they live here. What evaluation shares with the other stages is imported, not
copied: `SamplingConfig` and `PromptSource` from reject_sampling.config (evaluation samples exactly as
sample.py and the rejection-sampling stage do, so a pass@1 here measures the same decoding that made the
training data), `ModelConfig` from core.config, and grpo's `ReasoningGymTask` (the same generator spec GRPO
trains on).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.config import ModelConfig, help_field
from core.judge import JudgeConfig
from grpo.config import ReasoningGymTask
from reject_sampling.config import STAGE_CHUNK_HELP, PromptSource, SamplingConfig

# How a benchmark's gold answers are written (evaluation.benchmarks.normalise_answer).
ANSWER_FORMATS = ("auto", "latex", "integer", "number", "gsm8k")


@dataclass
class BenchmarkConfig:
    """A test set to evaluate on (`benchmark=NAME`, conf/benchmark/NAME.yaml; `benchmark=FILE.jsonl` for one's
    own): a JSONL file whose fields hold problem and answer, or reasoning-gym generators. Every gold answer is
    normalised and checked against the verifier when the benchmark loads (evaluation/benchmarks.py).

    The generator spec is grpo's `ReasoningGymTask`, and the items are built by the same function GRPO uses,
    so a task list means the same items in training and in evaluation (give evaluation its own `seed`)."""

    name: str | None = help_field(None, help="Label in metrics.json; null = the file's stem.")
    path: str | None = help_field(
        None, help="JSONL file (a relative path: from the working directory, else the repository root)."
    )
    problem_field: str = help_field("problem", help="Field holding the problem text.")
    answer_field: str = help_field("answer", help="Field holding the gold answer.")
    id_field: str | None = help_field(
        "id", help="Field holding a problem id; null, or absent in a row: the 0-based row number."
    )
    answer_format: str = help_field(
        "auto",
        help="latex: the string as written | integer: 025 -> 25 | number: 27.0 -> 27 | gsm8k: the number "
        "after '####', thousands separators removed | auto: numbers as `number`, strings as `latex`.",
    )
    breakdown: list[str] = help_field(
        [], help="Fields reported separately as by_<field> (pass@1, its standard error, prompts)."
    )
    samples: int = help_field(
        4, help="Samples per problem of the sampling protocol (conf/protocol/r1.yaml reads it as sampling.n)."
    )
    verifier: str | None = help_field(
        None, help="Verifier of this benchmark; null = the top-level `verifier`."
    )
    reasoning_gym: list[ReasoningGymTask] = help_field(
        [], help="reasoning-gym generators instead of a file, e.g. [{name: chain_sum, size: 50}]."
    )
    seed: int = help_field(0, help="Seed of reasoning-gym tasks without one of their own.")

    def __post_init__(self) -> None:
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(
                f"benchmark.answer_format must be one of {ANSWER_FORMATS}, got '{self.answer_format}'"
            )
        if (self.path is None) == (not self.reasoning_gym):
            raise ValueError(
                f"benchmark {self.name}: set exactly one of benchmark.path (a JSONL file) and "
                "benchmark.reasoning_gym (generators)"
            )
        if self.samples < 1:
            raise ValueError(f"benchmark.samples must be >= 1, got {self.samples}")


@dataclass
class EvaluateConfig:
    """`python -m evaluation`: sampling + verification on held-out prompts, or on a benchmark
    (`benchmark`; then `prompts.max_prompts` still caps the problems and the rest of `prompts` is unused),
    → metrics."""

    run_name: str = help_field("default", hashed=False)
    run_dir: str = help_field("runs/${run_name}", hashed=False)
    name: str = help_field("eval", help="Label of this evaluation in reports (e.g. round_0_sft).")
    output_dir: str = help_field("${run_dir}/eval/${name}", hashed=False)
    model: ModelConfig = field(default_factory=ModelConfig)
    reward_model: ModelConfig = field(default_factory=ModelConfig)
    use_reward_model: bool = help_field(False, help="Also report best-of-N by reward-model score.")
    prompts: PromptSource = field(default_factory=lambda: PromptSource(path="${run_dir}/data", split="test"))
    benchmark: BenchmarkConfig | None = help_field(
        None,
        help="A test set instead of the held-out prompts: benchmark=math500 | aime24 | ... | FILE.jsonl.",
    )
    protocol: str | None = help_field(
        None, help="Name of the decoding preset (conf/protocol/) a benchmark chose; it is set by the preset."
    )
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    greedy: bool = help_field(True, help="Also decode each prompt greedily once (greedy accuracy).")
    rm_max_length: int = help_field(8192)
    rm_batch_tokens: int = help_field(16384, hashed=False)
    rm_score_all: bool = help_field(
        False,
        help="Score every sample with the reward model; false = only the samples of prompts with at least one "
        "sample the verifier did not judge wrong (no selection, pair or best-of-N result depends on the others).",
    )
    maj_ks: list[int] = help_field([], help="k values for maj@k / pass@k; [] = powers of two up to n.")
    verifier: str = help_field("math", help="Verifier from core.verifier's registry that judges the answers.")
    judge: JudgeConfig = field(
        default_factory=JudgeConfig
    )  # verifier=llm_judge | math_or_judge (core/judge.py)
    verifier_workers: int = help_field(2, hashed=False)
    chunk_prompts: int = help_field(256, help=STAGE_CHUNK_HELP, hashed=False)
    use_cpu: bool | None = help_field(None, hashed=False)
    progress: bool = help_field(True, hashed=False)
    force: bool = help_field(False, hashed=False)
