"""grpo: online RL with verifiable rewards on TRL's GRPOTrainer, starting from the round's SFT model.

Reads top to bottom: validate inputs and prepare prompts → load the policy (full, LoRA or QLoRA) and the
reward functions → train, resuming from the last checkpoint → save the (merged) model → manifest.

What TRL does and this stage passes through: group sampling (vLLM colocate or model.generate), advantages
normalised per group or batch, the clipped token-level objective (DAPO by default; GRPO and Dr. GRPO
aggregations), clip-higher, truncated-completion masking, KL to the start model when beta > 0, and per-step
logs (reward per function, reward std, completion lengths, clip ratios, entropy, KL).
What it adds: the reward registry (grpo/rewards.py), prompts checked before a model loads (grpo/data.py),
RLinf's importance-ratio early stop (`EarlyStopGRPOTrainer`), and vLLM on the CPU (grpo/vllm_cpu.py).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import Any

import torch

from core.artifacts import (
    Manifest,
    write_json_atomic,
)
from core.judge import use as use_judge
from core.models import chat_renderer, load_tokenizer
from core.training import (
    TrlArgsError,
    finish_training,
    finished,
    is_main_process,
    last_checkpoint,
    load_pretrained,
    lora_config,
    loss_summary,
    peak_memory_gb,
    resolve_attention,
    resolve_use_cpu,
    save_for_serving,
    torch_dtype,
    trl_args,
    world_size,
)
from grpo.config import LOSS_TYPES, SCALE_REWARDS, GRPOStageConfig
from grpo.data import STAGE, PreparedPrompts, PromptsError, identify, prepare
from grpo.rewards import build_reward_functions

log = logging.getLogger(__name__)
# Logged per step by TRL; summarised in the manifest (first/last tenth, curve).
CURVES = ("reward", "reward_std", "completions/mean_length", "completions/clipped_ratio", "entropy", "kl")


def resolve_backend(requested: str) -> str:
    if requested != "auto":
        return requested
    return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"


def check_prompts(prepared: PreparedPrompts, cfg: GRPOStageConfig, args: Any) -> None:
    """One generation batch needs `generation batch / num_generations` distinct prompts. `args` is the
    validated GRPOConfig (`training_args`): TRL computed its generation batch for the launched processes."""
    batch, groups = args.generation_batch_size, args.generation_batch_size // args.num_generations
    if len(prepared.examples) < groups:
        raise PromptsError(
            f"{len(prepared.examples)} prompts cannot fill one generation batch of {batch} completions "
            f"({groups} prompts x num_generations {args.num_generations}); lower the batch or add prompts"
        )
    if cfg.peft.method == "qlora" and cfg.use_cpu is False and not torch.cuda.is_available():
        raise ValueError("peft.method=qlora with use_cpu=false needs a CUDA GPU")


def _trainer_class():
    from trl import GRPOTrainer

    class EarlyStopGRPOTrainer(GRPOTrainer):
        """GRPOTrainer plus RLinf's early stop: a micro-batch whose mean importance ratio pi/pi_old (over the
        completion tokens of every process) exceeds `early_stop_imp_ratio` gets its loss multiplied by 0, so it
        moves nothing but still takes part in every collective. Relies on two private TRL 1.16 methods."""

        early_stop_imp_ratio: float | None = None

        def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any):
            out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
            if kwargs.get("compute_entropy"):  # the policy forward of _compute_loss
                self._policy_logps = out[0]
            return out

        def _compute_loss(self, model: Any, inputs: dict[str, Any]):
            loss = super()._compute_loss(model, inputs)
            old = inputs.get("old_per_token_logps")
            if self.early_stop_imp_ratio is None or old is None or not self.model.training:
                return loss
            mask = inputs["completion_mask"]
            ratio = torch.exp(self._policy_logps.detach() - old)
            totals = self.accelerator.reduce(torch.stack([(ratio * mask).sum(), mask.sum().float()]), "sum")
            mean_ratio = (totals[0] / totals[1].clamp(min=1.0)).item()
            stopped = mean_ratio > self.early_stop_imp_ratio
            self._metrics["train"]["early_stop/importance_ratio"].append(mean_ratio)
            self._metrics["train"]["early_stop/skipped"].append(float(stopped))
            return loss * 0.0 if stopped else loss

    return EarlyStopGRPOTrainer


def training_args(
    cfg: GRPOStageConfig, out: Path, processes: int | None = None, backend: str | None = None
) -> Any:
    """trl.GRPOConfig from the `grpo` section (core.training.trl_args): validated only, for `processes`
    launched processes, when `processes` is given (the stage's door, the pipeline's compose), else the one
    the stage trains with. TRL's __post_init__ checks the batch arithmetic (generation batch = per device x
    processes x steps_per_generation, a multiple of num_generations) with that process count.

    What the stage fixes: the reward weights (the `rewards` section), use_vllm and the vLLM settings (the
    `generation` section: colocate, an engine inside each training process, or server, TRL's `trl
    vllm-serve` elsewhere, which needs CUDA and vLLM, checked here), and dropout off (the clipped
    ratio assumes pi_old and pi give the same log-probs for the same weights). Checks TRL makes only at the
    first step, made here: loss_type and scale_rewards are known values; and the project's: epsilon_high is
    not below epsilon, the overlong reward's buffer fits in max_completion_length."""
    from trl import GRPOConfig

    gen, section = cfg.generation, cfg.grpo
    backend = backend or resolve_backend(gen.backend)
    completion = section.get("max_completion_length", GRPOConfig.max_completion_length)
    use = "use generation.{}"
    vllm = {
        "use_vllm": (backend == "vllm", "use generation.backend"),
        "vllm_mode": (gen.vllm_mode, use.format("vllm_mode")),
        "vllm_gpu_memory_utilization": (
            gen.vllm_gpu_memory_utilization,
            use.format("vllm_gpu_memory_utilization"),
        ),
        "vllm_max_model_length": (
            gen.vllm_max_model_length or cfg.train.max_prompt_length + completion,
            use.format("vllm_max_model_length"),
        ),
        "vllm_tensor_parallel_size": (gen.vllm_tensor_parallel_size, use.format("vllm_tensor_parallel_size")),
        "vllm_enable_sleep_mode": (gen.vllm_enable_sleep_mode, use.format("vllm_enable_sleep_mode")),
        "vllm_importance_sampling_correction": (
            gen.vllm_importance_sampling_correction,
            use.format("vllm_importance_sampling_correction"),
        ),
    }
    if gen.vllm_mode == "server":
        server = (
            "vllm_server_base_url",
            "vllm_server_host",
            "vllm_server_port",
            "vllm_server_timeout",
            "vllm_group_port",
        )
        vllm.update({name: (getattr(gen, name), use.format(name)) for name in server})
        if backend != "vllm":
            raise TrlArgsError(
                f"{STAGE}.generation.vllm_mode=server needs vLLM installed (generation.backend=vllm)"
            )
        if processes is None and resolve_use_cpu(cfg.use_cpu):  # the stage's own door, not a compose
            raise TrlArgsError(
                f"{STAGE}.generation.vllm_mode=server needs CUDA: TRL syncs the policy's weights to the "
                "`trl vllm-serve` server over NCCL every step. On a machine without a GPU use vllm_mode=colocate "
                "or generation.backend=transformers"
            )
    fixed = {
        "use_cpu": (resolve_use_cpu(cfg.use_cpu), "use the stage's use_cpu"),
        "reward_weights": (
            [float(w) for w in cfg.rewards.weights.values()],
            "use rewards.<name> (its weight)",
        ),
        "disable_dropout": (True, "it is always on: the clipped ratio needs pi_old and pi to agree"),
        **vllm,
    }
    where = f"{STAGE}.grpo"
    args = trl_args(
        GRPOConfig,
        section,
        where=where,
        output_dir=out,
        processes=processes,
        fixed=fixed,
        push=cfg.push_to_hub,
    )
    if args.loss_type not in LOSS_TYPES:
        raise TrlArgsError(f"{where}.loss_type must be one of {LOSS_TYPES}, got '{args.loss_type}'")
    if args.scale_rewards not in SCALE_REWARDS:
        raise TrlArgsError(
            f"{where}.scale_rewards must be one of {SCALE_REWARDS}, got '{args.scale_rewards}'"
        )
    if args.epsilon_high is not None and args.epsilon_high < args.epsilon:
        raise TrlArgsError(
            f"{where}.epsilon_high ({args.epsilon_high}) < epsilon ({args.epsilon}): clip-higher widens the upper "
            "range; set epsilon_high >= epsilon or null"
        )
    if cfg.rewards.overlong and cfg.rewards.overlong_buffer > args.max_completion_length:
        raise ValueError(
            f"rewards.overlong_buffer ({cfg.rewards.overlong_buffer}) exceeds {where}.max_completion_length "
            f"({args.max_completion_length}); use a buffer of at most max_completion_length"
        )
    return args


def build_trainer(
    cfg: GRPOStageConfig, tokenizer: Any, prepared: PreparedPrompts, out: Path, backend: str
) -> Any:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    use_cpu = resolve_use_cpu(cfg.use_cpu)
    if backend == "vllm" and use_cpu:
        from grpo.vllm_cpu import prepare_cpu_vllm

        prepare_cpu_vllm(cfg.generation.vllm_cpu_kvcache_gb)
    # The reward functions (a reward model among them) load before the trainer's arguments exist: those
    # switch on ZeRO-3's partitioned load, which a reward model used for inference only must not get. Their
    # max_completion_length comes from the validated config, which touches no device.
    planned = training_args(cfg, out, processes=world_size(), backend=backend)
    reward_funcs, _ = build_reward_functions(cfg.rewards, planned.max_completion_length, cfg.model, use_cpu)
    args = training_args(cfg, out, backend=backend)
    # Created after the trainer's arguments, which switch on ZeRO-3's partitioned load (see train_sft).
    model = load_pretrained(
        AutoModelForCausalLM,
        cfg.model.path,
        dtype=torch_dtype(cfg.model.dtype, args.bf16),
        attn_implementation=resolve_attention(cfg.train.attn_implementation, use_cpu),
        trust_remote_code=cfg.model.trust_remote_code,
        quantize_4bit=cfg.peft.method == "qlora",
    )
    trainer = _trainer_class()(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=Dataset.from_list(prepared.examples),
        processing_class=tokenizer,
        peft_config=lora_config(cfg.peft, task_type="CAUSAL_LM"),
    )
    trainer.early_stop_imp_ratio = cfg.train.early_stop_imp_ratio
    # Logged as rewards/<registry name>/mean (TRL would name a model by its directory).
    trainer.reward_func_names = list(cfg.rewards.weights)
    return trainer


def summarise(log_history: list[dict[str, Any]], reward_names: list[str]) -> dict[str, Any]:
    """Per-step curves of the rewards (one per function) and of the other logged quantities."""
    keys = [f"rewards/{n}/mean" for n in reward_names] + list(CURVES)
    curves = {k: v for k in keys if (v := loss_summary(log_history, key=k))}
    times = [h["step_time"] for h in log_history if "step_time" in h]
    return {
        "curves": curves,
        # [[step, mean reward]] per reward function: what the pipeline report plots.
        "reward_curves": {
            n: curves[f"rewards/{n}/mean"]["curve"] for n in reward_names if f"rewards/{n}/mean" in curves
        },
        "step_time_s": {"mean": sum(times) / len(times), "last": times[-1]} if times else {},
    }


def run(cfg: GRPOStageConfig) -> Manifest:
    from transformers import AutoModelForCausalLM

    out = Path(cfg.output_dir)
    # 1. Inputs: everything checkable without a model fails here, TRL's arguments first.
    args = training_args(cfg, out, processes=world_size())
    use_judge(cfg.rewards.verifier, cfg.judge)
    stage = identify(cfg)  # the model directories exist, the prompt source resolves
    tokenizer = load_tokenizer(cfg.model)
    renderer = chat_renderer(cfg.model, tokenizer)
    prepared = prepare(cfg.data, renderer, cfg.train.max_prompt_length, args.seed)
    log.info(
        "grpo: first prompt as given to the policy:\n%s", renderer.prompt(prepared.examples[0]["question"])
    )
    check_prompts(prepared, cfg, args)
    if (done := finished(stage, cfg)) is not None:
        return done
    stage.start()
    # 2. Policy, reward functions, trainer; 3. train, resuming from the last checkpoint of a killed run.
    backend = resolve_backend(cfg.generation.backend)
    trainer = build_trainer(cfg, tokenizer, prepared, out, backend)
    resume_from = last_checkpoint(out / "checkpoints") if cfg.resume else None
    if resume_from:
        log.info("grpo: resuming from %s", resume_from)
    result = trainer.train(resume_from_checkpoint=resume_from)
    # 4. Save for serving.
    dirs = save_for_serving(
        cfg, trainer, tokenizer, out, AutoModelForCausalLM, end_of_turn_id=renderer.eot_id
    )
    trainer.accelerator.wait_for_everyone()
    state = trainer.state
    # Every logged step (rewards per function, lengths, clip ratios, entropy, ...) beside the tensorboard files.
    if is_main_process():
        write_json_atomic(out / "logs" / "log_history.json", state.log_history)
    dirs["logs"] = out / "logs"
    metrics = {
        **summarise(state.log_history, trainer.reward_func_names),
        "reward_functions": dict(
            zip(trainer.reward_func_names, trainer.reward_weights.tolist(), strict=True)
        ),
        "backend": backend,
        "global_step": state.global_step,
        "resumed_from": resume_from,
        "train_runtime_s": round(result.metrics.get("train_runtime", time.time() - stage.started_at), 2),
        "peak_memory": peak_memory_gb(),
        "processes": world_size(),
        "data": prepared.stats,
        "preview": {"prompt": renderer.prompt(prepared.examples[0]["question"])},
    }
    manifest = finish_training(stage, cfg, dirs, metrics)
    reward = metrics["curves"].get("reward", {})
    log.info(
        "grpo: %d steps (%s generation), reward %.3f -> %.3f (first/last tenth); model in %s",
        state.global_step,
        backend,
        reward.get("first_tenth_mean", float("nan")),
        reward.get("last_tenth_mean", float("nan")),
        dirs.get("model", dirs.get("adapter")),
    )
    return manifest
