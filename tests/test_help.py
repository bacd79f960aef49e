"""`python -m <stage> --help` (core/help.py) and the generated docs/options/*.md.

The command-line tests run the real entry points in subprocesses (the hook is in core.config.hydra_entry,
reached only through `python -m`); the rendering of free mappings is checked on a toy schema, because the
stage schemas are being changed from dataclass sections to dicts while this is written and the help must
render both.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from core import help as core_help
from core.config import help_field

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

# Stages whose `python -m ... --help` imports torch before hydra_entry runs: `python -m` runs these modules
# themselves, and they import torch at the top (the scorer and the sampler are also called as functions, so
# their torch import stays where it is). Every stage with a package __main__ (core.stages.main) imports no
# torch for its help. When one changes, test_every_stage_help fails until this set is updated.
IMPORTS_TORCH_BEFORE_HELP = {"reward_model.score", "reject_sampling.sample"}


def run_help(module: str, *args: str, importtime: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", module, *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)


def section(text: str, title: str) -> list[str]:
    """The lines of one section of the help (from its title line to the next blank-line-separated title)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    out = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        out.append(line)
    return out


def groups_of(text: str) -> dict[str, str]:
    return {
        m["name"]: m["choice"]
        for line in section(text, "Config groups")
        if (m := re.match(r"\s+(?P<name>\S+)\s+= (?P<choice>\S+)\s+options: ", line))
    }


