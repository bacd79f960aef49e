"""Bad inputs a user really makes, tried at every CLI entry, and outputs that fail to write (issue R4).

The table of what each entry does with each input is docs/bad_inputs.md; every row names the test here
that covers it. Three parts:

- `test_bad_input_is_reported_at_the_door`: one table of (entry, input) cases, each calling the stage's own
  `run(cfg)` in this process. Each must raise the stage's error naming the file (and the row and column,
  where there is one), raised in the project's code with no library exception chained to it (so the
  command line shows no traceback from inside pyarrow, transformers, math-verify, ...), before any model
  loads, and leave no manifest.json. Inputs a stage's contract is to drop are counted instead
  (`test_..._counts_...`), and the verifier gives a verdict or None, in bounded time.
- `test_cli_entry_reports_a_bad_input`: for one case per entry, the real command line (`python -m
  <entry> ...`, run two at a time: each start costs its imports): exit code 1, the message, no library
  frame in the output, no manifest.json.
- Write errors: a full disk injected where each kind of output is written (a streaming ParquetSink, a
  chunked scoring output, config.yaml and the manifest), and a real one on a 256 KiB tmpfs where one can be
  mounted. Nothing is left under an output's final name, no manifest, and a rerun completes.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.config import CONF_DIR, compose, to_typed
from core.stages import stage
from tests.conftest import offline_env, openr1_row, write_rows

REPO = CONF_DIR.parent
ENOSPC = OSError(errno.ENOSPC, "No space left on device")
GOOD_TRACE = "<think>2+2=4.</think> The answer is \\boxed{4}."
MB = 1 << 20


# ---------------------------------------------------------------------------------------------- bad files


def text(values: list[str | bytes | None]) -> pa.Array:
    """A string column; `bytes` values are stored as they are, so a file can hold text that is not UTF-8
    (parquet stores bytes, and pyarrow checks nothing when it writes or reads them)."""
    return pa.array([v.encode() if isinstance(v, str) else v for v in values], pa.binary()).view(pa.string())


def table_file(path: Path, columns: dict[str, Any], compression: str = "zstd") -> Path:
    """A parquet file of `columns`: lists of text (see `text`) or ready pyarrow arrays."""
    arrays = {k: v if isinstance(v, pa.Array) else text(v) for k, v in columns.items()}
    pq.write_table(pa.table(arrays), path, compression=compression)
    return path


@dataclass
class Inputs:
    """Every bad input of the table, made once: `files[name]`, and the model directories."""

    root: Path
    policy: str
    reward_model: str
    adapter: str  # adapter_config.json + adapter_model.safetensors, no config.json
    small_vocab: str  # the tiny policy with vocab_size 16 in its config.json: its tokenizer is larger
    files: dict[str, Path]

    def __getitem__(self, name: str) -> Path:
        return self.files[name]


# Text columns of the tables each stage reads, and the one the bad rows are put in.
SCHEMAS = {
    "sft": ({"instruction": "Compute 2 + 2.", "output": GOOD_TRACE}, "output"),
    "pairs": (
        {"prompt": "Compute 2 + 2.", "chosen": GOOD_TRACE, "rejected": "<think>2+2=5</think> \\boxed{5}"},
        "rejected",
    ),
    "prompts": ({"id": "p", "prompt": "Compute 2 + 2.", "answer": "4"}, "prompt"),
    "score": ({"prompt": "Compute 2 + 2.", "completion": GOOD_TRACE}, "completion"),
}


def make_inputs(root: Path, tiny_model: dict[str, str]) -> Inputs:
    files: dict[str, Path] = {}

    def put(name: str, data: bytes | str) -> None:
        files[name] = root / name
        files[name].write_bytes(data if isinstance(data, bytes) else data.encode())

    put("empty.parquet", b"")
    put("corrupt.parquet", b"PAR1" + b"\x00 not parquet \xff" * 64)
    put("records.jsonl", '{"instruction": "Compute 2 + 2.", "output": "4"}\n')
    put("broken.jsonl", '{"prompt": "Compute 2 + 2.", "answer": "4"}\n{"prompt": "Compute 3 + 3.", "ans\n')
    put("latin1.jsonl", b'{"prompt": "Compute 2 + 2.", "answer": "4"}\n{"prompt": "Calculez 3 \xd7 3."}\n')
    put("latin1.txt", b"Compute 2 + 2.\nCalculez 3 \xd7 3.\n")
    put(
        "unparseable_gold.jsonl",
        '{"problem": "Compute 2 + 2.", "answer": "4"}\n{"problem": "Simplify.", "answer": "\\\\frac{"}\n',
    )
    put(
        "long_prompt.jsonl",
        json.dumps({"prompt": "Compute " + "1 + " * 1500 + "1.", "answer": "1501"}) + "\n",
    )
    for schema, (row, target) in SCHEMAS.items():
        good = {k: [v, v] for k, v in row.items()}
        files[f"{schema}_zero_rows.parquet"] = table_file(
            root / f"{schema}_zero_rows.parquet", {k: [] for k in row}
        )
        wrong = dict(good, **{target: pa.array([1, 2], pa.int64())})
        files[f"{schema}_wrong_type.parquet"] = table_file(root / f"{schema}_wrong_type.parquet", wrong)
        null = dict(good, **{target: [row[target], None]})
        files[f"{schema}_null.parquet"] = table_file(root / f"{schema}_null.parquet", null)
        empty = dict(good, **{target: [row[target], "  "]})
        files[f"{schema}_empty_string.parquet"] = table_file(root / f"{schema}_empty_string.parquet", empty)
        latin1 = dict(good, **{target: [row[target], b"Calculez 3 \xd7 3."]})
        files[f"{schema}_non_utf8.parquet"] = table_file(root / f"{schema}_non_utf8.parquet", latin1)
    too_long = {"instruction": ["Compute " + "1 + " * 200 + "1."], "output": [GOOD_TRACE]}
    files["sft_too_long.parquet"] = table_file(root / "sft_too_long.parquet", too_long)
    long_prompt = {"id": ["p"], "prompt": ["Compute " + "1 + " * 200 + "1."], "answer": ["201"]}
    files["prompts_too_long.parquet"] = table_file(root / "prompts_too_long.parquet", long_prompt)

    # OpenR1-Math shards (data_process): a good one, one of 0 rows, one whose data pages are corrupt behind
    # a footer that reads.
    from data_process.openr1 import OPENR1_SCHEMA

    files["openr1"] = write_rows(root / "openr1" / "train-00000-of-00001.parquet", [openr1_row()])
    files["openr1_zero_rows"] = root / "openr1_zero_rows.parquet"
    pq.write_table(OPENR1_SCHEMA.empty_table(), files["openr1_zero_rows"])
    from data_process.synthetic import rows_to_table

    files["openr1_bad_pages"] = root / "openr1_bad_pages.parquet"
    pq.write_table(rows_to_table([openr1_row()]), files["openr1_bad_pages"], compression="none")
    raw = bytearray(files["openr1_bad_pages"].read_bytes())
    raw[4:64] = b"\xab" * 60  # the first page header of the first column; the footer is intact
    files["openr1_bad_pages"].write_bytes(bytes(raw))
    wrong = rows_to_table([openr1_row()]).set_column(2, "answer", pa.array([4], pa.int64()))
    files["openr1_wrong_type"] = root / "openr1_wrong_type.parquet"
    pq.write_table(wrong, files["openr1_wrong_type"])

    # Good inputs, for the settings a case leaves alone (its own input is the only bad one).
    files["good_sft.parquet"] = table_file(
        root / "good_sft.parquet", {k: [v] * 4 for k, v in SCHEMAS["sft"][0].items()}
    )
    files["good_pairs.parquet"] = table_file(
        root / "good_pairs.parquet", {k: [v] * 4 for k, v in SCHEMAS["pairs"][0].items()}
    )
    files["good_prompts.parquet"] = table_file(
        root / "good_prompts.parquet",
        {"id": ["a", "b"], "prompt": ["Compute 2 + 2."] * 2, "answer": ["4", "4"]},
    )
    put("good.jsonl", '{"id": "a", "prompt": "Compute 2 + 2.", "answer": "4"}\n')
    put("gold.jsonl", '{"problem": "Compute 2 + 2.", "answer": "4"}\n')

    adapter = root / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": "/models/Qwen2.5-1.5B-Instruct", "r": 16})
    )
    (adapter / "adapter_model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    # The tokenizer alone (no config.json: not a model), and the policy with a corrupt tokenizer.json.
    tokenizer_only = root / "tokenizer_only"
    tokenizer_only.mkdir()
    for f in Path(tiny_model["policy"]).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, tokenizer_only / f.name)
    files["tokenizer_only"] = tokenizer_only
    files["bad_tokenizer"] = root / "bad_tokenizer"
    shutil.copytree(tiny_model["policy"], files["bad_tokenizer"])
    (files["bad_tokenizer"] / "tokenizer.json").write_text(
        '{"version": "1.0", "model": {"type": "BPE", "vocab": 7'
    )
    small = root / "small_vocab"
    shutil.copytree(tiny_model["policy"], small)
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": 16}))
    return Inputs(root, tiny_model["policy"], tiny_model["reward_model"], str(adapter), str(small), files)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("bad_inputs"), tiny_model)


# ---------------------------------------------------------------------------------------------- the table


def base_settings(entry: str, inputs: Inputs, run_dir: Path) -> dict[str, Any]:
    """Good settings of each entry, into `run_dir`; a case replaces the ones it makes bad (None: leave the
    key out)."""
    common = {"run_dir": run_dir, "progress": "false"}
    training = {"run_dir": run_dir, "use_cpu": "true"}
    return {
        "data_process": {**common, "model.path": inputs.policy, "input_dir": inputs["openr1"]},
        "train_sft": {
            **training, "model.path": inputs.policy, "data": f"[{{path: {inputs['good_sft.parquet']}}}]",
            "sft.report_to": "[none]",
        },
        "reward_model": {
            **training, "model.path": inputs.policy, "pairs": inputs["good_pairs.parquet"], "rm.report_to": "[none]",
        },
        "reward_model.score": {
            "progress": "false", "input": inputs["score_empty_string.parquet"], "output": run_dir / "scored.parquet",
            "model.path": inputs.reward_model, "use_cpu": "true",
        },
        "reject_sampling": {
            **common, "model.path": inputs.policy, "reward_model.path": inputs.reward_model,
            "prompts.path": inputs["good.jsonl"], "prompts.split": "null", "sampling.backend": "transformers",
            "sampling.n": 2, "sampling.max_new_tokens": 8, "use_cpu": "true",
        },
        "reject_sampling.sample": {
            **common, "model.path": inputs.policy, "prompts.path": inputs["good.jsonl"], "prompts.split": "null",
            "output": run_dir / "samples.parquet", "sampling.backend": "transformers", "sampling.max_new_tokens": 8,
            "show": 0, "use_cpu": "true",
        },
        "evaluation": {
            **common, "model.path": inputs.policy, "benchmark": "file", "benchmark.path": inputs["gold.jsonl"],
            "sampling.backend": "transformers", "use_cpu": "true",
        },
        "grpo": {
            **training, "model.path": inputs.policy, "data.prompts": inputs["good_prompts.parquet"],
            "data.split": "null", "grpo.report_to": "[none]",
        },
    }[entry]  # fmt: skip


STAGE_OF = {
    "data_process": "data_process",
    "train_sft": "train_sft",
    "reward_model": "reward_model",
    "reward_model.score": "rm_score",
    "reject_sampling": "reject_sampling",
    "reject_sampling.sample": "sample",
    "evaluation": "evaluate",
    "grpo": "grpo",
}
GROUPS = {"benchmark"}  # settings that choose a config group: composed, not set (None: the field is null)
_composed: dict[tuple[str, int], Any] = {}


def value(v: Any) -> Any:
    """A setting as the value Hydra would make of it on a command line."""
    import yaml

    return str(v) if isinstance(v, Path) else yaml.safe_load(v) if isinstance(v, str) else v


def config(entry: str, inputs: Inputs, run_dir: Path, settings: dict[str, Any] | None = None) -> Any:
    """The typed config of `entry`: its good settings into `run_dir`, then `settings` (the case's). Hydra
    composes each entry once (~0.3 s); each case sets its values on a copy, as the pipeline does
    (pipeline/run.py, compose_step), and types it through the stage's schema (its checks run)."""
    import copy

    from omegaconf import OmegaConf

    s = stage(STAGE_OF[entry])
    base = base_settings(entry, inputs, run_dir)
    key = (entry, id(inputs))
    if key not in _composed:
        _composed[key] = compose(s.name, [f"{k}={v}" for k, v in base.items()])
    cfg = copy.deepcopy(_composed[key])
    nulled: list[str] = []
    for name, v in {**base, **(settings or {})}.items():
        if name == "data_path":  # train_sft's one data source
            name, v = "data", [{"path": str(v)}]
        if (name in GROUPS and v is not None) or any(name.startswith(f"{n}.") for n in nulled):
            continue
        if v is None:
            nulled.append(name)
        OmegaConf.update(cfg, name, value(v), merge=True)
    return to_typed(cfg, s.load_schema())


def run_in_process(entry: str, cfg: Any) -> Any:
    return stage(STAGE_OF[entry]).load_run()(cfg)


@dataclass(frozen=True)
class Case:
    entry: str  # the command line's module
    what: str  # the input, as docs/bad_inputs.md names it
    settings: Callable[[Inputs], dict[str, Any]]
    error: str  # the exception class (or one of its bases) by name
    match: str  # what the message must say: the file, row and column it names

    @property
    def id(self) -> str:
        return f"{self.entry}|{self.what}"


def case(entry: str, what: str, settings: Callable[[Inputs], dict[str, Any]], error: str, match: str) -> Case:
    return Case(entry, what, settings, error, match)


def parquet_cases(
    entry: str,
    key: str,
    schema: str,
    error: str,
    null_match: str | None = None,
    missing_error: str | None = None,
    reads_jsonl: bool = False,
) -> list[Case]:
    """The parquet inputs every parquet-reading entry is tried with, through its setting `key`."""
    _, target = SCHEMAS[schema]
    cases = [
        case(entry, "missing file", lambda i: {key: i.root / "none.parquet"}, missing_error or error,
             r"none\.parquet does not exist"),
        case(entry, "empty file (0 bytes)", lambda i: {key: i["empty.parquet"]}, error,
             r"empty\.parquet: not a readable parquet file \(Parquet file size is 0 bytes\)"),
        case(entry, "corrupt parquet", lambda i: {key: i["corrupt.parquet"]}, error,
             r"corrupt\.parquet: not a readable parquet file"),
        case(entry, "JSONL where parquet is read", lambda i: {key: i["records.jsonl"]}, error,
             r"records\.jsonl: not a readable parquet file"),
        case(entry, "wrong column type", lambda i: {key: i[f"{schema}_wrong_type.parquet"]}, error,
             rf"{schema}_wrong_type\.parquet: column '{target}' has type int64, expected string"),
        case(entry, "null string", lambda i: {key: i[f"{schema}_null.parquet"]}, error,
             null_match or rf"{schema}_null\.parquet: row 1 has an empty or null '{target}'"),
        case(entry, "non-UTF-8 text", lambda i: {key: i[f"{schema}_non_utf8.parquet"]}, error,
             rf"{schema}_non_utf8\.parquet: row 1, column '{target}' holds text that is not UTF-8"),
    ]  # fmt: skip
    return [c for c in cases if not (reads_jsonl and c.what == "JSONL where parquet is read")]


def model_cases(entry: str, key: str = "model.path", what: str = "model", **more: Any) -> list[Case]:
    return [
        case(entry, f"adapter-only {what} dir", lambda i: {key: i.adapter, **more}, "ModelDirError",
             r"adapter' holds a PEFT adapter only \(adapter_config\.json, no config\.json; its base model is "
             r"'/models/Qwen2.5-1.5B-Instruct'\)"),
    ]  # fmt: skip


def vocab_case(entry: str) -> Case:
    return case(entry, "tokenizer larger than the model's vocabulary", lambda i: {"model.path": i.small_vocab},
                "ValueError", r"has \d+ tokens but the model in .*small_vocab has vocab_size 16")  # fmt: skip


CASES = [
    # data_process: OpenR1-Math shards; rows it cannot use are dropped and counted (test below).
    case("data_process", "missing input_dir", lambda i: {"input_dir": i.root / "nowhere"}, "FileNotFoundError",
         r"input_dir .*nowhere does not exist"),
    case("data_process", "empty file (0 bytes)", lambda i: {"input_dir": i["empty.parquet"]}, "SchemaError",
         r"empty\.parquet: not a readable parquet file \(Parquet file size is 0 bytes\)"),
    case("data_process", "corrupt parquet", lambda i: {"input_dir": i["corrupt.parquet"]}, "SchemaError",
         r"corrupt\.parquet: not a readable parquet file"),
    case("data_process", "corrupt data pages", lambda i: {"input_dir": i["openr1_bad_pages"]}, "SchemaError",
         r"openr1_bad_pages\.parquet: cannot read rows 0-0 of 1 .*the file is corrupt"),
    case("data_process", "parquet with 0 rows", lambda i: {"input_dir": i["openr1_zero_rows"]}, "SchemaError",
         r"nothing to read under .*openr1_zero_rows\.parquet: .* hold 0 rows"),
    case("data_process", "wrong column type", lambda i: {"input_dir": i["openr1_wrong_type"]}, "SchemaError",
         r"openr1_wrong_type\.parquet: column 'answer' has type int64 \(int\), expected string"),
    case("data_process", "adapter-only model dir", lambda i: {"model.path": i.adapter}, "FileNotFoundError",
         r"adapter has no tokenizer files .*It holds a PEFT adapter only"),
    vocab_case("data_process"),
    case("data_process", "corrupt tokenizer.json", lambda i: {"model.path": i["bad_tokenizer"]}, "ModelDirError",
         r"cannot load the tokenizer in .*bad_tokenizer: "),
    case("data_process", "JSONL with a broken line", lambda i: {"filters.decontaminate": f"[{i['broken.jsonl']}]"},
         "DecontaminationError", r"broken\.jsonl: line 2 is not valid JSON"),
    case("data_process", "non-UTF-8 text", lambda i: {"filters.decontaminate": f"[{i['latin1.txt']}]"},
         "DecontaminationError", r"latin1\.txt: line 2 is not UTF-8 text \(byte 12 of the line is b'\\xd7'\)"),
    # train_sft: SFT records
    *parquet_cases("train_sft", "data_path", "sft", "DataError"),
    case("train_sft", "parquet with 0 rows", lambda i: {"data_path": i["sft_zero_rows.parquet"]}, "DataError",
         r"no SFT examples left: 0 read"),
    case("train_sft", "prompt longer than max_length", lambda i: {"data_path": i["sft_too_long.parquet"], "sft.max_length": 64},
         "DataError", r"no SFT examples left: 1 read, 1 longer than max_length=64 dropped"),
    *model_cases("train_sft"),
    vocab_case("train_sft"),
    # reward_model: preference pairs
    *parquet_cases("reward_model", "pairs", "pairs", "PairsError"),
    case("reward_model", "parquet with 0 rows", lambda i: {"pairs": i["pairs_zero_rows.parquet"]}, "PairsError",
         r"no preference pairs in \[.*pairs_zero_rows\.parquet"),
    *model_cases("reward_model"),
    vocab_case("reward_model"),
    # reward_model.score: rows to score (an empty completion is scored: a model may stop at once)
    *parquet_cases("reward_model.score", "input", "score", "ScoreInputError", missing_error="FileNotFoundError",
                   null_match=r"score_null\.parquet: row 1 has a null 'completion' \(1 null row\(s\) in all\)"),
    *model_cases("reward_model.score", what="reward model"),
    case("reward_model.score", "a directory without config.json", lambda i: {"model.path": i["tokenizer_only"]},
         "ModelDirError", r"reward model directory '.*tokenizer_only' has no config\.json: not a Hugging Face model "
         r"directory"),
    vocab_case("reward_model.score"),
    # reject_sampling and sample.py: prompt sources (parquet, JSONL, text)
    *parquet_cases("reject_sampling", "prompts.path", "prompts", "PromptError", reads_jsonl=True),
    case("reject_sampling", "JSONL with a broken line", lambda i: {"prompts.path": i["broken.jsonl"]}, "PromptError",
         r"broken\.jsonl: line 2 is not valid JSON"),
    case("reject_sampling", "non-UTF-8 text", lambda i: {"prompts.path": i["latin1.jsonl"]}, "PromptError",
         r"latin1\.jsonl: line 2 is not UTF-8 text"),
    case("reject_sampling", "empty string", lambda i: {"prompts.path": i["prompts_empty_string.parquet"]},
         "PromptError", r"prompts_empty_string\.parquet: row 1 has an empty or null 'prompt'"),
    *model_cases("reject_sampling", what="policy"),
    *model_cases("reject_sampling", "reward_model.path", what="reward model"),
    case("reject_sampling", "prompt longer than the context", lambda i: {"prompts.path": i["long_prompt.jsonl"]},
         "ValueError", r"prompt '[0-9a-f]{16}' \(the longest; .*long_prompt\.jsonl, column 'prompt'\) has \d+ tokens, "
         r"no room to generate within a context of 2048"),
    vocab_case("reject_sampling"),
    case("reject_sampling.sample", "missing file", lambda i: {"prompts.path": i.root / "none.jsonl"}, "PromptError",
         r"none\.jsonl does not exist"),
    case("reject_sampling.sample", "non-UTF-8 text", lambda i: {"prompts.path": i["latin1.txt"]}, "PromptError",
         r"latin1\.txt: line 2 is not UTF-8 text"),
    case("reject_sampling.sample", "JSONL with a broken line", lambda i: {"prompts.path": i["broken.jsonl"]},
         "PromptError", r"broken\.jsonl: line 2 is not valid JSON"),
    case("reject_sampling.sample", "corrupt parquet", lambda i: {"prompts.path": i["corrupt.parquet"]},
         "PromptError", r"corrupt\.parquet: not a readable parquet file"),
    *model_cases("reject_sampling.sample"),
    case("reject_sampling.sample", "prompt longer than the context", lambda i: {"prompts.path": i["long_prompt.jsonl"]},
         "ValueError", r"long_prompt\.jsonl, column 'prompt'\) has \d+ tokens, no room to generate"),
    # evaluation: a benchmark file, or held-out prompts
    case("evaluation", "gold answer that does not parse", lambda i: {"benchmark.path": i["unparseable_gold.jsonl"]},
         "BenchmarkError", r"unparseable_gold\.jsonl: line 2 \(id 1\): gold answer '\\\\frac\{' does not parse"),
    case("evaluation", "JSONL with a broken line",
         lambda i: {"benchmark.path": i["broken.jsonl"], "benchmark.problem_field": "prompt"},
         "BenchmarkError", r"broken\.jsonl: line 2 is not valid JSON"),
    case("evaluation", "non-UTF-8 text", lambda i: {"benchmark.path": i["latin1.jsonl"]}, "BenchmarkError",
         r"latin1\.jsonl: line 2 is not UTF-8 text"),
    case("evaluation", "corrupt parquet (held-out prompts)",
         lambda i: {"benchmark": None, "prompts.path": i["corrupt.parquet"]},
         "PromptError", r"corrupt\.parquet: not a readable parquet file"),
    *model_cases("evaluation", what="policy"),
    # grpo: prompts with gold answers (unjudgeable golds and over-long prompts are dropped and counted)
    *parquet_cases("grpo", "data.prompts", "prompts", "PromptsError"),
    case("grpo", "prompt longer than max_prompt_length", lambda i: {"data.prompts": i["prompts_too_long.parquet"],
         "data.split": "null"}, "PromptsError", r"no prompts left in .*prompts_too_long\.parquet: 1 read, 0 with an "
         r"unjudgeable gold, 1 longer than "
         r"max_prompt_length"),
    *model_cases("grpo"),
    *model_cases("grpo", "rewards.reward_model_path", what="reward model", **{"rewards.reward_model": 1.0}),
    vocab_case("grpo"),
]  # fmt: skip


def raised_in_project_code(error: BaseException) -> None:
    """The error was raised by the project (its innermost frame is in this repository, not a library) and
    carries no library exception with it, so `python -m` prints no frame from inside a library."""
    frames = traceback.extract_tb(error.__traceback__)
    innermost = frames[-1].filename
    assert innermost.startswith(str(REPO)) and ".venv" not in innermost, f"raised in {innermost}"
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__), (
        f"a chained {type(error.__cause__ or error.__context__).__name__} would be printed"
    )


