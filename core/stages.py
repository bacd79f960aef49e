"""The one registry of stages: what each is called, where its config, schema and run function live.

Everything that needs the list reads it here: each stage's `__main__` (`main(name)`), the config composer
(`core.config.compose` registers every schema), the pipeline (which stage a step runs and how it is
launched), the help pages and their generated docs (core/help.py). Adding a stage is one entry here, one
config module (its dataclass) and one YAML (conf/<name>.yaml, naming `<name>_schema` first in its
defaults list).

Entries name their schema and run function as "module:attribute" strings, imported only when used: the
schemas' modules import no torch, so composing a config or printing a stage's help stays fast (~0.6 s
for all stages), and a stage's heavy imports happen in the process that runs it.

`identify` names the function that says, from a typed config, what the stage's run would be (its
core.lifecycle.StageRun: output directory, config hash, input identities) without doing any of it; the
stage's own `run` calls the same code. The pipeline asks it whether a step is complete before starting a
process for it, so its module imports no torch either (tests/test_pipeline.py checks).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def load(path: str) -> Any:
    """ "package.module:attribute" -> the attribute."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Stage:
    name: str  # conf/<name>.yaml, its schema `<name>_schema`, and the pipeline's name for the stage
    module: str  # python -m <module>
    schema: str  # "module:Dataclass" of its typed config
    run: str  # "module:function" called with the typed config
    training: bool = False  # launched through accelerate (several processes) by the pipeline
    sweep_field: str = "output_dir"  # where each multirun job gets its own `sweep_<n>` folder
    argv: str | None = None  # "module:function" rewriting the command line before Hydra sees it
    identify: str | None = None  # "module:function": cfg -> its StageRun (None: cannot tell; run it)

    def load_schema(self) -> type:
        return load(self.schema)

    def load_run(self) -> Callable[[Any], Any]:
        return load(self.run)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "tiny_model",
            "tiny_model",
            "tiny_model.config:TinyModelStageConfig",
            "tiny_model.stage:run",
            identify="tiny_model.stage:identify",
        ),
        Stage(
            "data_process",
            "data_process",
            "data_process.config:DataProcessConfig",
            "data_process.stage:run",
            identify="data_process.stage:identify",
        ),
        Stage(
            "train_sft",
            "train_sft",
            "train_sft.config:SFTStageConfig",
            "train_sft.stage:run",
            training=True,
            identify="train_sft.data:identify",
        ),
        Stage(
            "reward_model",
            "reward_model",
            "reward_model.config:RMStageConfig",
            "reward_model.stage:run",
            training=True,
            identify="reward_model.data:identify",
        ),
        Stage("rm_score", "reward_model.score", "reward_model.config:ScoreConfig", "reward_model.score:run"),
        Stage(
            "reject_sampling",
            "reject_sampling",
            "reject_sampling.config:RejectSamplingConfig",
            "reject_sampling.stage:run",
            identify="reject_sampling.stage:identify",
        ),
        Stage(
            "sample",
            "reject_sampling.sample",
            "reject_sampling.config:SampleConfig",
            "reject_sampling.sample:run",
        ),
        Stage(
            "evaluate",
            "evaluation",
            "evaluation.config:EvaluateConfig",
            "evaluation.stage:run",
            argv="evaluation.benchmarks:expand_benchmark_overrides",
            identify="evaluation.stage:identify",
        ),
        Stage(
            "grpo",
            "grpo",
            "grpo.config:GRPOStageConfig",
            "grpo.stage:run",
            training=True,
            identify="grpo.data:identify",
        ),
        Stage(
            "pipeline",
            "pipeline",
            "pipeline.config:PipelineConfig",
            "pipeline.run:run",
            sweep_field="run_dir",
            argv="pipeline.config:command_line_overrides",
        ),
    )
}


def stage(name: str) -> Stage:
    if name not in STAGES:
        raise KeyError(f"no stage named '{name}'; the stages are {sorted(STAGES)}")
    return STAGES[name]


@functools.cache
def register_schemas() -> None:
    """Every stage's schema in Hydra's ConfigStore as `<name>_schema` (what its YAML's defaults list names);
    once per process."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    for s in STAGES.values():
        schema = s.load_schema()
        node = OmegaConf.structured(schema)
        open_mappings(node, schema)
        store.store(name=f"{s.name}_schema", node=node)


def open_mappings(node: Any, schema: type) -> None:
    """Let every `dict[str, Any]` field of the schema take new keys without Hydra's `+` (TRL's arguments in
    `sft`, `model.chat_template_kwargs`, ...): a mapping has no key list to check a name against (TRL
    checks its own, core.training.trl_args). Dataclass fields stay closed, so a typo in any of them still
    fails when Hydra composes."""
    import dataclasses
    import typing

    from omegaconf import OmegaConf

    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        if typing.get_origin(kind) is dict:
            OmegaConf.set_struct(node[f.name], False)
        elif dataclasses.is_dataclass(kind):
            open_mappings(node[f.name], kind)


def main(name: str) -> None:
    """The whole `__main__` of a stage: rewrite the command line if the stage does, then compose, type and
    run (core.config.hydra_entry). A bad command line exits with its message, not a traceback."""
    import sys

    from core.config import hydra_entry

    s = stage(name)
    if s.argv is not None:
        try:
            sys.argv[1:] = load(s.argv)(sys.argv[1:])
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
    hydra_entry(s.name, s.load_schema(), s.run, sweep_field=s.sweep_field)
