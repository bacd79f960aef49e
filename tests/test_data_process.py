"""data_process: schema validation, filters, trace selection, pairs, dedup, decontamination, accounting,
manifest atomicity and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.artifacts import read_manifest, sha256_file
from data_process.config import BENCHMARK_DIR, BENCHMARKS
from data_process.dedup import Decontaminator
from data_process.openr1 import SchemaError
from data_process.records import PAIRS_SCHEMA, PROMPTS_SCHEMA, SFT_SCHEMA
from data_process.stage import run
from tests.conftest import openr1_row, write_rows


def read(out: Path, name: str) -> list[dict]:
    return pq.read_table(out / f"{name}.parquet").to_pylist()


def run_on_rows(data_process_cfg, tmp_path, rows, *overrides):
    write_rows(tmp_path / "in" / "default" / "train-00000-of-00001.parquet", rows)
    cfg = data_process_cfg(f"input_dir={tmp_path / 'in'}", "eval_fraction=0", *overrides)
    manifest = run(cfg)
    return manifest, Path(cfg.output_dir)


def test_synthetic_default_outputs_exact_columns_hashes_and_accounting(data_process_cfg):
    cfg = data_process_cfg()
    manifest = run(cfg)
    out = Path(cfg.output_dir)
    assert set(manifest.outputs) == {"sft", "pairs", "prompts"}
    for name, schema in (("sft", SFT_SCHEMA), ("pairs", PAIRS_SCHEMA), ("prompts", PROMPTS_SCHEMA)):
        table = pq.read_table(out / f"{name}.parquet")
        assert table.schema.names == schema.names
        entry = manifest.outputs[name]
        assert entry.rows == table.num_rows > 0
        assert entry.columns == schema.names
        assert entry.sha256 == sha256_file(out / entry.path)
    m = manifest.metrics
    assert m["rows_read"] == 300
    assert m["rows_read"] == m["rows_kept"] + sum(m["rows_dropped"].values())
    assert manifest.outputs["prompts"].rows == m["rows_kept"] == sum(m["prompts"].values())
    assert manifest.outputs["sft"].rows == m["sft"]["written"]
    # Decontaminated against every vendored benchmark by default; no synthetic problem overlaps one.
    assert m["decontaminated"] == dict.fromkeys(BENCHMARKS, 0) and "contaminated" not in m["rows_dropped"]
    assert (out / "config.yaml").exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "manifest.json",
        "pairs.parquet",
        "prompts.parquet",
        "sft.parquet",
    ]


def test_sft_outputs_are_verified_complete_r1_traces_never_the_reference(data_process_cfg):
    cfg = data_process_cfg()
    run(cfg)
    raw = {
        r["problem"]: r
        for s in sorted(Path(cfg.synthetic.output_dir).rglob("*.parquet"))
        for r in pq.read_table(s).to_pylist()
    }
    test_ids = {p["id"] for p in read(Path(cfg.output_dir), "prompts") if p["split"] == "test"}
    sft = read(Path(cfg.output_dir), "sft")
    for rec in sft:
        row = raw[rec["instruction"]]
        i = row["generations"].index(rec["output"])
        assert row["correctness_math_verify"][i] and row["is_reasoning_complete"][i]
        assert row["finish_reasons"][i] == "stop" and "</think>" in rec["output"]
        assert rec["output"] != row["solution"]
        assert rec["id"] not in test_ids  # held-out problems never become training data
    assert not test_ids & {p["id"] for p in read(Path(cfg.output_dir), "pairs")}


def test_missing_column_is_a_clear_error_naming_file_and_column(data_process_cfg, tmp_path):
    table = pa.Table.from_pylist([openr1_row()]).drop_columns(["generations"])
    bad = tmp_path / "in" / "default" / "train-00000-of-00001.parquet"
    bad.parent.mkdir(parents=True)
    pq.write_table(table, bad)
    with pytest.raises(SchemaError, match=r"train-00000-of-00001\.parquet.*'generations'"):
        run(data_process_cfg(f"input_dir={tmp_path / 'in'}"))
    assert not (tmp_path / "data" / "manifest.json").exists()


def test_mistyped_column_is_a_clear_error(data_process_cfg, tmp_path):
    row = openr1_row()
    table = pa.Table.from_pylist([row]).set_column(2, "answer", pa.array([4], pa.int64()))
    bad = tmp_path / "in" / "shard.parquet"
    bad.parent.mkdir(parents=True)
    pq.write_table(table, bad)
    with pytest.raises(SchemaError, match=r"shard\.parquet: column 'answer' has type int64.*expected string"):
        run(data_process_cfg(f"input_dir={tmp_path / 'in'}"))


def test_missing_tokenizer_fails_before_reading_data(data_process_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer directory 'no/such/model' does not exist"):
        run(data_process_cfg("model.path=no/such/model"))


def test_malformed_rows_are_dropped_and_counted_not_crashed(data_process_cfg, tmp_path):
    rows = [
        openr1_row(uuid="ok"),
        openr1_row(uuid="a", problem="", generations=["x"] * 4),
        openr1_row(uuid="b", problem="Compute 3 + 3.", answer=None),
        openr1_row(
            uuid="c",
            problem="Compute 4 + 4.",
            generations=[],
            is_reasoning_complete=[],
            correctness_math_verify=[],
            correctness_llama=[],
            finish_reasons=[],
        ),
        openr1_row(uuid="d", problem="Compute 5 + 5.", finish_reasons=["stop"] * 5),
        openr1_row(
            uuid="e", problem="Compute 6 + 6.", generations=["<think>6+6=12.</think> \\boxed{12}", None] * 2
        ),
        openr1_row(uuid="f", problem="Prove that 7 is prime.", answer="proof"),
        openr1_row(
            uuid="g", problem="Compute 7 + 7.", is_reasoning_complete=None
        ),  # kept: a gap, not an error
    ]
    manifest, _ = run_on_rows(data_process_cfg, tmp_path, rows)
    m = manifest.metrics
    assert m["rows_dropped"] == {
        "empty_problem": 1,
        "missing_answer": 1,
        "no_generations": 1,
        "finish_reasons_longer_than_generations": 1,
        "null_generation": 1,
        "unverifiable_answer": 1,
    }
    assert m["rows_read"] == 8 and m["rows_kept"] == 2
    # openr1_row's correctness_llama has a null for trace 3; rows dropped as malformed are not counted
    assert m["missing_flags"]["rows"] == {
        "null_element_correctness_llama": 2,
        "null_is_reasoning_complete": 1,
    }
    assert m["missing_flags"]["rows_checked"] == 2


@pytest.mark.parametrize(
    ("overrides", "expected_trace"),
    [
        ([], 2),  # shortest verified-correct complete trace
        (["traces.selection=first"], 1),
        (["traces.correctness=llama"], 1),  # llama marks trace 2 wrong
        (["traces.correctness=verifier"], 2),  # our own verifier agrees with math_verify here
    ],
)
def test_trace_selection_never_picks_wrong_unfinished_or_reference(
    data_process_cfg, tmp_path, overrides, expected_trace
):
    row = openr1_row()
    _, out = run_on_rows(data_process_cfg, tmp_path, [row], *overrides)
    sft = read(out, "sft")
    assert [r["output"] for r in sft] == [row["generations"][expected_trace]]
    assert sft[0]["instruction"] == row["problem"] and sft[0]["input"] == "" and sft[0]["answer"] == "4"


def test_selection_all_keeps_every_correct_complete_trace_up_to_k(data_process_cfg, tmp_path):
    row = openr1_row()
    _, out = run_on_rows(
        data_process_cfg, tmp_path, [row], "traces.selection=all", "traces.max_per_problem=5"
    )
    assert [r["output"] for r in read(out, "sft")] == [row["generations"][1], row["generations"][2]]
    assert [r["id"] for r in read(out, "sft")] == ["row-0-t1", "row-0-t2"]


def test_problem_without_correct_complete_trace_gives_prompt_but_no_sft(data_process_cfg, tmp_path):
    row = openr1_row(correctness_math_verify=[False, False, False, True])  # only the unfinished one "correct"
    manifest, out = run_on_rows(data_process_cfg, tmp_path, [row])
    assert read(out, "sft") == []
    assert [p["id"] for p in read(out, "prompts")] == ["row-0"]
    assert manifest.metrics["sft"]["no_correct_complete_trace"] == 1


def test_pairs_chosen_correct_rejected_wrong_closest_in_length(data_process_cfg, tmp_path):
    wrong_long = (
        "<think>Let me think carefully. 2+2=5. Double-checking: yes, 5.</think> The answer is \\boxed{5}."
    )
    row = openr1_row(
        generations=[*openr1_row()["generations"][:3], wrong_long],
        is_reasoning_complete=[True] * 4,
        correctness_math_verify=[False, True, True, False],
        correctness_llama=None,
        finish_reasons=["stop"] * 4,
    )
    _, out = run_on_rows(data_process_cfg, tmp_path, [row], "pairs.max_per_problem=2")
    pairs = read(out, "pairs")
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        (row["generations"][2], row["generations"][0]),  # short correct vs short wrong
        (row["generations"][1], wrong_long),  # long correct vs long wrong
    ]
    assert pairs[0]["prompt"] == row["problem"]


def test_no_pair_when_no_wrong_trace_and_unfinished_only_when_allowed(data_process_cfg, tmp_path):
    row = openr1_row(correctness_math_verify=[True, True, True, False], correctness_llama=None)
    _, out = run_on_rows(data_process_cfg, tmp_path, [row])
    assert read(out, "pairs") == []
    _, out = run_on_rows(
        data_process_cfg, tmp_path, [row], "pairs.allow_unfinished_rejected=true", "force=true"
    )
    assert [p["rejected"] for p in read(out, "pairs")] == [row["generations"][3]]


def test_exact_and_near_duplicates_removed_distinct_numbers_kept(data_process_cfg, tmp_path):
    story = (
        "Tom has 61 marbles in a big glass jar on the kitchen shelf. Then Tom gets 38 more from his "
        "friend at school. Then Tom gives away 17 to his little sister. How many marbles does Tom have now?"
    )
    rows = [
        openr1_row(uuid="a", problem=story),
        openr1_row(uuid="b", problem="Example 3.  " + story.upper()),  # exact after normalisation
        openr1_row(uuid="c", problem=story.replace("on the kitchen shelf", "on the shelf")),  # near
        openr1_row(uuid="d", problem=story.replace("61", "62").replace("38", "39")),  # different problem
        openr1_row(uuid="e", problem="Compute 2 + 2."),
        openr1_row(uuid="f", problem="Compute 2 + 3."),
    ]
    manifest, out = run_on_rows(data_process_cfg, tmp_path, rows)
    assert manifest.metrics["rows_dropped"] == {"duplicate_exact": 1, "duplicate_near": 1}
    assert sorted(p["id"] for p in read(out, "prompts")) == ["a", "d", "e", "f"]


def test_decontamination_drops_problems_overlapping_eval_prompts(data_process_cfg, tmp_path):
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(
        json.dumps({"problem": "A train leaves the station at 3 pm going 60 miles per hour east"})
        + "\n"
        + json.dumps({"prompt": "Compute 9 + 9."})
        + "\n"
    )
    rows = [
        openr1_row(
            uuid="a",
            problem="Problem: a train leaves the station at 3 pm going 60 miles per hour east. "
            "How far has it gone by 5 pm?",
        ),
        openr1_row(uuid="b", problem="Compute 9 + 9."),
        openr1_row(uuid="c", problem="Compute 9 + 8."),
    ]
    manifest, out = run_on_rows(data_process_cfg, tmp_path, rows, f"filters.decontaminate=[{eval_file}]")
    assert manifest.metrics["rows_dropped"] == {"contaminated": 2}
    assert [p["id"] for p in read(out, "prompts")] == ["c"]
    assert "decontaminate" in manifest.inputs
    # A user file is counted under its path, beside the benchmarks (which none of these rows overlap).
    assert manifest.metrics["decontaminated"] == {**dict.fromkeys(BENCHMARKS, 0), str(eval_file): 2}


def benchmark_problems(name: str) -> list[str]:
    rows = [json.loads(line) for line in (BENCHMARK_DIR / f"{name}.jsonl").read_text().splitlines()]
    return [r.get("problem") or r["question"] for r in rows]


def test_benchmark_problems_are_removed_by_default_and_counted_per_benchmark(data_process_cfg, tmp_path):
    """Copies of vendored benchmark problems (as they are, reworded, or inside a longer problem) are
    removed with no option set and counted under the benchmark they come from; an unrelated problem that
    shares only a short phrase, and one that differs from a short MATH-500 problem in its operator, stay."""
    math500, gsm8k = benchmark_problems("math500"), benchmark_problems("gsm8k")
    reworded = math500[5].replace("hexagon can be", "hexagon may be").replace("inches, what", "inches, find")
    unformatted = math500[8].replace("$", "").replace("Express", "Give")  # markup gone, a word changed
    assert reworded != math500[5] and unformatted != math500[8]
    rows = [
        openr1_row(uuid="copy", problem="Problem 7. " + math500[7]),
        openr1_row(uuid="reworded", problem=reworded),
        openr1_row(uuid="unformatted", problem=unformatted),
        openr1_row(
            uuid="long-ngram", problem=f"Sam asks: {' '.join(math500[10].split()[:10])} 3? Then add 3."
        ),
        openr1_row(uuid="short", problem="First, simplify $\\sqrt{242}$. Then add 1."),  # 4 words of MATH-500
        openr1_row(uuid="gsm8k", problem=gsm8k[0]),
        openr1_row(uuid="phrase", problem="Ducks lay 16 eggs per day. How many eggs in a week?"),  # 5 words
        openr1_row(uuid="operator", problem="Evaluate $(1-2i)6-3i$."),  # MATH-500 has $(1+2i)6-3i$
    ]
    manifest, out = run_on_rows(data_process_cfg, tmp_path, rows)
    m = manifest.metrics
    assert m["rows_dropped"] == {"contaminated": 6}
    assert m["decontaminated"] == {"math500": 5, "aime24": 0, "aime25": 0, "amc23": 0, "gsm8k": 1}
    assert sorted(p["id"] for p in read(out, "prompts")) == ["operator", "phrase"]
    assert set(m["decontamination"]["sources"]) == set(BENCHMARKS)
    assert m["decontamination"]["sources"]["math500"]["problems"] == 500
    assert [entry.partition(":")[0] for entry in manifest.inputs["benchmarks"].split(",")] == list(BENCHMARKS)

    # Turned off, the same rows all stay and nothing is counted.
    manifest, out = run_on_rows(
        data_process_cfg, tmp_path, rows, "filters.decontaminate_benchmarks=[]", "force=true"
    )
    assert manifest.metrics["rows_dropped"] == {} and manifest.metrics["decontaminated"] == {}
    assert "benchmarks" not in manifest.inputs and len(read(out, "prompts")) == len(rows)


def test_decontaminator_names_every_source_a_problem_overlaps():
    d = Decontaminator(
        {
            "a": ["one two three four five six seven eight nine"],
            "b": ["two three four five six seven eight nine ten"],
        },
        ngram=8,
    )
    assert d.overlaps("x two three four five six seven eight nine y") == ["a", "b"]
    assert d.overlaps("$One$ two, three: four five six seven eight") == ["a"]  # case, markup, punctuation
    assert d.overlaps("one two three four five six seven x eight") == []


def test_unknown_benchmark_name_fails_when_composed(data_process_cfg):
    with pytest.raises(ValueError, match=r"unknown \['math5000'\].*filters\.decontaminate"):
        data_process_cfg("filters.decontaminate_benchmarks=[math5000]")


def test_question_type_source_and_length_filters(data_process_cfg, tmp_path):
    rows = [
        openr1_row(uuid="a"),
        openr1_row(uuid="b", problem="Compute 3 + 3.", question_type="MCQ"),
        openr1_row(uuid="c", problem="Compute 4 + 4.", source="cn_k12"),
    ]
    manifest, out = run_on_rows(data_process_cfg, tmp_path, rows, "filters.exclude_sources=[cn_k12]")
    assert manifest.metrics["rows_dropped"] == {"question_type": 1, "source": 1}
    manifest, out = run_on_rows(
        data_process_cfg,
        tmp_path,
        rows,
        "filters.question_types=[]",
        "filters.sources=[cn_k12]",
        "force=true",
    )
    assert manifest.metrics["rows_dropped"] == {"source": 2}
    manifest, out = run_on_rows(data_process_cfg, tmp_path, rows[:1], "filters.max_tokens=20", "force=true")
    assert read(out, "sft") == [] and manifest.metrics["sft"]["too_long"] == 1


def test_sft_cap_and_fraction_keep_every_problem_as_prompt(data_process_cfg):
    full = run(data_process_cfg())
    capped = run(data_process_cfg("max_sft_records=10", "output_dir=${run_dir}/capped"))
    frac = run(data_process_cfg("sft_fraction=0.3", "output_dir=${run_dir}/frac"))
    assert capped.outputs["sft"].rows == 10
    assert capped.metrics["sft"]["capped"] == full.outputs["sft"].rows - 10
    assert 0.15 * full.outputs["sft"].rows < frac.outputs["sft"].rows < 0.45 * full.outputs["sft"].rows
    for m in (capped, frac):
        assert m.outputs["prompts"].rows == full.outputs["prompts"].rows


def test_output_does_not_depend_on_read_batch_size(data_process_cfg):
    a = run(data_process_cfg("batch_size=7", "output_dir=${run_dir}/a"))
    b = run(data_process_cfg("batch_size=1000", "output_dir=${run_dir}/b"))
    assert {k: v.sha256 for k, v in a.outputs.items()} == {k: v.sha256 for k, v in b.outputs.items()}
    assert a.config_hash == b.config_hash  # batch_size does not change outputs, so not part of the hash


def test_rerun_skips_and_config_change_redoes(data_process_cfg):
    cfg = data_process_cfg()
    first = run(cfg)
    manifest_file = Path(cfg.output_dir) / "manifest.json"
    raw_manifest = Path(cfg.synthetic.output_dir) / "manifest.json"
    mtimes = manifest_file.stat().st_mtime_ns, raw_manifest.stat().st_mtime_ns
    again = run(data_process_cfg())
    assert again.finished_at == first.finished_at
    assert (manifest_file.stat().st_mtime_ns, raw_manifest.stat().st_mtime_ns) == mtimes
    changed = run(data_process_cfg("eval_fraction=0.2"))
    assert changed.config_hash != first.config_hash
    assert changed.metrics["prompts"]["test"] > first.metrics["prompts"]["test"]


def test_crash_mid_run_leaves_no_manifest_and_rerun_completes(data_process_cfg, monkeypatch):
    from data_process import stage

    cfg = data_process_cfg("batch_size=50")
    run(cfg)  # a complete earlier output...
    calls = {"n": 0}
    original = stage._Processor.process_batch

    def crash_on_third_batch(self, rows):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return original(self, rows)

    monkeypatch.setattr(stage._Processor, "process_batch", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        run(data_process_cfg("batch_size=50", "eval_fraction=0.3"))  # ...then a changed config crashes
    out = Path(cfg.output_dir)
    assert read_manifest(out) is None  # the old manifest was invalidated before rewriting
    assert not list(out.glob(".*.tmp"))
    monkeypatch.setattr(stage._Processor, "process_batch", original)
    manifest = run(data_process_cfg("batch_size=50", "eval_fraction=0.3"))
    assert read_manifest(out).config_hash == manifest.config_hash


def test_near_duplicate_needs_the_same_numbers():
    from data_process.dedup import NearDuplicateIndex

    index = NearDuplicateIndex(threshold=0.5)
    story = "Sara has 13 stamps in her big blue album at home. Then Sara gets 32 more from a friend. How many now?"
    assert index.add_if_new(story)
    assert not index.add_if_new(story.replace("big blue album", "big album"))  # same numbers: duplicate
    assert index.add_if_new(story.replace("32", "21"))  # one number changed: a different problem


# ---------------------------------------------------------------------------------------------------------
# Real OpenR1 rows with missing per-trace flags, and the two repository layouts

CORRECT = "<think>2+2=4.</think> The answer is \\boxed{4}."
WRONG = "<think>2+2=5.</think> The answer is \\boxed{5}."


def real_row0_shape(**overrides):
    """The shape of real row 0 of config `default`: finish_reasons and correctness_llama null."""
    return openr1_row(
        generations=[CORRECT, WRONG],
        is_reasoning_complete=[True, True],
        correctness_math_verify=[True, False],
        correctness_llama=None,
        finish_reasons=None,
        **overrides,
    )


def test_real_row0_shape_yields_trace_0_and_counts_the_gaps(data_process_cfg, tmp_path):
    manifest, out = run_on_rows(data_process_cfg, tmp_path, [real_row0_shape()])
    m = manifest.metrics
    assert m["rows_dropped"] == {} and m["rows_kept"] == 1
    assert [r["output"] for r in read(out, "sft")] == [CORRECT]
    assert [(p["chosen"], p["rejected"]) for p in read(out, "pairs")] == [(CORRECT, WRONG)]
    assert m["missing_flags"] == {
        "rows_checked": 1,
        "traces_checked": 2,
        "rows": {"null_correctness_llama": 1, "null_finish_reasons": 1},
        "traces": {"completeness_from_is_reasoning_complete": 2},
    }


@pytest.mark.parametrize(("policy", "n_sft"), [("llama", 0), ("both", 0), ("either", 1), ("verifier", 1)])
def test_null_correctness_list_verifies_nothing_under_policies_that_need_it(
    data_process_cfg, tmp_path, policy, n_sft
):
    manifest, out = run_on_rows(
        data_process_cfg, tmp_path, [real_row0_shape()], f"traces.correctness={policy}"
    )
    assert [r["output"] for r in read(out, "sft")] == [CORRECT] * n_sft
    assert manifest.metrics["sft"].get("no_correct_complete_trace", 0) == 1 - n_sft


def short_lists_row():
    """openr1_row with short per-trace lists: correctness_math_verify covers traces 0-1 (and 0 is null),
    finish_reasons covers 0-2; trace 3 is complete only by is_reasoning_complete, which says False."""
    return openr1_row(
        correctness_math_verify=[None, True],
        correctness_llama=None,
        finish_reasons=["stop", "stop", "stop"],
    )


def test_short_lists_flag_only_the_traces_they_cover(data_process_cfg, tmp_path):
    row = short_lists_row()
    manifest, out = run_on_rows(data_process_cfg, tmp_path, [row])
    m = manifest.metrics
    assert m["rows_dropped"] == {}
    # trace 2 (the shortest correct one) has no flag: not verified, so the longer trace 1 is the output
    assert [r["output"] for r in read(out, "sft")] == [row["generations"][1]]
    # trace 0 (wrong, but unflagged) is not known to be wrong: no pair rather than a guessed negative
    assert read(out, "pairs") == [] and m["pairs"]["no_pair"] == 1
    assert m["missing_flags"]["rows"] == {
        "null_correctness_llama": 1,
        "null_element_correctness_math_verify": 1,
        "short_correctness_math_verify": 1,
        "short_finish_reasons": 1,
    }
    assert m["missing_flags"]["traces"] == {
        "completeness_from_is_reasoning_complete": 1,
        "no_correctness_flag": 3,
    }


def test_verifier_policy_rechecks_traces_without_flags(data_process_cfg, tmp_path):
    row = short_lists_row()
    _, out = run_on_rows(data_process_cfg, tmp_path, [row], "traces.correctness=verifier")
    assert [r["output"] for r in read(out, "sft")] == [row["generations"][2]]
    assert [(p["chosen"], p["rejected"]) for p in read(out, "pairs")] == [
        (row["generations"][2], row["generations"][0])
    ]


def write_layout(root: Path, files: dict[str, list[dict]]) -> Path:
    for rel, rows in files.items():
        write_rows(root / rel, rows)
    return root


ROW_A = openr1_row(uuid="a")
ROW_B = openr1_row(uuid="b", problem="What is 3 + 1?")


@pytest.mark.parametrize(
    ("files", "read_files"),
    [
        (  # early revisions
            {
                "default/train-00000-of-00001.parquet": [ROW_A],
                "extended/train-00000-of-00001.parquet": [ROW_B],
            },
            ["default/train-00000-of-00001.parquet", "extended/train-00000-of-00001.parquet"],
        ),
        (  # later revisions: all/ holds the same rows again
            {
                "data/train-00000-of-00001.parquet": [ROW_A],
                "extended/train-00000-of-00001.parquet": [ROW_B],
                "all/default-00000-of-00001.parquet": [ROW_A],
                "all/extended-00000-of-00001.parquet": [ROW_B],
            },
            ["data/train-00000-of-00001.parquet", "extended/train-00000-of-00001.parquet"],
        ),
    ],
)
def test_both_repository_layouts_read_every_row_once(data_process_cfg, tmp_path, files, read_files):
    root = write_layout(tmp_path / "in", files)
    manifest = run(data_process_cfg(f"input_dir={root}", "eval_fraction=0"))
    m = manifest.metrics
    assert sorted(m["input_files"]["read"]) == read_files
    assert m["input_files"]["read"][read_files[0]] == {"subset": "default", "rows": 1}
    assert sorted(m["input_files"]["skipped"]) == sorted(set(files) - set(read_files))
    assert all("all/ (config all) repeats" in why for why in m["input_files"]["skipped"].values())
    assert m["rows_read"] == 2 and m["rows_dropped"] == {}  # not doubled, no "duplicates" dropped


def plan(root: Path, subsets=None) -> tuple[list[str], dict[str, str]]:
    from data_process.openr1 import plan_shards

    described = plan_shards(root, subsets).describe()
    return sorted(described["read"]), described["skipped"]


LATER = {
    "data/train-00000-of-00002.parquet": [ROW_A],
    "data/train-00001-of-00002.parquet": [ROW_A],
    "extended/train-00000-of-00001.parquet": [ROW_B],
    "all/default-00000-of-00001.parquet": [ROW_A],
    "all/extended-00000-of-00001.parquet": [ROW_B],
}


def test_subsets_select_configs_in_either_layout(tmp_path):
    root = write_layout(tmp_path / "later", LATER)
    read_files, skipped = plan(root, ["default"])
    assert read_files == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    assert skipped["extended/train-00000-of-00001.parquet"] == "subset 'extended' not in subsets ['default']"
    assert skipped["all/extended-00000-of-00001.parquet"] == "subset 'extended' not in subsets ['default']"
    assert (
        "repeats the config 'default' rows that data/ holds" in skipped["all/default-00000-of-00001.parquet"]
    )
    assert plan(root, ["extended"])[0] == ["extended/train-00000-of-00001.parquet"]
    assert plan(root, ["all"])[0] == plan(root)[0] == [*read_files, "extended/train-00000-of-00001.parquet"]
    early = write_layout(tmp_path / "early", {"default/x.parquet": [ROW_A], "extended/y.parquet": [ROW_B]})
    assert plan(early, ["default"])[0] == ["default/x.parquet"]
    with pytest.raises(FileNotFoundError, match="subset 'extnded' matches no parquet file"):
        plan(root, ["extnded"])


def test_all_folder_is_read_only_for_configs_whose_folder_is_absent(tmp_path):
    only_all = write_layout(tmp_path / "a", {k: v for k, v in LATER.items() if k.startswith("all/")})
    assert plan(only_all) == (
        ["all/default-00000-of-00001.parquet", "all/extended-00000-of-00001.parquet"],
        {},
    )
    partial = write_layout(tmp_path / "b", {k: v for k, v in LATER.items() if not k.startswith("extended/")})
    read_files, skipped = plan(partial)
    assert read_files == sorted(k for k in LATER if k.startswith(("data/", "all/extended")))
    assert list(skipped) == ["all/default-00000-of-00001.parquet"]
    both_revisions = write_layout(tmp_path / "c", {"data/x.parquet": [ROW_A], "default/x.parquet": [ROW_A]})
    read_files, skipped = plan(both_revisions)
    assert read_files == ["data/x.parquet"] and "only data/ is read" in skipped["default/x.parquet"]


def test_configs_are_read_default_first_whatever_folder_holds_them(tmp_path):
    from data_process.openr1 import plan_shards

    partial = write_layout(tmp_path / "b", {k: v for k, v in LATER.items() if not k.startswith("extended/")})
    shards = plan_shards(partial).shards
    assert [s.path.relative_to(partial).as_posix() for s in shards] == [
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
        "all/extended-00000-of-00001.parquet",
    ]
    assert [s.subset for s in shards] == ["default", "default", "extended"]


def test_flat_folder_single_file_and_hidden_files(tmp_path):
    flat = write_layout(
        tmp_path / "flat",
        {"a.parquet": [ROW_A], "b.parquet": [ROW_B], ".cache/huggingface/c.parquet": [ROW_A]},
    )
    read_files, skipped = plan(flat)
    assert read_files == ["a.parquet", "b.parquet"]
    assert list(skipped) == [".cache/huggingface/c.parquet"]
    assert plan(flat / "a.parquet", ["default"]) == (["a.parquet"], {})  # subsets choose folders, not files
