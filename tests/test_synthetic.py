"""The synthetic OpenR1 generator: exact schema, consistent per-trace flags, flags that agree with the
verifier, deterministic for a seed."""

from __future__ import annotations

import pyarrow.parquet as pq

from core.verifier import extract_answer, verify
from data_process.openr1 import OPENR1_SCHEMA, discover_shards, validate_shards
from data_process.synthetic import SyntheticSpec, iter_rows, write_shards


def test_rows_have_consistent_flags_that_the_verifier_confirms():
    rows = list(iter_rows(SyntheticSpec(num_problems=150, seed=3)))
    kinds = {"correct": 0, "wrong": 0, "unfinished": 0}
    for row in rows:
        n = len(row["generations"])
        assert 2 <= n <= 4
        for name in ("is_reasoning_complete", "correctness_math_verify", "finish_reasons"):
            assert len(row[name]) == n
        assert row["correctness_llama"] is None or len(row["correctness_llama"]) == n
        assert row["correctness_count"] == sum(row["correctness_math_verify"])
        assert row["messages"][0] == {"content": row["problem"], "role": "user"}
        assert "<think>" not in row["solution"] and f"\\boxed{{{row['answer']}}}" in row["solution"]
        for g, complete, correct, finish in zip(
            row["generations"],
            row["is_reasoning_complete"],
            row["correctness_math_verify"],
            row["finish_reasons"],
            strict=True,
        ):
            assert complete == (finish == "stop") == ("</think>" in g)
            assert verify(g, row["answer"]) is correct
            if not complete:
                kinds["unfinished"] += 1
                assert extract_answer(g) is None
            else:
                kinds["correct" if correct else "wrong"] += 1
    assert all(v > 10 for v in kinds.values()), kinds


def test_difficulty_levels_and_duplicates_present():
    rows = list(iter_rows(SyntheticSpec(num_problems=400, seed=1, duplicate_prob=0.05)))
    levels = {row["generations"][0].count("=") for row in rows if row["is_reasoning_complete"][0]}
    assert levels == {1, 2, 3}
    problems = [r["problem"] for r in rows]
    assert any(p != q and p.endswith(q) for p in problems for q in problems[:50]) or len(set(problems)) < len(
        problems
    )


def test_deterministic_and_written_in_the_openr1_layout(tmp_path):
    spec = SyntheticSpec(num_problems=60, seed=5)
    assert list(iter_rows(spec)) == list(iter_rows(spec))
    files = write_shards(spec, tmp_path, shard_rows=25)
    assert [f.path for f in files] == [f"default/train-0000{i}-of-00003.parquet" for i in range(3)]
    shards = discover_shards(tmp_path, ["default"])
    validate_shards(shards)
    assert sum(s.rows for s in shards) == 60
    assert pq.read_schema(shards[0].path).equals(OPENR1_SCHEMA)
