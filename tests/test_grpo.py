"""grpo on the tiny model, on CPU: reward functions on hand-made completions, the batch arithmetic check, bad
input caught before a model loads, a short run from an SFT'd model that raises the verifier reward,
vLLM-colocate generation (with its CPU weight-sync patch), LoRA + reasoning-gym prompts, RLinf's
importance-ratio early stop, resume after SIGKILL."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from core.artifacts import read_manifest
from core.chat import ChatRenderer
from core.config import CONF_DIR, compose, to_typed
from core.training import TrlArgsError
from grpo import stage
from grpo.config import GRPOStageConfig
from grpo.data import PromptsError, identify, prepare
from grpo.rewards import (
    REASONING_GYM,
    accuracy,
    build_reward_functions,
    format_reward,
    overlong_penalty,
)
from tests.conftest import kill_at_checkpoint_then_rerun, offline_env

REPO = CONF_DIR.parent

GOOD = "<think>12+7=19.</think> The answer is \\boxed{19}."
WRONG = "<think>12+7=18.</think> The answer is \\boxed{18}."


def as_message(text: str) -> list[dict[str, str]]:
    """A completion as TRL hands conversational completions to reward functions."""
    return [{"role": "assistant", "content": text}]


# ------------------------------------------------------------------------------------------ rewards


def test_accuracy_reward_scores_correct_wrong_and_unjudgeable():
    completions = [
        as_message(GOOD),
        as_message(WRONG),
        as_message("<think>12+7=19."),  # never closed its reasoning: no answer
        as_message(GOOD),  # gold "proof": nothing to check against
        GOOD,  # a plain-text completion
    ]
    answers = ["19", "19", "19", "proof", "19"]
    assert accuracy(completions, answers) == [1.0, 0.0, 0.0, None, 1.0]
    assert accuracy(completions, answers, correct=5.0, wrong=-5.0) == [5.0, -5.0, -5.0, None, 5.0]


def test_format_reward_wants_closed_reasoning_and_one_box():
    texts = [GOOD, "The answer is \\boxed{19}.", "<think>x</think> \\boxed{1} or \\boxed{2}", "<think>12+7="]
    assert format_reward([as_message(t) for t in texts]) == [1.0, 0.0, 0.0, 0.0]
    assert format_reward([as_message(texts[1])], require_think=False) == [1.0]


def test_overlong_penalty_is_dapos_soft_punishment():
    lengths = [10, 48, 49, 56, 63, 64]  # max 64, buffer 16: free up to 48, then linear down to -1 at 64
    ids = [[1] * n for n in lengths]
    got = overlong_penalty(["x"] * len(ids), completion_ids=ids, max_completion_length=64, overlong_buffer=16)
    assert got == pytest.approx([0.0, 0.0, -1 / 16, -0.5, -15 / 16, -1.0])


def test_reward_functions_follow_the_config_order_with_their_weights():
    cfg = to_typed(
        compose("grpo", ["rewards.format=0.2", "rewards.overlong=0.5", "rewards.overlong_buffer=8"]),
        GRPOStageConfig,
    )
    functions, weights = build_reward_functions(cfg.rewards, 32, cfg.model, use_cpu=True)
    assert list(cfg.rewards.weights) == ["accuracy", "format", "overlong"] and weights == [1.0, 0.2, 0.5]
    long_ids = [[0] * 32]
    assert [f([as_message(WRONG)], answer=["19"], completion_ids=long_ids) for f in functions] == [
        [0.0],
        [1.0],
        [-1.0],
    ]


def test_reasoning_gym_rows_are_scored_by_the_package_scorer():
    pytest.importorskip("reasoning_gym")
    import reasoning_gym

    entry = reasoning_gym.create_dataset("chain_sum", size=1, seed=3, min_terms=2, max_terms=2)[0]
    gold = json.dumps(entry)
    right = f"<think>{entry['metadata']['expression']}</think> \\boxed{{{entry['answer']}}}"
    wrong = f"<think>...</think> \\boxed{{{int(entry['answer']) + 1}}}"
    completions = [as_message(right), as_message(wrong), as_message(GOOD)]
    sources = [REASONING_GYM, REASONING_GYM, "math"]
    assert accuracy(completions, [gold, gold, "19"], data_source=sources) == [1.0, 0.0, 1.0]


# ------------------------------------------------------------------------------------------ config


def grpo_args(*overrides: str, processes: int = 1):
    """The GRPOConfig the stage validates at its door, for `processes` launched processes (no model, no data)."""
    cfg = to_typed(compose("grpo", ["use_cpu=true", *overrides]), GRPOStageConfig)
    return stage.training_args(cfg, Path(cfg.output_dir), processes=processes)


def test_batch_arithmetic_is_trls_with_the_launched_process_count():
    """4 completions per device and 8 per group: one process holds half a group, two launched processes a
    whole one. TRL's own check decides, with the launched count (not the caller's WORLD_SIZE), in TRL's words
    prefixed with the section."""
    over = ("grpo.per_device_train_batch_size=4", "grpo.num_generations=8")
    with pytest.raises(TrlArgsError) as error:
        grpo_args(*over, processes=1)
    assert str(error.value) == (
        "grpo.grpo: trl.GRPOConfig refused its arguments with 1 process: generation_batch_size (4) must be "
        "divisible by num_generations (8)."
    )
    args = grpo_args(*over, processes=2)
    assert (args.world_size, args.generation_batch_size, args.steps_per_generation) == (2, 8, 1)
    assert not torch.distributed.is_initialized()  # validating set up no process group
    with pytest.raises(
        TrlArgsError, match=r"with 2 processes: generation_batch_size \(12\) must be divisible"
    ):
        grpo_args(
            "grpo.per_device_train_batch_size=3",
            "grpo.gradient_accumulation_steps=2",
            "grpo.num_generations=8",
            processes=2,
        )


SERVER = (
    "generation.backend=vllm",
    "generation.vllm_mode=server",
    "generation.vllm_server_base_url=http://10.0.0.7:8000",
    "generation.vllm_group_port=51300",
)


def test_vllm_server_mode_reaches_trl_with_its_batch_checks():
    """generation.vllm_mode=server is TRL's server mode (`trl vllm-serve` elsewhere), its URL and weight-sync
    port passed through; TRL's batch arithmetic holds for the training processes launched (the server's
    GPUs are not among them). Composed on a machine without a GPU, as the pipeline's dry run does."""
    args = grpo_args(*SERVER, "grpo.per_device_train_batch_size=4", "grpo.num_generations=8", processes=2)
    assert (args.use_vllm, args.vllm_mode, args.vllm_server_base_url, args.vllm_group_port) == (
        True,
        "server",
        "http://10.0.0.7:8000",
        51300,
    )
    with pytest.raises(
        TrlArgsError, match=r"generation_batch_size \(4\) must be divisible by num_generations"
    ):
        grpo_args(*SERVER, "grpo.per_device_train_batch_size=4", "grpo.num_generations=8", processes=1)
    with pytest.raises(TrlArgsError, match=r"use generation\.vllm_mode"):
        grpo_args("grpo.vllm_mode=server")
    with pytest.raises(
        Exception, match=r"vllm_mode=server samples on a vLLM server: it needs generation\.backend=vllm"
    ):
        to_typed(
            compose("grpo", ["generation.backend=transformers", "generation.vllm_mode=server"]),
            GRPOStageConfig,
        )


