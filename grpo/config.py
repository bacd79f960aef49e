"""Typed config of the grpo stage (schema `grpo_schema`, YAML conf/grpo.yaml, hyperparameter group conf/grpo/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.config import ModelConfig, PeftConfig, help_field
from core.judge import JudgeConfig
from core.push_to_hub import PushToHubConfig

# TRL 1.16 GRPOConfig.loss_type values with a clipped-ratio objective; the first three are the documented ones.
# TRL checks neither value before the first step (grpo/stage.py training_args does).
LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo")
SCALE_REWARDS = ("group", "batch", "none")
BACKENDS = ("auto", "vllm", "transformers")
VLLM_MODES = ("colocate", "server")
# Reward functions of grpo/rewards.py, in the order TRL receives them; each has a weight field in RewardsConfig.
REWARD_NAMES = ("accuracy", "format", "overlong", "reward_model")


@dataclass
class ReasoningGymTask:
    """One reasoning-gym generator (the package works offline): `reasoning_gym.create_dataset(name, ...)`."""

    name: str = help_field("???", help="Generator name, e.g. chain_sum, basic_arithmetic, gsm_symbolic.")
    size: int = help_field(500, help="Items generated.")
    seed: int | None = help_field(None, help="Generator seed; null = grpo.seed.")
    config: dict[str, Any] = help_field(
        {}, help="The generator's own options, e.g. {min_terms: 2, max_terms: 2}."
    )


@dataclass
class GRPOData:
    """Prompts with gold answers: a prompt set (data_process), reasoning-gym generators, or both."""

    prompts: str | None = help_field(
        "${run_dir}/data",
        help="prompts parquet (id, prompt, answer[, split]) or a finished stage directory whose manifest lists "
        "`prompts`; null = reasoning-gym only.",
    )
    split: str | None = help_field("train", help="Keep rows of this `split` only; null = every row.")
    sample_prompts: int | None = help_field(
        None,
        help="Keep a seeded random sample of at most this many prompts (unlike prompts.max_prompts of sampling "
        "and evaluation, which keeps the first N: a benchmark subset others can reproduce).",
    )
    reasoning_gym: list[ReasoningGymTask] = help_field(
        [],
        help="reasoning-gym generators, e.g. [{name: chain_sum, size: 500, config: {min_terms: 2, max_terms: 2}}]; "
        "scored by the package's own scorer.",
    )


@dataclass
class RewardsConfig:
    """Weights of the reward functions of grpo/rewards.py (0 = not computed) and their parameters.
    TRL sums the weighted rewards, then normalises the sum within each group."""

    accuracy: float = help_field(1.0, help="Weight of the verifier reward (correct / wrong below).")
    format: float = help_field(0.0, help="Weight of the format reward: closed <think>, one \\boxed{} answer.")
    overlong: float = help_field(0.0, help="Weight of DAPO's soft overlong penalty (0 .. -1).")
    reward_model: float = help_field(0.0, help="Weight of the reward model's score (reward_model_path).")
    correct: float = help_field(1.0, help="accuracy reward of a verified-correct answer.")
    wrong: float = help_field(0.0, help="accuracy reward of a wrong (or missing) answer.")
    verifier: str | None = help_field(
        None, help="accuracy: the verifier of the math rows instead of `math` (math_or_judge: the LLM judge where "
        "the rules cannot judge; llm_judge: the judge alone; its settings: the `judge` section); null = each "
        "row's data_source.",
    )  # fmt: skip
    require_think: bool = help_field(True, help="format: the completion must close a <think> block.")
    overlong_buffer: int = help_field(
        256,
        help="overlong: completions longer than max_completion_length - buffer tokens lose reward linearly, "
        "down to -1 at max_completion_length.",
    )
    reward_model_path: str = help_field(
        "${run_dir}/round_${round}/reward_model/model",
        help="A sequence-classification model directory (one score); loaded only when reward_model != 0.",
    )
    reward_model_max_length: int = help_field(
        16384, help="Longest sequence the reward model scores; longer ones keep their end (the answer)."
    )

    @property
    def weights(self) -> dict[str, float]:
        """Non-zero weights by reward name, in the order TRL receives the functions."""
        return {name: getattr(self, name) for name in REWARD_NAMES if getattr(self, name) != 0}

    def __post_init__(self) -> None:
        if not self.weights:
            raise ValueError(f"every reward weight is 0: give at least one of {list(REWARD_NAMES)} a weight")
        if self.overlong_buffer < 1:
            raise ValueError(f"rewards.overlong_buffer must be >= 1, got {self.overlong_buffer}")


@dataclass
class GRPOOptions:
    """What grpo adds to TRL's GRPOConfig: the prompt-length filter, RLinf's early stop, and how the policy
    is loaded (the stage loads it, not TRL)."""

    max_prompt_length: int = help_field(
        512,
        help="Prompts longer than this (in tokens, as the chat template renders them) are dropped and counted "
        "(TRL 1.16's GRPOConfig has no prompt limit).",
    )
    early_stop_imp_ratio: float | None = help_field(
        None,
        help="RLinf-style: a micro-batch whose mean importance ratio pi/pi_old (over its completion tokens, "
        "all processes) exceeds this bound contributes no gradient. Only off-policy micro-batches (num_iterations"
        " > 1, steps_per_generation > gradient_accumulation_steps, or vLLM) have a ratio other than 1.",
    )
    attn_implementation: str = help_field("auto", help="auto | sdpa | eager | flash_attention_2.")

    def __post_init__(self) -> None:
        if self.early_stop_imp_ratio is not None and self.early_stop_imp_ratio <= 1.0:
            raise ValueError(
                f"train.early_stop_imp_ratio must be > 1 (a bound on pi/pi_old), got {self.early_stop_imp_ratio}"
            )


@dataclass
class RolloutGeneration:
    """How completions are sampled during training."""

    backend: str = help_field(
        "auto",
        help="vllm (a vLLM engine in each training process, or a `trl vllm-serve` server: vllm_mode) | "
        "transformers (model.generate) | auto (vllm when importable, else transformers).",
    )
    vllm_mode: str = help_field(
        "colocate", help="colocate (vLLM inside each training process) | server (TRL's `trl vllm-serve` on other "
        "GPUs or nodes, weights synced to it every step; needs CUDA).",
    )  # fmt: skip
    vllm_server_base_url: str | None = help_field(
        None, help="server mode: the server's URL (http://host:8000); null = vllm_server_host:vllm_server_port.",
        hashed=False,
    )  # fmt: skip
    vllm_server_host: str = help_field("0.0.0.0", help="server mode: the server's host.", hashed=False)
    vllm_server_port: int = help_field(8000, help="server mode: the server's port.", hashed=False)
    vllm_server_timeout: float = help_field(
        240.0, help="server mode: seconds to wait for the server at the start.", hashed=False
    )
    vllm_group_port: int = help_field(
        51216, help="server mode: the port of the weight-sync process group (NCCL).", hashed=False
    )
    vllm_gpu_memory_utilization: float = help_field(
        0.3, help="Share of GPU memory for vLLM (colocate).", hashed=False
    )
    vllm_max_model_length: int | None = help_field(
        None,
        help="vLLM context; null = train.max_prompt_length + grpo.max_completion_length.",
        hashed=False,
    )
    vllm_tensor_parallel_size: int = help_field(1, hashed=False)
    vllm_enable_sleep_mode: bool = help_field(
        False,
        help="Offload vLLM weights and KV cache during the optimizer step (less memory, slower).",
        hashed=False,
    )
    vllm_importance_sampling_correction: bool = help_field(
        True,
        help="Correct for vLLM vs trainer log-prob mismatch (TRL's truncated/masked importance sampling).",
    )
    vllm_cpu_kvcache_gb: int = help_field(1, help="KV cache (GiB) of vLLM on the CPU.", hashed=False)


@dataclass
class GRPOStageConfig:
    """Online RL with verifiable rewards (TRL GRPOTrainer), from the latest SFT model."""

    run_name: str = help_field("default", hashed=False)
    run_dir: str = help_field("runs/${run_name}", hashed=False)
    round: int = help_field(0, help="The round whose SFT model (and reward model) GRPO starts from.")
    output_dir: str = help_field("${run_dir}/round_${round}/grpo", hashed=False)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: GRPOData = field(default_factory=GRPOData)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    grpo: dict[str, Any] = help_field(
        {},
        help="Arguments of trl.GRPOConfig as TRL names them (learning_rate, max_steps, num_generations, "
        "per_device_train_batch_size = completions, not prompts, per device and micro-step, loss_type, beta, "
        "epsilon_high, ...; presets in conf/grpo/), passed as they are and checked by TRL, with the launched "
        "number of processes (the generation batch must hold whole groups), when the stage starts and when "
        "the pipeline composes (see train_sft's `sft`). Project checks on top: loss_type one of "
        f"{list(LOSS_TYPES)}, scale_rewards one of {list(SCALE_REWARDS)}, epsilon_high >= epsilon. Set by "
        "the stage (refused here): output_dir, use_cpu, reward_weights (rewards.*), use_vllm "
        "(generation.backend), vllm_* (generation.*), disable_dropout, ddp_find_unused_parameters.",
    )
    train: GRPOOptions = field(default_factory=GRPOOptions)
    generation: RolloutGeneration = field(default_factory=RolloutGeneration)
    peft: PeftConfig = field(default_factory=lambda: PeftConfig(method="none", merge=False))
    use_cpu: bool | None = help_field(
        None, help="Train on the CPU; null = when no GPU is visible.", hashed=False
    )
    resume: bool = help_field(True, help="Continue from the last checkpoint in output_dir if there is one.")
    keep_checkpoints: bool = help_field(False, help="Keep checkpoints/ after a finished run.", hashed=False)
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # rewards.verifier=llm_judge | math_or_judge
    push_to_hub: PushToHubConfig = field(default_factory=PushToHubConfig)
    force: bool = help_field(False, help="Retrain even if a matching manifest exists.", hashed=False)

    def __post_init__(self) -> None:
        if self.generation.backend not in BACKENDS:
            raise ValueError(f"generation.backend must be one of {BACKENDS}, got '{self.generation.backend}'")
        if self.generation.vllm_mode not in VLLM_MODES:
            raise ValueError(
                f"generation.vllm_mode must be one of {VLLM_MODES}, got '{self.generation.vllm_mode}'"
            )
        if self.generation.vllm_mode == "server" and self.generation.backend == "transformers":
            raise ValueError(
                "generation.vllm_mode=server samples on a vLLM server: it needs generation.backend=vllm"
            )
        if self.data.prompts is None and not self.data.reasoning_gym:
            raise ValueError(
                "no prompts: set data.prompts (a prompt set) and/or data.reasoning_gym (generators)"
            )
