"""Typed config of the grpo stage (schema `grpo_schema`, YAML conf/grpo.yaml, hyperparameter group conf/grpo/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.config import ModelConfig, PeftConfig, help_field, register_schema, world_size

# TRL 1.16 GRPOConfig.loss_type values with a clipped-ratio objective; the first three are the documented ones.
LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo")
SCALE_REWARDS = ("group", "batch", "none")
BACKENDS = ("auto", "vllm", "transformers")
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
    max_prompts: int | None = help_field(None, help="Keep a seeded sample of at most this many prompts.")
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
class GRPOHyperparams:
    learning_rate: float = help_field(1e-6)
    max_steps: int = help_field(-1, help="Stop after this many optimizer steps (overrides epochs when > 0).")
    num_train_epochs: float = help_field(1.0)
    per_device_train_batch_size: int = help_field(
        8, help="Completions (not prompts) per device and micro-step."
    )
    gradient_accumulation_steps: int = help_field(1)
    num_generations: int = help_field(8, help="Completions sampled per prompt (the group of GRPO).")
    steps_per_generation: int | None = help_field(
        None,
        help="Micro-steps fed by one generation batch; null = gradient_accumulation_steps. Larger values split "
        "a generation batch into several optimizer steps (off-policy minibatches).",
    )
    num_iterations: int = help_field(1, help="Optimisation passes over each generation batch (PPO's μ).")
    max_prompt_length: int = help_field(
        512,
        help="Prompts longer than this (in tokens, as the chat template renders them) are dropped and counted.",
    )
    max_completion_length: int = help_field(1024, help="Most tokens generated per completion.")
    temperature: float = help_field(1.0)
    top_p: float = help_field(1.0)
    top_k: int = help_field(0, help="0 = no top-k truncation (true temperature sampling).")
    loss_type: str = help_field(
        "dapo",
        help="dapo (token-level: sum over every token of the batch / token count; no length bias) | grpo "
        "(per-sequence mean, then mean) | dr_grpo (sum / (batch x max_completion_length)) | bnpo.",
    )
    scale_rewards: str = help_field(
        "group", help="Divide advantages by the reward std of the group | batch | none (Dr. GRPO)."
    )
    beta: float = help_field(0.0, help="KL coefficient to the start model; 0 loads no reference model.")
    epsilon: float = help_field(0.2, help="Lower clip range: ratio >= 1 - epsilon.")
    epsilon_high: float | None = help_field(
        0.28, help="Upper clip range (DAPO clip-higher): ratio <= 1 + epsilon_high; null = epsilon."
    )
    mask_truncated_completions: bool = help_field(
        False,
        help="Leave completions cut at max_completion_length out of the loss (DAPO overlong filtering).",
    )
    early_stop_imp_ratio: float | None = help_field(
        None,
        help="RLinf-style: a micro-batch whose mean importance ratio pi/pi_old (over its completion tokens, "
        "all processes) exceeds this bound contributes no gradient. Only off-policy micro-batches (num_iterations"
        " > 1, steps_per_generation > gradient_accumulation_steps, or vLLM) have a ratio other than 1.",
    )
    lr_scheduler_type: str = help_field("constant")
    warmup_steps: float = help_field(0.0, help="Warm-up: steps, or a fraction of all steps when < 1.")
    weight_decay: float = help_field(0.0)
    max_grad_norm: float = help_field(1.0)
    gradient_checkpointing: bool = help_field(False)
    attn_implementation: str = help_field("auto", help="auto | sdpa | eager | flash_attention_2.")
    bf16: bool | None = help_field(None, help="bf16 mixed precision; null = on when a GPU supports it.")
    seed: int = help_field(42)
    logging_steps: int = help_field(1)
    save_steps: int = help_field(50, help="Checkpoint every N steps (resume point after a kill).")
    save_total_limit: int = help_field(2)
    report_to: list[str] = help_field(["tensorboard"], help="tensorboard | wandb | mlflow | none.")
    log_completions: bool = help_field(
        False, help="Write each logged step's prompts, completions and rewards to checkpoints/completions/."
    )

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"grpo.loss_type must be one of {LOSS_TYPES}, got '{self.loss_type}'")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"grpo.scale_rewards must be one of {SCALE_REWARDS}, got '{self.scale_rewards}'")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("set grpo.max_steps > 0 or grpo.num_train_epochs > 0")
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError(
                f"grpo.epsilon_high ({self.epsilon_high}) < grpo.epsilon ({self.epsilon}): clip-higher widens the "
                "upper range; set epsilon_high >= epsilon or null"
            )
        if self.early_stop_imp_ratio is not None and self.early_stop_imp_ratio <= 1.0:
            raise ValueError(
                f"grpo.early_stop_imp_ratio must be > 1 (a bound on pi/pi_old), got {self.early_stop_imp_ratio}"
            )
        check_batch_arithmetic(self, world_size())


def check_batch_arithmetic(h: GRPOHyperparams, processes: int) -> None:
    """Every prompt's `num_generations` completions must sit in one generation batch, so the generation batch
    (per_device_train_batch_size x processes x steps_per_generation) must be a multiple of num_generations.
    The error names the nearby values that work."""
    if h.num_generations < 2:
        raise ValueError(
            f"grpo.num_generations must be >= 2 (a group needs a baseline), got {h.num_generations}"
        )
    if min(h.per_device_train_batch_size, h.gradient_accumulation_steps, h.num_iterations) < 1:
        raise ValueError(
            "per_device_train_batch_size, gradient_accumulation_steps and num_iterations must be >= 1"
        )
    steps = h.steps_per_generation or h.gradient_accumulation_steps
    batch = h.per_device_train_batch_size * processes * steps
    if batch % h.num_generations == 0:
        return
    per_step = processes * steps
    # The smallest per-device batches that work: multiples of num_generations / gcd(num_generations, per_step).
    from math import gcd

    unit = h.num_generations // gcd(h.num_generations, per_step)
    size = h.per_device_train_batch_size
    batches = sorted(sorted(range(unit, 3 * max(size, unit) + 1, unit), key=lambda b: (abs(b - size), b))[:3])
    groups = [g for g in range(2, batch + 1) if batch % g == 0]
    groups = sorted(sorted(groups, key=lambda g: (abs(g - h.num_generations), g))[:3])
    steps_name = "steps_per_generation" if h.steps_per_generation else "gradient_accumulation_steps"
    raise ValueError(
        f"generation batch = per_device_train_batch_size {h.per_device_train_batch_size} x {processes} "
        f"process(es) x {steps_name} {steps} = {batch} completions is not divisible by num_generations "
        f"{h.num_generations}: each prompt's completions must sit in one batch. Valid with the other values "
        f"unchanged: per_device_train_batch_size in {batches}"
        + (f", or num_generations in {groups}" if groups else "")
        + "."
    )


@dataclass
class RolloutGeneration:
    """How completions are sampled during training."""

    backend: str = help_field(
        "auto",
        help="vllm (colocate: a vLLM engine in each training process) | transformers (model.generate) | auto "
        "(vllm when importable, else transformers).",
    )
    vllm_gpu_memory_utilization: float = help_field(
        0.3, help="Share of GPU memory for vLLM (colocate).", hashed=False
    )
    vllm_max_model_length: int | None = help_field(
        None, help="vLLM context; null = max_prompt_length + max_completion_length.", hashed=False
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
    grpo: GRPOHyperparams = field(default_factory=GRPOHyperparams)
    generation: RolloutGeneration = field(default_factory=RolloutGeneration)
    peft: PeftConfig = field(default_factory=lambda: PeftConfig(method="none", merge=False))
    use_cpu: bool | None = help_field(
        None, help="Train on the CPU; null = when no GPU is visible.", hashed=False
    )
    resume: bool = help_field(True, help="Continue from the last checkpoint in output_dir if there is one.")
    keep_checkpoints: bool = help_field(False, help="Keep checkpoints/ after a finished run.", hashed=False)
    force: bool = help_field(False, help="Retrain even if a matching manifest exists.", hashed=False)

    def __post_init__(self) -> None:
        if self.generation.backend not in BACKENDS:
            raise ValueError(f"generation.backend must be one of {BACKENDS}, got '{self.generation.backend}'")
        if self.data.prompts is None and not self.data.reasoning_gym:
            raise ValueError(
                "no prompts: set data.prompts (a prompt set) and/or data.reasoning_gym (generators)"
            )
        if self.rewards.overlong and self.rewards.overlong_buffer > self.grpo.max_completion_length:
            raise ValueError(
                f"rewards.overlong_buffer ({self.rewards.overlong_buffer}) exceeds grpo.max_completion_length "
                f"({self.grpo.max_completion_length}); use a buffer of at most max_completion_length"
            )


register_schema("grpo_schema", GRPOStageConfig)
