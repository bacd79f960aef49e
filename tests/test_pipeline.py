"""The pipeline: the rounds plan, up-front config validation, presets, sweeps, the report, and a small
version of the default run end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from core.artifacts import Manifest, write_manifest
from core.config import CONF_DIR, compose, to_typed
from pipeline.config import PipelineConfig
from pipeline.report import collect
from pipeline.run import batches, compose_all, plan, step_log
from tests.conftest import offline_env

REPO = CONF_DIR.parent
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def pipeline_cfg(*overrides: str) -> PipelineConfig:
    return to_typed(compose("pipeline", list(overrides)), PipelineConfig)


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
    assert sft.sft.max_steps == control.sft.max_steps == 77
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
    steps = plan(pipeline_cfg("++train_sft.sft.learning_rate=0.003", "++reject_sampling.sampling.n=8"))
    compose_all(steps)
    by_name = {s.name: s.cfg for s in steps}
    assert (
        by_name["round_0/sft"].sft.learning_rate == 0.003
        and by_name["round_1/sft"].sft.learning_rate == 0.003
    )
    assert by_name["round_0/reject_sampling"].sampling.n == 8
    assert by_name["eval/round_0_sft"].sampling.n != 8  # evaluation keeps its own sampling
    with pytest.raises(ValueError, match=r"round_0/sft.*sft\.lrr"):
        compose_all(plan(pipeline_cfg("++train_sft.sft.lrr=1")))


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


def test_gpu_presets_need_the_local_paths():
    with pytest.raises(ValueError, match="model_path=/models"):
        pipeline_cfg("experiment=qwen2.5-1.5b_lora_16k")


def test_sections_become_hydra_overrides():
    from pipeline.run import as_overrides

    assert as_overrides({"sft": {"learning_rate": 0.001, "report_to": ["none"]}, "peft": "lora"}) == [
        "sft.learning_rate=0.001",
        "sft.report_to=[none]",
        "peft=lora",
    ]
    assert as_overrides({"rm.max_length": 8, "name": "a b", "x": None, "f": True}) == [
        "rm.max_length=8",
        "name='a b'",
        "x=null",
        "f=true",
    ]
    assert as_overrides({"data": [{"path": "runs/x", "weight": 2.0}]}) == ["data=[{path:runs/x,weight:2.0}]"]


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
    "reject_sampling.sampling.backend=hf",
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

    # Every step's log (side-by-side steps write only there) says it skipped, the second time only.
    logs = {s["name"]: step_log(tmp_path, s["name"]) for s in status["steps"]}
    assert not [name for name, log in logs.items() if "skipping" in log.read_text()]
    again = subprocess.run(cmd, cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [name for name, log in logs.items() if "skipping" not in log.read_text()] == []
