"""GRPO prompts: a prompt set with gold answers and/or reasoning-gym generators, checked before a model loads.

Each prompt becomes a plain-text example: `prompt` is the native generation prompt from core.chat.ChatRenderer
(the same text sample.py and SFT use), so TRL applies no chat template of its own; `question` (the bare
problem) and `prefill` (R1's `<think>\n`, joined back to every completion before it is judged) ride along as
columns for the reward functions, with the `answer` and the `data_source` whose verifier judges it. Prompts whose gold
cannot be judged (e.g. "proof") would only ever earn None, and prompts longer than `max_prompt_length`
would be cut by nobody: both are dropped up front and counted.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from core.artifacts import (
    fingerprint_dir,
    read_parquet_rows,
    read_parquet_schema,
    require_text_columns,
    resolve_input,
)
from core.chat import ChatRenderer
from core.lifecycle import StageRun
from core.models import require_model_dir
from core.verifier import UNJUDGEABLE_GOLDS
from grpo.config import GRPOData, GRPOStageConfig, ReasoningGymTask
from grpo.rewards import REASONING_GYM

STAGE = "grpo"
PROMPT_COLUMNS = ("prompt", "answer")


class PromptsError(ValueError):
    """The prompts are missing, malformed or empty."""


@dataclass
class PreparedPrompts:
    examples: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)


def read_prompt_rows(path: Path, split: str | None) -> list[dict[str, Any]]:
    schema = read_parquet_schema(path, PromptsError)
    names = schema.names
    missing = [c for c in PROMPT_COLUMNS if c not in names]
    if missing:
        raise PromptsError(
            f"{path}: missing column(s) {missing}; prompts need {list(PROMPT_COLUMNS)} (+ id, split); found {names}"
        )
    if split is not None and "split" not in names:
        raise PromptsError(f"{path} has no `split` column; set data.split=null to use every row")
    require_text_columns(path, schema, ("prompt",), PromptsError)
    columns = [c for c in ("id", "prompt", "answer", "split") if c in names]
    rows = read_parquet_rows(path, columns, PromptsError)
    for i, row in enumerate(rows):
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise PromptsError(f"{path}: row {i} has an empty or null 'prompt'")
        row.setdefault("id", str(i))
    return [
        {"id": r["id"], "prompt": r["prompt"], "answer": r["answer"] or "", "data_source": "math"}
        for r in rows
        if split is None or r["split"] == split
    ]


def reasoning_gym_rows(tasks: list[ReasoningGymTask], seed: int) -> list[dict[str, Any]]:
    """One row per generated item; the gold is the generator's entry as JSON (its scorer needs metadata)."""
    if not tasks:
        return []
    import reasoning_gym

    rows = []
    for task in tasks:
        task_seed = seed if task.seed is None else task.seed
        try:
            generator = reasoning_gym.create_dataset(task.name, size=task.size, seed=task_seed, **task.config)
        except (ValueError, TypeError, AssertionError) as e:
            raise PromptsError(f"data.reasoning_gym {task.name}: {e}") from e
        for i, entry in enumerate(generator):
            rows.append(
                {
                    "id": f"{task.name}-{task_seed}-{i}",
                    "prompt": entry["question"],
                    "answer": json.dumps(entry, default=list),
                    "data_source": REASONING_GYM,
                }
            )
    return rows


def trainer_prompt(renderer: ChatRenderer, question: str) -> str:
    """The generation prompt as the text TRL tokenizes: TRL tokenizes plain prompts with the tokenizer's
    special tokens on, so a bos the tokenizer adds itself (Llama-3, R1-Distill) is left out of the text
    instead of appearing twice."""
    text = renderer.prompt(question)
    tok = renderer.tokenizer
    bos = tok.bos_token
    if bos and text.startswith(bos):
        probe = tok("x")["input_ids"]
        if probe and probe[0] == tok.bos_token_id:
            return text[len(bos) :]
    return text


def prompts_file(data: GRPOData) -> tuple[Path, str] | None:
    """(file, identity) of the prompt set, if the data has one."""
    if data.prompts is None:
        return None
    file, identity, _ = resolve_input(data.prompts, "prompts", "prompts source", PromptsError)
    return file, identity


def identify(cfg: GRPOStageConfig) -> StageRun:
    """The run's identity (the pipeline's skip check, and grpo.stage.run's): the config, the policy, the
    prompt set, the reasoning-gym version (its generators' code decides the items) and the reward model."""
    inputs = {"model": fingerprint_dir(require_model_dir(cfg.model.path, "model"))}
    if (prompts := prompts_file(cfg.data)) is not None:
        inputs["prompts"] = prompts[1]
    if cfg.data.reasoning_gym:
        inputs["reasoning_gym"] = f"reasoning-gym=={metadata.version('reasoning-gym')}"
    if cfg.rewards.reward_model:
        reward_model = require_model_dir(
            cfg.rewards.reward_model_path, "reward model (rewards.reward_model_path)"
        )
        inputs["reward_model"] = fingerprint_dir(reward_model)
    return StageRun(STAGE, cfg, Path(cfg.output_dir), inputs, round=cfg.round)


def prepare(data: GRPOData, renderer: ChatRenderer, max_prompt_length: int, seed: int) -> PreparedPrompts:
    """The prompts as plain-text examples, and their counts."""
    rows = []
    if (prompts := prompts_file(data)) is not None:
        rows += read_prompt_rows(prompts[0], data.split)
    if data.reasoning_gym:
        rows += reasoning_gym_rows(data.reasoning_gym, seed)
    read = len(rows)
    judgeable = [
        r
        for r in rows
        if r["data_source"] != "math" or str(r["answer"]).strip().lower() not in UNJUDGEABLE_GOLDS
    ]
    rendered = [renderer.prompt(r["prompt"]) for r in judgeable]
    tokenizer = renderer.tokenizer
    lengths = (
        [len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]] if rendered else []
    )
    kept = [r for r, n in zip(judgeable, lengths, strict=True) if n <= max_prompt_length]
    if data.sample_prompts is not None and len(kept) > data.sample_prompts:
        kept = random.Random(seed).sample(kept, data.sample_prompts)
    stats = {
        "rows_read": read,
        "dropped_unjudgeable_gold": read - len(judgeable),
        "dropped_overlength": len(judgeable) - sum(n <= max_prompt_length for n in lengths),
        "prompts": len(kept),
        "by_data_source": {
            s: sum(r["data_source"] == s for r in kept) for s in sorted({r["data_source"] for r in kept})
        },
        "max_prompt_tokens": max(lengths, default=0),
    }
    if not kept:
        raise PromptsError(
            f"no prompts left in {data.prompts or 'the reasoning-gym tasks'}: {read} read, "
            f"{stats['dropped_unjudgeable_gold']} with an unjudgeable gold, "
            f"{stats['dropped_overlength']} longer than max_prompt_length={max_prompt_length}"
        )
    examples = [
        {
            "id": str(r["id"]),
            "prompt": trainer_prompt(renderer, r["prompt"]),
            "question": r["prompt"],
            "prefill": renderer.prefill,
            "answer": str(r["answer"]),
            "data_source": r["data_source"],
        }
        for r in kept
    ]
    return PreparedPrompts(examples, stats)
