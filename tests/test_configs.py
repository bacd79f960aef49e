"""Every config in conf/ composes into its typed schema; typos and impossible values fail at compose time."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from core.config import CONF_DIR, compose, stage_config_hash, to_typed
from data_process.config import DataProcessConfig
from evaluation.config import EvaluateConfig
from grpo.config import GRPOStageConfig
from pipeline.config import PipelineConfig
from reject_sampling.config import RejectSamplingConfig, SampleConfig
from reward_model.config import RMStageConfig, ScoreConfig
from tiny_model.config import TinyModelStageConfig
from train_sft.config import SFTStageConfig

SCHEMAS = {
    "data_process": DataProcessConfig,
    "tiny_model": TinyModelStageConfig,
    "train_sft": SFTStageConfig,
    "reward_model": RMStageConfig,
    "rm_score": ScoreConfig,
    "grpo": GRPOStageConfig,
    "sample": SampleConfig,
    "reject_sampling": RejectSamplingConfig,
    "evaluate": EvaluateConfig,
    "pipeline": PipelineConfig,
}
# Values a config leaves mandatory (???) and the command line must give.
REQUIRED = {"rm_score": ["input=a.parquet", "output=b.parquet", "model.path=/models/rm"]}
PRIMARY = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
MODEL_PRESETS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
# Hydra groups and the primary config that uses them.
GROUPS = {
    "sft": "train_sft",
    "peft": "train_sft",
    "rm": "reward_model",
    "grpo": "grpo",
    "sampling": "sample",
    "judge": "reject_sampling",
}
GROUP_OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]
ACCELERATE = sorted((CONF_DIR / "accelerate").glob("*.yaml"))


def test_every_primary_config_has_a_schema():
    assert set(PRIMARY) == set(SCHEMAS), "add the new stage's schema to SCHEMAS"


@pytest.mark.parametrize("name", PRIMARY)
def test_primary_config_composes_into_its_schema(name):
    cfg = to_typed(compose(name, REQUIRED.get(name, [])), SCHEMAS[name])
    assert isinstance(cfg, SCHEMAS[name])
    out = getattr(cfg, "output_dir", None) or getattr(cfg, "output", None) or cfg.run_dir
    assert "${" not in str(out), "output paths must resolve to a deterministic path"


@pytest.mark.parametrize("preset", MODEL_PRESETS)
def test_model_presets_compose(preset):
    cfg = compose("data_process", [f"model={preset}", "model.path=/models/x"])
    typed = to_typed(cfg, DataProcessConfig)
    assert typed.model.name == preset and typed.model.path == "/models/x"
    assert typed.model.trust_remote_code is False


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_group_options_compose(group, option):
    typed = to_typed(compose(GROUPS[group], [f"{group}={option}"]), SCHEMAS[GROUPS[group]])
    assert isinstance(typed, SCHEMAS[GROUPS[group]])


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes >= 1
    if "deepspeed" in path.name:
        assert config.deepspeed_config["zero_stage"] == int(path.stem.split("zero")[1][0])


def test_every_yaml_in_conf_is_reached_by_a_test():
    reached = (
        {f"{n}.yaml" for n in PRIMARY}
        | {f"model/{m}.yaml" for m in MODEL_PRESETS}
        | {f"{g}/{o}.yaml" for g, o in GROUP_OPTIONS}
        | {f"accelerate/{p.name}" for p in ACCELERATE}
        | {f"experiment/{p.name}" for p in (CONF_DIR / "experiment").glob("*.yaml")}  # tests/test_pipeline.py
        | {
            f"{g}/{p.name}" for g in ("benchmark", "protocol") for p in (CONF_DIR / g).glob("*.yaml")
        }  # tests/test_benchmarks.py
    )
    on_disk = {str(p.relative_to(CONF_DIR)) for p in CONF_DIR.rglob("*.yaml")}
    assert on_disk == reached


def test_typo_in_override_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException, match="max_tokn"):
        compose("data_process", ["filters.max_tokn=3"])


def test_wrong_type_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException, match=r"filters\.max_tokens=many"):
        compose("data_process", ["filters.max_tokens=many"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("traces.selection=longest", "traces.selection must be one of"),
        ("eval_fraction=1.5", "eval_fraction must be in"),
        ("synthetic.min_ops=4", "min_ops <= max_ops"),
    ],
)
def test_impossible_values_are_rejected_with_a_fix(override, message):
    with pytest.raises(Exception, match=message):
        to_typed(compose("data_process", [override]), DataProcessConfig)


def test_tiny_model_head_dim_check():
    with pytest.raises(Exception, match="vLLM's CPU attention"):
        to_typed(compose("tiny_model", ["shape.num_attention_heads=8"]), TinyModelStageConfig)


def test_hash_ignores_locations_and_worker_counts():
    a = to_typed(compose("data_process"), DataProcessConfig)
    b = to_typed(
        compose("data_process", ["output_dir=/else", "batch_size=3", "progress=false"]), DataProcessConfig
    )
    c = to_typed(compose("data_process", ["filters.max_tokens=100"]), DataProcessConfig)
    assert stage_config_hash(a) == stage_config_hash(b) != stage_config_hash(c)


@pytest.mark.parametrize(
    "override",
    [
        "++cli_overrides.x3.train_sft.sft.max_steps=1",  # not keyed by argv position
        "++cli_overrides.arg3.nosuch.a=1",  # not a section
        "++cli_overrides.arg3.train_sft=5",  # a whole section replaced, not a key of it
    ],
)
def test_pipeline_command_line_entries_are_checked(override):
    with pytest.raises(Exception, match="cli_overrides"):
        to_typed(compose("pipeline", [override]), PipelineConfig)


# ------------------------------------------------------------------------------------------ TRL sections

# Training stage -> its TRL section (handed to TRL's config class as it is) and its presets' group.
TRL_SECTIONS = {"train_sft": "sft", "reward_model": "rm", "grpo": "grpo"}


def test_composing_a_training_stage_imports_neither_torch_nor_trl():
    """The TRL sections are mappings, so the schemas need nothing of TRL: composing and typing every training
    stage's config stays a Hydra + OmegaConf affair (the pipeline composes every step before anything runs)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from core.config import compose, to_typed\n"
        "from train_sft.config import SFTStageConfig\n"
        "from reward_model.config import RMStageConfig\n"
        "from grpo.config import GRPOStageConfig\n"
        "for name, schema in [('train_sft', SFTStageConfig), ('reward_model', RMStageConfig), "
        "('grpo', GRPOStageConfig)]:\n"
        "    to_typed(compose(name), schema)\n"
        "print(sorted(m for m in ('torch', 'trl', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=CONF_DIR.parent, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("stage", TRL_SECTIONS)
