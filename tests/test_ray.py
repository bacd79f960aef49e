"""Ray: sample.py's chunks on a pool of engine actors (sampling.backend=ray) and the training stages as Ray
Train jobs (launcher=ray), on a real local Ray cluster started by `ray start --head` as a user would (one
per test session, 2 CPUs, no dashboard), every command given its address."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from core.config import CONF_DIR
from core.ray_train import RayTrainConfig, accelerate_env, scaling
from core.stages import stage
from reject_sampling.config import RaySamplingConfig, SamplingConfig
from reject_sampling.ray_sampling import pool_size
from tests.conftest import offline_env, sft_overrides
from tests.kill import kill_after_first_part
from tests.test_sample import sample_cfg, sample_cmd, write_prompts

REPO = CONF_DIR.parent
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory) -> str:
    """A local cluster of 2 CPUs; its address, which the tests' commands are given."""
    temp = Path("/tmp") / f"ray-{os.getpid()}"  # Ray's socket paths must stay short: not under pytest's tmp
    port = free_port()
    env = {**offline_env(), "RAY_USAGE_STATS_ENABLED": "0"}
    started = subprocess.run(
        [RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
         f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    yield f"127.0.0.1:{port}"
    subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
    shutil.rmtree(temp, ignore_errors=True)


def test_the_pool_and_the_workers_fit_the_cluster():
    cpu = {"CPU": 8.0}
    gpu = {"CPU": 64.0, "GPU": 16.0}
    sampling = SamplingConfig(backend="ray", tensor_parallel_size=2)
    assert pool_size(sampling, gpu, chunks=100) == (8, 1, 2.0)  # one engine per tensor-parallel pair of GPUs
    assert pool_size(sampling, cpu, chunks=100) == (8, 1, 0.0)
    assert pool_size(sampling, cpu, chunks=3) == (3, 1, 0.0)  # no engine without a chunk to do
    two_cpus = SamplingConfig(backend="ray", ray=RaySamplingConfig(cpus_per_engine=2))
    assert pool_size(two_cpus, cpu, chunks=100) == (4, 2, 0.0)
    with pytest.raises(ValueError, match="holds no engine of 16 CPU"):
        pool_size(SamplingConfig(backend="ray", ray=RaySamplingConfig(cpus_per_engine=16)), cpu, chunks=4)
    with pytest.raises(ValueError, match=r"sampling\.ray\.engine must be one of"):
        RaySamplingConfig(engine="ray")
    assert scaling(RayTrainConfig(), gpu) == (16, True)
    assert scaling(RayTrainConfig(), cpu) == (8, False)
    assert scaling(RayTrainConfig(num_workers=2, cpus_per_worker=4), cpu) == (2, False)


def test_an_accelerate_config_becomes_the_workers_deepspeed_environment():
    zero3 = accelerate_env(str(CONF_DIR / "accelerate" / "deepspeed_zero3_cpu.yaml"))
    assert zero3["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert zero3["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    assert not {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"} & set(zero3)
    assert accelerate_env(None) == {}


@pytest.fixture(scope="module")
def policy(tiny_model) -> str:
    return tiny_model["policy"]


@pytest.mark.slow
def test_ray_sampling_equals_the_local_backend_and_resumes_after_sigkill(tmp_path, policy, ray_cluster):
    """Two transformers engines on the cluster draw exactly the local backend's samples (same chunks, same
    seeds), and a run killed after its first chunk resumes to the same file."""
    prompts = write_prompts(tmp_path / "p.parquet", 24)
    settings = ["sampling.n=2", "chunk_prompts=3", "sampling.transformers_batch_size=2"]
    ray = [
        "sampling.backend=ray",
        "sampling.ray.engine=transformers",
        "sampling.ray.num_engines=2",
        f"sampling.ray.address={ray_cluster}",
    ]
    output = tmp_path / "ray" / "samples.parquet"
    cmd = sample_cmd(policy, prompts, output, *settings, *ray)
    done_before = kill_after_first_part(cmd, output, timeout=180)
    assert 1 <= done_before < 8
    resumed = subprocess.run(cmd, cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming: {done_before} of 8 chunks done" in resumed.stdout
    assert "ray sampling: " in resumed.stdout + resumed.stderr and "on 2 transformers engine(s)" in (
        resumed.stdout + resumed.stderr
    )
    local = sample_cfg(tmp_path, policy, prompts, *settings, f"output={tmp_path}/local.parquet")
    from reject_sampling.sample import run

    torch.set_num_threads(1)
    assert pq.read_table(output).equals(pq.read_table(run(local)))


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.long  # two vLLM engine starts; the transformers engines' test covers the pool in CI
def test_ray_sampling_with_vllm_engines_equals_local_vllm(tmp_path, policy, ray_cluster):
    prompts = write_prompts(tmp_path / "p.parquet", 8)
    settings = ["sampling.n=2", "chunk_prompts=4", "sampling.max_new_tokens=24"]
    tables = {}
    for name, extra in {
        "local": ["sampling.backend=vllm"],
        "ray": [
            "sampling.backend=ray",
            "sampling.ray.engine=vllm",
            "sampling.ray.num_engines=2",
            f"sampling.ray.address={ray_cluster}",
        ],
    }.items():
        output = tmp_path / name / "samples.parquet"
        done = subprocess.run(
            sample_cmd(policy, prompts, output, *settings, *extra),
            cwd=REPO, env=offline_env(), capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        tables[name] = pq.read_table(output)
    assert tables["ray"].equals(tables["local"])


@pytest.mark.slow
def test_ray_train_two_workers_save_the_model_of_the_local_two_process_run(
    tmp_path, tiny_model, sft_data, two_process_sft, ray_cluster
):
    ray_train = [sys.executable, "-m", "core.ray_train", f"--address={ray_cluster}", "--num-workers=2", "--"]
    cmd = [*ray_train, "train_sft", *sft_overrides(tmp_path, tiny_model, sft_data), "sft.max_steps=4"]
    done = subprocess.run(cmd, cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ray_out = tmp_path / "round_0" / "sft"
    local_out = two_process_sft  # the same overrides under accelerate launch with 2 processes
    from core.artifacts import read_manifest

    ray_metrics, local_metrics = read_manifest(ray_out).metrics, read_manifest(local_out).metrics
    assert ray_metrics["processes"] == local_metrics["processes"] == 2
    assert ray_metrics["global_step"] == 4
    assert ray_metrics["loss"]["curve"] == local_metrics["loss"]["curve"]
    ray_weights = load_file(ray_out / "model" / "model.safetensors")
    local_weights = load_file(local_out / "model" / "model.safetensors")
    assert ray_weights.keys() == local_weights.keys()
    for name, tensor in ray_weights.items():
        torch.testing.assert_close(tensor, local_weights[name], rtol=0, atol=0, msg=name)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(ray_out / "model")


def test_the_ray_preset_launches_training_on_ray_and_samples_on_its_engines(tmp_path):
    from pipeline.run import compose_all, launched, plan
    from tests.test_pipeline import gpu_preset, pipeline_cfg

    cfg = pipeline_cfg(*gpu_preset("qwen2.5-7b_ray_cluster", tmp_path))
    steps = plan(cfg)
    compose_all(steps)
    assert cfg.launcher == "ray" and cfg.ray_train.address == "auto"
    assert cfg.accelerate_config == "conf/accelerate/deepspeed_zero3.yaml"
    trained = [s.name for s in steps if launched(cfg, stage(s.stage))]
    assert trained == ["round_0/sft", "round_0/reward_model", "round_1/sft", "round_1/sft_control",
                       "round_1/reward_model", "round_1/grpo"]  # fmt: skip
    sampled = [s for s in steps if s.stage in ("reject_sampling", "evaluate")]
    assert {
        (s.cfg.sampling.backend, s.cfg.sampling.ray.engine, s.cfg.sampling.ray.address) for s in sampled
    } == {("ray", "vllm", "auto")}


def small_ray_pipeline(address: str, model: str) -> list[str]:
    """The offline default cut to one round of a few steps (data, SFT, reward model, GRPO and the evaluations
    of both models: one round has no rejection-sampling step, whose sampling is the evaluations' code) on the
    cluster at `address`: the training stages as 2-worker Ray Train jobs, every sampling pass on 2
    transformers engines."""
    sampling = ["sampling.backend=ray", "sampling.ray.engine=transformers", f"sampling.ray.address={address}"]
    return [
        "rounds=1",
        "build_tiny_model=false",
        f"model_path={model}",
        "report=false",
        "launcher=ray",
        f"ray_train.address={address}",
        "ray_train.num_workers=2",
        "data_process.synthetic.num_problems=300",
        "data_process.sft_fraction=0.3",
        "train_sft.sft.max_steps=4",
        "train_sft.sft.per_device_train_batch_size=8",
        "reward_model.rm.max_steps=2",
        "reward_model.rm.per_device_train_batch_size=4",
        "evaluate.prompts.max_prompts=8",
        "evaluate.sampling.n=2",
        "evaluate.sampling.max_new_tokens=24",
        "evaluate.greedy=false",
        "evaluate.chunk_prompts=4",
        *[f"evaluate.{s}" for s in sampling],
        "grpo.grpo.max_steps=2",
        "grpo.grpo.per_device_train_batch_size=8",
        "grpo.generation.backend=transformers",
    ]


@pytest.mark.slow
@pytest.mark.long  # ~5 minutes alone on 2 cores: RUN_LONG=1 bash scripts/test.sh tests/test_ray.py
def test_the_pipeline_runs_end_to_end_on_a_ray_cluster(tmp_path, tiny_model, ray_cluster):
    from core.artifacts import read_manifest

    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        f"run_dir={run_dir}",
        *small_ray_pipeline(ray_cluster, tiny_model["policy"]),
    ]
    done = subprocess.run(cmd, cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    status = json.loads((run_dir / "pipeline.json").read_text())
    names = [s["name"] for s in status["steps"]]
    assert names == [
        "data",
        "round_0/sft",
        "round_0/reward_model",
        "eval/round_0_sft",
        "round_0/grpo",
        "eval/grpo",
    ]
    assert all(s["status"] == "done" for s in status["steps"])
    logs = run_dir / "logs" / "pipeline"
    for name in ("round_0/sft", "round_0/reward_model", "round_0/grpo"):
        assert read_manifest(run_dir / name).metrics["processes"] == 2, name
        assert "ray train: " in (logs / f"{name.replace('/', '.')}.log").read_text()
    for name in ("eval/round_0_sft", "eval/grpo"):
        sample_logs = "".join(p.read_text() for p in (run_dir / name / "logs").glob("*.log"))
        assert "on 2 transformers engine(s)" in sample_logs, name
    samples = pq.read_table(run_dir / "eval" / "grpo" / "samples.parquet")
    assert samples.num_rows == 8 * 2
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run_dir / "round_0" / "grpo" / "model")