def test_train_sft_help_shows_its_groups_and_help_texts() -> None:
    result = run_help("train_sft", "--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("python -m train_sft: Supervised fine-tuning")
    # Only the groups of conf/train_sft.yaml's defaults list (Hydra's help listed grpo, rm, sampling, experiment).
    assert groups_of(out) == {"model": "tiny", "sft": "tiny", "peft": "full"}
    assert re.search(r"^\s+peft\.r = 16\s+LoRA rank\.$", out, re.M), out
    # The sft preset's value, whether `sft` is a dataclass section or a mapping passed to TRL.
    assert re.search(r"^\s+sft\.max_length = 512(\s|$)", out, re.M), out
    assert re.search(r"^\s+sft\s+= tiny\s+options: long_context, long_context_32k, tiny$", out, re.M)
    # A list of dataclasses: its value compact, its elements' fields with their help.
    assert "  data = [{path: runs/default/data, weight: 1.0}]" in out
    assert re.search(r"^\s+data\[\]\.weight\s+Sampling weight", out, re.M)
    assert "--cfg job" in out and "hydra.*" in out
    assert "Traceback" not in result.stderr


def test_overrides_before_help_change_the_values_shown() -> None:
    result = run_help("train_sft", "sft=long_context", "peft.r=64", "-m", "hydra.run.dir=/tmp/x", "-h")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert groups_of(out)["sft"] == "long_context"
    assert re.search(r"^\s+sft\.max_length = 16384(\s|$)", out, re.M), out
    assert re.search(r"^\s+peft\.r = 64\s+LoRA rank\.$", out, re.M), out
    assert "include the overrides: sft=long_context peft.r=64" in out


def test_pipeline_help_shows_its_own_groups_and_rewritten_section_overrides() -> None:
    result = run_help("pipeline", "train_sft.sft.max_steps=800", "--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert groups_of(out) == {"experiment": "offline_cpu"}
    assert "qwen2.5-1.5b_lora_16k" in section(out, "Config groups")[0]
    # The preset's section (a free mapping) with its entries, under the field's help text ...
    assert re.search(r"^\s+train_sft\.\*\s+Overrides of conf/train_sft\.yaml", out, re.M)
    assert re.search(r"^\s+train_sft\.sft\.max_steps = 400$", out, re.M), out
    # ... and the command line's override as `python -m pipeline` rewrote it before hydra_entry.
    assert re.search(r"^\s+cli_overrides\.arg0\.train_sft\.sft\.max_steps = 800$", out, re.M), out


def test_help_with_a_bad_override_exits_2_with_hydras_message() -> None:
    result = run_help("pipeline", "experiment=nope", "--help")
    assert result.returncode == 2
    assert "Could not find 'experiment/nope'" in result.stderr and "offline_cpu" in result.stderr


def test_hydra_help_is_still_hydras() -> None:
    result = run_help("pipeline", "--hydra-help")
    assert result.returncode == 0, result.stderr
    assert "Hydra (" in result.stdout and "== Flags ==" in result.stdout
    assert "Options (KEY=VALUE" not in result.stdout


@pytest.mark.slow
def test_every_stage_help_exits_0_and_which_import_torch() -> None:
    """Each `python -m <stage> --help` prints its page; the ones listed in IMPORTS_TORCH_BEFORE_HELP import
    torch (before the help code runs), every other one must not."""
    imports_torch = set()
    for stage in core_help.STAGES:
        result = run_help(stage.module, "--help", importtime=True)
        assert result.returncode == 0, f"{stage.module}: {result.stderr[-2000:]}"
        assert result.stdout.startswith(f"python -m {stage.module}: "), result.stdout[:200]
        assert "Options (KEY=VALUE" in result.stdout
        if re.search(r"\|\s+torch$", result.stderr, re.M):
            imports_torch.add(stage.module)
    assert imports_torch == IMPORTS_TORCH_BEFORE_HELP, (
        f"now importing torch for --help: {sorted(imports_torch - IMPORTS_TORCH_BEFORE_HELP)}; no longer: "
        f"{sorted(IMPORTS_TORCH_BEFORE_HELP - imports_torch)} (update IMPORTS_TORCH_BEFORE_HELP)"
    )


def test_render_help_imports_no_torch() -> None:
    """The help code itself, for every stage, in a fresh interpreter: torch and transformers stay unloaded."""
    code = (
        "import sys\n"
        "from core import help as h\n"
        "for s in h.STAGES:\n"
        "    assert 'Options' in h.render_help(s.name, h.load_schema(s), [])\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'vllm') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_stage_registry_matches_the_entry_modules() -> None:
    """core.stages.STAGES lists exactly the modules whose `__main__` calls core.stages.main, by their names."""
    found = {}
    for path in ROOT.glob("*/**/*.py"):
        if ".venv" in path.parts or "tests" in path.parts:
            continue
        for name in re.findall(r'^\s+main\(\s*"(\w+)"', path.read_text(), re.M):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__main__" else parts)] = name
    assert found == {s.module: s.name for s in core_help.STAGES}


def test_help_overrides_drop_hydra_flags() -> None:
    argv = ["-m", "--cfg", "job", "sft=long_context", "--info", "defaults", "hydra.run.dir=x", "+a.b=1"]
    argv += ["--config-name=x", "-h", "~peft", "++hydra.job.chdir=true", "--help"]
    assert core_help.help_overrides(argv) == ["sft=long_context", "+a.b=1", "~peft"]


@dataclass
class _Nested:
    """A nested section."""

    depth: int = help_field(3, help="How deep.")


@dataclass
class _Toy:
    name: str = help_field("x", help="A name.")
    where: str = help_field("${name}/out")
    nested: _Nested = field(default_factory=_Nested)
    trl: dict[str, Any] = help_field(
        {"learning_rate": 1e-3, "report_to": ["none"], "deep": {"a": 1}},
        help="Passed to TRL's config as it is.",
    )
    empty: dict[str, Any] = help_field({}, help="Nothing yet.")
    maybe: _Nested | None = help_field(None, help="Off unless given.")
    missing: str = help_field("???", help="Required.")


def test_options_render_dataclass_and_mapping_sections_alike() -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(_Toy), {"trl": {"max_steps": 5}})
    got = [(o.key, o.value, o.help) for o in core_help.options(cfg, _Toy)]
    assert got == [
        ("name", "x", "A name."),
        ("where", "x/out (= ${name}/out)", ""),
        ("nested.*", None, "A nested section."),
        ("nested.depth", "3", "How deep."),
        ("trl.*", None, "Passed to TRL's config as it is."),
        ("trl.learning_rate", "0.001", ""),
        ("trl.report_to", "[none]", ""),
        ("trl.deep.a", "1", ""),
        ("trl.max_steps", "5", ""),
        ("empty", "{}", "Nothing yet."),
        ("maybe", "null", "Off unless given."),
        ("missing", "??? (required)", "Required."),
    ]
    # The same toy with its optional section given: rendered through its dataclass, with help texts.
    given = OmegaConf.merge(OmegaConf.structured(_Toy), {"maybe": {"depth": 1}})
    assert ("maybe.depth", "1", "How deep.") in [
        (o.key, o.value, o.help) for o in core_help.options(given, _Toy)
    ]


def test_committed_docs_are_up_to_date() -> None:
    docs = core_help.generate_docs()
    stale = core_help.stale_docs(core_help.DOCS_DIR, docs)
    first = next((n for n in stale if n in docs and (core_help.DOCS_DIR / n).exists()), None)
    diff = ""
    if first:
        committed = (core_help.DOCS_DIR / first).read_text().splitlines()
        diff = "\n".join(
            list(difflib.unified_diff(committed, docs[first].splitlines(), first, "now", lineterm=""))[:20]
        )
    assert not stale, (
        f"docs/options/ is out of date ({', '.join(stale)}): regenerate with `{core_help.REGENERATE}` and commit "
        f"it\n{diff}"
    )


def test_stale_docs_notices_an_edited_a_missing_and_an_extra_file(tmp_path: Path) -> None:
    docs = core_help.generate_docs()
    core_help.write_docs(tmp_path, docs)
    assert core_help.stale_docs(tmp_path, docs) == []
    (tmp_path / "train_sft.md").write_text((tmp_path / "train_sft.md").read_text().replace("LoRA rank.", "x"))
    (tmp_path / "grpo.md").unlink()
    (tmp_path / "old_stage.md").write_text("gone\n")
    assert core_help.stale_docs(tmp_path, docs) == ["grpo.md", "old_stage.md", "train_sft.md"]


@pytest.mark.parametrize("stage", core_help.STAGES, ids=lambda s: s.module)
def test_markdown_has_a_row_per_option(stage: core_help.Stage) -> None:
    page = core_help.stage_help(stage.name, core_help.load_schema(stage))
    text = core_help.render_markdown(stage)
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    header_rows = 2 if page.groups else 1
    assert len(rows) == len(page.options) + len(page.groups) + header_rows
    # Three cells a row: a `|` inside a value or help text is escaped.
    assert all(len(re.findall(r"(?<!\\)\|", line)) == 4 for line in rows), text


def test_hydra_entry_runs_a_run_given_as_module_and_name(tmp_path: Path) -> None:
    """`run="module:function"` (what lets a __main__ skip importing its stage for --help) is imported and
    called with the typed config when the stage runs."""
    code = (
        "import sys\n"
        "from core.config import hydra_entry\n"
        "from tiny_model.config import TinyModelStageConfig\n"
        f"sys.argv = ['x', 'run_dir={tmp_path}', 'run_name=lazy', 'hydra.output_subdir=null']\n"
        "hydra_entry('tiny_model', TinyModelStageConfig, 'builtins:print')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("TinyModelStageConfig(run_name='lazy'"), result.stdout