def test_vllm_server_mode_needs_cuda_at_the_stages_door():
    cfg = to_typed(compose("grpo", ["use_cpu=true", *SERVER]), GRPOStageConfig)
    with pytest.raises(TrlArgsError, match=r"vllm_mode=server needs CUDA: TRL syncs the policy's weights"):
        stage.training_args(cfg, Path(cfg.output_dir))


@pytest.mark.gpu
@pytest.mark.vllm
@pytest.mark.slow
def test_grpo_trains_against_a_trl_vllm_serve_server(tmp_path, sft_model, one_step_data):
    """Two GPUs: `trl vllm-serve` on the second, GRPO on the first, weights synced every step."""
    import signal
    import socket
    import urllib.request

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs: one for the server, one for training")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("trl")), "vllm-serve", "--model", str(sft_model), "--port", str(port)],
        env={**offline_env(), "CUDA_VISIBLE_DEVICES": "1"}, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 600
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health/", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "trl vllm-serve did not start"
                time.sleep(2)
        base = [o for o in grpo_overrides(tmp_path, sft_model, one_step_data) if o != "use_cpu=true"]
        cmd = [sys.executable, "-m", "grpo", *base, "use_cpu=false",
               "generation.backend=vllm", "generation.vllm_mode=server",
               f"generation.vllm_server_base_url=http://127.0.0.1:{port}", "grpo.max_steps=2"]  # fmt: skip
        done = subprocess.run(cmd, cwd=REPO, env={**offline_env(), "CUDA_VISIBLE_DEVICES": "0"}, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        (manifest,) = tmp_path.rglob("grpo/manifest.json")
        assert read_manifest(manifest.parent).metrics["global_step"] == 2
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("grpo.loss_type=ppo", r"grpo\.grpo\.loss_type must be one of"),
        ("grpo.epsilon_high=0.1", "clip-higher widens the upper range"),
        ("grpo.num_generations=1", r"grpo\.grpo: trl\.GRPOConfig refused .*at least 2 generations"),
        (
            "grpo.num_generation=4",
            r"grpo\.grpo\.num_generation: not an argument of trl\.GRPOConfig.*num_generations",
        ),
        ("grpo.reward_weights=[1.0]", r"grpo\.grpo\.reward_weights: set by the stage.*rewards\.<name>"),
        ("grpo.vllm_gpu_memory_utilization=0.5", r"use generation\.vllm_gpu_memory_utilization"),
        ("rewards.overlong=1.0", r"overlong_buffer \(256\) exceeds grpo\.grpo\.max_completion_length \(64\)"),
    ],
)
def test_trl_section_rejects_bad_values_with_a_fix(override, message):
    with pytest.raises(ValueError, match=message):
        grpo_args(override)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rewards.accuracy=0", "every reward weight is 0"),
        ("data.prompts=null", "no prompts"),
        ("generation.backend=sglang", "generation.backend must be one of"),
        ("train.early_stop_imp_ratio=0.5", r"train\.early_stop_imp_ratio must be > 1"),
    ],
)
def test_config_rejects_bad_values_with_a_fix(override, message):
    with pytest.raises(Exception, match=message):
        to_typed(compose("grpo", [override]), GRPOStageConfig)


