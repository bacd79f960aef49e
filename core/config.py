"""Typed configs shared by the stages, and the glue between Hydra and the plain `run(cfg)` functions.

Every stage config is a dataclass registered in Hydra's ConfigStore as `<stage>_schema` (core.stages); the
YAML file in conf/ names it first in its defaults list, so a typo in an override (`peft.rr=1`) or a wrong
type (`peft.r=abc`) fails when Hydra composes the config, before anything runs. Mapping fields (TRL's
sections) take any key; TRL checks those names (core.training.trl_args). `__post_init__` methods reject
combinations that cannot work, with a message that says how to fix them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from core.artifacts import Manifest, OutputFile, atomic_path, config_hash, write_manifest

T = TypeVar("T")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger(__name__)

MATH_INSTRUCTION_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."


def world_size() -> int:
    """Processes of this run as the launcher set them (1 outside torchrun / accelerate). Here, not in
    core.training, so that composing a config never imports torch."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def help_field(default: Any = dataclasses.MISSING, help: str = "", hashed: bool = True, **kwargs: Any) -> Any:
    """A dataclass field with help text. `hashed=False` keeps it out of the config hash (it does not change
    the stage's outputs: worker counts, progress bars), so changing it does not invalidate a finished stage."""
    metadata = {"help": help, "hash": hashed}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


@dataclass
class ModelConfig:
    """Which model (and tokenizer) a stage uses. Paths are local: nothing is fetched from a hub."""

    name: str = help_field("tiny", help="Short name used in reports and run directories.")
    path: str = help_field("???", help="Local directory of a Hugging Face model (safetensors).")
    tokenizer_path: str | None = help_field(None, help="Tokenizer directory; defaults to `path`.")
    instruction_suffix: str = help_field(
        MATH_INSTRUCTION_SUFFIX, help="Appended to every problem in the user turn. Empty string: none."
    )
    chat_template: str | None = help_field(
        None,
        help="For a base model without a chat template: chatml, r1, a Jinja file or the template itself. It is "
        "saved with every trained model. null: the tokenizer's own template (required then).",
    )
    chat_template_kwargs: dict[str, Any] = help_field(
        {},
        help="Passed to apply_chat_template, e.g. {enable_thinking: false} for Qwen3 (default: thinking on).",
    )
    trust_remote_code: bool = help_field(False, help="Allow custom modeling code in the model dir.")
    dtype: str = help_field("auto", help="auto | float32 | bfloat16 | float16.")

    @property
    def tokenizer_dir(self) -> str:
        return self.tokenizer_path or self.path


PEFT_METHODS = ("none", "lora", "qlora")


@dataclass
class PeftConfig:
    method: str = help_field(
        "lora", help="none (full fine-tuning) | lora | qlora (4-bit NF4 base, bitsandbytes)."
    )
    r: int = help_field(16, help="LoRA rank.")
    alpha: int = help_field(32, help="LoRA alpha (scale = alpha / r).")
    dropout: float = help_field(0.05)
    target_modules: list[str] = help_field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        help="Module names to adapt; ['all-linear'] adapts every linear layer but the head.",
    )
    merge: bool = help_field(True, help="Also save the adapter merged into the base weights (model/).")

    def __post_init__(self) -> None:
        if self.method not in PEFT_METHODS:
            raise ValueError(f"peft.method must be one of {PEFT_METHODS}, got '{self.method}'")
        if self.r < 1 or self.alpha < 1:
            raise ValueError("peft.r and peft.alpha must be >= 1")


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass (or DictConfig) as a plain dict of plain values."""
    if isinstance(obj, DictConfig):
        return OmegaConf.to_container(obj, resolve=True)  # type: ignore[return-value]
    return dataclasses.asdict(obj)


def hashed_view(obj: Any) -> Any:
    """The parts of a config that determine a stage's outputs (fields marked hashed=False left out)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: hashed_view(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.metadata.get("hash", True)
        }
    if isinstance(obj, list | tuple):
        return [hashed_view(v) for v in obj]
    if isinstance(obj, dict):
        return {k: hashed_view(v) for k, v in obj.items()}
    return obj


def stage_config_hash(cfg: Any) -> str:
    return config_hash(hashed_view(cfg))


def to_typed(cfg: DictConfig | T, schema: type[T]) -> T:
    """Hydra's composed config → the stage's dataclass (runs its `__post_init__` validation)."""
    if isinstance(cfg, schema):
        return cfg
    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, schema):
        # Composed without the schema in the defaults list: validate through the schema now.
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        obj = OmegaConf.to_object(merged)
    return obj  # type: ignore[return-value]


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose conf/<config_name>.yaml with overrides exactly as `python -m <stage>` would, without running
    it: what tests, benchmarks and the pipeline use to build a stage's config in-process."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from core.stages import register_schemas

    register_schemas()
    if GlobalHydra.instance().is_initialized():
        # Inside a Hydra app (the pipeline's __main__), whose search path is this same conf/ directory.
        return hydra_compose(config_name=config_name, overrides=overrides or [])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides or [])


def hydra_entry(
    config_name: str, schema: type[T], run: Callable[[T], Any] | str, sweep_field: str = "output_dir"
) -> None:
    """The thin `__main__` of a stage: compose conf/<config_name>.yaml with overrides, type it, run it.

    In a multirun sweep (`-m`) every job gets its own output: `<sweep_field>/sweep_<job number>`, so two
    learning rates never overwrite each other (the job's overrides are in its config.yaml and manifest).

    `--help` / `-h` prints core.help's page (each option with its value and help text, the config groups this
    stage uses; the overrides before it applied) and exits without running anything; Hydra's own help,
    which lists every group under conf/ and no help texts, stays available as `--hydra-help`. `run` may be
    "module:function", imported only when the stage runs, so that `--help` does not pay for the stage's
    imports (torch).
    """
    import sys

    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        from core.help import main_help

        raise SystemExit(main_help(config_name, schema, sys.argv[1:]))

    import hydra

    from core.stages import register_schemas

    register_schemas()

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def _main(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        typed = to_typed(cfg, schema)
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN and hasattr(typed, sweep_field):
            setattr(typed, sweep_field, f"{getattr(typed, sweep_field)}/sweep_{hydra_cfg.job.num}")
        if isinstance(run, str):
            import importlib

            module, _, name = run.partition(":")
            getattr(importlib.import_module(module), name)(typed)
        else:
            run(typed)

    _main()


def write_resolved_config(out_dir: str | Path, cfg: Any, name: str = "config.yaml") -> Path:
    """The fully resolved config of a stage, next to its outputs, so the run can be reproduced."""
    path = Path(out_dir) / name
    with atomic_path(path) as tmp:
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return path


def finish_stage(
    out_dir: str | Path,
    cfg: Any,
    *,
    stage: str,
    cfg_hash: str,
    inputs: dict[str, str],
    outputs: dict[str, OutputFile],
    metrics: dict[str, Any],
    started_at: float,
    round: int | None = None,
) -> Manifest:
    """Every stage ends here: the resolved config.yaml beside the outputs, then the manifest, last."""
    write_resolved_config(out_dir, cfg)
    manifest = Manifest(
        stage=stage,
        round=round,
        config_hash=cfg_hash,
        config=to_dict(cfg),
        inputs=inputs,
        outputs=outputs,
        metrics=metrics,
        started_at=started_at,
    )
    write_manifest(out_dir, manifest)
    return manifest
