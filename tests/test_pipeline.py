"""The pipeline: the rounds plan, up-front config validation, presets, sweeps, the report, and a small
version of the default run end to end."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache, reduce
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from core.artifacts import Manifest, write_manifest
from core.config import CONF_DIR, compose, to_typed
from core.layout import RunLayout
from core.stages import STAGES
from pipeline.config import SECTIONS, PipelineConfig, command_line_overrides
from pipeline.report import collect
from pipeline.run import Step, batches, compose_all, last_wins, override_key, plan, settings
from tests.conftest import offline_env

REPO = CONF_DIR.parent
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def pipeline_cfg(*overrides: str) -> PipelineConfig:
    """Composed as `python -m pipeline <overrides>` composes it (section overrides kept apart)."""
    return to_typed(compose("pipeline", command_line_overrides(list(overrides))), PipelineConfig)


def gpu_preset(name: str, tmp_path: Path) -> list[str]:
    """A GPU preset's command line: composing needs only existing local paths."""
    return [f"experiment={name}", f"run_dir={tmp_path}", f"model_path={tmp_path}", f"input_dir={tmp_path}"]


def plan_names(cfg: PipelineConfig) -> list[str]:
    return [s.name for s in plan(cfg)]


def test_plan_runs_rounds_controls_grpo_and_evaluations_in_order():
    names = plan_names(pipeline_cfg("rounds=2", "last_round_sampling=true"))
    assert names == [
        "tiny_model",
        "data",
        "round_0/sft",
        "round_0/reward_model",
        "eval/round_0_sft",
        "round_0/reject_sampling",
        "round_1/sft",
        "round_1/sft_control",
        "round_1/reward_model",
        "eval/round_1_sft",
        "eval/round_1_control",
        "round_1/reject_sampling",
        "round_1/grpo",
        "eval/grpo",
    ]
    # Without the last round's sampling (the offline default), only that step goes.
    assert plan_names(pipeline_cfg("rounds=2")) == [n for n in names if n != "round_1/reject_sampling"]
    names = plan_names(
        pipeline_cfg("rounds=1", "run_grpo=false", "use_reward_model=false", "last_round_sampling=true")
    )
    assert names == ["tiny_model", "data", "round_0/sft", "eval/round_0_sft", "round_0/reject_sampling"]


def test_benchmarks_evaluate_round_0_the_last_round_and_grpo_at_the_end(tmp_path):
    assert not [n for n in plan_names(pipeline_cfg()) if n.startswith("bench/")]  # off by default
    cfg = pipeline_cfg(f"run_dir={tmp_path}", "eval_benchmarks=[math500,aime24]")
    names = plan_names(cfg)
    models = ["round_0_sft", "round_1_sft", "grpo"]
    assert names[-6:] == [f"bench/{m}/{b}" for m in models for b in ("math500", "aime24")]
    assert names[:-6] == plan_names(pipeline_cfg(f"run_dir={tmp_path}"))  # nothing else moves
    step = plan(cfg)[-1]
    assert step.stage == "evaluate"
    assert {"benchmark=aime24", "name=grpo_aime24", "model.name=grpo"} <= set(step.overrides)
    assert f"model.path={tmp_path}/round_1/grpo/model" in step.overrides
    assert f"output_dir={tmp_path}/bench/grpo/aime24" in step.overrides  # a step's name is its directory
    # One round: round 0 is the last round (benchmarked once); no GRPO, no GRPO model; the base model on demand.
    one = plan_names(pipeline_cfg("rounds=1", "eval_benchmarks=[math500]"))
    assert [n for n in one if n.startswith("bench/")] == ["bench/round_0_sft/math500", "bench/grpo/math500"]
    assert [
        n for n in plan_names(pipeline_cfg("run_grpo=false", "eval_benchmarks=[math500]")) if "bench/" in n
    ] == [
        "bench/round_0_sft/math500",
        "bench/round_1_sft/math500",
    ]
    with_base = plan(
        pipeline_cfg("model_path=/models/b", "benchmark_base_model=true", "eval_benchmarks=[aime24]")
    )
    base = next(s for s in with_base if s.name == "bench/base/aime24")
    assert "model.path=/models/b" in base.overrides


def test_benchmarks_take_their_own_section_not_the_held_out_evaluations():
    """A held-out evaluation's prompt cap or short token limit (the offline preset's 64 tokens) is not a
    benchmark's protocol: benchmark steps get `common` and `benchmarks`, held-out ones `common` and `evaluate`."""
    cfg = pipeline_cfg(
        "eval_benchmarks=[math500]",
        "evaluate.prompts.max_prompts=7",
        "benchmarks.sampling.n=3",
        "common.model.dtype=float16",
    )
    by_name = {s.name: s.overrides for s in plan(cfg)}
    bench, held_out = by_name["bench/grpo/math500"], by_name["eval/grpo"]
    assert "sampling.n=3" in bench and "prompts.max_prompts=7" not in bench and "model.dtype=float16" in bench
    assert "prompts.max_prompts=7" in held_out and "sampling.n=3" not in held_out
    assert "sampling.max_new_tokens=64" in held_out and "sampling.max_new_tokens=64" not in bench