# ------------------------------------------------------------------------------------------ data and training

# SFT steps that leave the tiny model right on some one-step problems, not all (measured: sampled accuracy
# 0.19 after 150 steps, 0.30-0.38 after 200); GRPO steps, training prompts, log window, samples per prompt.
SFT_STEPS = 200
GRPO_STEPS, MAIN_PROMPTS, WINDOW, EVAL_SAMPLES = 40, 64, 10, 16


@pytest.fixture(scope="session")
def one_step_data(tmp_path_factory, tiny_model) -> Path:
    """data_process on one-operation problems with single-digit operands: a tiny model learns some of them
    within ~100 SFT steps, which leaves GRPO room to improve."""
    from data_process.config import DataProcessConfig
    from data_process.stage import run

    run_dir = tmp_path_factory.mktemp("grpo_data")
    overrides = [
        f"run_dir={run_dir}",
        f"model.path={tiny_model['policy']}",
        "progress=false",
        "synthetic.num_problems=1500",
        "synthetic.min_ops=1",
        "synthetic.max_ops=1",
        "synthetic.max_operand=9",
        "synthetic.story_prob=0",
        "sft_fraction=1.0",
    ]
    cfg = to_typed(compose("data_process", overrides), DataProcessConfig)
    run(cfg)
    return Path(cfg.output_dir)


@pytest.fixture(scope="session")
def sft_model(tmp_path_factory, tiny_model, one_step_data) -> Path:
    """The tiny model after SFT_STEPS full fine-tuning steps: right on some one-step problems, not on all."""
    from tests.conftest import sft_overrides
    from train_sft import stage as sft_stage
    from train_sft.config import SFTStageConfig

    run_dir = tmp_path_factory.mktemp("grpo_sft")
    overrides = [
        *sft_overrides(run_dir, tiny_model, one_step_data),
        "peft=full",
        f"sft.max_steps={SFT_STEPS}",
        "sft.learning_rate=3e-3",
        "sft.lr_scheduler_type=constant",
        "sft.warmup_steps=0",
        "sft.per_device_train_batch_size=32",
        "sft.save_steps=10000",
        "sft.logging_steps=25",
    ]
    cfg = to_typed(compose("train_sft", overrides), SFTStageConfig)
    sft_stage.run(cfg)
    return Path(cfg.output_dir) / "model"


