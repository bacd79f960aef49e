"""Typed configs of the reject_sampling package.

- `SamplingConfig` (group conf/sampling/): how completions are generated, shared by sample.py, the
  rejection-sampling stage and evaluation, so the three sample the same way.
- `SampleConfig` (conf/sample.yaml): `python -m reject_sampling.sample`, plain inference on a prompt file.
- `SelectionConfig`, `RejectSamplingConfig` (conf/reject_sampling.yaml): sample → score → select.

Evaluation's own config (`EvaluateConfig`, `BenchmarkConfig`) is evaluation/config.py; it imports
`SamplingConfig` and `PromptSource` from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.config import ModelConfig, help_field
from core.judge import JudgeConfig

BACKENDS = ("auto", "vllm", "transformers", "ray", "openai")  # grpo.config.BACKENDS: the first three
ENGINES = ("auto", "vllm", "transformers")  # what one engine of the ray backend runs
# The rejection-sampling and evaluation stages' `chunk_prompts`, handed to sample.py.
STAGE_CHUNK_HELP = (
    "Prompts per resumable chunk of sample.py (with sampling.backend=ray, the unit handed to an engine: a few "
    "chunks per engine keep every engine busy)."
)
SELECTION_POLICIES = ("best_of_n_rm", "verified", "rm_threshold")


@dataclass
class RaySamplingConfig:
    """`sampling.backend=ray` (reject_sampling/ray_sampling.py): sample.py's chunks as a Ray Dataset, generated
    by a pool of engine actors across the cluster, each running one of the local backends (`engine`)."""

    engine: str = help_field(
        "auto",
        help="What each engine runs: auto (vLLM when importable, else transformers) | vllm | transformers.",
    )
    address: str | None = help_field(
        None, help="ray.init's address: null = a running cluster (RAY_ADDRESS) or a local one; auto = the "
        "running one; host:6379.", hashed=False,
    )  # fmt: skip
    num_engines: int | None = help_field(
        None, help="Engines in the pool; null = every GPU group of the cluster (GPUs // gpus_per_engine), "
        "on a cluster without GPUs every cpus_per_engine CPUs.", hashed=False,
    )  # fmt: skip
    cpus_per_engine: float = help_field(1, help="CPUs each engine actor reserves.", hashed=False)
    gpus_per_engine: float | None = help_field(
        None, help="GPUs each engine reserves; null = tensor_parallel_size on a cluster with GPUs, else 0.",
        hashed=False,
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"sampling.ray.engine must be one of {ENGINES}, got '{self.engine}'")
        if self.num_engines is not None and self.num_engines < 1:
            raise ValueError(f"sampling.ray.num_engines must be >= 1 or null, got {self.num_engines}")
        if self.cpus_per_engine <= 0:
            raise ValueError(f"sampling.ray.cpus_per_engine must be > 0, got {self.cpus_per_engine}")


@dataclass
class OpenAISamplingConfig:
    """`sampling.backend=openai` (reject_sampling/backends.py, OpenAIBackend): a running OpenAI-compatible
    server (vLLM, SGLang, a hosted endpoint) through its completions endpoint."""

    base_url: str = help_field("http://127.0.0.1:8000/v1", help="The server's OpenAI API root.", hashed=False)
    model: str | None = help_field(
        None, help="The model name the server serves; null = the only one it lists (/v1/models)."
    )
    api_key_env: str = help_field(
        "OPENAI_API_KEY", help="Environment variable holding the API key (a local server needs none).",
        hashed=False,
    )  # fmt: skip
    prompt_format: str = help_field(
        "tokens", help="tokens = the rendered prompt's token ids, exactly what a local engine sees (vLLM, "
        "SGLang); text = the rendered text (hosted endpoints that take no token ids).",
    )  # fmt: skip
    extensions: bool = help_field(
        True, help="Send vLLM / SGLang's sampling extensions (top_k, stop_token_ids, return_token_ids); false "
        "for a strict OpenAI endpoint (top_k must be 0; the end-of-turn stops as a stop string).",
    )  # fmt: skip
    max_concurrency: int = help_field(16, help="Requests in flight at once.", hashed=False)
    timeout_s: float = help_field(600, help="Seconds one request may take.", hashed=False)
    max_retries: int = help_field(
        5, help="Retries of a failed request (connection errors, 408/409/429/5xx), with exponential backoff "
        "(the openai client's own).", hashed=False,
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.prompt_format not in ("tokens", "text"):
            raise ValueError(
                f"sampling.openai.prompt_format must be tokens or text, got '{self.prompt_format}'"
            )
        if self.max_concurrency < 1:
            raise ValueError(f"sampling.openai.max_concurrency must be >= 1, got {self.max_concurrency}")


@dataclass
class SamplingConfig:
    """Generation settings. vLLM seeds every prompt from (seed, prompt id), so a resumed or sharded run draws
    the same samples as an uninterrupted one; transformers seeds each generate() call from (seed, its first
    prompt id), so a rerun or resume is identical but another sharding or batching draws other samples
    (details in reject_sampling/backends.py)."""

    backend: str = help_field(
        "auto",
        help="auto (vLLM when importable, else transformers) | vllm | transformers (model.generate) "
        "| ray (engines of either across a Ray cluster: sampling.ray) | openai (a running OpenAI-compatible "
        "server: sampling.openai).",
    )
    n: int = help_field(4, help="Samples per prompt.")
    temperature: float = help_field(1.0, help="0 = greedy.")
    top_p: float = help_field(1.0)
    top_k: int = help_field(0, help="0 = off (true temperature sampling; HF's default of 50 truncates).")
    max_new_tokens: int = help_field(
        1024, help="Longest completion; longer ones end with finish_reason 'length'."
    )
    seed: int = help_field(0)
    stop: list[str] = help_field(
        [], help="Extra stop strings (the chat template's end-of-turn always stops)."
    )
    # vLLM
    tensor_parallel_size: int = help_field(1, hashed=False)
    gpu_memory_utilization: float = help_field(0.85, hashed=False)
    enable_prefix_caching: bool = help_field(True, hashed=False)
    max_model_len: int | None = help_field(None, help="vLLM context length; null = prompt + max_new_tokens.")
    enforce_eager: bool | None = help_field(
        None, help="null = eager on CPU, CUDA graphs on GPU.", hashed=False
    )
    cpu_kvcache_space_gb: int = help_field(1, help="VLLM_CPU_KVCACHE_SPACE on the CPU backend.", hashed=False)
    max_lora_rank: int = help_field(64, hashed=False)
    # transformers generate
    transformers_batch_size: int = help_field(
        64, help="Prompts per generate() call (each with n samples).", hashed=False
    )
    ray: RaySamplingConfig = field(default_factory=RaySamplingConfig)
    openai: OpenAISamplingConfig = field(default_factory=OpenAISamplingConfig)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"sampling.backend must be one of {BACKENDS}, got '{self.backend}'")
        if self.n < 1:
            raise ValueError(f"sampling.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class PromptSource:
    """Where prompts come from: a prompt-set parquet (or a stage directory whose manifest has `prompts`),
    a JSONL file with one object per line, or a text file with one question per line."""

    path: str = help_field("???", help="prompts.parquet | stage dir | .jsonl | .txt")
    split: str | None = help_field(
        "train", help="Keep rows of this split (when there is a split column); null = all."
    )
    prompt_column: str = help_field("prompt", help="Question column (parquet / JSONL).")
    id_column: str = help_field("id", help="Id column; missing ids are derived from the question text.")
    answer_column: str = help_field("answer", help="Gold answer column, optional.")
    max_prompts: int | None = help_field(
        None, help="Keep the first N prompts (after the split filter), in file order."
    )


@dataclass
class SampleConfig:
    """`python -m reject_sampling.sample`: N completions per prompt → samples parquet.

    Output columns: id, prompt, answer, sample_idx, completion, finish_reason, n_tokens, policy.
    """

    run_name: str = help_field("default", hashed=False)
    run_dir: str = help_field("runs/${run_name}", hashed=False)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: str | None = help_field(
        None, help="Optional LoRA adapter directory applied on top of model.path."
    )
    prompts: PromptSource = field(default_factory=PromptSource)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    output: str = help_field("${run_dir}/samples/samples.parquet", hashed=False)
    num_shards: int = help_field(1, help="Split the prompts into this many shards (by prompt).")
    shard_index: int = help_field(0, help="Which shard this process samples (0-based).")
    merge: bool = help_field(
        False,
        help="Merge the num_shards shard files into `output` (checks every prompt has n samples).",
        hashed=False,
    )
    chunk_prompts: int = help_field(256, help="Prompts per resumable chunk written to disk.", hashed=False)
    show: int = help_field(3, help="Print this many samples at the end for a quick look.", hashed=False)
    use_cpu: bool | None = help_field(None, hashed=False)
    progress: bool = help_field(True, hashed=False)
    force: bool = help_field(False, hashed=False)

    def __post_init__(self) -> None:
        if not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"shard_index must be in [0, {self.num_shards}), got {self.shard_index}")
        if self.chunk_prompts < 1:
            raise ValueError(f"chunk_prompts must be >= 1, got {self.chunk_prompts}")


@dataclass
class SelectionConfig:
    """Which samples become the next round's SFT data."""

    policy: str = help_field(
        "best_of_n_rm",
        help="best_of_n_rm: the highest reward-model score among verified-correct samples | "
        "verified: up to k verified-correct samples (RAFT / ReST-EM) | "
        "rm_threshold: samples whose rm_score >= threshold (no verifier needed).",
    )
    k: int = help_field(1, help="Samples kept per prompt at most (verified, rm_threshold).")
    threshold: float = help_field(0.0, help="rm_threshold: smallest rm_score kept.")
    require_format: bool = help_field(
        True, help="Keep only samples with closed thinking and one boxed answer."
    )
    drop_always_solved: bool = help_field(
        False, help="Skip prompts whose every sample is correct (nothing to learn)."
    )
    drop_truncated: bool = help_field(True, help="Never keep a sample with finish_reason 'length'.")
    pairs: bool = help_field(True, help="Write best correct vs worst wrong pairs (next round's RM data).")

    def __post_init__(self) -> None:
        if self.policy not in SELECTION_POLICIES:
            raise ValueError(f"selection.policy must be one of {SELECTION_POLICIES}, got '{self.policy}'")
        if self.k < 1:
            raise ValueError(f"selection.k must be >= 1, got {self.k}")


@dataclass
class RejectSamplingConfig:
    """`python -m reject_sampling`: sample → verify + reward-model score → select, each model in its own process."""

    run_name: str = help_field("default", hashed=False)
    run_dir: str = help_field("runs/${run_name}", hashed=False)
    round: int = help_field(0)
    output_dir: str = help_field("${run_dir}/round_${round}/reject_sampling", hashed=False)
    model: ModelConfig = field(default_factory=ModelConfig)
    reward_model: ModelConfig = field(default_factory=ModelConfig)
    use_reward_model: bool = help_field(
        True, help="Score samples with the reward model (needed by best_of_n_rm)."
    )
    prompts: PromptSource = field(default_factory=PromptSource)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    rm_max_length: int = help_field(
        8192, help="Reward-model scoring length (cut in the middle, as in training)."
    )
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

    def __post_init__(self) -> None:
        if self.selection.policy in ("best_of_n_rm", "rm_threshold") and not self.use_reward_model:
            raise ValueError(
                f"selection.policy={self.selection.policy} needs reward-model scores: set use_reward_model=true "
                "or selection.policy=verified"
            )
