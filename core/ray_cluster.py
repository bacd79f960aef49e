"""Joining the Ray cluster that sampling (`sampling.backend=ray`) and training (`launcher=ray`) share.

    connect(address)        # in the driver: the stage process that hands work to the cluster

`address` is Ray's own (`ray.init(address=...)`): null finds a running cluster (RAY_ADDRESS, else the one
`ray start --head` last started on this machine) or starts a local one for this process; "auto" requires a
running one; "host:6379" or "ray://host:10001" names one; "local" always starts a new local one. The tests
and a laptop run on the local one; a cluster is started by hand (README, "Several machines: Ray").

What the workers need from the driver travels as the job's `runtime_env` environment (`worker_env`): the
offline switches (a `ray start` raylet was started with its own environment, not the driver's), the
checkout on PYTHONPATH, the locks the driver inherited (core/lock.py: a Ray Train worker writing a stage's
output inside a pipeline's run_dir holds it on the pipeline's behalf) and the thread settings. Every node
runs the same checkout and `.venv` at the same path, and the run directory is on storage every node sees,
as in verl and OpenRLHF deployments; nothing is uploaded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
# Read in the workers; set in the driver's environment (the offline default sets the first three).
FORWARDED = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HF_HOME",
    "RUN_LOCKS",
    "OMP_NUM_THREADS",
    "TOKENIZERS_PARALLELISM",
    "VLLM_CPU_KVCACHE_SPACE",
    "PYTORCH_CUDA_ALLOC_CONF",
)


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every task and actor of this job starts with (see the module docstring)."""
    env = {k: os.environ[k] for k in FORWARDED if k in os.environ}
    path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    return {**env, **(extra or {})}


def connect(address: str | None, *, extra_env: dict[str, str] | None = None) -> dict[str, float]:
    """Join (or start) the cluster once per process; returns its resources ({"CPU": 2.0, "GPU": 8.0, ...})."""
    ray = require_ray("a Ray cluster (sampling.backend=ray, launcher=ray)")
    if not ray.is_initialized():
        ray.init(
            address=address,
            runtime_env={"env_vars": worker_env(extra_env)},
            include_dashboard=False,
            log_to_driver=True,
        )
    resources = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    log.info(
        "ray cluster: %d node(s), %g CPU, %g GPU (address=%s)",
        nodes,
        resources.get("CPU", 0),
        resources.get("GPU", 0),
        address,
    )
    return resources


def require_ray(what: str) -> Any:
    """`import ray`, or an error saying which setting needs it and how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            f"{what} needs Ray, which is not installed here: bash scripts/bootstrap.sh installs the pinned "
            "ray[data,train] of requirements.txt"
        ) from e
    return ray
