"""reward_model: a Bradley-Terry reward model trained with TRL's RewardTrainer.

Validate → encode pairs (chat template, middle truncation, held-out split) → load a one-score
sequence-classification head on the SFT (or any) model → train, resuming from the last checkpoint →
evaluate pairwise accuracy and margin on the held-out pairs → save the (merged) model → manifest.

Loss: -log σ(r_chosen - r_rejected - margin), plus the optional reward-centering term, as TRL computes it.
The pairs reach TRL already tokenized (`chosen_ids` / `rejected_ids`), because TRL's own preparation
silently drops pairs over max_length, and here long pairs are truncated in the middle and counted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from core.artifacts import Manifest
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
from reward_model.config import RMStageConfig
from reward_model.data import (
    STAGE,
    EncodedPairs,
    PairsError,
    SequenceEncoder,
    encode_pairs,
    read_pairs,
    resolve_pairs,
    stage_run,
)

log = logging.getLogger(__name__)


def load_reward_model(cfg: RMStageConfig, tokenizer: Any, use_cpu: bool, bf16: bool) -> Any:
    from transformers import AutoModelForSequenceClassification

    model = load_pretrained(
        AutoModelForSequenceClassification,
        cfg.model.path,
        dtype=torch_dtype(cfg.model.dtype, bf16),
        attn_implementation=resolve_attention(cfg.train.attn_implementation, use_cpu),
        trust_remote_code=cfg.model.trust_remote_code,
        quantize_4bit=cfg.peft.method == "qlora",
        config_updates={"num_labels": 1, "pad_token_id": tokenizer.pad_token_id},
    )
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model


def training_args(cfg: RMStageConfig, out: Path, processes: int | None = None) -> Any:
    """trl.RewardConfig from the `rm` section (core.training.trl_args): validated only, for `processes`
    launched processes, when `processes` is given (the stage's door, the pipeline's compose), else the one
    the stage trains with. Its defaults where `rm` is silent: held-out evaluation every eval_steps with the
    training batch size, the first step logged."""
    from trl import RewardConfig

    use_cpu = resolve_use_cpu(cfg.use_cpu)
    args = trl_args(
        RewardConfig,
        cfg.rm,
        where=f"{STAGE}.rm",
        output_dir=out,
        push=cfg.push_to_hub,
        processes=processes,
        fixed={"use_cpu": (use_cpu, "use the stage's use_cpu")},
        defaults={
            "per_device_eval_batch_size": cfg.rm.get(
                "per_device_train_batch_size", RewardConfig.per_device_train_batch_size
            ),
            "eval_strategy": "steps",
            "logging_first_step": True,
        },
    )
    if not isinstance(args.max_length, int) or cfg.train.min_completion_tokens >= args.max_length:
        raise ValueError(
            f"{STAGE}.rm.max_length ({args.max_length}) must be a number of tokens above "
            f"train.min_completion_tokens ({cfg.train.min_completion_tokens}): pairs are cut to it"
        )
    return args


def build_trainer(cfg: RMStageConfig, tokenizer: Any, pairs: EncodedPairs, out: Path):
    from datasets import Dataset
    from trl import RewardTrainer

    margin = cfg.train.margin

    def dataset(examples: list[dict[str, Any]]) -> Any:
        if margin:
            examples = [{**e, "margin": margin} for e in examples]
        return Dataset.from_list(examples)

    args = training_args(cfg, out)
    # Created after the trainer's arguments, which switch on ZeRO-3's partitioned load (see train_sft).
    model = load_reward_model(cfg, tokenizer, args.use_cpu, args.bf16)
    return RewardTrainer(
        model=model,
        args=args,
        train_dataset=dataset(pairs.train),
        eval_dataset=dataset(pairs.eval),
        processing_class=tokenizer,
        peft_config=lora_config(cfg.peft, task_type="SEQ_CLS"),
    )


def read_all_pairs(files: list[Path]) -> list[dict[str, Any]]:
    """Every source's pairs. A source with none (a round in which no prompt had both a correct and a wrong
    sample) is a valid artifact: a warning, and the reward model trains on the others."""
    per_file = [(file, read_pairs(file)) for file in files]
    for file, rows in per_file:
        if not rows:
            log.warning("reward_model: %s holds no pairs; training on the other sources", file)
    rows = [row for _, file_rows in per_file for row in file_rows]
    if not rows:
        raise PairsError(f"no preference pairs in {[str(f) for f in files]}")
    return rows


def run(cfg: RMStageConfig) -> Manifest:
    from transformers import AutoModelForSequenceClassification

    out = Path(cfg.output_dir)
    # 1. Inputs, checked before any model is loaded, TRL's arguments first.
    args = training_args(cfg, out, processes=world_size())
    model_dir = require_model_dir(cfg.model.path, "model")
    sources = [resolve_pairs(p) for p in [cfg.pairs, *cfg.extra_pairs]]
    tokenizer = load_tokenizer(cfg.model)
    stage = stage_run(cfg, model_dir, sources)
    if (done := finished(stage, cfg)) is not None:
        return done
    # The pairs, read whole and encoded: a bad one fails here, the previous run's manifest still there.
    renderer = chat_renderer(cfg.model, tokenizer)
    encoder = SequenceEncoder(
        renderer, args.max_length, cfg.train.truncation, cfg.train.min_completion_tokens
    )
    rows = read_all_pairs([file for file, _ in sources])
    first = {side: renderer.text(rows[0]["prompt"], rows[0][side]) for side in ("chosen", "rejected")}
    log.info(
        "reward_model: first pair as scored:\n%s\n---- rejected:\n%s", first["chosen"], first["rejected"]
    )
    pairs = encode_pairs(rows, encoder, cfg.train.eval_fraction, args.seed)
    stage.start()
    # 2. Train (resuming), 3. evaluate on the held-out pairs.
    trainer = build_trainer(cfg, tokenizer, pairs, out)
    resume_from = last_checkpoint(out / "checkpoints") if cfg.resume else None
    if resume_from:
        log.info("reward_model: resuming from %s", resume_from)
    result = trainer.train(resume_from_checkpoint=resume_from)
    evaluation = trainer.evaluate()
    # 4. Save.
    # model/ always: rejection sampling and GRPO load the merged scorer (num_labels=1).
    dirs = save_for_serving(
        cfg, trainer, tokenizer, out, AutoModelForSequenceClassification, merge=True, num_labels=1
    )
    trainer.accelerator.wait_for_everyone()
    state = trainer.state
    metrics = {
        "eval_accuracy": evaluation.get("eval_accuracy"),
        "eval_margin": evaluation.get("eval_margin"),
        "eval_loss": evaluation.get("eval_loss"),
        "eval_curve": [
            [h["step"], round(h["eval_accuracy"], 4)] for h in state.log_history if "eval_accuracy" in h
        ],
        "train_loss": result.training_loss,
        "loss": loss_summary(state.log_history),
        "accuracy": loss_summary(state.log_history, key="accuracy"),
        "global_step": state.global_step,
        "resumed_from": resume_from,
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 2),
        "peak_memory": peak_memory_gb(),
        "processes": world_size(),
        "data": pairs.stats,
        "preview": first,
    }
    manifest = finish_training(stage, cfg, dirs, metrics)
    log.info(
        "reward_model: %d steps, held-out pairwise accuracy %.3f, margin %.3f; model in %s",
        state.global_step,
        metrics["eval_accuracy"] or float("nan"),
        metrics["eval_margin"] or float("nan"),
        dirs["model"],
    )
    return manifest