def grpo_overrides(run_dir: Path, model: Path, data: Path) -> list[str]:
    return [
        f"run_dir={run_dir}",
        f"model.path={model}",
        f"data.prompts={data}",
        "grpo.report_to=[none]",
        "use_cpu=true",
    ]


@pytest.fixture
def grpo_cfg(tmp_path, tiny_model, one_step_data):
    """Factory: the stage's config on the untrained tiny policy (the mechanics need no SFT'd model)."""
    policy = Path(tiny_model["policy"])

    def make(*overrides: str) -> GRPOStageConfig:
        return to_typed(
            compose("grpo", [*grpo_overrides(tmp_path, policy, one_step_data), *overrides]), GRPOStageConfig
        )

    return make


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(stage, "build_trainer", refuse)


def test_bad_prompts_fail_before_model_load(grpo_cfg, tmp_path, no_model_load):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["Compute 1 + 1."], "split": ["train"]}), bad)
    with pytest.raises(PromptsError, match=r"missing column\(s\) \['answer'\]"):
        stage.run(grpo_cfg(f"data.prompts={bad}"))
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(PromptsError, match=r"without manifest\.json"):
        stage.run(grpo_cfg(f"data.prompts={tmp_path / 'unfinished'}"))
    with pytest.raises(PromptsError, match="cannot fill one generation batch of 64000"):
        stage.run(grpo_cfg("grpo.per_device_train_batch_size=64000"))
    with pytest.raises(FileNotFoundError, match="reward model"):
        stage.run(grpo_cfg("rewards.reward_model=1.0", f"rewards.reward_model_path={tmp_path / 'none'}"))


def test_prompts_from_a_stage_dir_or_file_drop_unjudgeable_and_overlong(grpo_cfg, tmp_path, one_step_data):
    from transformers import AutoTokenizer

    cfg = grpo_cfg()
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    renderer = ChatRenderer(tokenizer, cfg.model.instruction_suffix)
    from_dir = prepare(cfg.data, renderer, 512, 0)
    assert (
        set(identify(cfg).inputs) == {"model", "prompts"} and from_dir.stats["dropped_unjudgeable_gold"] == 0
    )
    train_rows = pq.read_table(one_step_data / "prompts.parquet").filter(pa.compute.field("split") == "train")
    assert from_dir.stats["prompts"] == train_rows.num_rows
    example = from_dir.examples[0]
    assert example["prompt"] == renderer.prompt(example["question"])  # the native generation prompt, as text
    assert example["prompt"].endswith(cfg.model.instruction_suffix + "<|im_end|>\n<|im_start|>assistant\n")
    assert example["data_source"] == "math"
    rows = [
        {"id": "a", "prompt": "Compute 1 + 1.", "answer": "2", "split": "train"},
        {"id": "b", "prompt": "Prove it.", "answer": "proof", "split": "train"},
        {"id": "c", "prompt": "Compute " + " + ".join(["1"] * 200) + ".", "answer": "200", "split": "train"},
        {"id": "d", "prompt": "Compute 2 + 2.", "answer": "4", "split": "test"},
    ]
    file = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(rows), file)
    cfg = grpo_cfg(f"data.prompts={file}")
    prepared = prepare(cfg.data, renderer, 128, 0)
    assert [e["id"] for e in prepared.examples] == ["a"]
    assert prepared.stats["dropped_unjudgeable_gold"] == 1 and prepared.stats["dropped_overlength"] == 1


def log_history(cfg: GRPOStageConfig) -> list[dict]:
    return json.loads((Path(cfg.output_dir) / "logs" / "log_history.json").read_text())


def window_means(history: list[dict], key: str, window: int) -> tuple[list[float], list[float]]:
    values = [h[key] for h in history if key in h]
    return values[:window], values[-window:]


