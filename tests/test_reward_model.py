"""reward_model: middle truncation keeps the answer, bad input fails before a model loads, training writes
a loadable scorer with held-out metrics, batched scoring returns one finite score per row in input order
and resumes from its finished chunks, training resumes after SIGKILL."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from core.artifacts import read_manifest, sha256_file
from core.chat import ChatRenderer
from core.chunks import ChunkedOutput
from core.config import CONF_DIR, MATH_INSTRUCTION_SUFFIX, ModelConfig, compose, to_typed
from data_process.synthetic import mistake_pairs
from reward_model import score, stage
from reward_model.config import RMStageConfig, ScoreConfig
from reward_model.data import PairsError, SequenceEncoder, encode_pairs, read_pairs
from tests.conftest import kill_at_checkpoint_then_rerun, offline_env
from tests.kill import kill_after_first_part

ANSWER = "</think> The answer is \\boxed{82}."
LONG_TRACE = "<think>" + "Let me check this step again. " * 120 + "61+38=99. 99-17=82." + ANSWER


def rm_overrides(run_dir: Path, model_dir: str, pairs: Path) -> list[str]:
    return [
        f"run_dir={run_dir}",
        f"model.path={model_dir}",
        f"pairs={pairs}",
        "rm.report_to=[none]",
        "rm.logging_steps=1",
        "use_cpu=true",
    ]


@pytest.fixture
def rm_cfg(tmp_path, tiny_model, sft_data):
    def make(*overrides: str) -> RMStageConfig:
        base = rm_overrides(tmp_path, tiny_model["policy"], sft_data)
        return to_typed(compose("reward_model", [*base, *overrides]), RMStageConfig)

    return make


@pytest.fixture
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model["policy"])


def test_middle_truncation_keeps_prompt_and_final_answer(tokenizer):
    encoder = SequenceEncoder(
        ChatRenderer(tokenizer, MATH_INSTRUCTION_SUFFIX),
        max_length=120,
        truncation="middle",
        min_completion=16,
    )
    (ids,), counts = encoder.encode(["Compute 61 + 38 - 17."], [LONG_TRACE])
    assert len(ids) == 120 and counts == {"truncated_middle": 1}
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\nCompute 61 + 38 - 17.")
    assert text.endswith(ANSWER + "<|im_end|>\n")  # the answer and end of turn survive the cut
    assert "<|im_start|>assistant\n" in text


def test_truncation_drop_and_prompt_too_long_are_counted(tokenizer):
    drop = SequenceEncoder(ChatRenderer(tokenizer), max_length=120, truncation="drop", min_completion=16)
    (ids,), counts = drop.encode(["Q"], [LONG_TRACE])
    assert ids is None and counts == {"dropped_too_long": 1}
    middle = SequenceEncoder(ChatRenderer(tokenizer), max_length=60, truncation="middle", min_completion=16)
    (ids,), counts = middle.encode(["word " * 50], [LONG_TRACE])
    assert ids is None and counts == {"dropped_prompt_too_long": 1}


def test_pairs_split_by_id_into_train_and_held_out(sft_data, tokenizer):
    rows = read_pairs(sft_data / "pairs.parquet")
    encoder = SequenceEncoder(ChatRenderer(tokenizer, MATH_INSTRUCTION_SUFFIX), 512, "middle", 16)
    a = encode_pairs(rows, encoder, eval_fraction=0.2, seed=0)
    b = encode_pairs(list(reversed(rows)), encoder, eval_fraction=0.2, seed=0)
    assert a.stats["pairs_train"] + a.stats["pairs_eval"] == len(rows)
    assert 0.1 < a.stats["pairs_eval"] / len(rows) < 0.3
    assert a.stats["pairs_eval"] == b.stats["pairs_eval"]  # the split depends on ids, not on row order


def test_bad_pairs_fail_before_a_model_is_loaded(rm_cfg, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(stage, "build_trainer", refuse)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["q"], "chosen": ["a"]}), bad)
    with pytest.raises(PairsError, match=r"bad\.parquet: missing column\(s\) \['rejected'\]"):
        stage.run(rm_cfg(f"pairs={bad}"))
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(PairsError, match="has not finished"):
        stage.run(rm_cfg(f"pairs={tmp_path / 'unfinished'}"))
    with pytest.raises(FileNotFoundError, match="model directory"):
        stage.run(rm_cfg("model.path=nowhere/model"))


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory, tiny_model, sft_data):
    run_dir = tmp_path_factory.mktemp("rm")
    overrides = [
        *rm_overrides(run_dir, tiny_model["policy"], sft_data),
        "rm.max_steps=20",
        "rm.eval_steps=10",
    ]
    cfg = to_typed(compose("reward_model", overrides), RMStageConfig)
    return cfg, stage.run(cfg)


def test_training_writes_a_scorer_with_held_out_metrics(trained_rm):
    cfg, manifest = trained_rm
    m = manifest.metrics
    assert m["global_step"] == 20
    assert 0.0 <= m["eval_accuracy"] <= 1.0 and math.isfinite(m["eval_margin"])
    assert [step for step, _ in m["eval_curve"]] == [10, 20, 20]  # every eval_steps, then the final one
    assert m["data"]["pairs_train"] > 0 and m["data"]["pairs_eval"] > 0
    model_dir = Path(cfg.output_dir) / "model"
    assert {"model.safetensors", "config.json", "tokenizer.json", "train_config.yaml"} <= {
        p.name for p in model_dir.iterdir()
    }
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None


def test_two_runs_of_one_config_train_the_same_reward_model(tmp_path, tiny_model, sft_data):
    """The score head the policy checkpoint lacks is initialised from the config's seed, not from torch's
    global RNG (seeded differently in every process, and advanced by a first run in this one): two runs
    gave two reward models, so nothing downstream of one (rejection sampling's scores and selection, the
    next round) could be reproduced."""
    weights = []
    for name in ("a", "b"):
        overrides = [*rm_overrides(tmp_path / name, tiny_model["policy"], sft_data), "rm.max_steps=2"]
        cfg = to_typed(compose("reward_model", overrides), RMStageConfig)
        stage.run(cfg)
        weights.append(sha256_file(Path(cfg.output_dir) / "model" / "model.safetensors"))
    assert weights[0] == weights[1]


def train_on_pairs(run_dir: Path, model_dir: str, pairs: Path, steps: int) -> dict:
    """The reward-model stage's metrics after `steps` steps on `pairs` from `model_dir`."""
    overrides = [*rm_overrides(run_dir, model_dir, pairs), f"rm.max_steps={steps}"]
    return stage.run(to_typed(compose("reward_model", overrides), RMStageConfig)).metrics


