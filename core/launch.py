"""Run a stage in its own process with a typed config.

A stage that loads a model runs in a fresh process (vLLM and CUDA do not give memory back inside one), but
the caller already holds the typed config. Passing it as Hydra overrides would re-resolve interpolations
and lose nothing only by luck; instead the resolved config is written to YAML and the child process types
it again through the same schema (so `__post_init__` validation runs there too):

    run_stage_process("reward_model.score:run", "reward_model.config:ScoreConfig", cfg)

is `python -m core.launch reward_model.score:run reward_model.config:ScoreConfig <cfg.yaml>`.

A child process is needed on a GPU and whenever vLLM runs (its CPU engine also pins torch to one thread
for the rest of its process). On a CPU without vLLM it buys nothing and costs ~10 s of imports (torch and
transformers) per launch, about half of what an evaluation of the tiny model took; `run_step` runs such
steps in the calling process instead (`needs_own_process` is the rule).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def _resolve(dotted: str) -> Any:
    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)


def run_stage_process(
    target: str,
    schema: str,
    cfg: Any,
    *,
    env: dict[str, str] | None = None,
    log_file: str | Path | None = None,
    tee: bool = False,
    accelerate_config: str | None = None,
    ray_train: Any = None,
) -> None:
    """Run `target(cfg)` ("package.module:function") in a child Python process; raise if it fails.

    Output goes to the terminal, or is appended to `log_file` (with `tee`, to both). The child inherits the
    environment (offline variables included) plus `env`. With `accelerate_config` the child is started by
    `accelerate launch --config_file <it>` (several processes / GPUs, DeepSpeed). With `ray_train` (a
    core.ray_train.RayTrainConfig) the child is the driver of a Ray Train job whose workers each run
    `target(cfg)`, `accelerate_config` then giving only their DeepSpeed / mixed-precision environment.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        cfg_path = f.name
    files = [cfg_path]
    if ray_train is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(OmegaConf.to_yaml(OmegaConf.structured(ray_train)))
            files.append(f.name)
        extra = [accelerate_config] if accelerate_config else []
        cmd = [sys.executable, "-m", "core.ray_train", f.name, target, schema, cfg_path, *extra]
    elif accelerate_config:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config]
        cmd = [*launcher, "-m", "core.launch", target, schema, cfg_path]
    else:
        cmd = [sys.executable, "-m", "core.launch", target, schema, cfg_path]
    child_env = {**os.environ, **(env or {})}
    log.info("launching %s", target)
    try:
        if log_file is None:
            returncode = subprocess.run(cmd, env=child_env, check=False).returncode
        else:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            with open(log_file, "ab") as out:
                returncode = _run_logged(cmd, child_env, out, tee)
    finally:
        for path in files:
            os.unlink(path)
    if returncode != 0:
        where = f" (log: {log_file})" if log_file else ""
        raise RuntimeError(f"{target} failed with exit code {returncode}{where}")


def needs_own_process(use_cpu: bool | None, uses_vllm: bool = False) -> bool:
    """True on a GPU (CUDA memory comes back only when a process ends) and for vLLM; False on a CPU."""
    if uses_vllm:
        return True
    from core.training import resolve_use_cpu

    return not resolve_use_cpu(use_cpu)


def run_step(
    target: str, schema: str, cfg: Any, *, own_process: bool, log_file: str | Path | None = None
) -> None:
    """`target(cfg)` in a child process (`run_stage_process`) or, with `own_process=False`, in this one,
    its log records also appended to `log_file` so the step leaves the same log either way."""
    if own_process:
        run_stage_process(target, schema, cfg, log_file=log_file)
        return
    log.info("running %s in this process", target)
    with _logging_to(log_file):
        _resolve(target)(cfg)


@contextlib.contextmanager
def _logging_to(log_file: str | Path | None) -> Any:
    if log_file is None:
        yield
        return
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def _run_logged(cmd: list[str], env: dict[str, str], out: Any, tee: bool) -> int:
    if not tee:
        return subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    while chunk := proc.stdout.read1(1 << 16):  # type: ignore[attr-defined]
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        out.write(chunk)
    return proc.wait()


def main(argv: list[str]) -> None:
    from core.config import to_typed

    target, schema, cfg_path = argv
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    cfg = to_typed(OmegaConf.load(cfg_path), _resolve(schema))
    _resolve(target)(cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