def test_published_as_must_name_an_entry_of_the_table():
    assert (
        pipeline_cfg("published_as=DeepSeek-R1-Distill-Qwen-7B").published_as == "DeepSeek-R1-Distill-Qwen-7B"
    )
    with pytest.raises(ValueError, match=r"published_as=Qwen2.5-7B: not in published.yaml.*OpenR1-Qwen-7B"):
        pipeline_cfg("published_as=Qwen2.5-7B")
    with pytest.raises(ValueError, match="twice"):
        pipeline_cfg("eval_benchmarks=[math500,math500]")


def test_pipeline_json_records_published_as_for_the_report(tmp_path, monkeypatch):
    from pipeline.run import run

    monkeypatch.setattr("pipeline.run.run_stage_process", lambda *args, **kwargs: None)
    run(pipeline_cfg(f"run_dir={tmp_path}", "until=data", "published_as=DeepSeek-R1-Distill-Qwen-1.5B"))
    status = json.loads((tmp_path / "pipeline.json").read_text())
    assert status["published_as"] == "DeepSeek-R1-Distill-Qwen-1.5B"
    assert collect(tmp_path)["published"]["pass@1"] == {"math500": 83.9, "aime24": 28.9}


def test_only_a_round_and_its_control_run_side_by_side():
    steps = plan(pipeline_cfg("rounds=3"))
    together = [[steps[i].name for i in b] for b in batches(steps, side_by_side=True) if len(b) > 1]
    assert together == [
        ["round_1/sft", "round_1/sft_control"],
        ["eval/round_1_sft", "eval/round_1_control"],
        ["round_2/sft", "round_2/sft_control"],
        ["eval/round_2_sft", "eval/round_2_control"],
    ]
    assert all(len(b) == 1 for b in batches(steps, side_by_side=False))
    assert all(
        len(b) == 1 for b in batches(plan(pipeline_cfg("rounds=3", "control=false")), side_by_side=True)
    )


def test_later_rounds_continue_from_the_previous_model_beside_a_matched_control(tmp_path):
    steps = plan(
        pipeline_cfg(
            f"run_dir={tmp_path}",
            "rounds=2",
            "next_round_steps=77",
            "mix_original=0.5",
            "last_round_sampling=true",
        )
    )
    compose_all(steps)
    by_name = {s.name: s.cfg for s in steps}
    sft, control = by_name["round_1/sft"], by_name["round_1/sft_control"]
    assert sft.model.path == control.model.path == f"{tmp_path}/round_0/sft/model"
    assert sft.sft["max_steps"] == control.sft["max_steps"] == 77
    assert [(d.path, d.weight) for d in sft.data] == [
        (f"{tmp_path}/data", 0.5),
        (f"{tmp_path}/round_0/reject_sampling", 1.0),
    ]
    assert [d.path for d in control.data] == [f"{tmp_path}/data"]
    assert (
        control.output_dir == f"{tmp_path}/round_1/sft_control"
        and sft.output_dir == f"{tmp_path}/round_1/sft"
    )
    assert by_name["round_0/sft"].model.path == f"{tmp_path}/tiny_model/policy"
    assert by_name["round_1/reward_model"].pairs == f"{tmp_path}/data"
    assert by_name["round_1/reward_model"].extra_pairs == [f"{tmp_path}/round_0/reject_sampling"]
    assert by_name["round_1/reject_sampling"].model.path == f"{tmp_path}/round_1/sft/model"
    assert by_name["round_1/grpo"].model.path == f"{tmp_path}/round_1/sft/model"
    rs = by_name["round_1/reject_sampling"]
    assert rs.reward_model.path == f"{tmp_path}/round_1/reward_model/model"
    ev = by_name["eval/round_1_control"]
    assert ev.model.path == f"{tmp_path}/round_1/sft_control/model" and ev.use_reward_model
    # Each evaluation names the model it scores (metrics.json's `policy`), not the config's default.
    assert ev.model.name == "round_1_control" and by_name["eval/grpo"].model.name == "grpo"


def test_overrides_reach_their_stage_and_typos_fail_before_anything_runs():
    steps = plan(pipeline_cfg("train_sft.sft.learning_rate=0.003", "++reject_sampling.sampling.n=8"))
    compose_all(steps)
    by_name = {s.name: s.cfg for s in steps}
    assert (
        by_name["round_0/sft"].sft["learning_rate"] == 0.003
        and by_name["round_1/sft"].sft["learning_rate"] == 0.003
    )
    assert by_name["round_0/reject_sampling"].sampling.n == 8
    assert by_name["eval/round_0_sft"].sampling.n != 8  # evaluation keeps its own sampling
    with pytest.raises(ValueError, match=r"round_0/sft.*sft\.lrr"):
        compose_all(plan(pipeline_cfg("train_sft.sft.lrr=1")))