def test_learns_a_mistake_it_can_see(tmp_path, tiny_model, sft_data):
    """Wiring check with a mistake that needs no arithmetic: the rejected trace leaves its final answer
    unboxed (a format failure the verifier also rejects). A correctly wired Bradley-Terry model (score
    read at the last real token, chosen and rejected not swapped) separates the held-out pairs within
    a few dozen steps; a broken one stays at chance, where >= 90% of 20 or more held-out pairs has
    probability at most 2.1e-4 (211 / 2**20 at exactly 20 pairs)."""
    pairs = pq.read_table(sft_data / "pairs.parquet").to_pandas()
    pairs["rejected"] = pairs["chosen"].str.replace(r"\\boxed\{(.*?)\}", r"\1", regex=True)
    assert (pairs["rejected"] != pairs["chosen"]).all()
    file = tmp_path / "unboxed_pairs.parquet"
    pairs.to_parquet(file)
    m = train_on_pairs(tmp_path, tiny_model["policy"], file, steps=40)
    assert m["data"]["pairs_eval"] >= 20
    assert m["eval_accuracy"] >= 0.9 and m["eval_margin"] > 0


def test_learns_wrong_traces_it_can_check_against_the_problem(tmp_path, tiny_model):
    """The issue's test: after training on pairs of a correct trace against a wrong one, held-out pairwise
    accuracy is clearly above chance. The wrong traces misread an operand or stop an operation early
    (measured from the untrained tiny model on 3,000 pairs: 0.80 after 50 steps, 0.82 after 200). The
    third mistake kind, an arithmetic slip, stays at chance (0.485 after 200 steps on 3,000 pairs): a
    2-layer, 0.5 M-parameter model scored at its last token cannot add, which is why rejection sampling
    selects by the verifier first and uses the reward model only among verified-correct samples.
    Threshold: at chance, >= 70% of 80 or more held-out pairs has probability at most 2.3e-4."""
    file = tmp_path / "checkable_pairs.parquet"
    # Misread or early stop, half each (WRONG_KINDS order: slip, misread, early_stop).
    pq.write_table(pa.Table.from_pylist(mistake_pairs(900, weights=(0.0, 0.5, 0.5))), file)
    m = train_on_pairs(tmp_path, tiny_model["policy"], file, steps=100)  # measured: 0.87 held out
    assert m["data"]["pairs_eval"] >= 80
    assert m["eval_accuracy"] >= 0.7 and m["eval_margin"] > 0


