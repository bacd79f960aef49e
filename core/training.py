"""What the training stages (SFT, reward model, GRPO) share: device and precision choices, model loading
with the long-context and quantisation options, checkpoints, loss summaries, saving for serving."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import resource
import shutil
from pathlib import Path
from typing import Any

import torch

from core.config import world_size  # noqa: F401  (re-exported: the stages import it from here)

log = logging.getLogger(__name__)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def resolve_use_cpu(use_cpu: bool | None) -> bool:
    return (not torch.cuda.is_available()) if use_cpu is None else use_cpu


def resolve_bf16(bf16: bool | None, use_cpu: bool) -> bool:
    if bf16 is None:
        return not use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bf16


def resolve_attention(requested: str, use_cpu: bool) -> str:
    """`auto` → flash_attention_2 on a GPU when flash-attn is installed, otherwise sdpa (said in the log)."""
    if requested != "auto":
        if requested.startswith("flash_attention") and importlib.util.find_spec("flash_attn") is None:
            raise ValueError(
                f"attn_implementation={requested} needs the flash-attn package; install it or use sdpa"
            )
        return requested
    if not use_cpu and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    log.info("attention: sdpa (flash-attn %s)", "not installed" if not use_cpu else "not used on CPU")
    return "sdpa"


def resolve_liger(requested: bool) -> bool:
    if requested and importlib.util.find_spec("liger_kernel") is None:
        log.info("liger kernels requested but liger-kernel is not installed: training without them")
        return False
    return requested


def torch_dtype(name: str, bf16: bool) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_pretrained(
    model_cls: Any,
    path: str,
    *,
    dtype: torch.dtype,
    attn_implementation: str,
    trust_remote_code: bool = False,
    quantize_4bit: bool = False,
    rope_theta: float | None = None,
    max_position_embeddings: int | None = None,
    config_updates: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """from_pretrained with the overrides long-context and QLoRA training need."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    for key, value in (config_updates or {}).items():
        setattr(config, key, value)
    if rope_theta is not None:
        rope = dict(getattr(config, "rope_parameters", None) or {"rope_type": "default"})
        rope["rope_theta"] = rope_theta
        config.rope_parameters = rope
    if max_position_embeddings is not None:
        config.max_position_embeddings = max_position_embeddings
    if quantize_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=dtype,
        )
        if torch.cuda.is_available():
            # Each process's 4-bit model on its own GPU: without a device map every rank loads onto cuda:0.
            kwargs.setdefault("device_map", {"": int(os.environ.get("LOCAL_RANK", "0"))})
    model = model_cls.from_pretrained(
        path,
        config=config,
        dtype=dtype,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        local_files_only=True,
        **kwargs,
    )
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if partitioned:
        local = sum(p.numel() for p in partitioned)
        total = sum(p.ds_numel for p in partitioned)
        log.info("ZeRO-3: parameters partitioned at load (%d of %d elements on this rank)", local, total)
    return model