def test_a_misspelt_trl_key_fails_at_compose_with_the_closest_names():
    """`train_sft.sft` is TRL's SFTConfig as a mapping: the key composes, and TRL's field list refuses it
    when the pipeline composes the run, before any stage runs."""
    with pytest.raises(ValueError) as error:
        compose_all(plan(pipeline_cfg("train_sft.sft.lerning_rate=1e-3")))
    assert re.search(
        r"pipeline step round_0/sft \(1 process\): train_sft\.sft\.lerning_rate: not an argument of "
        r"trl\.SFTConfig \(TRL [\d.]+\); did you mean learning_rate",
        str(error.value),
    ), error.value
    with pytest.raises(
        ValueError, match=r"round_0/reward_model .*reward_model\.rm\.use_cpu: set by the stage"
    ):
        compose_all(plan(pipeline_cfg("reward_model.rm.use_cpu=true")))


def test_trl_checks_grpo_batches_with_the_processes_the_step_is_launched_with(tmp_path):
    """4 completions per device, groups of 8: under `accelerate launch` with 2 processes a generation batch
    holds one whole group; launched as one process it holds half of one, and TRL's check fails at compose
    (this process's own WORLD_SIZE, 1, decides neither)."""
    over = [f"run_dir={tmp_path}", "grpo.grpo.per_device_train_batch_size=4", "grpo.grpo.num_generations=8"]
    two = ["launcher=accelerate", "accelerate_config=conf/accelerate/cpu_2proc.yaml"]
    steps = plan(pipeline_cfg(*over, *two))
    compose_all(steps, pipeline_cfg(*over, *two))
    assert next(s for s in steps if s.stage == "grpo").cfg.grpo["per_device_train_batch_size"] == 4
    ray_two = ["launcher=ray", "ray_train.num_workers=2"]  # 2 Ray Train workers: the same world size
    compose_all(plan(pipeline_cfg(*over, *ray_two)), pipeline_cfg(*over, *ray_two))
    with pytest.raises(ValueError) as error:
        compose_all(plan(pipeline_cfg(*over)), pipeline_cfg(*over))
    assert str(error.value) == (
        "pipeline step round_1/grpo (1 process): grpo.grpo: trl.GRPOConfig refused its arguments with 1 "
        "process: generation_batch_size (4) must be divisible by num_generations (8)."
    )


def test_the_command_line_keeps_section_overrides_apart():
    args = [
        "-m",
        "experiment=x",
        "train_sft.sft.lr=1,2",
        "++common.model=m",
        "rounds=3",
        "hydra.verbose=true",
    ]
    assert command_line_overrides([*args, "train_sftx.a=1"]) == [
        "-m",
        "experiment=x",
        "++cli_overrides.arg2.train_sft.sft.lr=1,2",
        "++cli_overrides.arg3.common.model=m",
        "rounds=3",
        "hydra.verbose=true",
        "train_sftx.a=1",
    ]


def test_a_later_value_of_a_key_replaces_the_earlier_one():
    items = [("a", 1), ("b.c", 2), ("b", "x"), ("a", 3), ("b.c", 4)]
    assert last_wins(items) == [("b", "x"), ("a", 3), ("b.c", 4)]
    assert override_key("++sft.max_steps=8") == override_key("sft.max_steps=9") != override_key("sft=x")


def test_the_issue_command_keeps_the_presets_sft_and_sampling(tmp_path):
    """`experiment=qwen2.5-1.5b_lora_16k ... train_sft.sft.max_steps=800 reject_sampling.sampling.n=8` once
    composed round-0 SFT on conf/sft/tiny (lr 1e-3, 512 tokens) and sampled with transformers, 128 tokens."""
    cfg = pipeline_cfg(
        *gpu_preset("qwen2.5-1.5b_lora_16k", tmp_path),
        "train_sft.sft.max_steps=800",
        "reject_sampling.sampling.n=8",
        "common.model.path=/elsewhere",
    )
    steps = plan(cfg)
    compose_all(steps)
    by_name = {s.name: s.cfg for s in steps}
    long_context = OmegaConf.load(CONF_DIR / "sft" / "long_context.yaml")
    sft = by_name["round_0/sft"]
    assert (sft.sft["learning_rate"], sft.sft["max_length"], sft.sft["max_steps"]) == (
        long_context.sft.learning_rate,
        long_context.sft.max_length,
        800,
    )
    assert sft.peft.method == "lora" and sft.model.name == "qwen2.5-1.5b" and sft.model.path == str(tmp_path)
    later = by_name["round_1/sft"].sft  # later rounds: the pipeline's next_round_steps and learning rate
    assert (later["max_steps"], later["learning_rate"], later["max_length"]) == (500, 1e-5, 16384)
    sampling = by_name["round_0/reject_sampling"].sampling
    assert (sampling.backend, sampling.n, sampling.max_new_tokens) == ("auto", 8, 16384)
    # common.model.path goes where the plan sets no path; the preset's model (bf16) stays everywhere.
    assert by_name["round_0/reject_sampling"].model.path == "/elsewhere"
    assert {c.model.dtype for c in by_name.values()} == {"bfloat16"}