def _score_cfg(model_dir: Path, src: Path, out: Path, **kw) -> ScoreConfig:
    return ScoreConfig(
        input=str(src),
        output=str(out),
        model=ModelConfig(path=str(model_dir)),
        use_cpu=True,
        progress=False,
        **kw,
    )


def test_scoring_gives_one_finite_score_per_row_in_input_order(trained_rm, tmp_path):
    cfg, _ = trained_rm
    model_dir = Path(cfg.output_dir) / "model"
    completions = [LONG_TRACE[: 40 + 37 * i] + ANSWER for i in range(23)]
    src = tmp_path / "samples.parquet"
    pq.write_table(
        pa.table(
            {
                "id": [f"s{i}" for i in range(23)],
                "prompt": ["Compute 61 + 38 - 17."] * 23,
                "completion": completions,
            }
        ),
        src,
    )
    out = score.run(_score_cfg(model_dir, src, tmp_path / "scored.parquet", batch_tokens=900, chunk_rows=10))
    table = pq.read_table(out)
    assert table.column_names == ["id", "prompt", "completion", "rm_score"]
    assert table.column("id").to_pylist() == [f"s{i}" for i in range(23)]
    batched = table.column("rm_score").to_pylist()
    assert all(math.isfinite(s) for s in batched)
    # Length-sorted, padded batches must give each row the score it gets alone.
    model, tok, _ = score.load_scorer(_score_cfg(model_dir, src, out))
    encoder = SequenceEncoder(
        ChatRenderer(tok, MATH_INSTRUCTION_SUFFIX), 8192, "middle", 1, keep_tail_when_dropped=True
    )
    for i in (0, 11, 22):
        (ids,), _ = encoder.encode(["Compute 61 + 38 - 17."], [completions[i]])
        assert score.score_ids(model, [ids], tok.pad_token_id, 10**6, "cpu")[0] == pytest.approx(
            batched[i], abs=1e-4
        )


def test_scoring_resumes_from_finished_chunks(trained_rm, tmp_path):
    cfg, _ = trained_rm
    src = tmp_path / "samples.parquet"
    pq.write_table(
        pa.table(
            {"prompt": ["Q"] * 5, "completion": [f"<think>{i}</think> \\boxed{{{i}}}" for i in range(5)]}
        ),
        src,
    )
    first = pq.read_table(src).slice(0, 2)
    sentinel = first.append_column("rm_score", pa.array([123.0, 456.0], pa.float64()))

    def interrupted(out: Path, model_identity: str | None = None) -> ScoreConfig:
        """The state a killed run leaves: its fingerprint recorded, chunk 0 done (sentinel scores)."""
        score_cfg = _score_cfg(Path(cfg.output_dir) / "model", src, out, chunk_rows=2)
        fingerprint = score.fingerprint(score_cfg, sha256_file(src))
        if model_identity is not None:
            fingerprint["model"] = model_identity
        chunked = ChunkedOutput(out, fingerprint, 5, 2)
        chunked.start()
        chunked.write(0, sentinel)
        return score_cfg

    # Left under this input, config and model: kept, not recomputed.
    out = tmp_path / "scored.parquet"
    score.run(interrupted(out))
    scores = pq.read_table(out).column("rm_score").to_pylist()
    assert (
        scores[:2] == [123.0, 456.0] and len(scores) == 5 and not out.with_name(out.name + ".parts").exists()
    )
    # Left by a run with another reward model (other weights): thrown away, all five scored by this one.
    other = tmp_path / "scored_other.parquet"
    score.run(interrupted(other, model_identity="weights of another reward model"))
    rescored = pq.read_table(other).column("rm_score").to_pylist()
    assert rescored[:2] == pytest.approx(scores_alone(cfg, src)[:2], abs=1e-5) and rescored[2:] == scores[2:]


