"""Typed config of the whole pipeline (schema `pipeline_schema`, YAML conf/pipeline.yaml).

The pipeline does not re-declare the stages' settings. Each stage keeps its own config (conf/<stage>.yaml)
and the pipeline passes it Hydra overrides: `common` to every stage, then the stage's own section. So

    bash train.sh train_sft.sft.learning_rate=3e-3 train_sft.peft=lora rounds=3 common.model=qwen2.5-1.5b

changes exactly what `python -m train_sft sft.learning_rate=3e-3 peft=lora model=qwen2.5-1.5b` would
(a section key naming a config group, like `peft`, picks the group option). Every stage config is composed
(and so validated) before the first stage starts, so a typo fails in seconds, not after an hour of SFT.

Preset sections and command-line overrides are kept apart. A preset section holds group choices as plain
strings (`train_sft: {sft: long_context}`); merging `train_sft.sft.max_steps=800` into that dict would
turn the string into `{max_steps: 800}` and silently drop the choice (round-0 SFT back on conf/sft/tiny).
So `python -m pipeline` rewrites every command-line `<section>.<key>=<value>` into its own entry of
`cli_overrides`, keyed by its argv position (`++cli_overrides.arg3.train_sft.sft.max_steps=800`): no two
entries share a key, and none touches a preset's section. The value keeps Hydra's syntax, so a sweep
(`-m train_sft.sft.learning_rate=1e-3,3e-3`) still expands it. pipeline/run.py then turns the preset's
section followed by these entries (argv order) into one Hydra override list in which a later value of
the same key replaces an earlier one: `sft=long_context` and `sft.max_steps=800` are different keys, so
both stay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import help_field
from core.ray_train import RayTrainConfig

LAUNCHERS = ("python", "accelerate", "ray")
# PipelineConfig's per-stage override sections.
SECTIONS = (
    "common",
    "data_process",
    "train_sft",
    "reward_model",
    "reject_sampling",
    "grpo",
    "evaluate",
    "benchmarks",
)
PUBLISHED = Path(__file__).resolve().parent / "published.yaml"
CLI_FIELD = "cli_overrides"
_SECTION_ARG = re.compile(rf"^\+{{0,2}}(?P<override>(?:{'|'.join(SECTIONS)})\..*=.*)$", re.DOTALL)


def command_line_overrides(args: list[str]) -> list[str]:
    """The pipeline's command line with each `<section>.<key>=<value>` (also written `+...` / `++...`) moved
    into its own `cli_overrides.arg<i>` entry, i = its position in `args`; every other argument (pipeline
    fields, `experiment=`, `-m`, Hydra's own flags) is left as it is. See the module docstring for why."""
    out = []
    for i, arg in enumerate(args):
        match = _SECTION_ARG.match(arg)
        out.append(f"++{CLI_FIELD}.arg{i}.{match['override']}" if match else arg)
    return out


def cli_entries(cli: dict[str, Any]) -> list[tuple[str, Any]]:
    """`cli_overrides` as (section, its nested value) pairs in command-line order."""
    out = []
    for key in sorted(cli, key=lambda k: int(k.removeprefix("arg"))):
        ((section, value),) = cli[key].items()
        out.append((section, value))
    return out


@dataclass
class PipelineConfig:
    run_name: str = help_field("default", hashed=False)
    run_dir: str = help_field("runs/${run_name}", hashed=False)
    rounds: int = help_field(
        2,
        help="SFT rounds: round 0 trains on the reference traces, round k>0 on round k-1's selected samples.",
    )
    next_round_steps: int = help_field(
        300,
        help="Optimizer steps of every SFT round after the first (and of its control), from the previous model.",
    )
    next_round_learning_rate: float | None = help_field(
        None,
        help="Learning rate of rounds > 0; null = the SFT config's. A full restart of a high rate can hurt.",
    )
    mix_original: float = help_field(
        1.0, help="Weight of the original SFT records mixed into rounds > 0 (0: selected samples only)."
    )
    control: bool = help_field(
        True, help="Train and evaluate a compute-matched control per round > 0: the previous model, the same steps, "
        "on the data it already had. A round's gain only counts when it beats its control.",
    )  # fmt: skip
    last_round_sampling: bool = help_field(
        True, help="Run the last round's rejection sampling too. Its traces and pairs feed no later stage (GRPO "
        "draws its own samples), so a run that only wants the final model can save one sampling pass.",
    )  # fmt: skip
    side_by_side: bool = help_field(
        True, help="On a machine without a GPU, run a round's SFT and its control at the same time (then their "
        "two evaluations), each with half the cores: small matrices use two threads poorly, so the pair "
        "takes ~25% less time on 2 cores. Ignored on a GPU, where they would share its memory.",
    )  # fmt: skip
    use_reward_model: bool = help_field(
        True, help="Train a reward model each round (best-of-N selection needs one)."
    )
    run_grpo: bool = help_field(True, help="Run GRPO from the last round's SFT model.")
    build_tiny_model: bool = help_field(
        True, help="Build the tiny offline model first (the offline default)."
    )
    model_path: str | None = help_field(
        None,
        help="Local base model directory (data_process's tokenizer, round-0 SFT); null = the model preset's.",
    )
    input_dir: str | None = help_field(
        None, help="OpenR1-Math parquet directory; null = synthetic offline data."
    )
    launcher: str = help_field(
        "python", help="python | accelerate (training stages under accelerate launch) | ray (training stages "
        "as Ray Train jobs across a Ray cluster: ray_train).",
    )  # fmt: skip
    accelerate_config: str | None = help_field(
        None, help="conf/accelerate/*.yaml for launcher=accelerate; with launcher=ray, optional: the workers' "
        "DeepSpeed / FSDP / mixed precision (its process counts are ray_train's).",
    )  # fmt: skip
    ray_train: RayTrainConfig = field(default_factory=RayTrainConfig)
    # Per-stage overrides (nested keys become dotted overrides: {sft: {learning_rate: 1e-3}} -> sft.learning_rate=...).
    common: dict[str, Any] = help_field(
        {}, help="Overrides given to every stage, e.g. {model: qwen2.5-1.5b}."
    )
    data_process: dict[str, Any] = help_field({}, help="Overrides of conf/data_process.yaml.")
    train_sft: dict[str, Any] = help_field({}, help="Overrides of conf/train_sft.yaml (every round).")
    reward_model: dict[str, Any] = help_field({}, help="Overrides of conf/reward_model.yaml.")
    reject_sampling: dict[str, Any] = help_field({}, help="Overrides of conf/reject_sampling.yaml.")
    grpo: dict[str, Any] = help_field({}, help="Overrides of conf/grpo.yaml.")
    evaluate: dict[str, Any] = help_field(
        {}, help="Overrides of conf/evaluate.yaml for the held-out evaluations (not the benchmarks)."
    )
    eval_benchmarks: list[str] = help_field(
        [], help="Benchmarks (conf/benchmark/: math500, aime24, ...) on which round 0's SFT model, the last "
        "round's SFT model and GRPO's model are evaluated (steps bench/<model>/<benchmark>, at the end); [] = none.",
    )  # fmt: skip
    benchmark_base_model: bool = help_field(
        False, help="With eval_benchmarks, also evaluate the base model itself (bench/base/<benchmark>): the "
        "check that this evaluation reproduces the base model's published numbers.",
    )  # fmt: skip
    benchmarks: dict[str, Any] = help_field(
        {}, help="Overrides of conf/evaluate.yaml for the benchmark evaluations, e.g. {sampling: default}. Apart "
        "from `evaluate`: a held-out evaluation's prompt cap or short token limit is not a benchmark's protocol.",
    )  # fmt: skip
    published_as: str | None = help_field(
        None, help="Name of the base model in pipeline/published.yaml: the report shows its published benchmark "
        "numbers beside the run's. Never guessed from a path.",
    )  # fmt: skip
    cli_overrides: dict[str, Any] = help_field(
        {}, help="The command line's section overrides, one entry per argument (arg<i>: {section: {key: value}}), "
        "written by `python -m pipeline`; applied after the preset's sections.",
    )  # fmt: skip
    dry_run: bool = help_field(
        False, help="Compose every step, write its resolved config to <run_dir>/plan/<step>.yaml, print the "
        "plan with each step's amount of work, and run nothing.",
    )  # fmt: skip
    report: bool = help_field(True, help="Write the run report (pipeline.report) at the end.")
    until: str | None = help_field(
        None, help="Stop after the step of this name (e.g. data, round_0/sft); null = run everything."
    )

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"launcher must be one of {LAUNCHERS}, got '{self.launcher}'")
        if self.launcher == "accelerate" and not self.accelerate_config:
            raise ValueError("launcher=accelerate needs accelerate_config=conf/accelerate/<file>.yaml")
        if not self.build_tiny_model and self.model_path is None:
            raise ValueError(
                "this pipeline does not build the tiny model (build_tiny_model=false): give the base model's "
                "local directory, model_path=/models/..."
            )
        if self.next_round_steps < 1:
            raise ValueError(f"next_round_steps must be >= 1, got {self.next_round_steps}")
        if len(set(self.eval_benchmarks)) != len(self.eval_benchmarks):
            raise ValueError(f"eval_benchmarks lists a benchmark twice: {self.eval_benchmarks}")
        if self.published_as is not None:
            check_published(self.published_as)
        self._check_cli_overrides()

    def _check_cli_overrides(self) -> None:
        for key, entry in self.cli_overrides.items():
            one_section = (
                isinstance(entry, dict) and len(entry) == 1 and isinstance(next(iter(entry.values())), dict)
            )
            if not (re.fullmatch(r"arg\d+", key) and one_section):
                raise ValueError(
                    f"{CLI_FIELD}.{key}: expected arg<i>: {{<section>: {{<key>: <value>}}}} (what `python -m "
                    f"pipeline` writes for <section>.<key>=<value>), got {entry!r}"
                )
            if (section := next(iter(entry))) not in SECTIONS:
                raise ValueError(f"{CLI_FIELD}.{key}: '{section}' is not one of the sections {SECTIONS}")


def check_published(name: str) -> None:
    """A `published_as` the table does not hold fails when the config is composed (a typo would otherwise
    show up only in the report, at the end of the run), listing the names it holds."""
    from omegaconf import OmegaConf

    known = sorted(OmegaConf.load(PUBLISHED))
    if name not in known:
        raise ValueError(
            f"published_as={name}: not in {PUBLISHED.name} (pipeline/); it holds {known}. Add the model "
            "there with its source, or leave published_as null."
        )