def test_a_command_line_choice_of_a_group_replaces_the_presets(tmp_path):
    cfg = pipeline_cfg(
        *gpu_preset("qwen2.5-1.5b_lora_16k", tmp_path), "train_sft.sft=tiny", "train_sft.sft.max_steps=9"
    )
    step = next(s for s in plan(cfg) if s.name == "round_0/sft")
    assert [o for o in step.overrides if override_key(o) == "sft"] == ["sft=tiny"]  # one choice, the last
    compose_all([step])
    assert (step.cfg.sft["learning_rate"], step.cfg.sft["max_steps"]) == (1e-3, 9)


# One dotted override per section, of a key the plan itself never sets: section -> (key, typed value).
SECTION_OVERRIDES: dict[str, tuple[str, Any]] = {
    "common": ("model.dtype", "float16"),
    "data_process": ("eval_fraction", 0.05),
    "train_sft": ("sft.save_steps", 123),
    "reward_model": ("rm.learning_rate", 3e-6),
    "reject_sampling": ("sampling.n", 7),
    "grpo": ("grpo.logging_steps", 3),
    "evaluate": ("sampling.n", 2),
    "benchmarks": ("sampling.n", 5),
}


def receives(step: Step, section: str) -> bool:
    """Whether a step gets a section: `common` every stage but the tiny model, `benchmarks` the benchmark
    evaluations (bench/...), every other section its stage's steps, benchmark evaluations excepted."""
    if section == "common":
        return step.stage != "tiny_model"
    if section == "benchmarks":
        return step.name.startswith("bench/")
    return step.stage == section and not step.name.startswith("bench/")


def leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def lookup(cfg: Any, dotted: str) -> Any:
    """A dotted key of a typed config; the TRL sections (`sft`, `rm`, `grpo`) are plain dicts."""
    return reduce(
        lambda node, key: node[key] if isinstance(node, dict) else getattr(node, key), dotted.split("."), cfg
    )


def preset_choices(name: str) -> dict[str, list[str]]:
    """The group choices each section of a preset makes: {train_sft: ["sft=long_context", "peft=lora"]}."""
    preset = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "experiment" / f"{name}.yaml"))
    return {
        section: [
            f"{key}={value}"
            for key, value in (preset.get(section) or {}).items()
            if isinstance(value, str) and (CONF_DIR / key / f"{value}.yaml").is_file()
        ]
        for section in SECTIONS
    }


@cache
def brought_by(stage: str, choice: str, plan_choices: tuple[str, ...] = ()) -> dict[str, Any]:
    """What a group choice gives a stage: the leaves of conf/<stage>.yaml composed with `choice` that
    differ from its composition without it (unresolved, so only the choice's own values show), both with
    the group choices the plan itself makes (a benchmark step's `benchmark=`, whose protocol sets decoding
    over the sampling group's)."""
    base = dict(leaves(OmegaConf.to_container(compose(stage, list(plan_choices)))))
    chosen = dict(leaves(OmegaConf.to_container(compose(stage, [*plan_choices, choice]))))
    return {k: v for k, v in chosen.items() if k not in base or base[k] != v}


def plan_choices(step: Step) -> tuple[str, ...]:
    return tuple(o for o in step.overrides if override_key(o) == "benchmark")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_command_line_overrides_of_every_section_keep_the_presets_choices(name, tmp_path):
    """Every preset with a dotted override of each of the eight sections (sections it sets and ones it
    does not): every stage still gets every value its preset's group choices bring (unless a dotted key of
    its own overrides sets that value), and every override reaches every stage of its section."""
    over = (
        gpu_preset(name, tmp_path)
        if name != "offline_cpu"
        else [f"run_dir={tmp_path}", "eval_benchmarks=[aime24]"]
    )
    over += [f"{section}.{key}={value}" for section, (key, value) in SECTION_OVERRIDES.items()]
    steps = plan(pipeline_cfg(*over))
    compose_all(steps)
    checked = 0
    for section, choices in preset_choices(name).items():
        for step in (s for s in steps if receives(s, section)):
            dotted = {k for k in map(override_key, step.overrides) if "." in k}
            brought = (brought_by(step.stage, choice, plan_choices(step)) for choice in choices)
            for leaf, value in (kv for values in brought for kv in values.items()):
                if not any(leaf == k or leaf.startswith(f"{k}.") for k in dotted):
                    assert lookup(step.cfg, leaf) == value, (step.name, leaf)
                    checked += 1
    assert checked > 0 or not any(preset_choices(name).values())
    for section, (key, value) in SECTION_OVERRIDES.items():
        reached = [s.name for s in steps if receives(s, section) and lookup(s.cfg, key) == value]
        assert reached == [s.name for s in steps if receives(s, section)] != [], section