def test_a_finished_scoring_is_kept_unless_forced(trained_rm, tmp_path):
    """A finished output under the same input, config and model is kept as it is (a sentinel score written
    into it survives); `force=true` scores every row again."""
    cfg, _ = trained_rm
    src = tmp_path / "samples.parquet"
    pq.write_table(pa.table({"prompt": ["Q"] * 3, "completion": [f"\\boxed{{{i}}}" for i in range(3)]}), src)
    out = tmp_path / "scored.parquet"
    score_cfg = _score_cfg(Path(cfg.output_dir) / "model", src, out, chunk_rows=2)
    real = pq.read_table(score.run(score_cfg)).column("rm_score").to_pylist()
    table = pq.read_table(out)
    doctored = table.set_column(2, "rm_score", pa.array([7.0, 8.0, 9.0], pa.float64()))
    pq.write_table(doctored.replace_schema_metadata(table.schema.metadata), out)
    assert pq.read_table(score.run(score_cfg)).column("rm_score").to_pylist() == [7.0, 8.0, 9.0]
    score_cfg.force = True
    assert pq.read_table(score.run(score_cfg)).column("rm_score").to_pylist() == pytest.approx(real, abs=1e-6)


def scores_alone(cfg: RMStageConfig, src: Path) -> list[float]:
    return (
        pq.read_table(
            score.run(
                _score_cfg(Path(cfg.output_dir) / "model", src, src.with_name("alone.parquet"), chunk_rows=2)
            )
        )
        .column("rm_score")
        .to_pylist()
    )


def build_other_reward_model(src: str, dst: Path, seed: int = 1) -> str:
    """The tiny reward model's architecture and tokenizer with other random weights: another reward model,
    whose scores differ from the first one's on every row."""
    import torch
    from transformers import AutoConfig

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(src))
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return str(dst)


KILL_ROWS, KILL_CHUNK_ROWS = 60, 2


@pytest.fixture(scope="module")
def kill_setup(tiny_model, tmp_path_factory) -> dict:
    """Two reward models (A: the tiny one, B: other weights), 60 rows of long traces (30 chunks of 2 rows
    take seconds to score: time to kill a run between chunks) and each model's uninterrupted scores."""
    import torch

    root = tmp_path_factory.mktemp("rm_kill")
    model_a = tiny_model["reward_model"]
    model_b = build_other_reward_model(model_a, root / "rm_b")
    src = root / "samples.parquet"
    completions = [LONG_TRACE[: 800 + 40 * i] + ANSWER for i in range(KILL_ROWS)]
    pq.write_table(
        pa.table(
            {
                "id": [f"s{i}" for i in range(KILL_ROWS)],
                "prompt": [f"Compute {i} + 38 - 17." for i in range(KILL_ROWS)],
                "completion": completions,
            }
        ),
        src,
    )
    reference = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses (OMP_NUM_THREADS=1), and faster on 2 shared cores
    for name, model in (("a", model_a), ("b", model_b)):
        cfg = _score_cfg(Path(model), src, root / f"reference_{name}.parquet", chunk_rows=KILL_CHUNK_ROWS)
        reference[name] = pq.read_table(score.run(cfg)).column("rm_score").to_pylist()
    torch.set_num_threads(threads)
    return {"a": model_a, "b": model_b, "src": src, "reference": reference}