def is_a(error: BaseException, name: str) -> bool:
    return any(c.__name__ == name for c in type(error).__mro__)


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_bad_input_is_reported_at_the_door(c: Case, inputs: Inputs, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    # No model may load before the bad input is reported.
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    for cls in ("AutoModelForCausalLM", "AutoModelForSequenceClassification"):
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", refuse)
    with pytest.raises(Exception) as caught:
        run_in_process(c.entry, config(c.entry, inputs, run_dir, c.settings(inputs)))
    error = caught.value
    assert is_a(error, c.error), f"{type(error).__name__}: {error}"
    assert re.search(c.match, str(error)), str(error)
    raised_in_project_code(error)
    assert not list(run_dir.rglob("manifest.json"))


# ---------------------------------------------------------------------------------------------- counted drops


def test_data_process_drops_and_counts_rows_it_cannot_use(inputs, tmp_path):
    """data_process's contract is to drop what it cannot use and count it: null and empty strings, text that
    is not UTF-8, a 1 MB trace (over filters.max_tokens), deeply nested boxes and a gold the verifier cannot
    parse (traces.correctness=verifier) all go through in seconds, each counted where the manifest says."""
    from data_process.stage import run
    from data_process.synthetic import rows_to_table

    mb_trace = "<think>" + "1+" * (MB // 2) + "</think> The answer is \\boxed{4}."
    nested = "<think>8+8=16.</think> " + "\\boxed{" * 20_000 + "16"  # 20,000 boxes, never closed
    two = {
        "is_reasoning_complete": [True, True], "finish_reasons": ["stop", "stop"],
        "correctness_math_verify": [False, True], "correctness_llama": [False, True],
    }  # fmt: skip
    rows = [
        openr1_row(uuid="ok"),
        openr1_row(uuid="null_problem", problem=None),
        openr1_row(uuid="blank_answer", problem="Compute 3 + 3.", answer="  "),
        openr1_row(uuid="null_generation", problem="Compute 5 + 5.", generations=[GOOD_TRACE, None] * 2),
        openr1_row(uuid="latin1", problem="Calculez 3 x 3."),
        openr1_row(uuid="mb", problem="Compute 1 + 3.", generations=["<think>1+3=5</think> \\boxed{5}", mb_trace], **two),
        openr1_row(uuid="nested", problem="Compute 8 + 8.", answer="16",
                   generations=[nested, "<think>8+8=16.</think> \\boxed{16}"], **two),
        openr1_row(uuid="unparseable", problem="Simplify the fraction.", answer="\\frac{"),
    ]  # fmt: skip
    table = rows_to_table(rows)
    problems = [r["problem"] for r in rows]
    problems[4] = b"Calculez 3 \xd7 3."
    shard = tmp_path / "in" / "train-00000-of-00001.parquet"
    shard.parent.mkdir()
    pq.write_table(table.set_column(0, "problem", text(problems)), shard)
    settings = {"input_dir": shard, "traces.correctness": "verifier", "eval_fraction": 0, "sft_fraction": 1.0}
    started = time.perf_counter()
    manifest = run(config("data_process", inputs, tmp_path / "run", settings))
    assert time.perf_counter() - started < 60
    m = manifest.metrics
    assert m["rows_read"] == 8 and m["rows_kept"] == 4
    assert m["rows_dropped"] == {
        "empty_problem": 1,
        "invalid_utf8": 1,
        "missing_answer": 1,
        "null_generation": 1,
    }
    assert m["sft"]["too_long"] == 1  # the 1 MB trace: verified correct, over filters.max_tokens
    assert m["sft"]["no_correct_complete_trace"] == 1  # the unparseable gold: every verdict None
    assert m["sft"]["written"] == 2  # "ok" and "nested" (its correct trace; the nested one is judged wrong)
    assert m["pairs"]["written"] >= 1


def test_a_1mb_completion_is_cut_for_the_reward_model_and_scored(inputs, tmp_path):
    """Pairs longer than rm.max_length are cut in the middle and counted; reward_model.score gives a 1 MB
    completion (and an empty one) a score like any other row."""
    from core.config import ModelConfig
    from core.models import chat_renderer, load_tokenizer
    from reward_model.data import SequenceEncoder, encode_pairs

    mb = "<think>" + "1+" * (MB // 2) + "</think> \\boxed{4}"
    model = ModelConfig(path=inputs.policy)
    encoder = SequenceEncoder(chat_renderer(model, load_tokenizer(model)), 512, "middle", 16)
    rows = [{"id": str(i), "prompt": "Compute 2 + 2.", "chosen": mb if i == 0 else GOOD_TRACE, "rejected": "\\boxed{5}"}
            for i in range(40)]  # fmt: skip
    pairs = encode_pairs(rows, encoder, eval_fraction=0.3, seed=0)
    assert pairs.stats["sequences"]["chosen"] == {"truncated_middle": 1} and pairs.stats["pairs_dropped"] == 0
    assert max(len(e["chosen_ids"]) for e in pairs.train + pairs.eval) == 512

    scored = table_file(
        tmp_path / "samples.parquet", {"prompt": ["Compute 2 + 2."] * 3, "completion": [mb, "", GOOD_TRACE]}
    )
    output = run_in_process(
        "reward_model.score",
        config("reward_model.score", inputs, tmp_path, {"input": scored, "max_length": 512}),
    )
    scores = pq.read_table(output).column("rm_score").to_pylist()
    assert len(scores) == 3 and all(isinstance(x, float) and x == x for x in scores)


DEEP = 5000
ADVERSARIAL = [
    # (what, completion, gold, verdict)
    ("1 MB completion", "<think>" + "1+" * (MB // 2) + "</think> \\boxed{4}", "4", True),
    ("1 MB of numbers after the reasoning", "<think>x</think> " + "1 " * (MB // 2), "4", False),
    ("20,000 nested boxes never closed", "<think>x</think> " + "\\boxed{" * 20_000 + "4", "4", False),
    ("5,000 nested boxes closed", "<think>x</think> " + "\\boxed{" * DEEP + "4" + "}" * DEEP, "4", True),
    ("100,000 boxes after the reasoning", "<think>x</think> " + "\\boxed{1}" * 100_000, "4", False),
    ("gold that does not parse", "<think>x</think> \\boxed{4}", "\\frac{", None),
    ("gold 'proof'", "<think>x</think> \\boxed{4}", "proof", None),
    (
        "gold nested 2,000 boxes deep",
        "<think>x</think> \\boxed{4}",
        "\\boxed{" * 2000 + "4" + "}" * 2000,
        True,
    ),
]


@pytest.mark.parametrize(
    ("what", "completion", "gold", "verdict"), ADVERSARIAL, ids=[a[0] for a in ADVERSARIAL]
)
def test_the_verifier_gives_a_verdict_or_none_in_bounded_time(what, completion, gold, verdict):
    """Every judge of a completion (core.verifier, rejection sampling's and evaluation's verify_samples with
    its format check and answer key, GRPO's accuracy and format rewards) answers within seconds. Before,
    last_boxed was quadratic: 20,000 unclosed boxes took five minutes, outside any time limit."""
    import pandas as pd

    from core.verifier import verify_batch
    from grpo.rewards import accuracy, format_reward
    from reject_sampling.scoring import verify_samples

    started = time.perf_counter()
    assert verify_batch([completion], [gold], timeout=2) == [verdict]
    samples = pd.DataFrame({"id": ["p"], "completion": [completion], "answer": [gold]})
    verified = verify_samples(samples, "math", workers=0)
    assert (None if pd.isna(verified["correct"][0]) else bool(verified["correct"][0])) == verdict
    expected = None if verdict is None else float(verdict)
    assert accuracy([completion], answer=[gold]) == [expected]
    assert format_reward([completion]) in ([0.0], [1.0])
    assert time.perf_counter() - started < 15, what


def test_an_answer_math_verify_cannot_finish_is_unjudged_not_a_hang():
    """An answer nested 3,000 braces deep: math-verify runs out of the time limit, the verdict is None."""
    from core.verifier import verify_batch

    started = time.perf_counter()
    completion = "<think>x</think> \\boxed{" + "{" * 3000 + "4" + "}" * 3000 + "}"
    assert verify_batch([completion], ["\\frac{1}{2}"], timeout=1) == [None]
    assert time.perf_counter() - started < 10


# ---------------------------------------------------------------------------------------------- write errors


def assert_nothing_left(out: Path, names: list[str]) -> None:
    """No output under its final name, no manifest, no temporary file of ours."""
    assert not (out / "manifest.json").exists()
    left = [n for n in names if (out / n).exists()]
    assert not left, f"left under their final names: {left}"
    assert not [p.name for p in out.glob(".*.tmp")], "temporary files left behind"


def fail_once(where: str) -> Callable[..., Any]:
    """A `write_text` that writes half of its text into a file whose name starts with `where`, then raises
    ENOSPC (the disk filled up mid-write); other files are written as usual."""
    original = pathlib.Path.write_text

    def write_text(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        if self.name.startswith(where):
            original(self, data[: len(data) // 2], *args, **kwargs)
            raise ENOSPC
        return original(self, data, *args, **kwargs)

    return write_text


DATA_OUTPUTS = ["sft.parquet", "prompts.parquet", "pairs.parquet"]


@pytest.mark.parametrize("fault", ["parquet sink", "config.yaml", "manifest.json"])
def test_a_full_disk_in_data_process_leaves_nothing_and_a_rerun_completes(
    fault, inputs, tmp_path, monkeypatch
):
    """A write that fails mid-stage: the streaming sinks (the second one fails after the first was renamed
    into place), the resolved config, the manifest. Nothing under a final name it could not finish (no
    output when a sink failed), no manifest, no temporary file; the same command then completes."""
    import core.artifacts
    from core.artifacts import WriteError, read_manifest

    cfg = config("data_process", inputs, tmp_path / "run")
    out = Path(cfg.output_dir)
    if fault == "parquet sink":
        original = pq.ParquetWriter.write_table

        def write_table(self, table, *args, **kwargs):
            if Path(self.where).name == ".prompts.parquet.tmp":  # sft.parquet is closed and renamed by now
                raise ENOSPC
            return original(self, table, *args, **kwargs)

        monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table)
        names, failed = DATA_OUTPUTS, "prompts.parquet"
    elif fault == "config.yaml":
        monkeypatch.setattr(pathlib.Path, "write_text", fail_once(".config.yaml."))
        names, failed = ["config.yaml"], "config.yaml"
    else:
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if Path(dst).name == "manifest.json":
                raise ENOSPC
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(core.artifacts.os, "replace", replace)
        names, failed = [], "manifest.json"
    from data_process.stage import run

    with pytest.raises(
        WriteError, match=rf"cannot write {re.escape(str(out / failed))}: No space left on device"
    ):
        run(cfg)
    assert_nothing_left(out, names)
    monkeypatch.undo()
    manifest = run(cfg)
    assert read_manifest(out) is not None and manifest.metrics["rows_read"] == 1
    assert all((out / n).exists() for n in DATA_OUTPUTS)


@pytest.mark.parametrize("fault", ["a chunk", "the merged file"])
def test_a_full_disk_while_scoring_leaves_no_output_and_a_rerun_resumes(fault, inputs, tmp_path, monkeypatch):
    """reward_model.score (rejection sampling's and evaluation's scoring step): a chunk or the merged output
    fails half-written. No file under the name that failed; the finished chunks stay, and the same command
    then completes the output."""
    from core.artifacts import WriteError

    rows = {"prompt": [f"Compute {i} + 2." for i in range(6)], "completion": [GOOD_TRACE] * 6}
    source = table_file(tmp_path / "samples.parquet", rows)
    cfg = config("reward_model.score", inputs, tmp_path, {"input": source, "chunk_rows": 2})
    output, parts = tmp_path / "scored.parquet", tmp_path / "scored.parquet.parts"
    target = ".part-00001.parquet." if fault == "a chunk" else ".scored.parquet."  # their temporary names
    original = pq.write_table

    def write_table(table, where, *args, **kwargs):
        original(table, where, *args, **kwargs)
        if Path(where).name.startswith(target):
            Path(where).write_bytes(Path(where).read_bytes()[:100])  # half-written, then the disk is full
            raise ENOSPC

    monkeypatch.setattr(pq, "write_table", write_table)
    with pytest.raises(WriteError, match="No space left on device"):
        run_in_process("reward_model.score", cfg)
    assert not output.exists() and not list(tmp_path.glob(".scored.parquet*.tmp"))
    assert not list(parts.glob(".*.tmp"))
    assert (parts / "part-00000.parquet").exists()  # finished chunks are kept for the rerun
    assert (parts / "part-00001.parquet").exists() == (fault == "the merged file")
    monkeypatch.undo()
    run_in_process("reward_model.score", cfg)
    assert pq.read_table(output).num_rows == 6 and not parts.exists()


def test_a_parquet_sink_that_cannot_finish_leaves_nothing(tmp_path, monkeypatch):
    """ParquetSink: a close() whose footer cannot be written removes its temporary file; abort() after a
    close() removes the renamed file too (a stage that fails after closing some outputs keeps none)."""
    from core.artifacts import ParquetSink, WriteError

    schema = pa.schema([("x", pa.string())])
    done = ParquetSink(tmp_path / "done.parquet", schema)
    done.write({"x": "a"})
    done.close()
    failing = ParquetSink(tmp_path / "failing.parquet", schema)
    failing.write({"x": "b"})

    def close(self):
        raise ENOSPC

    monkeypatch.setattr(pq.ParquetWriter, "close", close)
    with pytest.raises(WriteError, match=r"cannot write .*failing\.parquet: No space left on device"):
        failing.close()
    monkeypatch.undo()
    done.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (as root); skipped where it cannot be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            # A file still open (the failed stage's lock, held while this process lives): detach it now.
            subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_really_full_disk_leaves_nothing_and_a_rerun_elsewhere_completes(inputs, tmp_path, tiny_disk):
    """data_process writing to a 256 KiB tmpfs: the disk fills up for real, inside pyarrow."""
    import base64

    from core.artifacts import WriteError
    from data_process.stage import run

    def noise() -> str:  # incompressible: 30 rows of 4 such traces are ~1 MB in any parquet file
        return base64.b64encode(os.urandom(6000)).decode()

    rows = [openr1_row(uuid=f"r{i}", problem=f"Compute {i} + 2.", generations=[
        f"<think>{noise()}</think> \\boxed{{{i + 2}}}" for _ in range(4)], correctness_math_verify=[True] * 4,
        correctness_llama=[True] * 4, finish_reasons=["stop"] * 4, is_reasoning_complete=[True] * 4)
        for i in range(30)]  # fmt: skip
    shard = write_rows(tmp_path / "in" / "train-00000-of-00001.parquet", rows)
    settings = {"input_dir": shard, "output_dir": tiny_disk / "data", "filters.max_tokens": 100_000,
                "sft_fraction": 1.0, "traces.selection": "all", "traces.max_per_problem": 4}  # fmt: skip
    with pytest.raises(WriteError, match="No space left on device"):
        run(config("data_process", inputs, tmp_path / "run", settings))
    assert_nothing_left(tiny_disk / "data", DATA_OUTPUTS)
    settings["output_dir"] = tmp_path / "data"
    manifest = run(config("data_process", inputs, tmp_path / "run", settings))
    assert manifest.metrics["rows_read"] == 30


# ---------------------------------------------------------------------------------------------- command lines


@dataclass(frozen=True)
class Cli:
    entry: str  # python -m <entry>
    what: str  # the input, as docs/bad_inputs.md names it
    args: Callable[[Inputs, Path], list[str]]
    match: str  # in the output: the file, row and column


CLI = [
    Cli("data_process", "adapter-only model dir", lambda i, run: [f"run_dir={run}", f"model.path={i.adapter}",
        f"input_dir={i['openr1']}"], r"FileNotFoundError: .*adapter has no tokenizer files .*It holds a PEFT adapter "
        r"only \(adapter_config\.json, no tokenizer\)"),
    Cli("train_sft", "non-UTF-8 text", lambda i, run: [f"run_dir={run}", f"model.path={i.policy}", "use_cpu=true",
        f"data=[{{path: {i['sft_non_utf8.parquet']}}}]"],
        r"DataError: .*sft_non_utf8\.parquet: row 1, column 'output' holds text that is not UTF-8"),
    Cli("reward_model", "empty file (0 bytes)", lambda i, run: [f"run_dir={run}", f"model.path={i.policy}",
        "use_cpu=true", f"pairs={i['empty.parquet']}"], r"PairsError: .*empty\.parquet: not a readable parquet file"),
    Cli("reward_model.score", "null string", lambda i, run: [f"input={i['score_null.parquet']}",
        f"output={run}/scored.parquet", f"model.path={i.reward_model}"],
        r"ScoreInputError: .*score_null\.parquet: row 1 has a null 'completion'"),
    Cli("reject_sampling", "JSONL with a broken line", lambda i, run: [f"run_dir={run}", f"model.path={i.policy}",
        f"reward_model.path={i.reward_model}", f"prompts.path={i['broken.jsonl']}", "prompts.split=null"],
        r"PromptError: .*broken\.jsonl: line 2 is not valid JSON"),
    Cli("reject_sampling.sample", "non-UTF-8 text", lambda i, run: [f"run_dir={run}", f"model.path={i.policy}",
        f"prompts.path={i['latin1.txt']}", "prompts.split=null", f"output={run}/samples.parquet"],
        r"PromptError: .*latin1\.txt: line 2 is not UTF-8 text"),
    Cli("evaluation", "gold answer that does not parse", lambda i, run: [f"run_dir={run}", f"model.path={i.policy}",
        f"benchmark={i['unparseable_gold.jsonl']}"],
        r"BenchmarkError: .*unparseable_gold\.jsonl: line 2 \(id 1\): gold answer '\\\\frac\{' does not parse"),
    Cli("grpo", "adapter-only model dir", lambda i, run: [f"run_dir={run}", f"model.path={i.adapter}", "use_cpu=true",
        f"data.prompts={i['good_prompts.parquet']}"], r"ModelDirError: model directory '.*adapter' holds a PEFT adapter"),
    Cli("pipeline", "adapter-only model dir", lambda i, run: [f"run_dir={run}", f"model_path={i.adapter}",
        f"input_dir={i['openr1']}", "build_tiny_model=false", "until=data", "report=false"],
        r"adapter has no tokenizer files .*It holds a PEFT adapter only(.|\n)*data_process\.stage:run failed with exit "
        r"code 1 \(log: .*logs/pipeline/data\.log\)"),
]  # fmt: skip
FRAME = re.compile(r'^\s*File "([^"]+)", line \d+', re.M)


@pytest.fixture(scope="module", autouse=True)
def cli_runs(request, inputs, tmp_path_factory) -> Iterator[dict[str, Future]]:
    """The selected CLI cases, started before the module's first test and run two at a time in the
    background while the in-process tests run (each start costs its imports, ~3 s to ~15 s of CPU: the
    whole file takes about as long as its CPU time over two cores)."""
    selected = {
        item.callspec.id
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_cli_entry_reports_a_bad_input"
    }
    root = tmp_path_factory.mktemp("cli")
    env = {**offline_env(), "PYTHONPATH": str(REPO)}

    def launch(cli: Cli) -> tuple[subprocess.CompletedProcess, Path]:
        run_dir = root / cli.entry
        run_dir.mkdir()
        cmd = [sys.executable, "-m", cli.entry, *cli.args(inputs, run_dir)]
        # From a directory of its own: reward_model.score's Hydra logs go under the working directory.
        return subprocess.run(cmd, cwd=run_dir, env=env, capture_output=True, text=True, timeout=300), run_dir

    # The training stages first: they import transformers and TRL before anything else (the longest).
    order = sorted(CLI, key=lambda c: c.entry not in ("train_sft", "reward_model", "grpo"))
    with ThreadPoolExecutor(2) as pool:
        yield {cli_id(c): pool.submit(launch, c) for c in order if cli_id(c) in selected}


def cli_id(c: Cli) -> str:
    return f"{c.entry}|{c.what}"


@pytest.mark.parametrize("cli", CLI, ids=cli_id)
def test_cli_entry_reports_a_bad_input(cli: Cli, cli_runs):
    done, run_dir = cli_runs[cli_id(cli)].result()
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert re.search(cli.match, output), output[-3000:]
    library = [f for f in FRAME.findall(output) if "site-packages" in f or ".venv" in f]
    assert not library, f"traceback frames from outside the project: {library}"
    assert not list(run_dir.rglob("manifest.json"))
