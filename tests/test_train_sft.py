"""train_sft on the tiny model, on CPU: the loss mask, full and LoRA training, the end-of-turn token,
bad input caught before a model is loaded, multi-process and DeepSpeed runs, resume after SIGKILL."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.artifacts import read_manifest, write_parquet_atomic
from core.config import CONF_DIR, compose, to_typed
from core.models import chat_renderer, load_tokenizer
from core.training import TrlArgsError
from tests.conftest import family_model_config, kill_at_checkpoint_then_rerun, offline_env, sft_overrides
from train_sft import stage
from train_sft.config import SFTStageConfig
from train_sft.data import DataError, mix, prepare, resolve_source

REPO = CONF_DIR.parent


@pytest.fixture
def sft_cfg(tmp_path, tiny_model, sft_data):
    def make(*overrides: str) -> SFTStageConfig:
        return to_typed(
            compose("train_sft", [*sft_overrides(tmp_path, tiny_model, sft_data), *overrides]), SFTStageConfig
        )

    return make


def stage_command(tmp_path, tiny_model, sft_data, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "train_sft", *sft_overrides(tmp_path, tiny_model, sft_data), *overrides]


def prepared_for(cfg: SFTStageConfig, tokenizer):
    sources = [resolve_source(s) for s in cfg.data]
    return prepare(
        sources, chat_renderer(cfg.model, tokenizer), cfg.sft["max_length"], cfg.train.overlength, 0
    )


# ------------------------------------------------------------------------------------------ loss mask


def family_sft_cfg(tmp_path, family_models, name: str, *overrides: str) -> SFTStageConfig:
    """A train_sft config on a real-tokenizer family model and 16 R1-style records."""
    rows = [
        {
            "instruction": f"Compute {i} + {i}.",
            "output": f"<think>\n{i}+{i}={2 * i}.\n</think>\n\n\\boxed{{{2 * i}}}",
        }
        for i in range(16)
    ]
    data = tmp_path / f"{name}_sft.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    base = family_model_config(family_models, name)
    template = [f"model.chat_template={base.chat_template}"] if base.chat_template else []
    return to_typed(
        compose(
            "train_sft",
            [
                f"run_dir={tmp_path / name}",
                f"model.path={base.path}",
                f"data=[{{path: {data}}}]",
                "sft.report_to=[none]",
                "use_cpu=true",
                *template,
                *overrides,
            ],
        ),
        SFTStageConfig,
    )


@pytest.mark.parametrize("name", ["tiny", "qwen2.5", "qwen3", "llama3", "r1", "base"])
def test_labels_cover_exactly_the_trace_and_its_end_of_turn_token(sft_cfg, tmp_path, family_models, name):
    """What TRL trains on: the whole trace (R1: continuing its prefilled <think>) + end of turn, nothing of
    the prompt, no role token; the input is exactly the native generation prompt + the trace."""
    cfg = sft_cfg() if name == "tiny" else family_sft_cfg(tmp_path, family_models, name)
    tokenizer = load_tokenizer(cfg.model)
    renderer = chat_renderer(cfg.model, tokenizer)
    prepared = prepared_for(cfg, tokenizer)
    trainer = stage.build_trainer(cfg, tokenizer, prepared, Path(cfg.output_dir))
    records = pq.read_table(resolve_source(cfg.data[0]).file).to_pylist()
    for i in range(4):
        example = trainer.train_dataset[i]
        record = records[i]
        trained = [t for t in example["labels"] if t != -100]
        assert tokenizer.decode(trained) == renderer.completion(record["output"]) + renderer.eot
        first = example["labels"].index(trained[0])
        assert all(t == -100 for t in example["labels"][:first])  # the prompt is never trained on
        prompt = tokenizer.decode(example["input_ids"][:first])
        assert prompt == tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{record['instruction']}\n\n{cfg.model.instruction_suffix}"}],
            tokenize=False,
            add_generation_prompt=True,
        )


# ------------------------------------------------------------------------------------------ training


def trainable_state(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model, sft_data):
    """Full fine-tuning for 150 steps at a high learning rate: enough for the format and the stop token."""
    run_dir = tmp_path_factory.mktemp("sft_full")
    overrides = [
        *sft_overrides(run_dir, tiny_model, sft_data),
        "peft=full",
        "sft.max_steps=150",
        "sft.learning_rate=3e-3",
        "sft.save_steps=1000",
        "sft.logging_steps=5",
    ]
    cfg = to_typed(compose("train_sft", overrides), SFTStageConfig)
    return cfg, stage.run(cfg)


def test_full_training_changes_every_weight_and_lowers_the_loss(full_run, tiny_model):
    cfg, manifest = full_run
    loss = manifest.metrics["loss"]
    assert manifest.metrics["global_step"] == 150
    assert loss["last_tenth_mean"] < 0.5 * loss["first_tenth_mean"], loss
    before = trainable_state(Path(tiny_model["policy"]))
    after = trainable_state(Path(cfg.output_dir) / "model")
    assert before.keys() == after.keys()
    assert all(not torch.equal(before[k], after[k]) for k in before if "norm" not in k)


def test_saved_model_files_and_manifest(full_run):
    cfg, manifest = full_run
    out = Path(cfg.output_dir)
    model_files = {p.name for p in (out / "model").iterdir()}
    assert model_files == {
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "train_config.yaml",
    }
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "manifest.json",
        "model",
    ]  # no checkpoints left
    assert {k.split("/")[0] for k in manifest.outputs} == {"model"}
    m = manifest.metrics
    assert m["tokens_per_second"] > 0 and m["tokens_seen"] > 0
    assert (
        m["data"]["dropped_overlength"] == 0 and m["data"]["examples"] == m["data"]["examples_after_mixing"]
    )
    assert "cpu_rss_gb" in m["peak_memory"]


def test_trained_model_stops_with_the_end_of_turn_token(full_run):
    cfg, _ = full_run
    model_dir = Path(cfg.output_dir) / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompts = [f"Compute {a} + {b}." for a, b in ((12, 7), (40, 33), (5, 81), (66, 21))]
    stopped = 0
    for p in prompts:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{p}\n\n{cfg.model.instruction_suffix}"}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        out = model.generate(**ids, max_new_tokens=120, do_sample=False)[0, ids["input_ids"].shape[1] :]
        if out[-1].item() == tokenizer.eos_token_id and len(out) < 120:
            stopped += 1
            text = tokenizer.decode(out, skip_special_tokens=True)
            assert text.startswith("<think>") and "</think>" in text and "\\boxed{" in text
    assert stopped == len(prompts)


def test_lora_trains_the_adapter_only_and_merges(sft_cfg, tiny_model):
    cfg = sft_cfg(
        "peft=lora",
        "peft.r=8",
        "peft.target_modules=[q_proj,v_proj,up_proj,down_proj]",
        "sft.max_steps=40",
        "sft.learning_rate=5e-3",
        "sft.logging_steps=2",
    )
    manifest = stage.run(cfg)
    out = Path(cfg.output_dir)
    loss = manifest.metrics["loss"]
    assert loss["last_tenth_mean"] < loss["first_tenth_mean"], loss
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: non-zero means it trained
    before, merged = trainable_state(Path(tiny_model["policy"])), trainable_state(out / "model")
    changed = {k for k in before if not torch.equal(before[k], merged[k])}
    assert changed and all(any(m in k for m in ("q_proj", "v_proj", "up_proj", "down_proj")) for k in changed)
    assert AutoModelForCausalLM.from_pretrained(out / "model") is not None


def test_rerun_with_same_config_is_skipped(full_run):
    cfg, manifest = full_run
    again = stage.run(cfg)
    assert again.finished_at == manifest.finished_at


# ------------------------------------------------------------------------------------------ data


def test_mix_weights_repeat_and_subsample(tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(10)]
    a = write_parquet_atomic(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    src = resolve_source(type("S", (), {"path": str(tmp_path / a.path), "weight": 2.5})())
    mixed = mix([(src, rows)], seed=0)
    assert len(mixed) == 25 and sum(r in rows for r in mixed) == 25
    assert mixed == mix([(src, rows)], seed=0)


def test_overlength_examples_dropped_or_truncated_and_counted(sft_cfg):
    cfg = sft_cfg("sft.max_length=80")
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    dropped = prepared_for(cfg, tokenizer)
    assert dropped.stats["dropped_overlength"] > 0
    assert (
        dropped.stats["examples"] + dropped.stats["dropped_overlength"]
        == dropped.stats["examples_after_mixing"]
    )
    cfg = sft_cfg("sft.max_length=80", "train.overlength=truncate")
    truncated = prepared_for(cfg, tokenizer)
    assert truncated.stats["truncated_overlength"] == dropped.stats["dropped_overlength"]
    assert truncated.stats["examples"] == truncated.stats["examples_after_mixing"]


def test_an_empty_selected_source_is_a_warning_and_the_original_records_train(sft_cfg, tmp_path, caplog):
    """Round k+1 after a round that selected nothing: its selected.parquet is empty, the records remain."""
    empty = tmp_path / "selected.parquet"
    pq.write_table(
        pa.table({c: pa.array([], pa.string()) for c in ("id", "instruction", "input", "output")}), empty
    )
    cfg = sft_cfg()
    only = prepared_for(cfg, AutoTokenizer.from_pretrained(cfg.model.path))
    cfg = sft_cfg(f"data=[{{path: {cfg.data[0].path}}}, {{path: {empty}}}]")
    with caplog.at_level("WARNING"):
        both = prepared_for(cfg, AutoTokenizer.from_pretrained(cfg.model.path))
    assert both.examples == only.examples and "holds no records" in caplog.text
    assert both.stats["records_read"][str(empty)] == 0


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the stage gets as far as loading a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(stage, "build_trainer", refuse)


def test_missing_columns_fail_before_model_load(sft_cfg, tmp_path, no_model_load):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"instruction": ["q"], "answer": ["1"]}), bad)
    with pytest.raises(DataError, match=r"bad\.parquet: missing column\(s\) \['output'\]"):
        stage.run(sft_cfg(f"data=[{{path: {bad}}}]"))


def test_empty_dataset_after_filtering_fails_before_model_load(sft_cfg, no_model_load):
    with pytest.raises(DataError, match=r"no SFT examples left.*max_length=40"):
        stage.run(sft_cfg("sft.max_length=40"))


def test_missing_model_and_unfinished_upstream_fail_clearly(sft_cfg, tmp_path, no_model_load):
    with pytest.raises(FileNotFoundError, match="model directory 'nowhere/model' does not exist"):
        stage.run(sft_cfg("model.path=nowhere/model"))
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(DataError, match=r"without manifest\.json"):
        stage.run(sft_cfg(f"data=[{{path: {tmp_path / 'unfinished'}}}]"))


def test_impossible_batch_fails_before_model_load(sft_cfg, no_model_load):
    with pytest.raises(DataError, match="cannot fill one optimizer step of 64000"):
        stage.run(sft_cfg("sft.per_device_train_batch_size=1000", "sft.gradient_accumulation_steps=64"))


def test_config_rejects_bad_values_with_a_fix():
    with pytest.raises(Exception, match=r"peft\.method must be one of"):
        to_typed(compose("train_sft", ["peft.method=dora"]), SFTStageConfig)
    with pytest.raises(Exception, match=r"train\.overlength must be one of"):
        to_typed(compose("train_sft", ["train.overlength=cut"]), SFTStageConfig)


def test_a_misspelt_trl_key_fails_at_the_stage_door_with_the_closest_names(sft_cfg, no_model_load):
    """`sft` is TRL's SFTConfig as a mapping: any key composes, and TRL's field list decides at the door."""
    with pytest.raises(TrlArgsError, match=r"train_sft\.sft\.lerning_rate: not an argument of trl\.SFTConfig.*"
                       r"did you mean learning_rate"):  # fmt: skip
        stage.run(sft_cfg("sft.lerning_rate=1e-3"))
    with pytest.raises(
        TrlArgsError, match=r"train_sft\.sft\.learning_rate='fast': trl\.SFTConfig\.learning_rate takes float"
    ):
        stage.run(sft_cfg("sft.learning_rate=fast"))
    with pytest.raises(
        TrlArgsError, match=r"train_sft\.sft: trl\.SFTConfig refused .*cosin is not a valid SchedulerType"
    ):
        stage.run(sft_cfg("sft.lr_scheduler_type=cosin"))


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("sft.use_cpu=false", "use the stage's use_cpu"),
        ("sft.completion_only_loss=false", "always on"),
        ("sft.output_dir=/elsewhere", "use the stage's output_dir"),
    ],
)
def test_a_trl_key_the_stage_sets_is_refused_with_where_to_set_it(sft_cfg, no_model_load, override, hint):
    key = override.partition("=")[0]
    with pytest.raises(TrlArgsError, match=rf"train_sft\.{re.escape(key)}: set by the stage.*{hint}"):
        stage.run(sft_cfg(override))


def test_any_trl_key_reaches_sft_config_and_the_presets_values_are_kept(sft_cfg, tmp_path):
    """A TRL key no preset lists goes through without `+`; the tiny preset's values and the stage's own
    choices land in the SFTConfig the trainer gets."""
    cfg = sft_cfg("sft.neftune_noise_alpha=5", "sft.max_steps=7")
    args = stage.training_args(cfg, tmp_path)
    assert (args.neftune_noise_alpha, args.max_steps, args.learning_rate, args.max_length) == (
        5,
        7,
        1e-3,
        512,
    )
    assert args.completion_only_loss and args.use_cpu and not args.packing and args.report_to == []
    assert args.output_dir == str(tmp_path / "checkpoints") and args.data_seed == args.seed == 42


def test_packing_runs_padding_free(sft_cfg):
    cfg = sft_cfg("sft.packing=true", "sft.max_steps=3", "sft.per_device_train_batch_size=2")
    manifest = stage.run(cfg)
    assert manifest.metrics["global_step"] == 3


# ------------------------------------------------------------------------------------------ processes


def test_resume_skips_a_checkpoint_killed_half_written(tmp_path):
    """A kill while checkpoint-30 is being written leaves its folder without trainer_state.json: resume
    from checkpoint-20 (this picked checkpoint-30 and failed on its missing state, a flaky resume)."""
    from core.training import last_checkpoint

    for step in (10, 20, 30):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if step < 30:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-30" / "model.safetensors").write_bytes(b"partial")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-20")
    assert last_checkpoint(tmp_path / "none") is None


@pytest.mark.slow
def test_resume_after_sigkill_continues_to_the_same_step_count(tmp_path, tiny_model, sft_data):
    cmd = stage_command(
        tmp_path,
        tiny_model,
        sft_data,
        "sft.max_steps=40",
        "sft.save_steps=10",
        "sft.per_device_train_batch_size=8",
    )
    out = tmp_path / "round_0" / "sft"
    done = kill_at_checkpoint_then_rerun(cmd, out / "checkpoints" / "checkpoint-20", out / "manifest.json")
    m = read_manifest(out).metrics
    assert m["resumed_from"] is not None and m["resumed_from"].endswith(("checkpoint-20", "checkpoint-30"))
    assert m["global_step"] == 40
    assert [step for step, _ in m["loss"]["curve"]] == list(range(1, 41))  # one continuous curve
    # The second process trained only the steps after the checkpoint: its progress bar never showed step 1.
    resumed_at = int(m["resumed_from"].rsplit("-", 1)[1])
    assert re.search(rf"\b{resumed_at + 1}/40\b", done.stderr) and not re.search(r"\b1/40\b", done.stderr)


def _accelerate(config: str, tmp_path, tiny_model, sft_data, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONF_DIR / "accelerate" / config),
        "-m",
        "train_sft",
        *sft_overrides(tmp_path, tiny_model, sft_data),
        *overrides,
    ]
    return subprocess.run(cmd, cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_two_process_gloo_run_saves_a_loadable_model(two_process_sft):
    m = read_manifest(two_process_sft).metrics
    assert m["processes"] == 2 and m["global_step"] == 4
    per_rank = math.ceil(m["data"]["examples"] / 2)
    assert m["epochs"] == pytest.approx(4 / math.ceil(per_rank / 32))  # each rank saw half the data
    AutoModelForCausalLM.from_pretrained(two_process_sft / "model")


@pytest.mark.slow
def test_deepspeed_zero2_run_saves_a_loadable_model(tmp_path, tiny_model, sft_data):
    done = _accelerate("deepspeed_zero2_cpu.yaml", tmp_path, tiny_model, sft_data, "sft.max_steps=3")
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "round_0" / "sft"
    assert read_manifest(out).metrics["global_step"] == 3
    AutoModelForCausalLM.from_pretrained(out / "model")


@pytest.mark.slow
def test_deepspeed_zero3_partitions_at_load_and_saves_a_loadable_model(tmp_path, tiny_model, sft_data):
    """Two CPU processes under ZeRO-3: the trainer's arguments exist before the model, so from_pretrained
    partitions the weights (each rank holds about half) and the save gathers them into one full model."""
    done = _accelerate("deepspeed_zero3_cpu.yaml", tmp_path, tiny_model, sft_data, "sft.max_steps=2")
    assert done.returncode == 0, done.stderr[-3000:]
    loads = re.findall(
        r"ZeRO-3: parameters partitioned at load \((\d+) of (\d+) elements", done.stdout + done.stderr
    )
    assert len(loads) == 2, done.stdout[-3000:]  # one line per rank
    for local, total in loads:
        assert int(local) < 0.75 * int(total)
    out = tmp_path / "round_0" / "sft"
    assert read_manifest(out).metrics["processes"] == 2
    saved = AutoModelForCausalLM.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model["policy"])
    assert sum(p.numel() for p in saved.parameters()) == sum(p.numel() for p in base.parameters())


def test_qlora_trains_on_a_4bit_base_and_merges_into_full_precision(sft_cfg, tiny_model):
    import bitsandbytes as bnb

    cfg = sft_cfg("peft=qlora", "sft.max_steps=6", "sft.learning_rate=5e-3")
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    trainer = stage.build_trainer(cfg, tokenizer, prepared_for(cfg, tokenizer), Path(cfg.output_dir))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())
    del trainer
    manifest = stage.run(cfg)
    merged = AutoModelForCausalLM.from_pretrained(Path(cfg.output_dir) / "model")
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    assert merged.dtype == torch.float32 and manifest.metrics["global_step"] == 6


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_llama3_adapter_with_an_added_pad_token_merges(tmp_path, family_models, monkeypatch, method):
    """Where no unused token can pad, `<|pad|>` is added and the embeddings grow to 128,257 rows: the adapter
    carries them and the merge works (it failed with a 128,257 vs 128,256 size mismatch)."""
    import core.chat

    monkeypatch.setattr(core.chat, "_unused_pad_candidates", lambda tokenizer, taken: [])
    cfg = family_sft_cfg(
        tmp_path,
        family_models,
        "llama3",
        f"peft={method}",
        "sft.max_steps=2",
        "sft.per_device_train_batch_size=4",
    )
    manifest = stage.run(cfg)
    model_dir = Path(cfg.output_dir) / "model"
    merged = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.pad_token == "<|pad|>" and len(tokenizer) == 128257
    assert merged.get_input_embeddings().num_embeddings >= len(tokenizer)
    adapter = load_file(str(Path(cfg.output_dir) / "adapter" / "adapter_model.safetensors"))
    saved = next(v for k, v in adapter.items() if "embed_tokens" in k)
    assert torch.equal(saved[128256], merged.get_input_embeddings().weight[128256].detach())
    assert manifest.metrics["preview"]["trained"].endswith("<|eot_id|>")


VLLM_SCRIPT = """
import os, sys
os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
from vllm import LLM, SamplingParams
llm = LLM(model=sys.argv[1], enforce_eager=True, dtype="float32", max_model_len=512, seed=0)
prompt = llm.get_tokenizer().apply_chat_template(
    [{"role": "user", "content": sys.argv[2]}], add_generation_prompt=True, tokenize=False)
out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=120))[0].outputs[0]
print("RESULT", out.finish_reason, repr(out.text))
"""


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_loads_the_saved_model_and_stops_at_end_of_turn(full_run):
    pytest.importorskip("vllm")
    cfg, _ = full_run
    question = f"Compute 40 + 33.\n\n{cfg.model.instruction_suffix}"
    done = subprocess.run(
        [sys.executable, "-c", VLLM_SCRIPT, str(Path(cfg.output_dir) / "model"), question],
        cwd=REPO,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    assert result.startswith("RESULT stop '<think>") and "\\\\boxed{" in result


def test_rope_theta_and_context_overrides_reach_the_model(tiny_model):
    from core.training import load_pretrained

    model = load_pretrained(
        AutoModelForCausalLM,
        tiny_model["policy"],
        dtype=torch.float32,
        attn_implementation="sdpa",
        rope_theta=300000.0,
        max_position_embeddings=32768,
    )
    assert model.config.rope_parameters["rope_theta"] == 300000.0
    assert model.config.max_position_embeddings == 32768
    base = AutoModelForCausalLM.from_pretrained(tiny_model["policy"])
    assert base.config.rope_parameters["rope_theta"] == 10000.0  # the saved model is untouched
