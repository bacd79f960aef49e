"""Rejection sampling: metrics against hand-computed values, selection policies and pairs on hand-made
scored samples with known answers, verification of samples, and the whole stage on the tiny model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core import chunks
from core.chunks import ChunkedOutput, ChunkError, differing_keys, read_fingerprint, reusable
from core.config import compose, to_typed
from reject_sampling.config import SelectionConfig
from reject_sampling.metrics import (
    answer_key,
    default_ks,
    maj_at_k,
    majority_correct,
    pass_at_k,
    sample_metrics,
)
from reject_sampling.scoring import clear_intermediates, needs_reward_score, verify_samples
from reject_sampling.select import PAIR_COLUMNS, SELECTED_COLUMNS, acceptance, make_pairs, select, to_records

REPO = Path(__file__).resolve().parent.parent


def trace(answer: str, think: str = "1+1=2.") -> str:
    return f"<think>{think}</think> The answer is \\boxed{{{answer}}}."


# --------------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 0, 1, 0.0),
        (4, 1, 1, 0.25),
        (4, 1, 2, 1 - 3 / 6),  # 1 - C(3,2)/C(4,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (4, 3, 2, 1.0),  # fewer than k wrong samples: some draw of k always holds a correct one
        (4, 4, 4, 1.0),
    ],
)
def test_pass_at_k_is_the_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_needs_k_samples():
    with pytest.raises(ValueError, match="pass@8 needs at least 8"):
        pass_at_k(4, 1, 8)


def test_majority_vote_counts_answers_and_breaks_ties_by_first_seen():
    assert majority_correct(["5", "5", "7", None], [True, True, False, False])
    assert not majority_correct(["7", "5"], [False, True])  # tie: the first answer seen wins
    assert not majority_correct([None, None], [False, False])  # nobody voted
    assert majority_correct([None, "3", "4", "3"], [False, True, False, True])
    # maj@2 over 4 samples = mean over the groups [5, 5] (right) and [7, None] (wrong)
    assert maj_at_k(["5", "5", "7", None], [True, True, False, False], 2) == 0.5


def test_answer_key_normalises_the_final_answer():
    assert answer_key(trace("1 2")) == "12"
    assert answer_key(trace("42.")) == "42"
    assert answer_key("<think>unfinished 3+4=") is None


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(4) == [1, 2, 4]
    assert default_ks(6) == [1, 2, 4, 6]


def scored_samples() -> pd.DataFrame:
    """Two prompts, four samples each, with verdicts, reward scores and lengths chosen by hand.

    p1 (gold 12): correct, correct, wrong (7), truncated; reward model prefers the wrong one.
    p2 (gold 5):  wrong (4), wrong (4), correct, correct.
    """
    rows = [
        ("p1", 0, trace("12"), "stop", 10, True, 0.1),
        ("p1", 1, trace("12", "2+10=12."), "stop", 12, True, 0.5),
        ("p1", 2, trace("7"), "stop", 8, False, 0.9),
        ("p1", 3, "<think>2+10=", "length", 20, False, -1.0),
        ("p2", 0, trace("4"), "stop", 6, False, 0.2),
        ("p2", 1, trace("4"), "stop", 6, False, -0.3),
        ("p2", 2, trace("5"), "stop", 7, True, 0.0),
        ("p2", 3, trace("5", "2+3=5."), "stop", 9, True, 0.4),
    ]
    df = pd.DataFrame(
        rows, columns=["id", "sample_idx", "completion", "finish_reason", "n_tokens", "correct", "rm_score"]
    )
    prompt = {"p1": "What is 2 + 10?", "p2": "What is 2 + 3?"}
    gold = {"p1": "12", "p2": "5"}
    return df.assign(
        prompt=df["id"].map(prompt),
        answer=df["id"].map(gold),
        correct=df["correct"].astype("boolean"),
        format_ok=[c.endswith("}.") for c in df["completion"]],
        answer_key=[answer_key(c) for c in df["completion"]],
    )


def test_sample_metrics_match_hand_computed_values():
    m = sample_metrics(scored_samples())
    assert m["prompts"] == 2 and m["samples"] == 8 and m["samples_per_prompt"] == 4
    assert m["pass@1"] == pytest.approx(0.5)  # 2/4 on both prompts
    assert m["pass@2"] == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2) on both
    # maj@2: p1 groups [12, 12] right, [7, none] wrong -> 0.5; p2 [4, 4] wrong, [5, 5] right -> 0.5
    assert m["maj@2"] == pytest.approx(0.5)
    # maj@4: p1 12 (2 votes) beats 7 -> right; p2 4 and 5 tie at 2, 4 seen first -> wrong
    assert m["maj@4"] == pytest.approx(0.5)
    # best-of-N: p1's top score (0.9) is the wrong 7; p2's top (0.4) is a correct 5
    assert m["best_of_n_rm"] == pytest.approx(0.5)
    assert m["truncation_rate"] == pytest.approx(1 / 8)
    assert m["always_solved_rate"] == 0.0 and m["never_solved_rate"] == 0.0
    assert m["completion_tokens"]["mean"] == pytest.approx(78 / 8) and m["completion_tokens"]["max"] == 20
    assert m["format_ok_rate"] == pytest.approx(7 / 8)


def test_unverifiable_samples_count_as_not_correct():
    df = scored_samples()
    df.loc[df["id"] == "p2", "correct"] = pd.NA
    m = sample_metrics(df)
    assert m["pass@1"] == pytest.approx(0.25)
    assert m["unverifiable_rate"] == pytest.approx(0.5)


def test_metrics_refuse_uneven_sample_counts():
    with pytest.raises(ValueError, match="different sample counts"):
        sample_metrics(scored_samples().iloc[:-1])


# --------------------------------------------------------------------------------------------- selection


def test_best_of_n_keeps_the_highest_scored_correct_sample():
    kept = select(scored_samples(), SelectionConfig())
    assert kept[["id", "sample_idx"]].values.tolist() == [["p1", 1], ["p2", 3]]


def test_verified_keeps_up_to_k_distinct_correct_samples():
    df = scored_samples()
    df.loc[(df["id"] == "p2") & (df["sample_idx"] == 3), "completion"] = df.loc[
        (df["id"] == "p2") & (df["sample_idx"] == 2), "completion"
    ].iloc[0]  # a duplicate of sample 2
    kept = select(df, SelectionConfig(policy="verified", k=2))
    assert kept[["id", "sample_idx"]].values.tolist() == [["p1", 0], ["p1", 1], ["p2", 2]]


def test_rm_threshold_ignores_the_verifier_but_not_format_or_truncation():
    kept = select(scored_samples(), SelectionConfig(policy="rm_threshold", threshold=0.3, k=4))
    assert kept[["id", "sample_idx"]].values.tolist() == [["p1", 2], ["p1", 1], ["p2", 3]]


def test_drop_always_solved_and_truncated_and_format():
    df = scored_samples()
    df.loc[df["id"] == "p2", "correct"] = True
    df.loc[(df["id"] == "p2"), "format_ok"] = True
    kept = select(df, SelectionConfig(policy="verified", k=4, drop_always_solved=True))
    assert set(kept["id"]) == {"p1"}
    df.loc[(df["id"] == "p1") & (df["sample_idx"] == 3), "correct"] = True  # truncated and "correct"
    kept = select(df, SelectionConfig(policy="verified", k=4))
    assert 3 not in kept[kept["id"] == "p1"]["sample_idx"].tolist()
    kept = select(df, SelectionConfig(policy="verified", k=4, drop_truncated=False, require_format=False))
    assert 3 in kept[kept["id"] == "p1"]["sample_idx"].tolist()


def test_pairs_are_best_correct_against_worst_wrong():
    pairs = make_pairs(scored_samples())
    assert list(pairs.columns) == PAIR_COLUMNS
    by_id = pairs.set_index("id")
    samples = scored_samples().set_index(["id", "sample_idx"])["completion"]
    assert (
        by_id.loc["p1", "chosen"] == samples[("p1", 1)] and by_id.loc["p1", "rejected"] == samples[("p1", 3)]
    )
    assert (
        by_id.loc["p2", "chosen"] == samples[("p2", 3)] and by_id.loc["p2", "rejected"] == samples[("p2", 1)]
    )
    assert by_id.loc["p1", "prompt"] == "What is 2 + 10?"


def test_no_pair_without_a_judged_wrong_sample():
    df = scored_samples()
    df.loc[(df["id"] == "p2") & (~df["correct"].fillna(False)), "correct"] = pd.NA
    assert make_pairs(df)["id"].tolist() == ["p1"]


def test_only_prompts_with_a_sample_not_judged_wrong_need_reward_scores():
    df = scored_samples()  # p1 and p2 each have correct samples
    df.loc[df["id"] == "p2", "correct"] = False
    assert needs_reward_score(df).tolist() == [True] * 4 + [False] * 4
    df.loc[(df["id"] == "p2") & (df["sample_idx"] == 3), "correct"] = pd.NA  # unverifiable: may be right
    assert needs_reward_score(df).all()


def test_results_do_not_depend_on_scores_of_prompts_with_no_correct_sample():
    full = scored_samples()
    full = pd.concat([full, full[full["id"] == "p2"].assign(id="p3", correct=False)], ignore_index=True)
    partial = full.assign(rm_score=full["rm_score"].where(needs_reward_score(full)))
    assert partial["rm_score"].isna().sum() == 4  # p3's, and only p3's, scores are missing
    assert sample_metrics(partial) == sample_metrics(full)
    assert sample_metrics(partial)["best_of_n_rm"] == pytest.approx(1 / 3)  # p2 right, p1 and p3 wrong
    pd.testing.assert_frame_equal(make_pairs(partial), make_pairs(full))
    cfg = SelectionConfig(policy="best_of_n_rm")
    pd.testing.assert_frame_equal(select(partial, cfg), select(full, cfg))
    # With a reward model, a run whose every prompt is wrong still reports best-of-N (0).
    wrong = partial[partial["id"] == "p3"]
    assert sample_metrics(wrong, best_of_n=True)["best_of_n_rm"] == 0.0
    assert "best_of_n_rm" not in sample_metrics(wrong)


def test_selected_records_have_the_sft_columns():
    df = scored_samples()
    kept = select(df, SelectionConfig())
    records = to_records(kept, [31, 32], sources=["amc", "synthetic"])
    assert list(records.columns) == SELECTED_COLUMNS
    assert records["instruction"].tolist() == ["What is 2 + 10?", "What is 2 + 3?"]
    assert records["input"].tolist() == ["", ""] and records["n_tokens"].tolist() == [31, 32]
    assert records["source"].tolist() == ["amc", "synthetic"] and records["sample_idx"].tolist() == [1, 3]
    assert acceptance(df, kept) == {
        "selected_records": 2,
        "selected_prompts": 2,
        "acceptance_rate": 1.0,
        "sample_acceptance_rate": 0.25,
    }


# --------------------------------------------------------------------------------------------- scoring


def test_verify_samples_judges_against_the_gold_and_skips_missing_golds():
    df = pd.DataFrame(
        {
            "completion": [trace("12"), trace("13"), "<think>12", trace("\\frac{1}{2}"), trace("3")],
            "answer": ["12", "12", "12", "0.5", None],
        }
    )
    out = verify_samples(df, "math", workers=0)
    assert out["correct"].astype(object).where(out["correct"].notna(), None).tolist() == [
        True,
        False,
        False,
        True,
        None,
    ]
    assert out["format_ok"].tolist() == [True, True, False, True, True]
    assert out["answer_key"].fillna("-").tolist() == ["12", "13", "-", "\\frac{1}{2}", "3"]


def test_clear_intermediates_removes_only_with_force_and_drops_the_old_marker(tmp_path):
    """Steps keep or redo their own files by fingerprint: starting a stage removes nothing but the
    `.progress.json` older versions wrote, and with force=true every listed file and folder."""
    names = ["samples.parquet", "samples.parquet.parts"]
    (tmp_path / "samples.parquet").write_text("x")
    (tmp_path / "samples.parquet.parts").mkdir()
    (tmp_path / ".progress.json").write_text("{}")
    clear_intermediates(tmp_path, names)
    assert (tmp_path / "samples.parquet").exists() and (tmp_path / "samples.parquet.parts").is_dir()
    assert not (tmp_path / ".progress.json").exists()
    clear_intermediates(tmp_path, names, force=True)
    assert not (tmp_path / "samples.parquet").exists() and not (tmp_path / "samples.parquet.parts").exists()


# --------------------------------------------------------------------------------------------- core.chunks

FINGERPRINT = {"input": "sha-of-input", "config": {"max_length": 64, "columns": ["a"]}, "model": "weights-1"}
ROWS_SCHEMA = pa.schema([("i", pa.int64()), ("text", pa.string())])


def rows(start: int, stop: int) -> pa.Table:
    return pa.table(
        {"i": list(range(start, stop)), "text": [f"row {i}" for i in range(start, stop)]}, ROWS_SCHEMA
    )


def five_rows(tmp_path: Path, fingerprint: dict, chunk_size: int = 2, **kw) -> ChunkedOutput:
    """A chunked output of 5 input rows: chunks [0, 2), [2, 4), [4, 5) at chunk size 2."""
    return ChunkedOutput(tmp_path / "out.parquet", fingerprint, 5, chunk_size, label="test", **kw)


def test_chunks_resume_under_the_same_fingerprint_and_merge_in_input_order(tmp_path, caplog):
    first = five_rows(tmp_path, FINGERPRINT)
    assert first.start() == [0, 1, 2]
    recorded = json.loads((first.parts_dir / "fingerprint.json").read_text())
    assert recorded == {**FINGERPRINT, "chunks": {"items": 5, "chunk_size": 2}}  # before any part
    assert [first.bounds(k) for k in range(3)] == [(0, 2), (2, 4), (4, 5)]
    first.write(2, rows(4, 5))  # chunks done out of order: the merge still follows the input
    first.write(0, rows(0, 2))

    again = five_rows(tmp_path, json.loads(json.dumps(FINGERPRINT)))  # as read back from JSON: the same
    with caplog.at_level("INFO", logger="core.chunks"):
        assert again.start() == [1]
    assert "resuming: 2 of 3 chunks done" in caplog.text
    with pytest.raises(ChunkError, match=r"1 chunk\(s\) not done \(part-00001\.parquet\)"):
        again.merge(ROWS_SCHEMA)
    again.write(1, rows(2, 4))
    merged = again.merge(ROWS_SCHEMA)

    output = tmp_path / "out.parquet"
    assert merged["i"].to_pylist() == pq.read_table(output)["i"].to_pylist() == [0, 1, 2, 3, 4]
    assert not again.parts_dir.exists()
    assert read_fingerprint(output) == FINGERPRINT
    assert pq.read_metadata(output).row_group(0).column(0).compression == "ZSTD"
    assert five_rows(tmp_path, FINGERPRINT).reusable()
    assert not five_rows(tmp_path, {**FINGERPRINT, "model": "weights-2"}).reusable()
    assert not five_rows(tmp_path, FINGERPRINT, force=True).reusable()


def test_parts_of_another_fingerprint_or_layout_or_none_are_removed_and_work_restarts(tmp_path, caplog):
    old = five_rows(tmp_path, FINGERPRINT)
    old.start()
    old.write(0, rows(0, 2))
    changed = {**FINGERPRINT, "model": "weights-2", "config": {"max_length": 128, "columns": ["a"]}}
    other = five_rows(tmp_path, changed)
    with caplog.at_level("INFO", logger="core.chunks"):
        assert other.start() == [0, 1, 2]
    assert "(config.max_length, model differ): removing 1 part(s)" in caplog.text
    assert not other.part(0).exists()
    assert json.loads((other.parts_dir / "fingerprint.json").read_text())["model"] == "weights-2"

    other.write(0, rows(0, 2))
    caplog.clear()
    with caplog.at_level("INFO", logger="core.chunks"):
        assert five_rows(tmp_path, changed, chunk_size=3).start() == [0, 1]  # other rows per part
    assert "chunks.chunk_size differ" in caplog.text

    # Parts without a fingerprint (an older sample.py's plan.json, parts copied by hand) are not trusted.
    shutil.rmtree(other.parts_dir)
    other.parts_dir.mkdir()
    (other.parts_dir / "plan.json").write_text('{"chunk_prompts": 2}')
    pq.write_table(rows(100, 102), other.part(0))
    caplog.clear()
    with caplog.at_level("INFO", logger="core.chunks"):
        assert other.start() == [0, 1, 2]
    assert "no readable fingerprint.json" in caplog.text and not other.part(0).exists()

    # force: the same fingerprint, and still everything again.
    other.write(0, rows(0, 2))
    assert five_rows(tmp_path, changed, force=True).start() == [0, 1, 2]
    with pytest.raises(ChunkError, match="reserved"):
        five_rows(tmp_path, {"chunks": 1})


def test_a_part_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    chunked = five_rows(tmp_path, FINGERPRINT)
    chunked.start()
    real_write = pq.write_table

    def dies_half_way(table, where, **kwargs):
        real_write(table.slice(0, 1), where, **kwargs)  # half the rows on disk, then the disk is full
        raise OSError("No space left on device")

    monkeypatch.setattr(chunks.pq, "write_table", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        chunked.write(0, rows(0, 2))
    monkeypatch.undo()
    assert sorted(p.name for p in chunked.parts_dir.iterdir()) == ["fingerprint.json"]
    # What a SIGKILL mid-write leaves, the temporary file, is no finished chunk either.
    (chunked.parts_dir / ".part-00000.parquet.x1y2.tmp").write_bytes(b"PAR1 half a file")
    assert five_rows(tmp_path, FINGERPRINT).start() == [0, 1, 2]


def test_a_finished_file_is_reused_only_when_it_records_the_same_fingerprint(tmp_path, caplog):
    path = tmp_path / "scored.parquet"
    pq.write_table(rows(0, 2), path)  # written by something else: no fingerprint
    with caplog.at_level("INFO", logger="core.chunks"):
        assert not reusable(path, FINGERPRINT)
    assert "records no fingerprint" in caplog.text
    chunks.write_parquet(rows(0, 2), path, FINGERPRINT)
    assert reusable(path, FINGERPRINT) and not reusable(path, FINGERPRINT, force=True)
    caplog.clear()
    with caplog.at_level("INFO", logger="core.chunks"):
        assert not reusable(path, {**FINGERPRINT, "input": "sha-of-other-input"})
    assert "(input differ)" in caplog.text
    path.write_text("not parquet")
    assert read_fingerprint(path) is None and not reusable(path, FINGERPRINT)
    assert differing_keys({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 1, "c": 9}, "e": 3}) == [
        "a.c",
        "d",
        "e",
    ]


# --------------------------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def prompt_dir(tmp_path_factory, tiny_model):
    """A finished data_process output (prompts with gold answers) on the tiny tokenizer."""
    from data_process.config import DataProcessConfig
    from data_process.stage import run as data_run

    run_dir = tmp_path_factory.mktemp("rs_run")
    over = [
        f"run_dir={run_dir}",
        f"model.path={tiny_model['policy']}",
        "progress=false",
        "synthetic.num_problems=60",
    ]
    data_run(to_typed(compose("data_process", over), DataProcessConfig))
    return run_dir


def rs_cfg(run_dir: Path, tiny_model: dict[str, str], *extra: str):
    from reject_sampling.config import RejectSamplingConfig

    over = [
        f"run_dir={run_dir}",
        f"model.path={tiny_model['policy']}",
        f"reward_model.path={tiny_model['reward_model']}",
        "prompts.max_prompts=12",
        "sampling.backend=transformers",
        "sampling.n=2",
        "sampling.max_new_tokens=24",
        "progress=false",
        "use_cpu=true",
        *extra,
    ]
    return to_typed(compose("reject_sampling", over), RejectSamplingConfig)


@pytest.mark.slow
def test_stage_samples_scores_selects_and_skips_when_complete(prompt_dir, tiny_model):
    from core.artifacts import read_manifest
    from reject_sampling.stage import run

    # An untrained policy is never right, so keep by reward-model score alone to exercise the whole path.
    cfg = rs_cfg(prompt_dir, tiny_model, "selection.policy=rm_threshold", "selection.threshold=-1e9",
                 "selection.require_format=false", "selection.drop_truncated=false", "selection.k=1")  # fmt: skip
    manifest = run(cfg)
    out = Path(cfg.output_dir)
    scored = pd.read_parquet(out / "scored.parquet")
    assert len(scored) == 24 and scored.groupby("id").size().eq(2).all()
    assert {"id", "prompt", "answer", "sample_idx", "completion", "finish_reason", "n_tokens", "policy",
            "correct", "format_ok", "answer_key", "rm_score"} <= set(scored.columns)  # fmt: skip
    assert scored["rm_score"].map(math.isfinite).all() and scored["correct"].notna().all()
    selected = pd.read_parquet(out / "selected.parquet")
    assert (
        list(selected.columns) == SELECTED_COLUMNS and len(selected) == 12
    )  # the best-scored sample per prompt
    best = scored.sort_values(["id", "rm_score"], ascending=[True, False]).groupby("id").head(1)
    assert sorted(zip(selected["id"], selected["output"], strict=True)) == sorted(
        zip(best["id"], best["completion"], strict=True)
    )
    assert manifest.metrics["prompts"] == 12 and manifest.metrics["pass@1"] == 0.0
    assert set(manifest.outputs) == {"samples", "scored", "selected", "pairs"}
    assert not (out / "verified.parquet").exists()
    finished = read_manifest(out).finished_at
    assert run(cfg).finished_at == finished  # complete for this config and inputs: skipped

    # Another selection only: samples and scores are kept (their fingerprints match), selection redone.
    mtimes = {name: (out / name).stat().st_mtime_ns for name in ("samples.parquet", "scored.parquet")}
    cfg2 = rs_cfg(prompt_dir, tiny_model, "selection.policy=rm_threshold", "selection.threshold=-1e9",
                  "selection.require_format=false", "selection.drop_truncated=false", "selection.k=2")  # fmt: skip
    assert run(cfg2).outputs["selected"].rows == 24  # both samples of every prompt
    assert {name: (out / name).stat().st_mtime_ns for name in mtimes} == mtimes

    # A different config does not reuse the old samples.
    cfg3 = rs_cfg(prompt_dir, tiny_model, "sampling.n=3", "selection.policy=verified")
    manifest = run(cfg3)
    assert manifest.metrics["samples"] == 36 and manifest.outputs["selected"].rows == 0


def test_stage_checks_its_inputs_before_loading_anything(prompt_dir, tiny_model, tmp_path):
    from reject_sampling.stage import run

    with pytest.raises(FileNotFoundError, match="policy"):
        run(rs_cfg(prompt_dir, tiny_model, f"model.path={tmp_path}/nope"))
    questions = tmp_path / "q.txt"
    questions.write_text("What is 1 + 1?\nWhat is 2 + 2?\n")
    with pytest.raises(ValueError, match="no gold answers"):
        run(rs_cfg(prompt_dir, tiny_model, f"prompts.path={questions}", "prompts.split=null"))
    with pytest.raises(ValueError, match="needs reward-model scores"):
        rs_cfg(prompt_dir, tiny_model, "use_reward_model=false")


@pytest.mark.slow
def test_evaluate_writes_metrics(prompt_dir, tiny_model):
    from evaluation.config import EvaluateConfig
    from evaluation.stage import run

    over = [
        f"run_dir={prompt_dir}",
        f"model.path={tiny_model['policy']}",
        "name=untrained",
        "sampling.backend=transformers",
        "sampling.n=4",
        "sampling.max_new_tokens=16",
        "prompts.max_prompts=6",
        "progress=false",
        "use_cpu=true",
    ]
    metrics = run(to_typed(compose("evaluate", over), EvaluateConfig))
    out = Path(prompt_dir) / "eval" / "untrained"
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["prompts"] == 6 and metrics["samples_per_prompt"] == 4
    assert {"pass@1", "pass@2", "pass@4", "maj@2", "maj@4", "greedy_accuracy", "truncation_rate"} <= set(
        metrics
    )
    assert "| pass@1 |" in (out / "metrics.md").read_text()
    assert len(pd.read_parquet(out / "greedy.parquet")) == 6

    # Killed after its files, before its manifest: the rerun samples nothing again (the judged greedy file
    # keeps sample.py's fingerprint) and gives the same metrics.
    made = {name: (out / name).stat().st_mtime_ns for name in ("samples.parquet", "greedy.parquet")}
    (out / "manifest.json").unlink()
    again = run(to_typed(compose("evaluate", over), EvaluateConfig))
    assert {k: v for k, v in again.items() if k != "preview"} == {
        k: v for k, v in metrics.items() if k != "preview"
    }
    assert (out / "samples.parquet").stat().st_mtime_ns == made["samples.parquet"]
    assert not (out / "samples.parquet.parts").exists() and not (out / "greedy.parquet.parts").exists()


@pytest.mark.slow
def test_reward_model_scores_exactly_the_rows_that_need_it(tiny_model, tmp_path):
    """The scorer skips prompts whose samples are all wrong; the scores it gives match a full scoring."""
    from core.config import ModelConfig
    from reject_sampling.scoring import score_with_reward_model

    verified = scored_samples().drop(columns="rm_score")
    verified.loc[verified["id"] == "p2", "correct"] = False
    path = tmp_path / "verified.parquet"
    verified.to_parquet(path)
    rm = ModelConfig(name="rm", path=tiny_model["reward_model"])

    def scored(every_row: bool) -> pd.DataFrame:
        out = tmp_path / f"scored_{every_row}.parquet"
        return score_with_reward_model(
            path, out, rm, every_row=every_row, max_length=64, batch_tokens=256, use_cpu=True, progress=False
        )

    full, partial = scored(True), scored(False)
    assert full["rm_score"].map(math.isfinite).all()
    assert partial["rm_score"].isna().tolist() == [False] * 4 + [True] * 4
    assert partial["rm_score"][:4].tolist() == pytest.approx(full["rm_score"][:4].tolist(), abs=1e-5)
    pd.testing.assert_frame_equal(partial.drop(columns="rm_score"), verified)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "scored_False.parquet", "scored_True.parquet", "verified.parquet",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reward_model_b(tiny_model, tmp_path_factory) -> str:
    """The tiny reward model with other weights: another reward model."""
    from tests.test_reward_model import build_other_reward_model

    return build_other_reward_model(tiny_model["reward_model"], tmp_path_factory.mktemp("rm_b") / "model")


@pytest.mark.slow
def test_each_step_keeps_its_file_only_under_its_fingerprint(tiny_model, reward_model_b, tmp_path, caplog):
    """The stage's steps 2 and 3 (verify_and_score): scored.parquet outlives verified.parquet and is kept
    without verifying again while samples and reward model are the same; another reward model scores
    again (it was kept: the old code reused any scored.parquet there), other samples verify again."""
    from core.config import ModelConfig
    from reject_sampling.scoring import verify_and_score

    samples = scored_samples().drop(columns=["correct", "rm_score", "format_ok", "answer_key"])
    samples_path = tmp_path / "samples.parquet"
    samples.to_parquet(samples_path)

    def steps(out: Path, reward_model: str) -> pd.DataFrame:
        return verify_and_score(
            samples_path, out, verifier="math", verifier_workers=0,
            reward_model=ModelConfig(name="rm", path=reward_model), every_row=True, max_length=64,
            batch_tokens=256, use_cpu=True, progress=False,
        )  # fmt: skip

    out = tmp_path / "stage"
    first = steps(out, tiny_model["reward_model"])
    assert first["correct"].tolist() == [True, True, False, False, False, False, True, True]
    scored = out / "scored.parquet"
    mtime = scored.stat().st_mtime_ns
    (out / "verified.parquet").unlink()  # as the stage does at its end
    again = steps(out, tiny_model["reward_model"])
    assert scored.stat().st_mtime_ns == mtime and not (out / "verified.parquet").exists()
    assert again["rm_score"].tolist() == first["rm_score"].tolist()

    with caplog.at_level("INFO"):
        other = steps(out, reward_model_b)
    assert "model differ): redoing it" in caplog.text
    fresh = steps(tmp_path / "fresh", reward_model_b)
    assert other["rm_score"].tolist() == pytest.approx(fresh["rm_score"].tolist(), abs=1e-6)
    assert all(abs(b - a) > 1e-3 for a, b in zip(first["rm_score"], other["rm_score"], strict=True))
    assert sorted(p.name for p in out.iterdir()) == ["scored.parquet", "verified.parquet"]

    samples.loc[0, "completion"] = trace("13")  # p1's first sample is now wrong
    samples.to_parquet(samples_path)
    assert steps(out, reward_model_b)["correct"].tolist()[:2] == [False, True]