def test_trl_sections_take_any_key_and_the_project_sections_stay_checked(stage):
    """A TRL key no preset lists composes without `+` (TRL's own field list judges it when the stage starts);
    the project's `train` section is a dataclass, so Hydra still refuses a misspelt key there."""
    section = TRL_SECTIONS[stage]
    cfg = to_typed(compose(stage, [f"{section}.torch_empty_cache_steps=7"]), SCHEMAS[stage])
    assert getattr(cfg, section)["torch_empty_cache_steps"] == 7
    with pytest.raises(ConfigCompositionException, match="attn_implmentation"):
        compose(stage, ["train.attn_implmentation=sdpa"])


TRL_PRESETS = [
    (stage, p.stem) for stage, g in TRL_SECTIONS.items() for p in sorted((CONF_DIR / g).glob("*.yaml"))
]


@pytest.mark.parametrize(("stage", "option"), TRL_PRESETS)
@pytest.mark.parametrize("processes", [1, 8])
def test_every_trl_preset_is_valid_for_trl_with_one_and_eight_processes(stage, option, processes, tmp_path):
    """Each preset of conf/sft, conf/rm, conf/grpo builds TRL's config as its stage would (validation only:
    no device, no process group), with 1 process and with the 8 of the GPU accelerate configs."""
    import importlib

    section = TRL_SECTIONS[stage]
    cfg = to_typed(compose(stage, [f"{section}={option}", "use_cpu=true"]), SCHEMAS[stage])
    args = importlib.import_module(f"{stage}.stage").training_args(cfg, tmp_path, processes=processes)
    assert args.world_size == processes
    preset = OmegaConf.load(CONF_DIR / section / f"{option}.yaml")[section]
    # The preset's values reach TRL unchanged, but for what the stage resolves (null = auto, liger only when
    # installed, report_to without "none").
    for key, value in preset.items():
        if value is not None and key not in ("report_to", "packing", "use_liger_kernel"):
            assert getattr(args, key) == value, key


@pytest.mark.parametrize("stage", ["train_sft", "reward_model", "grpo", "reject_sampling", "evaluate"])
def test_mapping_fields_take_keys_without_plus_and_dataclass_fields_stay_closed(stage):
    """core.stages.register_schemas opens every dict field (nothing to check a key against there) and
    nothing else: Qwen3's switch needs no `+`, a typo in a typed section still fails at compose."""
    cfg = compose(stage, ["model.chat_template_kwargs.enable_thinking=false"])
    assert cfg.model.chat_template_kwargs == {"enable_thinking": False}
    with pytest.raises(Exception, match=r"model\.pathh"):
        compose(stage, ["model.pathh=x"])