def score_cmd(model_dir: str, src: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "reward_model.score",
        f"input={src}",
        f"output={out}",
        f"model.path={model_dir}",
        f"chunk_rows={KILL_CHUNK_ROWS}",
        "use_cpu=true",
        "progress=false",
        f"hydra.run.dir={out.parent}/logs",
    ]


def rerun(cmd: list[str]) -> str:
    done = subprocess.run(
        cmd, cwd=CONF_DIR.parent, env=offline_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_rerun_with_another_reward_model_after_a_kill_gives_only_that_models_scores(kill_setup, tmp_path):
    """The issue's test: parts that model A finished before the kill are not mixed into model B's output
    (they were: the parts were reused whatever model had made them)."""
    out = tmp_path / "scored.parquet"
    done_by_a = kill_after_first_part(score_cmd(kill_setup["a"], kill_setup["src"], out), out)
    assert 1 <= done_by_a < KILL_ROWS // KILL_CHUNK_ROWS
    log = rerun(score_cmd(kill_setup["b"], kill_setup["src"], out))
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [f"s{i}" for i in range(KILL_ROWS)]
    scores = table.column("rm_score").to_pylist()
    assert scores == pytest.approx(kill_setup["reference"]["b"], abs=1e-5)
    # Every row differs from A's, the rows of the chunks A finished before the kill included.
    assert all(abs(s - a) > 1e-3 for s, a in zip(scores, kill_setup["reference"]["a"], strict=True))
    assert f"model differ): removing {done_by_a} part(s)" in log and "resuming" not in log


@pytest.mark.slow
def test_rerun_with_the_same_reward_model_after_a_kill_resumes(kill_setup, tmp_path):
    out = tmp_path / "scored.parquet"
    cmd = score_cmd(kill_setup["a"], kill_setup["src"], out)
    done = kill_after_first_part(cmd, out)
    assert 1 <= done < KILL_ROWS // KILL_CHUNK_ROWS
    log = rerun(cmd)
    # Only the chunks the killed run had not finished are scored again.
    assert f"resuming: {done} of {KILL_ROWS // KILL_CHUNK_ROWS} chunks done" in log and "removing" not in log
    assert not out.with_name(out.name + ".parts").exists()
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [f"s{i}" for i in range(KILL_ROWS)]
    assert table.column("rm_score").to_pylist() == pytest.approx(kill_setup["reference"]["a"], abs=1e-5)
    assert "is finished for this input, config and model: skipping" in rerun(cmd)  # done: nothing to do


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path, tiny_model, sft_data):
    cmd = [
        sys.executable,
        "-m",
        "reward_model",
        *rm_overrides(tmp_path, tiny_model["policy"], sft_data),
        "rm.max_steps=30",
        "rm.save_steps=10",
        "rm.eval_steps=100",
        "rm.per_device_train_batch_size=4",
    ]
    out = tmp_path / "round_0" / "reward_model"
    kill_at_checkpoint_then_rerun(cmd, out / "checkpoints" / "checkpoint-10", out / "manifest.json")
    m = read_manifest(out).metrics
    assert m["global_step"] == 30 and m["resumed_from"].endswith(("checkpoint-10", "checkpoint-20"))


def test_an_empty_pairs_source_is_a_warning_and_the_others_train(sft_data, tmp_path, caplog):
    """A round in which no prompt had both a correct and a wrong sample writes an empty pairs.parquet; the
    next round's reward model trains on the original pairs (it crashed with "holds no pairs")."""
    import pyarrow as pa

    from reward_model.stage import read_all_pairs

    empty = tmp_path / "pairs.parquet"
    pq.write_table(
        pa.table({c: pa.array([], pa.string()) for c in ("id", "prompt", "chosen", "rejected")}), empty
    )
    original = read_pairs(sft_data / "pairs.parquet")
    with caplog.at_level("WARNING"):
        rows = read_all_pairs([sft_data / "pairs.parquet", empty])
    assert rows == original and "holds no pairs" in caplog.text
    with pytest.raises(PairsError, match="no preference pairs in"):
        read_all_pairs([empty])