def test_a_sweep_over_a_preset_section_keeps_its_choices(tmp_path):
    """`-m train_sft.sft.learning_rate=1e-3,3e-3` on a preset: one dry run per value, both on long_context."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "-m", *gpu_preset("qwen2.5-1.5b_lora_16k", tmp_path / "s"),
         "dry_run=true", "train_sft.sft.learning_rate=1e-3,3e-3"],
        cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for i, lr in enumerate([1e-3, 3e-3]):
        sft = OmegaConf.load(tmp_path / f"s/sweep_{i}/plan/round_0/sft.yaml")
        assert (sft.sft.learning_rate, sft.sft.max_length, sft.peft.method) == (lr, 16384, "lora")


def test_dry_run_writes_every_steps_config_and_runs_nothing(tmp_path, capsys, monkeypatch):
    from pipeline.run import run

    def launched(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a dry run started a stage")

    monkeypatch.setattr("pipeline.run.run_stage_process", launched)
    stale = tmp_path / "plan" / "round_7" / "sft.yaml"  # an earlier plan's step: removed
    stale.parent.mkdir(parents=True)
    stale.write_text("x")
    status = run(
        pipeline_cfg(f"run_dir={tmp_path}", "dry_run=true", "reject_sampling.prompts.max_prompts=100")
    )
    names = [s["name"] for s in status["steps"]]
    assert names == plan_names(pipeline_cfg("rounds=2"))
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(f"plan/{n}.yaml" for n in names)  # nothing else: no pipeline.json, no stage
    sft = OmegaConf.load(tmp_path / "plan/round_1/sft.yaml")
    assert sft.sft.max_steps == 300 and sft.model.path == f"{tmp_path}/round_0/sft/model"
    assert OmegaConf.load(tmp_path / "plan/eval/round_0_sft.yaml").name == "round_0_sft"
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0]
        == f"dry run: 13 steps, nothing runs; each step's resolved config in {tmp_path}/plan/<step>.yaml"
    )
    expected = {
        "[2/13] data (data_process): input synthetic, 6,000 problems;",
        "[3/13] round_0/sft (train_sft): 400 steps x global batch 64 (64 per device x 1 accumulation x 1 "
        "process) = 25,600 sequences, each <= 512 tokens;",
        "[5/13] eval/round_0_sft (evaluate): all test prompts x (4 samples + 1 greedy) x <= 64 new tokens = "
        "<= 320 tokens per prompt;",
        "[6/13] round_0/reject_sampling (reject_sampling): 100 train prompts x 8 samples x <= 128 new tokens "
        "= <= 102,400 tokens;",
        "[12/13] round_1/grpo (grpo): 40 steps x 256 completions (32 prompts x 8) x <= 64 new tokens = "
        "<= 655,360 tokens;",
    }
    assert {e for e in expected if any(line.startswith(e) for line in out)} == expected
    data = next(line for line in out if line.startswith("[2/13] data"))
    assert data.endswith("; decontaminated against math500, aime24, aime25, amc23, gsm8k (8-grams)")
    # 102,400 + 655,360 generated tokens at most where prompts are capped; the evaluations are per prompt.
    assert out[-1].startswith("generation: <= 757,760 new tokens in all (every sample at its cap), plus")
    assert "eval/round_0_sft" in out[-1] and "round_0/reject_sampling" not in out[-1]


def test_dry_run_lists_the_benchmark_evaluations_with_their_problems(tmp_path, capsys):
    from pipeline.run import run

    cfg = pipeline_cfg(
        f"run_dir={tmp_path}", "dry_run=true", "rounds=1", "eval_benchmarks=[math500,aime24]",
        "benchmarks.prompts.max_prompts=100", "evaluate.sampling.n=2",
    )  # fmt: skip
    status = run(cfg)
    names = [s["name"] for s in status["steps"]]
    assert names[-4:] == ["bench/round_0_sft/math500", "bench/round_0_sft/aime24", "bench/grpo/math500", "bench/grpo/aime24"]  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    line = next(x for x in out if "] bench/grpo/aime24 " in x)
    # The benchmark's own problems (30, under the 100 cap) and its R1 protocol (16 samples, 32k tokens).
    assert line.endswith(
        "bench/grpo/aime24 (evaluate): aime24: 30 problems x 16 samples x <= 32,768 new tokens = <= 15.7M "
        "tokens; protocol r1 (T 0.6, top-p 0.95); backend transformers"
    )
    assert "math500: 100 problems x 4 samples" in next(x for x in out if "] bench/grpo/math500 " in x)
    bench = OmegaConf.load(tmp_path / "plan/bench/round_0_sft/math500.yaml")
    assert (bench.benchmark.name, bench.model.path, bench.output_dir) == (
        "math500",
        f"{tmp_path}/round_0/sft/model",
        f"{tmp_path}/bench/round_0_sft/math500",
    )
    assert bench.sampling.n == 4 and OmegaConf.load(tmp_path / "plan/eval/grpo.yaml").sampling.n == 2


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_presets_compose_every_stage(name, tmp_path):
    over = [f"experiment={name}", f"run_dir={tmp_path}"]
    if name != "offline_cpu":
        over += ["model_path=/models/base", "input_dir=/data/openr1"]
    cfg = pipeline_cfg(*over)
    steps = plan(cfg)
    compose_all(steps)
    by_name = {s.name: s.cfg for s in steps}
    if name != "offline_cpu":
        assert by_name["data"].input_dir == "/data/openr1" and by_name["data"].model.path == "/models/base"
        assert by_name["round_0/sft"].model.path == "/models/base"
        assert by_name["round_0/reward_model"].model.path == f"{tmp_path}/round_0/sft/model"
        assert "tiny_model" not in by_name
        # Benchmarks on the GPU: the preset's vLLM sampling group, the benchmark's R1 decoding.
        benched = [n for n in by_name if n.startswith("bench/")]
        assert benched == [f"bench/{m}/{b}" for m in ("round_0_sft", "round_1_sft", "grpo") for b in ("math500", "aime24")]  # fmt: skip
        aime = by_name["bench/grpo/aime24"]
        s = aime.sampling
        assert (aime.benchmark.name, s.n, s.temperature, s.top_p, s.max_new_tokens) == (
            "aime24",
            16,
            0.6,
            0.95,
            32768,
        )
        if "ray" in name:  # one vLLM engine per GPU across the cluster
            assert (s.backend, s.ray.engine, s.ray.address, s.tensor_parallel_size) == (
                "ray",
                "vllm",
                "auto",
                1,
            )
        else:
            assert s.backend == "auto" and s.tensor_parallel_size == (8 if "7b" in name else 1)
        assert aime.model.dtype == "bfloat16" and aime.prompts.max_prompts is None
    else:
        assert not [n for n in by_name if n.startswith("bench/")]


def test_gpu_presets_need_the_local_paths():
    with pytest.raises(ValueError, match="model_path=/models"):
        pipeline_cfg("experiment=qwen2.5-1.5b_lora_16k")


def test_sections_become_settings_handed_over_as_values():
    assert settings({"sft": {"learning_rate": 0.001, "report_to": ["none"]}, "peft": "lora"}) == [
        ("sft.learning_rate", 0.001),
        ("sft.report_to", ["none"]),
        ("peft", "lora"),
    ]
    assert settings({"x": None, "f": True, "empty": {}}) == [("x", None), ("f", True), ("empty", {})]


def test_a_value_reaches_every_stage_as_it_is_written():
    """No quoting between the pipeline and its stages: a string with quotes, commas, braces, a backslash and
    an equals sign arrives verbatim, and round 1's data list arrives as typed data sources."""
    cfg = pipeline_cfg()
    odd = "Reason, then answer: put it in \\boxed{} = 'final' \"answer\"."
    cfg.common = {"model": {"instruction_suffix": odd}}
    steps = plan(cfg)
    compose_all(steps)
    with_model = [s for s in steps if s.stage != "tiny_model"]
    assert with_model and all(s.cfg.model.instruction_suffix == odd for s in with_model)
    round_1 = next(s for s in steps if s.name == "round_1/sft").cfg
    assert [(d.path, d.weight) for d in round_1.data] == [
        (f"{cfg.run_dir}/data", cfg.mix_original),
        (f"{cfg.run_dir}/round_0/reject_sampling", 1.0),
    ]


