"""train_sft: supervised fine-tuning on CoT Alpaca records with TRL's SFTTrainer (full, LoRA or QLoRA).

Reads top to bottom: validate inputs → prepare data → load model → train (resuming from the last
checkpoint) → save adapter and merged model → manifest. Every rank of a multi-process run executes this
same function; only the main process writes outputs.

Loss masking: every example is the native generation prompt + the whole trace + the end-of-turn token, as
token ids built by core.chat.ChatRenderer, and the loss covers the trace and the end of turn only (TRL's
`completion_mask`). The conversation is not rendered through the chat template with assistant masks
because templates rewrite assistant turns: R1-Distill's strips the reasoning and Qwen3's writes an empty
think block before it, so the model would learn text it never generates.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from core.artifacts import (
    Manifest,
)
from core.models import chat_renderer, load_tokenizer, require_model_dir
from core.training import (
    finish_training,
    finished,
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
from train_sft.config import SFTStageConfig
from train_sft.data import (
    STAGE,
    DataError,
    PreparedData,
    prepare,
    preview,
    resolve_source,
    stage_run,
)

log = logging.getLogger(__name__)


def check_batch(n_examples: int, cfg: SFTStageConfig, args: Any) -> None:
    """A batch configuration that cannot work fails here, before any model is loaded. `args` is the
    validated SFTConfig (`training_args`), whose world_size is the launched process count."""
    global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    if not args.packing and n_examples < global_batch:
        raise DataError(
            f"{n_examples} examples cannot fill one optimizer step of {global_batch} "
            f"(per_device_train_batch_size {args.per_device_train_batch_size} × gradient_accumulation_steps "
            f"{args.gradient_accumulation_steps} × {args.world_size} processes); lower them or add data"
        )
    if cfg.peft.method == "qlora" and cfg.use_cpu is False and not _cuda():
        raise ValueError("peft.method=qlora with use_cpu=false needs a CUDA GPU")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def to_dataset(prepared: PreparedData):
    from datasets import Dataset

    return Dataset.from_list(prepared.examples)


def training_args(cfg: SFTStageConfig, out: Path, processes: int | None = None) -> Any:
    """trl.SFTConfig from the `sft` section (core.training.trl_args): validated only, for `processes`
    launched processes, when `processes` is given (the stage's door, the pipeline's compose), else the one
    the stage trains with. What the stage fixes: completion_only_loss (the loss covers the trace and the end
    of turn, see the module docstring) and use_cpu. Its defaults where `sft` is silent: packing by the
    attention in use (`packing: null` too), padding_free as packing, the first step logged, tokens seen
    counted without padding (the manifest's tokens/s), progress bars on."""
    use_cpu = resolve_use_cpu(cfg.use_cpu)
    section = dict(cfg.sft)
    if section.get("packing") is None:
        section["packing"] = resolve_attention(cfg.train.attn_implementation, use_cpu).startswith(
            "flash_attention"
        )
    args = trl_args(
        "SFTConfig",
        section,
        where=f"{STAGE}.sft",
        output_dir=out,
        processes=processes,
        push=cfg.push_to_hub,
        fixed={
            "use_cpu": (use_cpu, "use the stage's use_cpu"),
            "completion_only_loss": (True, "it is always on: the loss covers the trace and the end of turn"),
        },
        defaults={
            "padding_free": section["packing"],
            "logging_first_step": True,
            "include_num_input_tokens_seen": "non_padding",
            "disable_tqdm": False,
        },
    )
    if not isinstance(args.max_length, int):
        raise ValueError(
            f"{STAGE}.sft.max_length must be a number of tokens (examples are measured against it)"
        )
    return args


def build_trainer(cfg: SFTStageConfig, tokenizer: Any, prepared: PreparedData, out: Path):
    """The TRL SFTTrainer for this config (also used by tests to inspect the prepared labels)."""
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    args = training_args(cfg, out)
    attn = resolve_attention(cfg.train.attn_implementation, args.use_cpu)
    # The model is created after the trainer's arguments: under accelerate + DeepSpeed ZeRO-3 those arguments
    # switch on zero.Init, so from_pretrained partitions the weights at load instead of every rank holding all.
    model = load_pretrained(
        AutoModelForCausalLM,
        cfg.model.path,
        dtype=torch_dtype(cfg.model.dtype, args.bf16),
        attn_implementation=attn,
        trust_remote_code=cfg.model.trust_remote_code,
        quantize_4bit=cfg.peft.method == "qlora",
        rope_theta=cfg.train.rope_theta,
        max_position_embeddings=cfg.train.max_position_embeddings,
    )
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(prepared),
        processing_class=tokenizer,
        peft_config=lora_config(cfg.peft, task_type="CAUSAL_LM"),
    )


def run(cfg: SFTStageConfig) -> Manifest:
    from transformers import AutoModelForCausalLM

    out = Path(cfg.output_dir)
    # 1. Inputs: everything checkable without a model fails here, TRL's arguments first.
    args = training_args(cfg, out, processes=world_size())
    model_dir = require_model_dir(cfg.model.path, "model")
    sources = [resolve_source(s) for s in cfg.data]
    tokenizer = load_tokenizer(cfg.model)
    renderer = chat_renderer(cfg.model, tokenizer)
    stage = stage_run(cfg, model_dir, sources)
    if (done := finished(stage, cfg)) is not None:
        return done
    # The records, read whole and measured: a bad one fails here, the previous run's manifest still there.
    prepared = prepare(sources, renderer, args.max_length, cfg.train.overlength, args.seed)
    first = preview(prepared.examples[0], tokenizer)
    log.info(
        "train_sft: first example as trained:\n%s\n---- trained tokens:\n%s", first["text"], first["trained"]
    )
    check_batch(len(prepared.examples), cfg, args)
    stage.start()
    # 2. Model and trainer; 3. train, resuming from the last checkpoint of an interrupted run.
    trainer = build_trainer(cfg, tokenizer, prepared, out)
    resume_from = last_checkpoint(out / "checkpoints") if cfg.resume else None
    if resume_from:
        log.info("train_sft: resuming from %s", resume_from)
    result = trainer.train(resume_from_checkpoint=resume_from)
    # 4. Save for serving.
    dirs = save_for_serving(
        cfg, trainer, tokenizer, out, AutoModelForCausalLM, end_of_turn_id=renderer.eot_id
    )
    trainer.accelerator.wait_for_everyone()
    state = trainer.state
    runtime = result.metrics.get("train_runtime", time.time() - stage.started_at)
    metrics = {
        "train_loss": result.training_loss,
        "loss": loss_summary(state.log_history),
        "global_step": state.global_step,
        "epochs": state.epoch,
        "resumed_from": resume_from,
        "tokens_seen": int(state.num_input_tokens_seen),
        "tokens_per_second": round(state.num_input_tokens_seen / max(runtime, 1e-9), 1),
        "train_runtime_s": round(runtime, 2),
        "peak_memory": peak_memory_gb(),
        "processes": world_size(),
        "data": prepared.stats,
        "preview": first,
    }
    manifest = finish_training(stage, cfg, dirs, metrics)
    log.info(
        "train_sft: %d steps, loss %.4f -> %.4f, %.0f tokens/s; model in %s",
        state.global_step,
        metrics["loss"].get("first", float("nan")),
        metrics["loss"].get("last", float("nan")),
        metrics["tokens_per_second"],
        dirs.get("model", dirs.get("adapter")),
    )
    return manifest
