"""Benchmarks: every vendored test set loads in full with normalised golds that the verifier parses, MATH-500's
reference solutions verify against their golds, bad files are errors naming file, field and row, protocols
compose, the benchmark metrics match hand-computed values, and evaluation runs end to end on the tiny model
on every benchmark (the scores are meaningless there; the wiring is what is checked)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from hydra.errors import MissingConfigException

from core.config import CONF_DIR, compose, to_typed
from core.verifier import verify_batch
from evaluation.benchmarks import (
    BenchmarkError,
    expand_benchmark_overrides,
    known_benchmarks,
    load_benchmark,
    normalise_answer,
)
from evaluation.config import BenchmarkConfig, EvaluateConfig
from reject_sampling.metrics import breakdown_metrics, mean_stderr, sample_metrics

DATA = CONF_DIR.parent / "data" / "benchmarks"
ROWS = {"math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "gsm8k": 1319}
NAMED = [*ROWS, "reasoning_gym"]


def eval_cfg(*overrides: str) -> EvaluateConfig:
    return to_typed(compose("evaluate", list(overrides)), EvaluateConfig)


def benchmark(name: str, *overrides: str):
    cfg = eval_cfg(f"benchmark={name}", *overrides)
    return load_benchmark(cfg.benchmark, cfg.verifier)


def raw(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------ loading


def test_the_named_benchmarks_are_the_conf_group():
    assert known_benchmarks() == sorted(NAMED)


@pytest.mark.parametrize("name", ROWS)
def test_each_benchmark_loads_in_full_with_normalised_golds(name):
    bench = benchmark(name)  # load checks every gold with the verifier
    rows = raw(name)
    assert bench.name == name and bench.verifier == "math"
    assert len(bench.items) == ROWS[name] == len(rows)
    assert len({item.id for item in bench.items}) == ROWS[name]
    answers = [item.answer for item in bench.items]
    if name == "math500":  # LaTeX strings exactly as written
        assert answers == [r["answer"] for r in rows]
        assert answers[0] == "\\left( 3, \\frac{\\pi}{2} \\right)" and answers[4] == "\\text{Evelyn}"
        assert [item.id for item in bench.items] == [r["unique_id"] for r in rows]
        assert bench.items[0].groups == {"subject": "Precalculus", "level": "2"}
    elif name == "gsm8k":  # the number after ####, thousands separators removed
        assert answers[:3] == ["18", "3", "70000"]
        assert "1450000" in answers and all(re.fullmatch(r"-?\d+", a) for a in answers)
        assert [item.problem for item in bench.items] == [r["question"] for r in rows]
    elif name == "amc23":  # JSON floats 27.0 -> "27"
        assert answers[:4] == ["27", "36", "45", "3159"] and answers[15] == "-1"
        assert [float(a) for a in answers] == [r["answer"] for r in rows]
    else:  # AIME: integers, zero padding removed
        assert all(re.fullmatch(r"\d{1,3}", a) for a in answers)
        assert [int(a) for a in answers] == [int(r["answer"]) for r in rows]
    if name == "aime24":
        assert answers[7] == "25" and rows[7]["answer"] == "025" and bench.items[7].id == "67"
    if name == "aime25":  # no id field: the row number
        assert [item.id for item in bench.items] == [str(i) for i in range(30)]


def test_reasoning_gym_items_come_from_the_generators_and_are_scored_by_the_package():
    bench = benchmark("reasoning_gym")
    cfg = eval_cfg("benchmark=reasoning_gym").benchmark
    assert bench.verifier == "reasoning_gym" and len(bench.items) == sum(t.size for t in cfg.reasoning_gym)
    first = bench.items[0]
    entry = json.loads(first.gold)
    assert first.answer == entry["answer"] and first.problem == entry["question"]
    assert first.groups == {"task": entry["metadata"]["source_dataset"]}
    wrong = f"<think></think> \\boxed{{{first.answer}9}}"
    right = f"<think>...</think> The answer is \\boxed{{{first.answer}}}."
    assert verify_batch([right, wrong], [first.gold] * 2, ["reasoning_gym"] * 2) == [True, False]
    # The task list and seed decide the items: the same config gives the same items.
    assert [i.gold for i in benchmark("reasoning_gym").items] == [i.gold for i in bench.items]
    other = benchmark("reasoning_gym", "benchmark.seed=7", "benchmark.reasoning_gym=[{name: gcd, size: 5}]")
    assert [i.id for i in other.items] == [f"gcd-7-{k}" for k in range(5)]


def test_every_math500_reference_solution_verifies_against_its_gold():
    """The whole reference solution as the completion (its last \\boxed{} is the answer) against `answer`:
    all 500 agree, so no MATH-500 gold needs normalising beyond what math-verify does."""
    rows = raw("math500")
    verdicts = verify_batch([r["solution"] for r in rows], [r["answer"] for r in rows])
    failed = [(i, rows[i]["answer"], v) for i, v in enumerate(verdicts) if v is not True]
    assert failed == []


@pytest.mark.parametrize(
    ("value", "fmt", "expected"),
    [
        ("Half the bolts.\n#### 1,450,000", "gsm8k", "1450000"),
        ("x = 3\n#### -12", "gsm8k", "-12"),
        (27.0, "number", "27"),
        (2.5, "number", "2.5"),
        ("3.50", "number", "3.5"),
        (-1.0, "auto", "-1"),
        ("025", "integer", "25"),
        (7, "integer", "7"),
        (" \\frac{1}{2} ", "latex", " \\frac{1}{2} "),
        ("\\text{(C)}", "auto", "\\text{(C)}"),
    ],
)
def test_normalise_answer(value, fmt, expected):
    assert normalise_answer(value, fmt) == expected


@pytest.mark.parametrize(
    ("value", "fmt", "message"),
    [
        ("no final line", "gsm8k", "no '#### N' final line"),
        (2.5, "integer", "not an integer"),
        ("\\frac{1}{2}", "number", "not a plain number"),
        (3, "latex", "not a string"),
        (True, "number", "boolean"),
    ],
)
def test_normalise_answer_says_why_a_gold_does_not_fit(value, fmt, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        normalise_answer(value, fmt)


# ------------------------------------------------------------------------------------------ errors


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def file_benchmark(path: Path, *overrides: str):
    return benchmark("file", f"benchmark.path={path}", *overrides)


def test_own_file_loads_with_configured_field_names(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"q": "1+1?", "final": 2}, {"q": "2+3?", "final": "5"}])
    bench = file_benchmark(path, "benchmark.problem_field=q", "benchmark.answer_field=final")
    assert bench.name == "mine" and [(i.id, i.problem, i.answer) for i in bench.items] == [
        ("0", "1+1?", "2"),
        ("1", "2+3?", "5"),
    ]


def test_own_file_with_wrong_field_names_names_the_file_and_field(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"question": "1+1?", "answer": "2"}])
    with pytest.raises(BenchmarkError) as error:
        file_benchmark(path)
    message = str(error.value)
    assert str(path) in message and "'problem'" in message and "benchmark.problem_field" in message
    assert "['answer', 'question']" in message
    with pytest.raises(BenchmarkError, match=r"no row has the field 'gold' \(benchmark.answer_field\)"):
        file_benchmark(path, "benchmark.problem_field=question", "benchmark.answer_field=gold")


def test_a_missing_answer_names_the_row(tmp_path):
    rows = [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "4"}, {"problem": "3+3?"}]
    path = write_jsonl(tmp_path / "gaps.jsonl", rows)
    with pytest.raises(BenchmarkError, match=re.escape(f"{path}: line 3 has no answer: field 'answer'")):
        file_benchmark(path)
    rows[2]["answer"] = None
    with pytest.raises(BenchmarkError, match="line 3 has no answer"):
        file_benchmark(write_jsonl(path, rows))


def test_an_unparseable_gold_is_an_error_naming_the_row(tmp_path):
    rows = [{"problem": "1+1?", "answer": "2"}, {"problem": "Prove it.", "answer": "proof"}]
    path = write_jsonl(tmp_path / "proofs.jsonl", rows)
    with pytest.raises(BenchmarkError, match=r"line 2 \(id 1\): gold answer 'proof' does not parse"):
        file_benchmark(path)
    path = write_jsonl(tmp_path / "gsm.jsonl", [{"problem": "1+1?", "answer": "It is 2."}])
    with pytest.raises(
        BenchmarkError, match=r"line 1: gold answer 'answer' does not fit answer_format gsm8k"
    ):
        file_benchmark(path, "benchmark.answer_format=gsm8k")


def test_duplicate_ids_and_missing_files_are_errors(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [{"id": 1, "problem": "a", "answer": "1"}] * 2)
    with pytest.raises(BenchmarkError, match="duplicate id '1' at line 1 and line 2"):
        file_benchmark(path)
    with pytest.raises(BenchmarkError, match=re.escape("nope.jsonl not found")):
        file_benchmark(tmp_path / "nope.jsonl")


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(BenchmarkError) as error:
        expand_benchmark_overrides(["benchmark=math5000"])
    assert "unknown benchmark 'math5000'" in str(error.value)
    assert all(name in str(error.value) for name in NAMED) and "FILE.jsonl" in str(error.value)
    with pytest.raises(MissingConfigException, match="Available options in 'benchmark'"):
        compose("evaluate", ["benchmark=math5000"])
    with pytest.raises(ValueError, match=re.escape("set exactly one of benchmark.path")):
        BenchmarkConfig(name="empty")


def test_a_file_on_the_command_line_becomes_the_file_option():
    assert expand_benchmark_overrides(["benchmark=sets/mine.jsonl", "sampling.n=2"]) == [
        "benchmark=file",
        "benchmark.path=sets/mine.jsonl",
        "sampling.n=2",
    ]
    assert expand_benchmark_overrides(["benchmark=math500,aime24", "name=x"]) == [
        "benchmark=math500,aime24",
        "name=x",
    ]
    with pytest.raises(BenchmarkError, match=re.escape("benchmark=file benchmark.path=a.jsonl")):
        expand_benchmark_overrides(["benchmark=a.jsonl,math500"])


# ------------------------------------------------------------------------------------------ protocols


@pytest.mark.parametrize(
    ("name", "n"), [("math500", 4), ("gsm8k", 4), ("aime24", 16), ("aime25", 16), ("amc23", 16)]
)
def test_each_benchmark_defaults_to_the_r1_protocol(name, n):
    cfg = eval_cfg(f"benchmark={name}")
    s = cfg.sampling
    assert cfg.protocol == "r1" and not cfg.greedy
    assert (s.n, s.temperature, s.top_p, s.top_k, s.max_new_tokens) == (n, 0.6, 0.95, 0, 32768)
    greedy = eval_cfg(f"benchmark={name}", "protocol=greedy")
    assert greedy.protocol == "greedy" and (greedy.sampling.n, greedy.sampling.temperature) == (1, 0.0)
    # The backend stays the sampling group's; command-line settings win over the protocol.
    gpu = eval_cfg(f"benchmark={name}", "sampling=default", "sampling.n=2")
    assert gpu.sampling.backend == "auto" and gpu.sampling.n == 2 and gpu.sampling.max_new_tokens == 32768


def test_without_a_benchmark_evaluation_is_unchanged():
    cfg = eval_cfg()
    assert cfg.benchmark is None and cfg.protocol is None and cfg.greedy
    assert (cfg.prompts.split, cfg.sampling.n, cfg.sampling.temperature, cfg.sampling.max_new_tokens) == (
        "test",
        4,
        1.0,
        128,
    )


# ------------------------------------------------------------------------------------------ metrics


def table(
    verdicts: dict[str, list[bool | None]], answers: dict[str, list[str]] | None = None
) -> pd.DataFrame:
    rows = []
    for pid, vs in verdicts.items():
        for k, v in enumerate(vs):
            ans = answers[pid][k] if answers else ("1" if v else "0")
            rows.append(
                {"id": pid, "sample_idx": k, "completion": f"<think></think> \\boxed{{{ans}}}", "correct": v,
                 "answer_key": ans, "n_tokens": 10 + k, "finish_reason": "length" if k == 3 else "stop"}
            )  # fmt: skip
    df = pd.DataFrame(rows)
    return df.assign(correct=df["correct"].astype("boolean"))


def test_pass_at_1_stderr_pass_at_k_and_maj_at_k_match_hand_computed_values():
    # Per-prompt shares correct 1, 1/2, 0, 1/4: mean 0.4375; deviations 0.5625, 0.0625, -0.4375, -0.1875,
    # squares sum 0.546875, sample variance 0.546875 / 3, stderr sqrt(0.546875 / 3) / sqrt(4).
    verdicts = {
        "a": [True, True, True, True],
        "b": [True, False, True, False],
        "c": [False, False, False, None],
        "d": [False, False, False, True],
    }
    answers = {
        "a": ["7", "7", "7", "7"],
        "b": ["5", "6", "5", "6"],
        "c": ["1", "2", "2", "3"],
        "d": ["8", "8", "9", "4"],
    }
    m = sample_metrics(table(verdicts, answers))
    assert m["pass@1"] == pytest.approx(0.4375)
    assert m["pass@1_stderr"] == pytest.approx(math.sqrt(0.546875 / 3) / 2)
    # pass@2 per prompt: 1; 1 - C(2,2)/C(4,2) = 5/6; 0; 1 - C(3,2)/C(4,2) = 1/2
    assert m["pass@2"] == pytest.approx((1 + 5 / 6 + 0 + 1 / 2) / 4)
    # pass@4: 1, 1, 0, 1
    assert m["pass@4"] == pytest.approx(3 / 4)
    # maj@2 groups: a [7,7] right, [7,7] right -> 1; b [5,6] tie -> 5 (right), [5,6] -> 5 right -> 1;
    # c [1,2] tie -> 1 wrong, [2,3] -> 2 wrong -> 0; d [8,8] wrong, [9,4] tie -> 9 wrong -> 0
    assert m["maj@2"] == pytest.approx(0.5)
    # maj@4: a 7 right; b 5 and 6 tie, 5 first, right; c 2 (two votes) wrong; d 8 (two votes) wrong
    assert m["maj@4"] == pytest.approx(0.5)
    assert m["truncation_rate"] == pytest.approx(0.25) and m["completion_tokens"]["mean"] == pytest.approx(
        11.5
    )


def test_breakdown_by_group_and_stderr_edge_cases():
    df = table({"a": [True, True], "b": [True, False], "c": [False, False], "d": [True, True]})
    by = breakdown_metrics(df, {"a": "Level 10", "b": "Level 2", "c": "Level 2", "d": "Algebra"})
    assert list(by) == ["Algebra", "Level 2", "Level 10"]  # natural order
    assert by["Level 2"] == {"pass@1": 0.25, "pass@1_stderr": pytest.approx(0.25), "prompts": 2}
    assert by["Algebra"] == {"pass@1": 1.0, "pass@1_stderr": None, "prompts": 1}  # undefined for one prompt
    assert mean_stderr([0.0, 1.0]) == pytest.approx(0.5) and mean_stderr([1.0]) is None
    with pytest.raises(ValueError, match="without a group"):
        breakdown_metrics(df, {"a": "x"})


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench_eval")


CONTRACT = {"benchmark", "pass@1", "pass@1_stderr", "samples_per_prompt", "prompts", "protocol"}
# The columns of rejection sampling's scored.parquet: rm_score is null without a reward model.
SCORED = ["id", "prompt", "answer", "sample_idx", "completion", "finish_reason", "n_tokens", "policy", "correct",
          "format_ok", "answer_key", "rm_score"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", [*NAMED, "own_file"])
def test_evaluation_end_to_end_on_every_benchmark(name, tiny_model, eval_dir, tmp_path):
    from evaluation.stage import run

    target = [f"benchmark={name}"]
    if name == "own_file":
        path = write_jsonl(
            tmp_path / "own_set.jsonl", [{"question": "1+1?", "gold": 2.0}, {"question": "3+4?", "gold": 7}]
        )
        target = expand_benchmark_overrides([f"benchmark={path}"])
        target += ["benchmark.problem_field=question", "benchmark.answer_field=gold"]
    cfg = eval_cfg(
        *target, f"run_dir={eval_dir}", f"name={name}", f"model.path={tiny_model['policy']}",
        "sampling.backend=transformers", "sampling.n=2", "sampling.max_new_tokens=6", "prompts.max_prompts=8",
        "progress=false", "use_cpu=true",
    )  # fmt: skip
    metrics = run(cfg)
    out = eval_dir / "eval" / name
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert set(metrics) >= CONTRACT and metrics["samples_per_prompt"] == 2
    bench = load_benchmark(cfg.benchmark, cfg.verifier)
    assert metrics["benchmark"] == ("own_set" if name == "own_file" else name)
    assert metrics["prompts"] == min(8, len(bench.items)) and metrics["benchmark_problems"] == len(
        bench.items
    )
    assert metrics["protocol"] == "r1" and "greedy_accuracy" not in metrics
    scored = pd.read_parquet(out / "scored.parquet")
    assert list(scored.columns) == SCORED and len(scored) == 2 * metrics["prompts"]
    gold = {item.id: item.answer for item in bench.items[:8]}
    assert scored["answer"].tolist() == [gold[i] for i in scored["id"]]  # normalised, not the raw field
    assert scored["correct"].notna().all()  # every gold was judgeable
    if name == "amc23":
        assert scored["answer"].iloc[0] == "27"
    if name == "gsm8k":
        assert "70000" in scored["answer"].tolist()
    if name == "aime24":
        assert "25" in scored["answer"].tolist()
    if name == "own_file":
        assert scored["answer"].tolist() == ["2", "2", "7", "7"]
    if name == "math500":
        for field in ("by_subject", "by_level"):
            groups = metrics[field]
            assert sum(g["prompts"] for g in groups.values()) == 8
            assert all(set(g) == {"pass@1", "pass@1_stderr", "prompts"} for g in groups.values())
        assert list(metrics["by_level"]) == sorted(metrics["by_level"], key=int)
        assert "## by_subject" in (out / "metrics.md").read_text()
    if name == "reasoning_gym":
        assert set(metrics["by_task"]) == {"basic_arithmetic"}  # the first 8 items are the first task's
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"samples", "scored", "benchmark", "metrics"} <= set(manifest["outputs"])