def test_the_pipelines_skip_check_imports_no_torch():
    """Every stage's `identify` (what the pipeline asks before starting a step's process) and the pipeline
    itself load without torch, transformers or trl: a finished step costs no such import."""
    code = (
        "import sys; from core.stages import STAGES, load; import pipeline.run; "
        "[load(s.identify) for s in STAGES.values() if s.identify]; "
        "print([m for m in ('torch', 'transformers', 'trl') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert {s.name for s in STAGES.values() if s.identify} == {s.name for s in STAGES.values()} - {
        "rm_score",
        "sample",
        "pipeline",
    }


def test_until_stops_after_the_named_step(tmp_path):
    from pipeline.run import run

    with pytest.raises(ValueError, match="not a step"):
        run(pipeline_cfg(f"run_dir={tmp_path}", "until=round_9/sft"))


@pytest.mark.slow
def test_sweeps_give_every_job_its_own_directory(tmp_path):
    """A pipeline sweep (stopped after data) and a single-stage sweep: one output directory per job."""

    def sweep(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", *args],
            cwd=REPO,
            env=offline_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]

    def rows_read(path: Path) -> int:
        return json.loads((path / "manifest.json").read_text())["metrics"]["rows_read"]

    sweep(
        "pipeline", "-m", f"run_dir={tmp_path}/p", "until=data", "data_process.synthetic.num_problems=40,50"
    )
    assert [rows_read(tmp_path / f"p/sweep_{i}/data") for i in (0, 1)] == [40, 50]
    sweep("data_process", "-m", f"run_dir={tmp_path}/s", "synthetic.num_problems=40,50", "progress=false",
          f"model.path={tmp_path}/p/sweep_0/tiny_model/policy")  # fmt: skip
    assert [rows_read(tmp_path / f"s/data/sweep_{i}") for i in (0, 1)] == [40, 50]


def test_report_shows_only_the_stages_of_the_current_plan(tmp_path):
    """A directory an earlier plan of the same run left behind (round 2 of a rounds=3 attempt, a sampling
    step since dropped) must not show up in the report of the run as planned now."""
    for rel, metrics in [
        ("eval/round_0_sft", {"pass@1": 0.1}),
        ("eval/round_2_sft", {"pass@1": 0.9}),
        ("round_0/reject_sampling", {"acceptance_rate": 0.25}),
        ("round_1/sft", {"global_step": 300}),
        ("round_1/reject_sampling", {"acceptance_rate": 0.5}),
        ("round_2/sft", {"global_step": 300}),
    ]:
        write_manifest(tmp_path / rel, Manifest(stage=rel, config_hash="h", config={}, metrics=metrics))
    names = ["data", "eval/round_0_sft", "round_0/reject_sampling", "round_1/sft"]
    (tmp_path / "pipeline.json").write_text(json.dumps({"steps": [{"name": n} for n in names]}))
    summary = collect(tmp_path)
    assert set(summary["evals"]) == {"round_0_sft"}
    assert {k: set(v) for k, v in summary["rounds"].items()} == {0: {"reject_sampling"}, 1: {"sft"}}