@pytest.fixture(scope="module")
def main_run(tmp_path_factory, sft_model, one_step_data):
    """The reward-rise run: GRPO_STEPS steps of 8 prompts x 8 completions, transformers generation."""
    run_dir = tmp_path_factory.mktemp("grpo_main")
    overrides = [
        *grpo_overrides(run_dir, sft_model, one_step_data),
        "generation.backend=transformers",
        f"grpo.max_steps={GRPO_STEPS}",
        f"grpo.save_steps={GRPO_STEPS + 1}",
        f"data.sample_prompts={MAIN_PROMPTS}",
        "rewards.format=0.1",
    ]
    cfg = to_typed(compose("grpo", overrides), GRPOStageConfig)
    return cfg, stage.run(cfg)


def sampled_accuracy(model_dir: Path, examples: list[dict], n: int) -> list[float]:
    """Per prompt, the share of n samples (temperature 1, no top-k: the training distribution) verified correct."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.verifier import verify_batch

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    texts = [e["prompt"] for e in examples]  # already the rendered generation prompt
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(
            **batch,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=64,
            num_return_sequences=n,
        )
    completions = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    verdicts = verify_batch(completions, [e["answer"] for e in examples for _ in range(n)])
    return [sum(bool(v) for v in verdicts[i * n : (i + 1) * n]) / n for i in range(len(examples))]


@pytest.mark.slow
def test_grpo_raises_the_verifier_reward(main_run, sft_model):
    """Paired before/after: the SFT model and the GRPO model each sample 16 completions for each of the 64
    training prompts; the mean per-prompt gain in verified accuracy must exceed 3 standard errors of the
    mean (one-sided z-test over 64 prompts, p < 0.0015). Prompts differ a lot in difficulty, which is why
    the comparison is paired by prompt. The training log must agree: the last WINDOW steps' mean verifier
    reward (WINDOW x 64 completions) above the first WINDOW steps'."""
    from core.models import chat_renderer, load_tokenizer

    cfg, manifest = main_run
    tokenizer = load_tokenizer(cfg.model)
    prepared = prepare(
        cfg.data, chat_renderer(cfg.model, tokenizer), cfg.train.max_prompt_length, cfg.grpo["seed"]
    )
    before = sampled_accuracy(sft_model, prepared.examples, EVAL_SAMPLES)
    after = sampled_accuracy(Path(cfg.output_dir) / "model", prepared.examples, EVAL_SAMPLES)
    assert 0.05 < statistics.mean(before) < 0.8, (
        f"the SFT'd model should solve some problems, not all: {before}"
    )
    gains = [a - b for a, b in zip(after, before, strict=True)]
    stderr = statistics.stdev(gains) / math.sqrt(len(gains))
    assert statistics.mean(gains) > 3 * stderr, (statistics.mean(before), statistics.mean(after), stderr)
    first, last = window_means(log_history(cfg), "rewards/accuracy/mean", WINDOW)
    assert statistics.mean(last) > statistics.mean(first), (first, last)
    assert manifest.metrics["global_step"] == GRPO_STEPS


@pytest.mark.slow
def test_run_logs_rewards_per_function_and_the_rl_diagnostics(main_run):
    cfg, manifest = main_run
    history = log_history(cfg)
    steps = [h for h in history if "reward" in h]
    assert len(steps) == GRPO_STEPS
    for key in ("rewards/accuracy/mean", "rewards/format/mean", "reward_std", "completions/mean_length"):
        assert all(key in h for h in steps), key
    for key in ("entropy", "clip_ratio/region_mean", "clip_ratio/high_mean", "step_time"):
        assert all(key in h for h in steps), key
    # The weights reach TRL: with no None verdicts the logged reward is the weighted sum of the functions.
    for h in steps:
        assert h["reward"] == pytest.approx(
            h["rewards/accuracy/mean"] + 0.1 * h["rewards/format/mean"], abs=1e-5
        )
    assert manifest.metrics["reward_functions"] == {"accuracy": 1.0, "format": pytest.approx(0.1)}
    assert set(manifest.metrics["curves"]) >= {"rewards/accuracy/mean", "reward", "entropy"}


