"""The whole pipeline survives SIGKILL: bench/chaos_resume.py's kill-and-resume loop and checks, cut down for
CI. The small pipeline up to round 0's evaluation (data, SFT, reward model, then in the evaluation
sampling, verification and reward scoring), from the tests' tiny model, is killed twice, the whole process
group at once, at moments drawn with a seed (inside sampling, inside reward scoring), resumed by the same
command each time, and must end as an uninterrupted run of it does: the checks of docs/design.md, "Resume
under SIGKILL". The bench runs the whole pipeline with 8 kills; figures in docs/results.md."""

from __future__ import annotations

import json

import pytest

from bench.chaos_resume import CI_UNTIL, SMALL_PIPELINE, run_chaos, stored_timeline

CI_KILLS = 2


@pytest.mark.slow
def test_a_pipeline_killed_twice_ends_as_the_uninterrupted_run(tmp_path, tiny_model):
    overrides = [
        *SMALL_PIPELINE,
        "build_tiny_model=false",  # the session's tiny model: one step fewer in each of the two runs
        f"model_path={tiny_model['policy']}",
        f"until={CI_UNTIL}",
        "report=false",  # 6 s of plotting at the end of each run
    ]
    # The kills are drawn from the bench's recorded reference timeline of this pipeline, so the reference
    # run that check (e) compares with runs beside the chaos run, not before it.
    # That timeline was recorded on a loaded machine: on a quiet one the evaluation's sampling takes a
    # quarter of the time, and a delay drawn as a fraction of the recorded phase can outlast it (the kill then
    # lands in the next phase). Scaled down, the delays fall inside the phases on either.
    report = run_chaos(
        tmp_path,
        overrides,
        kills=CI_KILLS,
        seed=0,
        timeout=900,
        timeline=stored_timeline(overrides),
        delay_scale=0.2,
    )
    failed = {name: check for name, check in report["checks"].items() if not check["ok"]}
    assert not failed, json.dumps(failed, indent=1, default=str)[:8000]
    kills = report["chaos"]["kills"]
    assert len(kills) == CI_KILLS
    landed = {(step, kill["phases"][step]) for kill in kills for step in kill["running"]}
    assert {(CI_UNTIL, "sampling"), (CI_UNTIL, "scoring")} <= landed, landed
    # Every step was compared with the uninterrupted run, and matched it byte for byte.
    rows = report["checks"]["e_vs_reference"]["steps"]
    assert [r["step"] for r in rows] == ["data", "round_0/sft", "round_0/reward_model", CI_UNTIL]
    assert all(r["identical"] for r in rows), [r for r in rows if not r["identical"]]