# A smaller version of the offline default: the same stages and rounds, fewer problems and steps.
SMALL_RUN = [
    "rounds=2",
    "next_round_steps=20",
    "data_process.synthetic.num_problems=600",
    "data_process.sft_fraction=0.3",  # the default's 10% of 600 problems cannot fill one batch of 64
    "train_sft.sft.max_steps=60",
    "reward_model.rm.max_steps=10",
    "reject_sampling.prompts.max_prompts=120",
    "reject_sampling.sampling.n=4",
    "evaluate.prompts.max_prompts=40",
    "grpo.grpo.max_steps=4",
    "grpo.grpo.per_device_train_batch_size=64",  # 8 prompts a step (the default takes 32)
    "reject_sampling.sampling.backend=transformers",
    "grpo.generation.backend=transformers",  # vLLM colocate on CPU has its own test in test_grpo.py
]


@pytest.mark.slow
def test_small_pipeline_end_to_end(tmp_path):
    """Every stage of a small run produces its artifacts, the report shows them, accuracy does not fall,
    and running the same command again skips every finished stage."""
    cmd = [sys.executable, "-m", "pipeline", f"run_dir={tmp_path}", *SMALL_RUN]
    done = subprocess.run(cmd, cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = json.loads((tmp_path / "pipeline.json").read_text())
    assert [s["status"] for s in status["steps"]] == ["done"] * len(status["steps"])
    for stage_dir in ["tiny_model", "data", "round_0/sft", "round_0/reward_model", "round_0/reject_sampling",
                      "round_1/sft", "round_1/sft_control", "round_1/reward_model", "round_1/grpo", "eval/round_0_sft", "eval/round_1_sft", "eval/round_1_control", "eval/grpo"]:  # fmt: skip
        assert (tmp_path / stage_dir / "manifest.json").exists(), stage_dir
    for model in ["round_0/sft", "round_1/sft", "round_1/sft_control", "round_1/grpo"]:
        assert (tmp_path / model / "model" / "model.safetensors").exists(), model
    selected = pq.read_table(tmp_path / "round_0/reject_sampling/selected.parquet")
    assert selected.column_names[:7] == [
        "id",
        "instruction",
        "input",
        "output",
        "answer",
        "source",
        "n_tokens",
    ]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "round_1_control" in report and (tmp_path / "report" / "accuracy.png").stat().st_size > 1000

    # Accuracy did not fall: the final model's pass@1 is not below round-0 SFT's by more than two
    # standard errors of the difference (40 prompts x 4 samples each; ~0.07 at p = 0.5).
    first = json.loads((tmp_path / "eval/round_0_sft/metrics.json").read_text())
    final = json.loads((tmp_path / "eval/grpo/metrics.json").read_text())
    n = first["samples"]
    se = math.sqrt(sum(m["pass@1"] * (1 - m["pass@1"]) / n for m in (first, final)))
    assert final["pass@1"] >= first["pass@1"] - 2 * se - 1e-9

    # The same command again finds every step complete in the pipeline's process: no step's process starts
    # (its log does not grow), every record says skipped and keeps the seconds of the run that did it.
    logs = {s["name"]: Path(RunLayout(str(tmp_path)).step_log(s["name"])) for s in status["steps"]}
    sizes = {name: log.stat().st_size for name, log in logs.items()}
    again = subprocess.run(cmd, cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {name: log.stat().st_size for name, log in logs.items()} == sizes
    rerun = json.loads((tmp_path / "pipeline.json").read_text())
    assert [(s["status"], s.get("skipped")) for s in rerun["steps"]] == [("done", True)] * len(
        status["steps"]
    )
    assert [s["seconds"] for s in rerun["steps"]] == [s["seconds"] for s in status["steps"]]
    assert again.stdout.count("complete, skipped") == len(status["steps"])


# The whole pipeline on each real-tokenizer family: a few steps and short completions (a 151k-vocabulary model
# trains at ~90 tokens/s on 2 cores). The random-weight models never answer correctly, so every round
# rejection-samples nothing: the next round trains on the original records and pairs alone.
FAMILY_RUN = [
    "build_tiny_model=false",
    "data_process.synthetic.num_problems=160",
    "data_process.sft_fraction=0.5",
    "data_process.filters.max_tokens=512",
    "next_round_steps=2",
    "train_sft.sft.max_steps=3",
    "train_sft.sft.per_device_train_batch_size=4",
    "train_sft.sft.max_length=256",
    "train_sft.peft=lora",
    "reward_model.rm.max_steps=2",
    "reward_model.rm.per_device_train_batch_size=4",
    "reward_model.rm.max_length=256",
    "reject_sampling.prompts.max_prompts=6",
    "reject_sampling.sampling.n=2",
    "reject_sampling.sampling.max_new_tokens=16",
    "reject_sampling.sampling.backend=transformers",
    "evaluate.prompts.max_prompts=6",
    "evaluate.sampling.n=2",
    "evaluate.sampling.max_new_tokens=16",
    "grpo.grpo.max_steps=1",
    "grpo.grpo.per_device_train_batch_size=8",
    "grpo.grpo.num_generations=4",
    "grpo.grpo.max_completion_length=16",
    "grpo.data.sample_prompts=8",
    "grpo.generation.backend=transformers",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["r1", "qwen2.5", "qwen3", "llama3", "base"])
def test_pipeline_end_to_end_on_a_real_tokenizer_family(tmp_path, family_models, name):
    """Every stage runs on the family's own tokenizer and template (R1 for two rounds): prompts are its
    native generation prompts, SFT trains the whole trace + end of turn, sampled completions carry the
    prefill back, a round that finds nothing still runs, and the report is written."""
    from tests.conftest import family_model_config

    model = family_model_config(family_models, name)
    rounds = 2 if name == "r1" else 1
    extra = [f"common.model.chat_template={model.chat_template}"] if model.chat_template else []
    if name == "qwen2.5":  # and the benchmark steps, down to 3 AIME problems x 2 samples of 8 tokens
        extra += [
            "eval_benchmarks=[aime24]",
            "benchmarks.prompts.max_prompts=3",
            "benchmarks.sampling.n=2",
            "benchmarks.sampling.max_new_tokens=8",
            "benchmarks.sampling.backend=transformers",
        ]
    cmd = [
        sys.executable, "-m", "pipeline", f"run_dir={tmp_path}", f"model_path={model.path}", f"rounds={rounds}",
        *FAMILY_RUN, *extra,
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = json.loads((tmp_path / "pipeline.json").read_text())
    assert [s["status"] for s in status["steps"]] == ["done"] * len(status["steps"])

    from core.models import chat_renderer, load_tokenizer

    tokenizer = load_tokenizer(model)
    renderer = chat_renderer(model, tokenizer)
    sft = json.loads((tmp_path / "round_0/sft/manifest.json").read_text())["metrics"]["preview"]
    records = pq.read_table(tmp_path / "data/sft.parquet").to_pylist()
    assert sft["text"] == renderer.text(records[0]["instruction"], records[0]["output"])
    assert sft["trained"] == renderer.completion(records[0]["output"]) + renderer.eot
    rm = json.loads((tmp_path / "round_0/reward_model/manifest.json").read_text())["metrics"]["preview"]
    assert rm["chosen"].startswith(renderer.prompt(records[0]["instruction"])[:20]) and rm["chosen"].endswith(
        renderer.end
    )
    last = rounds - 1
    ev = json.loads((tmp_path / f"eval/round_{last}_sft/metrics.json").read_text())
    scored = pq.read_table(tmp_path / f"eval/round_{last}_sft/scored.parquet").to_pylist()
    native = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{scored[0]['prompt']}\n\n{model.instruction_suffix}"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert ev["preview"]["prompt"] == native
    assert all(s["completion"].startswith(renderer.prefill) for s in scored)
    if rounds > 1:
        rs = json.loads((tmp_path / "round_0/reject_sampling/manifest.json").read_text())["metrics"]
        samples = pq.read_table(tmp_path / "round_0/reject_sampling/samples.parquet").to_pylist()
        assert rs["preview"]["prompt"].startswith(native[:20])
        assert all(s["completion"].startswith(renderer.prefill) for s in samples)
        assert rs["selected_records"] == 0 and rs["pairs"] == 0  # random weights: nothing correct
        data = json.loads((tmp_path / "round_1/sft/manifest.json").read_text())["metrics"]["data"]
        assert (
            sorted(data["records_read"].values())[0] == 0
        )  # the empty round's source, read and warned about
    grpo = json.loads((tmp_path / f"round_{last}/grpo/manifest.json").read_text())["metrics"]
    head, tail = native.split(scored[0]["prompt"])  # GRPO draws its prompts in its own order
    assert grpo["preview"]["prompt"].startswith(head) and grpo["preview"]["prompt"].endswith(tail)
    generation = json.loads((tmp_path / f"round_{last}/grpo/model/generation_config.json").read_text())
    eos = generation["eos_token_id"]
    assert renderer.eot_id in (eos if isinstance(eos, list) else [eos])
    report = (tmp_path / "report" / "report.md").read_text()
    if name == "qwen2.5":
        bench = json.loads((tmp_path / "bench/grpo/aime24/metrics.json").read_text())
        assert bench["benchmark"] == "aime24" and bench["prompts"] == 3 and bench["samples_per_prompt"] == 2
        assert bench["preview"]["prompt"].startswith("<|im_start|>system\nYou are Qwen")
        section = report[report.index("## Benchmarks") :].splitlines()
        assert section[2] == "| model | aime24 |"
        grpo_row = next(line for line in section if line.startswith("| grpo |"))
        assert "±" in grpo_row and "(3 × 2)" in grpo_row