@pytest.mark.slow
def test_saved_model_files_and_manifest(main_run, sft_model):
    cfg, manifest = main_run
    out = Path(cfg.output_dir)
    assert {p.name for p in (out / "model").iterdir()} == {
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "train_config.yaml",
    }
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "logs", "manifest.json", "model"]
    assert {k.split("/")[0] for k in manifest.outputs} == {"logs", "model"}
    before, after = (
        load_file(str(sft_model / "model.safetensors")),
        load_file(str(out / "model" / "model.safetensors")),
    )
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # The tokenizer is saved as it came (TRL pads prompts left per call; the next SFT round pads right).
    assert (out / "model" / "tokenizer_config.json").read_text() == (
        sft_model / "tokenizer_config.json"
    ).read_text()
    assert (
        manifest.metrics["backend"] == "transformers" and manifest.metrics["data"]["prompts"] == MAIN_PROMPTS
    )
    assert stage.run(cfg).finished_at == manifest.finished_at  # same config and inputs: skipped


@pytest.mark.slow
def test_lora_run_on_reasoning_gym_prompts_with_every_reward(grpo_cfg, tiny_model):
    """reasoning-gym prompts, all four reward functions (the reward model is TRL-scored), LoRA merged."""
    pytest.importorskip("reasoning_gym")
    cfg = grpo_cfg(
        "data.prompts=null",
        "data.reasoning_gym=[{name: chain_sum, size: 16, config: {min_terms: 2, max_terms: 2, max_digits: 1}}]",
        "generation.backend=transformers",
        "peft=lora",
        "peft.r=4",
        "grpo.max_steps=2",
        "grpo.per_device_train_batch_size=16",
        "grpo.num_generations=4",
        "rewards.format=0.5",
        "rewards.overlong=1.0",
        "rewards.overlong_buffer=16",
        "rewards.reward_model=0.5",
        f"rewards.reward_model_path={tiny_model['reward_model']}",
    )
    manifest = stage.run(cfg)
    out = Path(cfg.output_dir)
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert manifest.metrics["data"]["by_data_source"] == {REASONING_GYM: 16}
    weights = {"accuracy": 1.0, "format": 0.5, "overlong": 1.0, "reward_model": 0.5}
    assert manifest.metrics["reward_functions"] == weights
    for h in [h for h in log_history(cfg) if "reward" in h]:
        assert h["reward"] == pytest.approx(
            sum(w * h[f"rewards/{n}/mean"] for n, w in weights.items()), abs=1e-5
        )
    before = load_file(str(Path(tiny_model["policy"]) / "model.safetensors"))
    merged = load_file(str(out / "model" / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], merged[k])}
    assert changed and all("proj" in k for k in changed)  # only the adapted projections moved


