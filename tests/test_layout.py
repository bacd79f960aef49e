"""The stages' default paths (schemas and YAML) are the run layout the pipeline and the report use."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from core.config import compose
from core.layout import RunLayout

RUN = "runs/layout_check"


def composed(stage: str, *overrides: str) -> dict:
    return OmegaConf.to_container(compose(stage, [f"run_dir={RUN}", *overrides]), resolve=True)


@pytest.mark.parametrize("k", [0, 2])
def test_round_stages_default_to_the_layout(k: int) -> None:
    at = RunLayout(RUN)
    sft = composed("train_sft", f"round={k}")
    assert sft["output_dir"] == at.round_dir(k, "sft")
    assert [d["path"] for d in sft["data"]] == [at.data]
    rm = composed("reward_model", f"round={k}")
    assert (rm["output_dir"], rm["model"]["path"]) == (at.round_dir(k, "reward_model"), at.model(k))
    assert rm["pairs"] == at.data
    rs = composed("reject_sampling", f"round={k}")
    assert rs["output_dir"] == at.round_dir(k, "reject_sampling")
    assert (rs["model"]["path"], rs["reward_model"]["path"]) == (at.model(k), at.model(k, "reward_model"))
    grpo = composed("grpo", f"round={k}")
    assert (grpo["output_dir"], grpo["model"]["path"]) == (at.round_dir(k, "grpo"), at.model(k))
    assert grpo["rewards"]["reward_model_path"] == at.model(k, "reward_model")


def test_run_level_stages_default_to_the_layout() -> None:
    at = RunLayout(RUN)
    assert composed("data_process")["output_dir"] == at.data
    assert composed("tiny_model")["output_dir"] + "/policy" == at.tiny_policy
    assert composed("train_sft")["model"]["path"] == at.tiny_policy  # model=tiny, the offline default
    evaluation = composed("evaluate", "name=round_1_sft")
    assert evaluation["output_dir"] == at.eval_dir("round_1_sft")
    assert evaluation["prompts"]["path"] == at.data


def test_step_names_are_directories_under_the_run() -> None:
    at = RunLayout(RUN)
    assert at.path(at.round_step(1, "sft")) == f"{RUN}/round_1/sft"
    assert at.path(at.eval_step("grpo")) == at.eval_dir("grpo") == f"{RUN}/eval/grpo"
    assert at.bench_dir("grpo", "math500") == f"{RUN}/bench/grpo/math500"
    assert at.step_log("round_1/sft") == f"{RUN}/logs/pipeline/round_1.sft.log"
