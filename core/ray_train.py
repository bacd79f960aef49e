"""`launcher=ray`: a training stage as a Ray Train job, one worker per GPU across the cluster.

    python -m core.ray_train <settings.yaml> <target> <schema> <cfg.yaml>   # what core.launch starts
    python -m core.ray_train --num-workers 2 train_sft key=value ...       # a stage by hand

Ray Train's `TorchTrainer` starts `num_workers` workers on the cluster, sets in each the variables torchrun
would (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR, MASTER_PORT) and initialises
the process group (gloo without GPUs, nccl with), which accelerate, transformers and TRL pick up as under
`accelerate launch`. Every worker then calls the stage's own `run(cfg)` with the same typed config: the
stage does not know how it was launched, so the manifest is written once (by rank 0, core.lifecycle), the
model saved once, and the outputs land in the stage's output directory on the shared run directory.

DeepSpeed, FSDP and mixed precision come from an accelerate config file, as with `launcher=accelerate`:
`accelerate_env` turns it into the environment `accelerate launch` would give its processes, with
accelerate's own functions, and every worker starts with it. The file's process and machine counts are
Ray's to decide (`num_workers`), not the file's.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from core.config import help_field

log = logging.getLogger(__name__)

# Set by Ray Train in each worker; never taken from an accelerate config's environment.
TORCHRUN_VARS = {
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "CUDA_VISIBLE_DEVICES",
}


@dataclass
class RayTrainConfig:
    """How the training stages run under `launcher=ray` (the pipeline's `ray_train` section)."""

    address: str | None = help_field(
        None, help="ray.init's address: null = a running cluster (RAY_ADDRESS) or a local one; auto = the "
        "running one; host:6379.",
    )  # fmt: skip
    num_workers: int | None = help_field(
        None, help="Training processes; null = one per GPU of the cluster (a cluster without GPUs: one per "
        "cpus_per_worker CPUs).",
    )  # fmt: skip
    use_gpu: bool | None = help_field(None, help="One GPU per worker; null = when the cluster has GPUs.")
    cpus_per_worker: float = help_field(1, help="CPUs each worker reserves.")
    storage_path: str | None = help_field(
        None, help="Ray Train's own run state (storage every node sees); null = <run_dir>/logs/ray_train."
    )

    def __post_init__(self) -> None:
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"ray_train.num_workers must be >= 1 or null, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"ray_train.cpus_per_worker must be > 0, got {self.cpus_per_worker}")


def accelerate_env(config_file: str | None) -> dict[str, str]:
    """The ACCELERATE_* (DeepSpeed, FSDP, mixed precision, CPU) environment `accelerate launch --config_file
    <config_file>` gives its processes, computed by accelerate's own launcher functions; {} without a file."""
    if config_file is None:
        return {}
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import (
        prepare_deepspeed_cmd_env,
        prepare_multi_gpu_env,
        prepare_simple_launcher_cmd_env,
    )

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "-m", "core.ray_train"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed and not args.cpu:
        # As accelerate's launch_command does before its deepspeed_launcher.
        fields = list(defaults.deepspeed_config.keys()) if defaults else []
        args.deepspeed_fields_from_accelerate_config = ",".join(
            fields + (["mixed_precision"] if mp_from_config else [])
        )
        _, env = prepare_deepspeed_cmd_env(args)
    elif (args.use_fsdp or args.use_megatron_lm or args.multi_gpu) and not args.cpu:
        env = prepare_multi_gpu_env(args)
    else:
        _, env = prepare_simple_launcher_cmd_env(args)
    return {
        k: v
        for k, v in env.items()
        if k.startswith(("ACCELERATE_", "FSDP_", "MEGATRON_LM_"))
        and k not in TORCHRUN_VARS
        and os.environ.get(k) != v
    }


def scaling(cfg: RayTrainConfig, resources: dict[str, float]) -> tuple[int, bool]:
    """(workers, use_gpu) for this cluster."""
    use_gpu = resources.get("GPU", 0) > 0 if cfg.use_gpu is None else cfg.use_gpu
    if cfg.num_workers is not None:
        return cfg.num_workers, use_gpu
    per_worker = "GPU" if use_gpu else "CPU"
    workers = int(resources.get(per_worker, 0) // (1 if use_gpu else cfg.cpus_per_worker))
    if workers < 1:
        raise ValueError(f"launcher=ray: the cluster has no {per_worker} for a training worker ({resources})")
    return workers, use_gpu


def worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: the accelerate environment, then the stage's run(cfg)."""
    from core.config import to_typed
    from core.launch import LOG_FORMAT
    from core.stages import load

    os.environ.update(config["env"])
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, force=True)
    cfg = to_typed(OmegaConf.create(config["cfg"]), load(config["schema"]))
    load(config["target"])(cfg)


def run(
    settings: RayTrainConfig, target: str, schema: str, cfg: Any, accelerate_config: str | None = None
) -> None:
    """`target(cfg)` in every worker of a Ray Train job; raises if a worker fails."""
    from core.ray_cluster import connect

    resources = connect(settings.address)
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    workers, use_gpu = scaling(settings, resources)
    run_dir = Path(getattr(cfg, "run_dir", "runs/ray_train"))
    storage = Path(settings.storage_path or run_dir / "logs" / "ray_train").resolve()
    name = Path(getattr(cfg, "output_dir", target.partition(":")[0])).name
    log.info(
        "ray train: %s on %d worker(s) (%s), state in %s",
        target,
        workers,
        "GPU" if use_gpu else "CPU",
        storage,
    )
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "target": target,
            "schema": schema,
            "cfg": OmegaConf.to_yaml(OmegaConf.structured(cfg)),
            "env": accelerate_env(accelerate_config),
        },
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": settings.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RunConfig(name=name, storage_path=str(storage)),
    )
    trainer.fit()


def main(argv: list[str]) -> None:
    from core.config import to_typed
    from core.launch import LOG_FORMAT

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    if argv and argv[0].endswith(".yaml"):
        # core.launch: <settings.yaml> <target> <schema> <cfg.yaml> [<accelerate config>]
        settings_path, target, schema, cfg_path, *rest = argv
        from core.stages import load

        settings = to_typed(OmegaConf.load(settings_path), RayTrainConfig)
        cfg = to_typed(OmegaConf.load(cfg_path), load(schema))
        run(settings, target, schema, cfg, rest[0] if rest else None)
        return
    parser = argparse.ArgumentParser(prog="python -m core.ray_train", description=__doc__.split("\n")[0])
    parser.add_argument("stage", help="train_sft | reward_model | grpo")
    parser.add_argument("overrides", nargs="*", help="the stage's Hydra overrides")
    parser.add_argument("--address", default=None)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--use-gpu", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--cpus-per-worker", type=float, default=1)
    parser.add_argument("--accelerate-config", default=None, help="conf/accelerate/*.yaml (DeepSpeed, ...)")
    a = parser.parse_args(argv)
    from core.config import compose
    from core.stages import stage

    s = stage(a.stage)
    if not s.training:
        parser.error(f"{a.stage} is not a training stage (train_sft, reward_model, grpo)")
    cfg = to_typed(compose(s.name, a.overrides), s.load_schema())
    settings = RayTrainConfig(a.address, a.num_workers, a.use_gpu, a.cpus_per_worker)
    run(settings, s.run, s.schema, cfg, a.accelerate_config)


if __name__ == "__main__":
    main(sys.argv[1:])