@pytest.mark.parametrize(("bound", "abandoned"), [(2.0, True), (5.0, False)])
def test_early_stop_abandons_micro_batches_whose_importance_ratio_exceeds_the_bound(
    grpo_cfg, tmp_path, bound, abandoned
):
    """pi_old is made stale by exactly 1 nat per token, so the mean importance ratio starts at e = 2.72: over a
    bound of 2 every micro-batch is abandoned (zero loss: Adam leaves the weights exactly as they were), under
    a bound of 5 none is."""
    from core.models import chat_renderer, load_tokenizer

    cfg = grpo_cfg(
        "grpo.max_steps=2",
        "grpo.num_iterations=2",
        "grpo.per_device_train_batch_size=16",
        "grpo.num_generations=4",
        f"train.early_stop_imp_ratio={bound}",
    )
    tokenizer = load_tokenizer(cfg.model)
    prepared = prepare(cfg.data, chat_renderer(cfg.model, tokenizer), 128, 0)
    trainer = stage.build_trainer(cfg, tokenizer, prepared, tmp_path / "out", "transformers")
    generate = trainer._generate_and_score_completions

    def stale_old_logps(inputs):
        batch = generate(inputs)
        batch["old_per_token_logps"] = batch["old_per_token_logps"] - 1.0
        return batch

    trainer._generate_and_score_completions = stale_old_logps
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    logged = [h for h in trainer.state.log_history if "early_stop/skipped" in h]
    assert len(logged) == 2
    assert logged[0]["early_stop/importance_ratio"] == pytest.approx(math.e, rel=1e-3)  # before any update
    assert all((h["early_stop/importance_ratio"] > bound) == abandoned for h in logged)
    assert all(h["early_stop/skipped"] == float(abandoned) for h in logged)
    unchanged = all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert unchanged == abandoned


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_colocate_generation_on_cpu_follows_the_trained_weights(tmp_path, tiny_model, one_step_data):
    """vLLM samples in the training process; after each optimizer step the trainer pushes its weights into
    the engine (which fails on the CPU without grpo/vllm_cpu.py). Had the push not reached vLLM's matmuls,
    its log-probs would drift from the trainer's as the weights move: they must stay close."""
    cmd = [
        sys.executable,
        "-m",
        "grpo",
        *grpo_overrides(tmp_path, Path(tiny_model["policy"]), one_step_data),
        "generation.backend=vllm",
        "grpo.max_steps=4",
        "grpo.learning_rate=2e-3",
    ]
    done = subprocess.run(cmd, cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "round_0" / "grpo"
    history = json.loads((out / "logs" / "log_history.json").read_text())
    key = "sampling/sampling_logp_difference/mean"
    diffs = [h[key] for h in history if key in h]
    assert read_manifest(out).metrics["backend"] == "vllm" and len(diffs) == 4
    assert max(diffs) < 0.05, diffs


@pytest.mark.slow
def test_resume_after_sigkill_continues_to_the_same_step_count(tmp_path, tiny_model, one_step_data):
    cmd = [
        sys.executable,
        "-m",
        "grpo",
        *grpo_overrides(tmp_path, Path(tiny_model["policy"]), one_step_data),
        "generation.backend=transformers",
        "grpo.max_steps=8",
        "grpo.save_steps=2",
        "grpo.per_device_train_batch_size=16",
        "grpo.num_generations=4",
    ]
    out = tmp_path / "round_0" / "grpo"
    done = kill_at_checkpoint_then_rerun(cmd, out / "checkpoints" / "checkpoint-4", out / "manifest.json")
    m = read_manifest(out).metrics
    resumed_at = int(m["resumed_from"].rsplit("-", 1)[1])
    assert resumed_at >= 4 and m["global_step"] == 8
    assert [s for s, _ in m["curves"]["reward"]["curve"]] == list(range(1, 9))  # one continuous curve
    assert re.search(rf"\b{resumed_at + 1}/8\b", done.stderr) and not re.search(r"\b1/8\b", done.stderr)


def test_reward_model_reward_scores_the_whole_trace_as_the_reward_model_trained(tmp_path, family_models):
    """On R1-Distill: GRPO's completions start after the prefilled <think>\\n; the reward model must score
    prompt + prefill + completion + end of turn, reasoning kept (TRL's own re-render would strip it), the
    same ids and scores as reward_model.score gives the stored trace."""
    import shutil

    from transformers import AutoModelForSequenceClassification

    from core.config import ModelConfig
    from core.models import chat_renderer, load_tokenizer
    from grpo.rewards import RewardModelReward
    from reward_model.data import SequenceEncoder
    from reward_model.score import score_ids
    from tests.conftest import family_model_config

    rm_dir = tmp_path / "rm"
    shutil.copytree(family_models["r1"], rm_dir)
    AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1).save_pretrained(rm_dir)
    policy = family_model_config(family_models, "r1")
    reward = RewardModelReward(str(rm_dir), policy, max_length=512, use_cpu=True)
    question, generated = "Compute 2 + 3.", "2 + 3 = 5.\n</think>\n\n\\boxed{5}"
    scores = reward([generated, "</think>\\boxed{6}"], question=[question] * 2, prefill=["<think>\n"] * 2)
    tokenizer = load_tokenizer(ModelConfig(path=str(rm_dir)))
    renderer = chat_renderer(policy, tokenizer)
    (ids,), _ = SequenceEncoder(renderer, 512, "middle", 1).encode([question], ["<think>\n" + generated])
    assert tokenizer.decode(ids) == renderer.prompt(question) + generated + "<｜end▁of▁sentence｜>"
    assert "2 + 3 = 5." in tokenizer.decode(ids)  # the reasoning the R1 template would strip
    alone = score_ids(reward.model, [ids], tokenizer.pad_token_id, 10**6, "cpu")[0]
    assert scores[0] == pytest.approx(alone, abs=1e-5) and scores[0] != pytest.approx(scores[1], abs=1e-6)