def lora_config(peft: Any, task_type: str) -> Any:
    """peft's LoraConfig for a PeftConfig (None for full fine-tuning)."""
    if peft.method == "none":
        return None
    from peft import LoraConfig

    target = peft.target_modules
    return LoraConfig(
        r=peft.r,
        lora_alpha=peft.alpha,
        lora_dropout=peft.dropout,
        target_modules="all-linear" if list(target) == ["all-linear"] else list(target),
        task_type=task_type,
    )


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest COMPLETE checkpoint: one whose trainer_state.json (written after the weights and the
    optimizer) exists. A run killed while writing checkpoint-30 resumes from checkpoint-20, where
    transformers' get_last_checkpoint would pick the half-written folder and fail on it."""
    if not checkpoint_dir.is_dir():
        return None
    done = [
        (int(p.name.split("-")[1]), p)
        for p in checkpoint_dir.glob("checkpoint-*")
        if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    return str(max(done)[1]) if done else None


def loss_summary(log_history: list[dict[str, Any]], key: str = "loss") -> dict[str, Any]:
    """First / last / min of a logged curve, plus the means of its first and last tenth."""
    points = [(h["step"], h[key]) for h in log_history if key in h]
    if not points:
        return {}
    values = [v for _, v in points]
    tenth = max(1, len(values) // 10)
    return {
        "first": values[0],
        "last": values[-1],
        "min": min(values),
        "first_tenth_mean": sum(values[:tenth]) / tenth,
        "last_tenth_mean": sum(values[-tenth:]) / tenth,
        "points": len(values),
        "curve": [[s, round(v, 5)] for s, v in points],
    }


def peak_memory_gb() -> dict[str, float]:
    out = {"cpu_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}
    if torch.cuda.is_available():
        out["gpu_allocated_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    return {k: round(v, 3) for k, v in out.items()}


def finalize_model_dir(model_dir: Path, tokenizer: Any, end_of_turn_id: int | None = None) -> None:
    """Make generation from a saved model stop at the end-of-turn token (and the eos ids it had), as vLLM and
    generate read them: a base model given `model.chat_template` learns to end turns with a token its config
    never named. Only the two config files are rewritten: no weights are loaded (a rank-0-only load under
    ZeRO-3 would wait forever for the other ranks)."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    try:
        gen = GenerationConfig.from_pretrained(model_dir, local_files_only=True)
    except OSError:
        gen = GenerationConfig.from_model_config(config)
    eos = gen.eos_token_id
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    for token_id in (tokenizer.eos_token_id, end_of_turn_id):
        if token_id is not None and token_id not in eos_ids:
            eos_ids.insert(0, token_id)
    gen.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    gen.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    gen.save_pretrained(model_dir)
    config.save_pretrained(model_dir)


@contextlib.contextmanager
def single_process_load():
    """Inside: from_pretrained loads whole weights in this process even in a ZeRO-3 run. The main process
    merges adapters alone; through ZeRO-3's partitioned load that would be a collective the other ranks never
    join, and the run would hang after training."""
    from transformers.integrations import deepspeed

    saved = deepspeed._hf_deepspeed_config_weak_ref
    deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        deepspeed._hf_deepspeed_config_weak_ref = saved


def merge_adapter(
    base_path: str,
    adapter_dir: Path,
    out_dir: Path,
    dtype: torch.dtype,
    model_cls: Any,
    vocab_size: int | None = None,
    **kwargs: Any,
) -> Any:
    """Load the base in full precision (never the 4-bit copy QLoRA trained on), apply the adapter, merge.

    Where training added a token (a pad the tokenizer lacked), the base is resized to `vocab_size` first;
    the adapter carries the trained embedding and head rows (PEFT saves resized embedding layers)."""
    from peft import PeftModel

    with single_process_load():
        base = model_cls.from_pretrained(base_path, dtype=dtype, local_files_only=True, **kwargs)
        if vocab_size is not None and vocab_size > base.get_input_embeddings().num_embeddings:
            base.resize_token_embeddings(vocab_size)
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    return merged


def finish_training_stage(
    out: Path,
    cfg: Any,
    dirs: dict[str, Path],
    *,
    stage: str,
    cfg_hash: str,
    inputs: dict[str, str],
    metrics: dict[str, Any],
    started_at: float,
) -> Any:
    """The end of every training stage: list the saved model files, write config + manifest (last), then
    drop the checkpoints, which a finished run no longer needs to resume (unless `keep_checkpoints`)."""
    from core.artifacts import describe_dirs
    from core.config import finish_stage

    manifest = finish_stage(
        out,
        cfg,
        stage=stage,
        round=cfg.round,
        cfg_hash=cfg_hash,
        inputs=inputs,
        outputs=describe_dirs(dirs, out),
        metrics=metrics,
        started_at=started_at,
    )
    if not cfg.keep_checkpoints:
        remove_dir(out / "checkpoints")
    return manifest


def remove_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
