"""What the training stages (SFT, reward model, GRPO) share: device and precision choices, model loading
with the long-context and quantisation options, checkpoints, loss summaries, saving for serving, and the
TRL config each stage trains with (`trl_args`).

Why a mapping and not subclassing. Each training stage hands one section of its config (`sft`, `rm`,
`grpo`) to TRL's SFTConfig / RewardConfig / GRPOConfig as keyword arguments, unchanged; what the project
adds (data handling, model-load choices, the rewards registry, the early stop) stays in typed dataclass
fields. open-r1 instead subclasses TRL's configs (class GRPOConfig(trl.GRPOConfig)) and parses them with
TrlParser. Here that would cost three things: Hydra's name and type checks for everything the project
adds (TrlParser is argparse; Hydra cannot take TRL's union types such as `dict | str | None` or its enums
as a schema); composing a config, which the pipeline does for every step before anything runs, would
import torch and trl (~7 s) instead of 0.6 s for all six stages; and every TRL release would change our
schema. As a mapping, TRL's arguments are validated by TRL itself, in one place (`trl_args`): a name TRL
does not have fails with the closest names it has, a value against TRL's annotation fails naming the key,
and TRL's own `__post_init__` checks (with the launched world size) reach the user in TRL's words,
prefixed with the section. The stage validates its section at its door, before any model loads, and the
pipeline validates every training step's section with that step's process count when it composes the
run. The sections accept any key at compose time (they are opened in the schema, see
train_sft/config.py): Hydra could only check a key against the keys a preset happens to list, and TRL's
own field list is the one that decides."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import resource
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from core.artifacts import Manifest
from core.config import world_size, write_resolved_config  # world_size: also re-exported to the stages
from core.lifecycle import StageRun, is_main_process

log = logging.getLogger(__name__)


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


def save_for_serving(
    cfg: Any,
    trainer: Any,
    tokenizer: Any,
    out: Path,
    model_cls: Any,
    *,
    end_of_turn_id: int | None = None,
    merge: bool | None = None,
    **merge_kwargs: Any,
) -> dict[str, Path]:
    """What every training stage saves: adapter/ (LoRA, QLoRA) and model/ (the full model, or the adapter
    merged into a full-precision copy of the base when `merge`, default `peft.merge`), each with safetensors,
    the tokenizer and its chat template, and model/ with train_config.yaml.

    `trainer.save_model` runs on every rank (it gathers ZeRO-3 shards); merging runs on the main process from
    the saved adapter, so it works for QLoRA and ZeRO-3 alike. A causal LM (`end_of_turn_id` given) gets a
    generation config that stops at the end of turn; a reward model only its pad id.
    """
    full = cfg.peft.method == "none"
    merge = cfg.peft.merge if merge is None else merge
    model_dir = out / "model"
    dirs: dict[str, Path] = {}
    if full:
        trainer.save_model(str(model_dir))
        dirs["model"] = model_dir
    else:
        dirs["adapter"] = out / "adapter"
        trainer.save_model(str(dirs["adapter"]))
        if merge:
            dirs["model"] = model_dir
    if not trainer.is_world_process_zero() or "model" not in dirs:
        return dirs
    if not full:
        dtype = torch_dtype(cfg.model.dtype, bool(trainer.args.bf16))
        merge_adapter(
            cfg.model.path,
            dirs["adapter"],
            model_dir,
            dtype,
            model_cls,
            vocab_size=len(tokenizer),
            **merge_kwargs,
        )
    if end_of_turn_id is not None:
        finalize_model_dir(model_dir, tokenizer, end_of_turn_id)
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        config.pad_token_id = tokenizer.pad_token_id
        config.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    # A pickle beside the weights is nothing a serving stack needs, and loading it means unpickling.
    (model_dir / "training_args.bin").unlink(missing_ok=True)
    write_resolved_config(model_dir, cfg, name="train_config.yaml")
    return dirs


def finish_training(stage: StageRun, cfg: Any, dirs: dict[str, Path], metrics: dict[str, Any]) -> Manifest:
    """The end of every training stage: the saved model files listed in the manifest (written last), then
    the checkpoints dropped, which a finished run no longer needs to resume (unless `keep_checkpoints`),
    then the upload (`push_to_hub`, core/push_to_hub.py)."""
    manifest = stage.finish(dirs=dirs, metrics=metrics)
    if is_main_process() and not cfg.keep_checkpoints:
        remove_dir(stage.out / "checkpoints")
    push_if_asked(stage.out, cfg)
    return manifest


def finished(stage: StageRun, cfg: Any) -> Manifest | None:
    """`stage.done()` (the manifest of a finished run, else None), pushing a finished run that `push_to_hub`
    asks for and that is not on the Hub yet (its upload failed, or push_to_hub was added since)."""
    done = stage.done()
    if done is not None:
        push_if_asked(stage.out, cfg)
    return done


def push_if_asked(stage_dir: Path, cfg: Any) -> None:
    if cfg.push_to_hub.repo_id is not None and is_main_process():
        from core.push_to_hub import push

        push(stage_dir, cfg.push_to_hub)


def remove_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


# ------------------------------------------------------------------------------------------ TRL arguments


# What trl_args sets for every stage, and what a user who sets it in a TRL section is told instead.
_FIXED_FOR_EVERY_STAGE = {
    "output_dir": "use the stage's output_dir (TRL's checkpoints go to <output_dir>/checkpoints)",
    "ddp_find_unused_parameters": "the stage sets it: False with several processes, else None",
}


class TrlArgsError(ValueError):
    """A stage's TRL section that TRL cannot take: the message names the section's key and the TRL class."""


def trl_args(
    config_cls: type | str,
    mapping: Mapping[str, Any],
    *,
    where: str,
    output_dir: str | Path,
    fixed: Mapping[str, tuple[Any, str]],
    defaults: Mapping[str, Any] | None = None,
    processes: int | None = None,
    push: Any = None,
) -> Any:
    """`config_cls(**arguments)`: TRL's SFTConfig / RewardConfig / GRPOConfig (a class or its name in `trl`)
    from a stage's TRL section `mapping`, the section `where` names (`train_sft.sft`), with what the project
    fixes set once for the three stages. See the module docstring for why the section is a mapping.

    - `fixed` {name: (value, what to set instead)}: arguments the stage decides (`use_cpu`, the reward
      weights, vLLM's colocate mode...); a key of `mapping` among them is refused with that hint. Fixed here
      for every stage: `output_dir` (<output_dir>/checkpoints) and `ddp_find_unused_parameters` (False with
      several processes: every parameter gets a gradient, and DDP's unused-parameter search costs a pass).
    - `defaults`: the stage's choices for keys `mapping` does not give (it wins where it does).
    - Project meanings of TRL keys: `bf16: null` (or absent) = on where the GPU supports it (off with `fp16`
      or on the CPU); `use_liger_kernel: true` = only if liger-kernel is installed; `report_to` drops
      `none`; `data_seed` follows `seed` unless given. The tensorboard files go to <output_dir>/logs (the
      TENSORBOARD_LOGGING_DIR of this process), beside the outputs, not in checkpoints/ (a finished run
      deletes it).
    - A key that is not an argument of `config_cls` fails with the closest valid names (difflib); a value of
      the wrong type for TRL's annotation (`learning_rate: abc`) fails naming the key; a ValueError of TRL's
      own `__post_init__` checks comes through prefixed with the section.

    `processes=None` builds the config the stage trains with, in the launched process (accelerate has set
    WORLD_SIZE; building it sets up torch.distributed). `processes=N` only validates, in any process: TRL's
    `__post_init__` runs with `world_size` = N, the number of processes the stage is (or will be) launched
    with, which is what its batch arithmetic (GRPO: the generation batch a multiple of num_generations) must
    hold for, not the parent's world size. That build touches no device and no process group: the device
    setup of TrainingArguments is replaced by "CPU, not distributed" (it would otherwise pick cuda:0 and
    create a CUDA context in the pipeline's parent process), so `use_cpu` is True on the object returned,
    `bf16` is not resolved (False unless set), `tf32` (which queries the GPU) is left out and DeepSpeed's
    environment is not read; the checks that need the device run when the stage builds its real config,
    before the model loads. Everything else on the returned object is what the stage will train with.
    Building it (`processes=None`) also seeds Python, numpy and torch with its `seed`, as the trainer will.

    `push` (the stage's push_to_hub section) is checked here too, so an upload that cannot happen (offline,
    no token) fails at the stage's door and at the pipeline's compose, not after training.
    """
    import dataclasses
    import difflib

    import trl

    from core.push_to_hub import check as check_push

    check_push(push, where.split(".")[0])

    cls = getattr(trl, config_cls) if isinstance(config_cls, str) else config_cls
    name = f"trl.{cls.__name__}"
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    user = dict(mapping)
    unknown = [key for key in user if key not in fields]
    if unknown:
        lines = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}?" if close else f"see {name}'s arguments"
            lines.append(f"{where}.{key}: not an argument of {name} (TRL {trl.__version__}); {hint}")
        raise TrlArgsError("\n".join(lines))
    why = {**{k: hint for k, (_, hint) in fixed.items()}, **_FIXED_FOR_EVERY_STAGE}
    if clashes := [key for key in user if key in why]:
        raise TrlArgsError(
            "\n".join(f"{where}.{key}: set by the stage, not in this section; {why[key]}" for key in clashes)
        )
    _check_types(cls, user, where, name)
    n = processes if processes is not None else world_size()
    kwargs: dict[str, Any] = {**(defaults or {}), **user, **{k: value for k, (value, _) in fixed.items()}}
    kwargs["output_dir"] = str(Path(output_dir) / "checkpoints")
    kwargs["ddp_find_unused_parameters"] = False if n > 1 else None
    report_to = kwargs.get("report_to", [])
    report_to = [report_to] if isinstance(report_to, str) else list(report_to or [])
    kwargs["report_to"] = [r for r in report_to if r != "none"]
    kwargs.setdefault("data_seed", kwargs.get("seed"))
    if kwargs.get("use_liger_kernel"):
        kwargs["use_liger_kernel"] = resolve_liger(True)
    if processes is None:
        if kwargs.get("bf16") is None:
            kwargs["bf16"] = not kwargs.get("fp16") and resolve_bf16(None, bool(kwargs.get("use_cpu")))
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(output_dir) / "logs")
        build, context = cls, contextlib.nullcontext()
    else:
        if kwargs.get("bf16") is None:
            kwargs["bf16"] = False
        kwargs["use_cpu"] = True
        kwargs.pop("tf32", None)
        build, context = _launched_as(cls, processes), _without_env("ACCELERATE_USE_DEEPSPEED")
    try:
        with context:
            args = build(**kwargs)
    except (ValueError, TypeError) as e:
        launched = f" with {n} process{'es' if n > 1 else ''}" if processes is not None else ""
        raise TrlArgsError(f"{where}: {name} refused its arguments{launched}: {e}") from e
    if processes is None:
        # Seeded before the stage loads its model, not only at the trainer's init: a layer the checkpoint
        # lacks (the reward model's score head) is initialised by from_pretrained from torch's global RNG,
        # which was in another state in every process, so two identical runs trained different reward models.
        from transformers import set_seed

        set_seed(args.seed)
    return args


def _check_types(cls: type, values: dict[str, Any], where: str, name: str) -> None:
    """What Hydra checked when the section was a dataclass: each value against TRL's annotation, where that
    annotation is built of plain types (bool, int, float, str, None, list, dict); anything else (an enum or
    a TRL class among the union) passes, for TRL to judge."""
    import types
    import typing

    hints = typing.get_type_hints(cls)
    plain = {bool, int, float, str, type(None), list, dict}
    for key, value in values.items():
        hint = hints.get(key)
        members = (
            typing.get_args(hint)
            if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
            else (hint,)
        )
        kinds = [typing.get_origin(m) or m for m in members]
        if not all(k in plain for k in kinds) or _fits(value, kinds):
            continue
        wanted = " | ".join(getattr(k, "__name__", str(k)) for k in kinds)
        raise TrlArgsError(f"{where}.{key}={value!r}: {name}.{key} takes {wanted}")


def _fits(value: Any, kinds: list[type]) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int):
        return int in kinds or float in kinds
    if isinstance(value, float):
        return float in kinds
    if isinstance(value, list | tuple):
        return list in kinds
    return any(isinstance(value, k) for k in kinds)


def _launched_as(cls: type, processes: int) -> type:
    """`cls` whose `world_size` is `processes` and whose device setup is "CPU, one process, no process
    group": TrainingArguments' own (`_setup_devices`) would create accelerate's PartialState, pick and set a
    CUDA device, and under a launcher join the process group."""
    import functools

    def _setup_devices(self: Any) -> Any:
        self._n_gpu = 0
        return torch.device("cpu")

    attrs = {
        "world_size": property(lambda self: processes),
        "distributed_state": None,
        "_setup_devices": functools.cached_property(_setup_devices),
        "__doc__": f"{cls.__name__} validated for {processes} launched process(es); not for training.",
    }
    return type(cls.__name__, (cls,), attrs)


@contextlib.contextmanager
def _without_env(name: str) -> Any:
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved
