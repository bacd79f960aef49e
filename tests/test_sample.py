"""sample.py: prompt loading and validation, output schema and order, shards + merge, resume after SIGKILL,
LoRA adapters, and greedy vLLM == greedy transformers on a briefly fine-tuned tiny policy."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from core.artifacts import Manifest, describe_file, write_manifest
from core.chunks import ChunkedOutput
from core.config import CONF_DIR, compose, to_typed
from reject_sampling.backends import Completion
from reject_sampling.config import PromptSource, SampleConfig
from reject_sampling.prompts import PromptError, derived_id, load_prompts
from reject_sampling.sample import (
    SampleError,
    check_samples,
    fingerprint,
    run,
    samples_table,
    shard_output_path,
)
from tests.conftest import offline_env
from tests.kill import kill_after_first_part

REPO = CONF_DIR.parent
COLUMNS = ["id", "prompt", "answer", "sample_idx", "completion", "finish_reason", "n_tokens", "policy"]


@pytest.fixture
def one_thread():
    """The tiny model runs fastest on one thread, and a shared 2-core machine makes two threads spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def policy(tiny_model, tmp_path_factory) -> str:
    """The tiny policy fine-tuned for 50 steps on `a + b` traces (user turn as sample.py renders it), so its
    output is not noise: it mostly writes the trace format and stops at <|im_end|>, at varying lengths.
    What it writes depends on the tokenizer, hence on the synthetic data: tests assert properties, not texts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.chat import prompt_messages
    from core.config import MATH_INSTRUCTION_SUFFIX

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = random.Random(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model["policy"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model["policy"], dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(50):
        texts = []
        for _ in range(16):
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            trace = f"<think>{a}+{b}={a + b}.</think> The answer is \\boxed{{{a + b}}}."
            messages = [
                *prompt_messages(f"What is {a} + {b}?", "", MATH_INSTRUCTION_SUFFIX),
                {"role": "assistant", "content": trace},
            ]
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    torch.set_num_threads(threads)
    out = tmp_path_factory.mktemp("policy") / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


QUESTIONS = (
    "What is {a} + {b}?",
    "Compute {a} - {b} + 3.",
    "A farmer has {a} cows and buys {b} more. How many cows are there now?",
    "What is {a} + {b} + 5?",
)


def question(i: int) -> str:
    return QUESTIONS[i % len(QUESTIONS)].format(a=i, b=2 * i + 1)


def write_prompts(path: Path, n: int, split: str = "train") -> Path:
    rows = [
        {"id": f"p{i}", "prompt": question(i), "answer": str(i), "source": "t", "split": split}
        for i in range(n)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def sample_cfg(tmp_path: Path, model: str, prompts: Path, *overrides: str) -> SampleConfig:
    base = [
        f"run_dir={tmp_path}",
        f"model.path={model}",
        f"prompts.path={prompts}",
        "prompts.split=null",
        "sampling.backend=transformers",
        "sampling.max_new_tokens=40",
        "progress=false",
        "show=0",
    ]
    return to_typed(compose("sample", [*base, *overrides]), SampleConfig)


def sample_cmd(model: str, prompts: Path, output: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "reject_sampling.sample",
        f"model.path={model}",
        f"prompts.path={prompts}",
        "prompts.split=null",
        f"output={output}",
        f"hydra.run.dir={output.parent}/logs",
        "sampling.max_new_tokens=40",
        "progress=false",
        *overrides,
    ]


# ---------------------------------------------------------------------------------------------- prompts


def test_prompts_from_parquet_and_stage_dir(tmp_path):
    rows = [
        {"id": "a", "prompt": "Q a", "answer": "1", "source": "s", "split": "train"},
        {"id": "b", "prompt": "Q b", "answer": "2", "source": "s", "split": "test"},
        {"id": "c", "prompt": "Q c", "answer": None, "source": "s", "split": "train"},
    ]
    stage = tmp_path / "data"
    stage.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), stage / "prompts.parquet")

    loaded = load_prompts(PromptSource(path=str(stage / "prompts.parquet")))
    assert [(p.id, p.prompt, p.answer) for p in loaded.prompts] == [("a", "Q a", "1"), ("c", "Q c", None)]
    assert len(load_prompts(PromptSource(path=str(stage / "prompts.parquet"), split=None)).prompts) == 3
    assert load_prompts(PromptSource(path=str(stage / "prompts.parquet"), max_prompts=1)).ids == ["a"]

    with pytest.raises(PromptError, match=r"without manifest\.json"):
        load_prompts(PromptSource(path=str(stage)))
    manifest = Manifest(stage="data_process", config_hash="x", config={})
    manifest.outputs = {"prompts": describe_file(stage / "prompts.parquet", stage, rows=3)}
    write_manifest(stage, manifest)
    from_dir = load_prompts(PromptSource(path=str(stage), split="test"))
    assert from_dir.ids == ["b"] and from_dir.file == stage / "prompts.parquet"
    assert from_dir.identity == manifest.content_hash()

    manifest.outputs = {"sft": manifest.outputs["prompts"]}
    write_manifest(stage, manifest)
    with pytest.raises(PromptError, match="no `prompts` output"):
        load_prompts(PromptSource(path=str(stage)))


def test_prompts_from_jsonl_and_text_derive_stable_ids(tmp_path):
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text(
        json.dumps({"question": "What is 1 + 1?", "uid": 7, "gold": 2})
        + "\n\n"
        + json.dumps({"question": "What is 2 + 2?", "gold": "4"})
        + "\n"
    )
    src = PromptSource(path=str(jsonl), prompt_column="question", id_column="uid", answer_column="gold")
    loaded = load_prompts(src).prompts
    assert [(p.id, p.answer) for p in loaded] == [("7", "2"), (derived_id("What is 2 + 2?"), "4")]

    text = tmp_path / "q.txt"
    text.write_text("What is 1 + 1?\n\n  What is 2 + 2?\n")
    from_text = load_prompts(PromptSource(path=str(text)))
    assert [p.prompt for p in from_text.prompts] == ["What is 1 + 1?", "  What is 2 + 2?"]
    assert from_text.ids[1] == derived_id("What is 2 + 2?") == loaded[1].id  # stable across formats
    assert all(p.answer is None for p in from_text.prompts)


@pytest.mark.parametrize(
    ("name", "content", "source", "message"),
    [
        ("none.parquet", None, {}, r"none\.parquet does not exist"),
        ("q.csv", "a,b\n", {}, r"unknown format '\.csv'"),
        ("q.parquet", [{"id": "a", "question": "Q"}], {}, r"q\.parquet: missing column 'prompt'"),
        ("q.parquet", [{"id": "a", "prompt": "Q"}, {"id": "b", "prompt": " "}], {}, r"row 1 has an empty"),
        (
            "q.parquet",
            [{"id": "a", "prompt": "Q"}, {"id": "a", "prompt": "R"}],
            {},
            r"duplicate id 'a' at row 0 and row 1",
        ),
        (
            "q.jsonl",
            '{"prompt": "Q"}\n{"prompt": ""}\n',
            {},
            r"q\.jsonl: line 2 has an empty or null 'prompt'",
        ),
        ("q.jsonl", '{"prompt": "Q"}\n{"prompt": \n', {}, r"line 2 is not valid JSON"),
        ("q.jsonl", '{"question": "Q"}\n', {}, r"line 1 has no 'prompt' key"),
        ("q.txt", "Q1\nQ2\nQ1\n", {}, r"duplicate id .* at line 1 and line 3 \(id derived from the question"),
        ("q.parquet", [{"prompt": "Q", "split": "train"}], {"split": "test"}, r"no prompts in split 'test'"),
    ],
)
def test_bad_prompt_sources_are_reported_with_file_row_and_column(tmp_path, name, content, source, message):
    path = tmp_path / name
    if isinstance(content, list):
        pq.write_table(pa.Table.from_pylist(content), path)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(PromptError, match=message):
        load_prompts(PromptSource(path=str(path), **source))


def test_bad_input_fails_before_a_model_loads(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"prompt": ""}\n')
    with pytest.raises(PromptError, match="line 1"):
        run(sample_cfg(tmp_path, "/nonexistent/model", bad))
    good = write_prompts(tmp_path / "p.parquet", 2)
    with pytest.raises(FileNotFoundError, match="policy model directory '/nonexistent/model'"):
        run(sample_cfg(tmp_path, "/nonexistent/model", good))


def test_config_rejects_impossible_values():
    with pytest.raises(Exception, match=r"shard_index must be in \[0, 2\)"):
        to_typed(compose("sample", ["num_shards=2", "shard_index=2"]), SampleConfig)
    with pytest.raises(Exception, match=r"sampling\.top_k must be >= 0"):
        to_typed(compose("sample", ["sampling.top_k=-1"]), SampleConfig)


def test_backend_names_are_grpos_and_the_old_hf_name_is_refused():
    """One name per backend in every stage: sampling's are GRPO's `generation.backend` names, plus `ray`
    (engines of either across a cluster), whose engines are named the same, and `openai` (a server). `hf`, the sampling backend's
    name before it became `transformers`, fails with the valid names, not silently."""
    from grpo.config import BACKENDS as GRPO_BACKENDS
    from reject_sampling.config import BACKENDS, ENGINES

    assert ENGINES == GRPO_BACKENDS
    assert (*ENGINES, "ray", "openai") == BACKENDS
    assert to_typed(compose("sample", ["sampling=tiny"]), SampleConfig).sampling.backend == "transformers"
    with pytest.raises(
        Exception, match=re.escape("one of ('auto', 'vllm', 'transformers', 'ray', 'openai'), got 'hf'")
    ):
        to_typed(compose("sample", ["sampling.backend=hf"]), SampleConfig)


# ---------------------------------------------------------------------------------------------- sampling


def test_samples_schema_order_and_skip_when_done(tmp_path, policy, one_thread, capsys):
    prompts = write_prompts(tmp_path / "p.parquet", 5)
    cfg = sample_cfg(tmp_path, policy, prompts, "sampling.n=3", "chunk_prompts=2", "show=2")
    out = run(cfg)
    assert out == tmp_path / "samples" / "samples.parquet"
    assert not out.with_name(out.name + ".parts").exists()
    table = pq.read_table(out)
    assert table.column_names == COLUMNS
    assert (
        table.schema.field("sample_idx").type == pa.int32()
        and table.schema.field("n_tokens").type == pa.int32()
    )
    rows = table.to_pylist()
    assert [(r["id"], r["sample_idx"]) for r in rows] == [(f"p{i}", k) for i in range(5) for k in range(3)]
    assert rows[3]["prompt"] == question(1) and rows[3]["answer"] == "1"
    assert {r["policy"] for r in rows} == {"sft_round_0"}
    assert {r["finish_reason"] for r in rows} <= {"stop", "length"}
    for r in rows:
        assert 1 <= r["n_tokens"] <= 40
        assert r["finish_reason"] == "stop" or r["n_tokens"] == 40
    shown = capsys.readouterr().out
    assert "=== sample 1/2: id p0" in shown and "--- completion" in shown

    mtime = out.stat().st_mtime_ns
    assert run(cfg) == out and out.stat().st_mtime_ns == mtime  # done: skipped


def test_parts_or_outputs_of_other_settings_are_redone_not_mixed_in(tmp_path, policy, one_thread, caplog):
    """An interrupted run with n=2 left one chunk (its completions say STALE); a run with n=3 removes it and
    samples everything (an older version refused to go on); a finished output is redone when the model's
    name (the `policy` column) changed."""
    prompts = write_prompts(tmp_path / "p.parquet", 5)
    other = tmp_path / "other.parquet"
    stale_cfg = sample_cfg(tmp_path, policy, prompts, "sampling.n=2", "chunk_prompts=2", f"output={other}")
    prompt_list = load_prompts(stale_cfg.prompts).prompts
    stale = ChunkedOutput(other, fingerprint(stale_cfg, prompt_list), 5, 2)
    stale.start()
    stale.write(0, samples_table(prompt_list[:2], [[Completion("STALE", "stop", 1)] * 2] * 2, "sft_round_0"))

    cfg = sample_cfg(tmp_path, policy, prompts, "sampling.n=3", "chunk_prompts=2", f"output={other}")
    with caplog.at_level("INFO"):
        run(cfg)
    assert "(config.sampling.n differ): removing 1 part(s)" in caplog.text
    rows = pq.read_table(other).to_pylist()
    assert [(r["id"], r["sample_idx"]) for r in rows] == [(f"p{i}", k) for i in range(5) for k in range(3)]
    assert not any(r["completion"] == "STALE" for r in rows)

    caplog.clear()
    with caplog.at_level("INFO"):
        run(sample_cfg(tmp_path, policy, prompts, "sampling.n=3", "chunk_prompts=2", f"output={other}",
                       "model.name=renamed"))  # fmt: skip
    assert "(config.model.name differ): redoing it" in caplog.text
    assert set(pq.read_table(other).column("policy").to_pylist()) == {"renamed"}


def test_greedy_gives_n_identical_samples_and_stop_strings_cut(tmp_path, policy, one_thread):
    prompts = write_prompts(tmp_path / "p.parquet", 4)
    greedy = pq.read_table(
        run(sample_cfg(tmp_path, policy, prompts, "sampling.n=2", "sampling.temperature=0"))
    )
    texts, n_tokens = greedy.column("completion").to_pylist(), greedy.column("n_tokens").to_pylist()
    assert texts[0::2] == texts[1::2]

    # A stop string taken from the longest completion, so that at least one completion contains it.
    stop = re.search(r"[A-Za-z0-9]{2,3}", max(texts, key=len)).group()
    cfg = sample_cfg(
        tmp_path, policy, prompts, "sampling.n=1", "sampling.temperature=0", f"output={tmp_path}/stop.parquet"
    )
    cfg.sampling.stop = [stop]
    stopped = pq.read_table(run(cfg)).to_pylist()
    for row, full, n_full in zip(stopped, texts[0::2], n_tokens[0::2], strict=True):
        if stop in full:
            assert row["completion"] == full[: full.index(stop)] and row["finish_reason"] == "stop"
            assert row["n_tokens"] <= n_full
        else:
            assert row["completion"] == full and row["n_tokens"] == n_full


def test_shards_and_merge(tmp_path, policy, one_thread):
    prompts = write_prompts(tmp_path / "p.parquet", 7)
    common = ["sampling.n=2", "num_shards=3", f"output={tmp_path}/s.parquet"]
    files = [run(sample_cfg(tmp_path, policy, prompts, *common, f"shard_index={k}")) for k in range(3)]
    assert [f.name for f in files] == [f"s.shard-{k:05d}-of-00003.parquet" for k in range(3)]
    assert [pq.read_metadata(f).num_rows for f in files] == [4, 4, 6]  # prompts [0,2), [2,4), [4,7)

    merged = run(sample_cfg(tmp_path, policy, prompts, *common, "merge=true"))
    table = pq.read_table(merged)
    assert table.equals(pa.concat_tables([pq.read_table(f) for f in files]))
    assert table.column("id").to_pylist() == [f"p{i}" for i in range(7) for _ in range(2)]

    merged.unlink()
    files[1].unlink()
    with pytest.raises(SampleError, match=r"shard\(s\) \[1\] of 3 not finished"):
        run(sample_cfg(tmp_path, policy, prompts, *common, "merge=true"))
    pq.write_table(pq.read_table(files[0]), shard_output_path(tmp_path / "s.parquet", 1, 3))  # shard 0 twice
    with pytest.raises(
        SampleError, match=r"2 prompt id\(s\) missing: \['p2', 'p3'\]; 2 prompt id\(s\) duplicated"
    ):
        run(sample_cfg(tmp_path, policy, prompts, *common, "merge=true"))
    # A shard with the right prompts, sampled with another seed: refused, not merged with the others.
    run(sample_cfg(tmp_path, policy, prompts, *common, "shard_index=1", "sampling.seed=1", "force=true"))
    with pytest.raises(
        SampleError,
        match=r"s\.shard-00001-of-00003\.parquet was sampled from other prompts or settings "
        r"\(config\.sampling\.seed differ\); sample it again with shard_index=1 num_shards=3 force=true",
    ):
        run(sample_cfg(tmp_path, policy, prompts, *common, "merge=true"))


def test_check_samples_names_short_and_unknown_ids():
    table = pa.table({"id": ["a", "a", "b", "z"], "sample_idx": pa.array([0, 1, 0, 0], pa.int32())})
    with pytest.raises(SampleError, match=r"fewer than n=2 samples: \['b'\].*not in the prompt set: \['z'\]"):
        check_samples(table, ["a", "b"], 2, "x.parquet")


@pytest.fixture(scope="module")
def lora(policy, tmp_path_factory) -> dict[str, str]:
    """A PEFT LoRA adapter on the policy (B random too, so it changes the outputs) and the same adapter
    merged into a full model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    model = get_peft_model(base, config)
    model.save_pretrained(out / "adapter")
    model.merge_and_unload().save_pretrained(out / "merged")
    AutoTokenizer.from_pretrained(policy).save_pretrained(out / "merged")
    return {"adapter": str(out / "adapter"), "merged": str(out / "merged")}


def test_lora_adapter_is_applied(tmp_path, policy, lora, one_thread):
    prompts = write_prompts(tmp_path / "p.parquet", 4)
    greedy = ["sampling.n=1", "sampling.temperature=0"]

    def texts(model: str, name: str, *extra: str) -> list[str]:
        cfg = sample_cfg(tmp_path, model, prompts, *greedy, f"output={tmp_path}/{name}.parquet", *extra)
        return pq.read_table(run(cfg)).column("completion").to_pylist()

    with_adapter = texts(policy, "adapter", f"adapter={lora['adapter']}")
    assert with_adapter == texts(lora["merged"], "merged")
    assert with_adapter != texts(policy, "base")


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, policy, one_thread):
    prompts = write_prompts(tmp_path / "p.parquet", 30)
    settings = ["sampling.backend=transformers", "sampling.n=2", "chunk_prompts=2"]
    output = tmp_path / "killed" / "samples.parquet"
    parts = output.with_name(output.name + ".parts")
    cmd = sample_cmd(policy, prompts, output, *settings)
    done_before = kill_after_first_part(cmd, output, timeout=120)
    assert 1 <= done_before < 15

    resumed = subprocess.run(cmd, cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming: {done_before} of 15 chunks done" in resumed.stdout
    assert not parts.exists()

    reference = run(sample_cfg(tmp_path, policy, prompts, *settings, f"output={tmp_path}/ref.parquet"))
    assert pq.read_table(output).equals(pq.read_table(reference))


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_cli_greedy_with_lora_matches_transformers(tmp_path, policy, lora, one_thread):
    prompts = write_prompts(tmp_path / "p.parquet", 8)
    greedy = ["sampling.n=2", "sampling.temperature=0", f"adapter={lora['adapter']}"]

    def transformers_run(name: str, *extra: str) -> pa.Table:
        return pq.read_table(
            run(sample_cfg(tmp_path, policy, prompts, *greedy, f"output={tmp_path}/{name}.parquet", *extra))
        )

    # max_new_tokens = the shortest finished completion, so that both endings are compared when lengths vary.
    probe = transformers_run("probe", "sampling.max_new_tokens=48").to_pylist()
    max_new = min((r["n_tokens"] for r in probe if r["finish_reason"] == "stop"), default=48)
    greedy.append(f"sampling.max_new_tokens={max_new}")
    output = tmp_path / "vllm.parquet"
    done = subprocess.run(
        sample_cmd(policy, prompts, output, *greedy, "sampling.backend=vllm"),
        cwd=REPO,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "generation backend: vllm" in done.stdout
    transformers, vllm = transformers_run("transformers"), pq.read_table(output)
    assert vllm.column_names == COLUMNS
    columns = ["id", "sample_idx", "completion", "finish_reason", "n_tokens"]
    assert vllm.select(columns).to_pylist() == transformers.select(columns).to_pylist()
    base = run(sample_cfg(tmp_path, policy, prompts, *greedy[:2], f"output={tmp_path}/base.parquet"))
    # The adapter was applied.
    assert pq.read_table(base).column("completion") != transformers.column("completion")


VLLM_BACKEND_SCRIPT = """
import dataclasses, json, sys
from core.config import ModelConfig
from core.models import chat_renderer, load_tokenizer
from reject_sampling.backends import VLLMBackend
from reject_sampling.config import SamplingConfig
from reject_sampling.sample import render_prompts

model = ModelConfig(path=sys.argv[1])
tokenizer = load_tokenizer(model)
questions = [f"What is {i} + {2 * i + 1}? Show every step of the computation." for i in range(160)]
ids = [f"p{i}" for i in range(160)]
prompts = render_prompts(chat_renderer(model, tokenizer), questions)
greedy = SamplingConfig(n=2, temperature=0, max_new_tokens=20)
backend = VLLMBackend(model, greedy, tokenizer, use_cpu=True, max_model_len=256, progress=False)
out = {"greedy": [[dataclasses.astuple(c) for c in cs] for cs in backend.generate(prompts[:8], ids[:8])]}
backend.sampling = SamplingConfig(n=3, temperature=1.0, max_new_tokens=6, seed=5)
# 160 prompts of ~60 tokens overflow one 4096-token step: prefills are batched differently in the two calls.
out["all"] = [[c.text for c in cs] for cs in backend.generate(prompts, ids)]
out["odd"] = [[c.text for c in cs] for cs in backend.generate(prompts[1::2], ids[1::2])]
print("RESULT", json.dumps(out))
"""


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_backend_greedy_matches_transformers_and_seeds_follow_the_prompt(tmp_path, policy, one_thread):
    from dataclasses import astuple

    from core.config import ModelConfig
    from core.models import chat_renderer, load_tokenizer
    from reject_sampling.backends import TransformersBackend
    from reject_sampling.config import SamplingConfig
    from reject_sampling.sample import render_prompts

    done = subprocess.run(
        [sys.executable, "-c", VLLM_BACKEND_SCRIPT, policy],
        cwd=REPO,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))[7:])

    model = ModelConfig(path=policy)
    tokenizer = load_tokenizer(model)
    questions = [f"What is {i} + {2 * i + 1}? Show every step of the computation." for i in range(8)]
    transformers = TransformersBackend(
        model, SamplingConfig(n=2, temperature=0, max_new_tokens=20), tokenizer
    )
    expected = transformers.generate(
        render_prompts(chat_renderer(model, tokenizer), questions), [f"p{i}" for i in range(8)]
    )
    assert result["greedy"] == [[list(astuple(c)) for c in cs] for cs in expected]

    # Each prompt's samples come from its own seed: the same whichever prompts share the batch.
    assert result["odd"] == result["all"][1::2]
    assert len({tuple(s) for s in result["all"]}) > 100  # and they are samples, not copies
