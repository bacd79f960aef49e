"""`python -m <stage> --help`: the stage's options with their help texts, as the stage would compose them.

Hydra's own `--help` prints the composed YAML and every config group under conf/, so train_sft's help
listed grpo, rm, sampling and the pipeline's experiment presets, and none of the `help_field` texts. Here
the help is built from three sources that cannot disagree with what the stage runs:

- the composed config (`core.config.compose` with the command line's overrides, so
  `python -m train_sft sft=long_context --help` shows that preset's values);
- the stage's schema dataclass, walked beside it for each field's help text (`help_field` metadata) and each
  nested dataclass's docstring. A field whose value is a free mapping (`dict[str, Any]`, e.g. a TRL
  hyperparameter section handed to TRL as it is) is shown with its keys and values, under the field's own
  help text: the walk goes by the composed values and only looks the schema up, so a section that turns
  from a dataclass into a dict renders without any change here;
- the stage's YAML defaults list, for the config groups this stage uses (not every folder of conf/).

`python -m core.help --markdown` writes the same content as Markdown tables to docs/options/<stage>.md for
every stage (tests/test_help.py fails when the committed files differ from what it writes now);
`python -m core.help <stage> [overrides]` prints one stage's help without importing the stage's code.

Nothing here imports torch (or the stage's own modules): only the schema's module, Hydra and OmegaConf, so
the help is quick. `python -m <stage> --help` is only as light as that stage's `__main__` imports, though:
a `__main__` that imports its `stage` module (and through it torch) before `hydra_entry` runs pays for that
import first (`hydra_entry` also accepts `run="module:function"`, imported only when the stage runs).
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import textwrap
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from core.config import CONF_DIR, compose
from core.stages import STAGES as REGISTRY
from core.stages import Stage

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs" / "options"
REGENERATE = "python -m core.help --markdown"


# Every stage, in the registry's order (core/stages.py).
STAGES: tuple[Stage, ...] = tuple(REGISTRY.values())

# Hydra's command-line flags that take a value (argparse in hydra/_internal/utils.py): skipped with it when
# the rest of the command line is composed for the help.
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn"}
_FLAGS_WITH_VALUE |= {"--config-dir", "-cd", "--experimental-rerun"}
_INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
HYDRA_FLAGS = (
    "Hydra: -m KEY=a,b sweeps (one run per value), --cfg job prints the composed config, --info defaults "
    "its defaults tree, hydra.* overrides Hydra's own settings (hydra.run.dir=...), --hydra-help: Hydra's help."
)


def stage_of(config_name: str) -> Stage | None:
    return REGISTRY.get(config_name)


def load_schema(stage: Stage) -> type:
    return stage.load_schema()


def help_overrides(argv: list[str]) -> list[str]:
    """The command line minus `--help`/`-h`, Hydra's flags (with their values) and `hydra.*` overrides: what
    changes the stage's own config, composed for the help."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg.startswith("-") and not arg.startswith("+"):
            flag = arg.split("=", 1)[0]
            skip = "=" not in arg and (
                flag in _FLAGS_WITH_VALUE
                or (flag in ("--info", "-i") and i + 1 < len(argv) and argv[i + 1] in _INFO_VALUES)
            )
            continue
        if arg.lstrip("+~").startswith("hydra.") or arg.lstrip("+~").startswith("hydra/"):
            continue
        out.append(arg)
    return out


# --- the config groups of a stage ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    name: str
    choice: str | None
    options: tuple[str, ...]


def _defaults_groups(config_name: str) -> list[str]:
    """Group names in conf/<config_name>.yaml's defaults list, in its order. Entries may read `model: tiny`,
    `optional x: y`, `override /x: y` or `x@pkg: y`; plain strings (the schema, `_self_`) name no group."""
    raw = OmegaConf.load(CONF_DIR / f"{config_name}.yaml").get("defaults", [])
    names = []
    for entry in raw:
        if isinstance(entry, str) or entry is None:
            continue
        for key in entry:
            name = str(key).split()[-1].lstrip("/").split("@", 1)[0]
            if name not in names and (CONF_DIR / name).is_dir():
                names.append(name)
    return names


def _choices(config_name: str, overrides: list[str]) -> dict[str, Any]:
    """Hydra's record of the option each group ended up with (hydra.runtime.choices), which counts the
    command line and any `override` inside a chosen option (a benchmark picking its protocol). A second
    composition, with Hydra's own config: `core.config.compose` returns the stage's config without it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    return dict(cfg.hydra.runtime.choices)


def stage_groups(config_name: str, overrides: list[str]) -> list[Group]:
    choices = _choices(config_name, overrides)
    return [
        Group(name, choices.get(name), tuple(sorted(p.stem for p in (CONF_DIR / name).glob("*.yaml"))))
        for name in _defaults_groups(config_name)
    ]


# --- the options ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    key: str  # dotted, as written in an override; `data[].path` for a field of a list's elements
    value: str | None  # None: a heading (a nested dataclass) or a list element's field (no single value)
    help: str


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass in an annotation (`X`, `X | None`), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _element_dataclass(tp: Any) -> type | None:
    """The element dataclass of `list[X]` / `dict[str, X]` (and their `| None`), else None."""
    for t in (tp, *typing.get_args(tp)):
        origin = typing.get_origin(t)
        if origin in (list, tuple, dict):
            args = typing.get_args(t)
            return _dataclass_in(args[-1]) if args else None
    return None


def _fields(cls: type | None) -> dict[str, tuple[Any, str]]:
    """name -> (resolved annotation, help text) of a dataclass's fields ({} when not a dataclass)."""
    if cls is None:
        return {}
    hints = typing.get_type_hints(cls)
    return {f.name: (hints.get(f.name, Any), f.metadata.get("help", "")) for f in dataclasses.fields(cls)}


def _doc(cls: type) -> str:
    """The first paragraph of a class docstring on one line; "" for the signature dataclasses makes up."""
    doc = cls.__doc__ or ""
    if doc.startswith(f"{cls.__name__}("):
        return ""
    return " ".join(textwrap.dedent(doc).strip().split("\n\n")[0].split())


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if (
            value == ""
            or value != value.strip()
            or "\n" in value
            or value.lower() in ("null", "true", "false")
        ):
            return repr(value)
        return value
    return str(value)


def compact(value: Any) -> str:
    """A value in override syntax on one line: `[q_proj, k_proj]`, `{path: runs/x, weight: 1.0}`."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(compact(v) for v in value) + "]"
    return _scalar(value)


def _value(node: DictConfig, key: str) -> str:
    """The value as the stage gets it; an interpolation also shows what it is written as."""
    if OmegaConf.is_missing(node, key):
        return "??? (required)"
    raw = node._get_node(key)._value()  # the unresolved `${...}` string (OmegaConf has no public accessor)
    try:
        value = node[key]
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
    except Exception:  # an interpolation that cannot resolve outside a run (e.g. ${hydra:...})
        return _scalar(raw)
    if OmegaConf.is_interpolation(node, key):
        return f"{compact(value)} (= {raw})"
    return compact(value)


def options(cfg: DictConfig, schema: type | None, prefix: str = "") -> list[Option]:
    """Every option of a composed config, in its order, with help texts from the schema where it has them."""
    out: list[Option] = []
    fields = _fields(schema)
    for key in cfg:
        key = str(key)
        dotted = f"{prefix}{key}"
        annotation, help_text = fields.get(key, (Any, ""))
        node = cfg._get_node(key)  # the node itself, unresolved
        nested = _dataclass_in(annotation)
        container = isinstance(node, DictConfig) and not node._is_none()
        if container and not OmegaConf.is_missing(cfg, key) and not OmegaConf.is_interpolation(cfg, key):
            if nested is not None:
                out.append(Option(f"{dotted}.*", None, help_text or _doc(nested)))
                out.extend(options(node, nested, f"{dotted}."))
                continue
            if len(node) == 0:
                out.append(Option(dotted, "{}", help_text))
                continue
            # A free mapping (a TRL section, pipeline overrides): its entries, each written as an override.
            out.append(Option(f"{dotted}.*", None, help_text))
            element = _element_dataclass(annotation)
            for sub in node:
                child = node._get_node(str(sub))
                if isinstance(child, DictConfig) and element is not None:
                    out.extend(options(child, element, f"{dotted}.{sub}."))
                else:
                    out.extend(_mapping_entries(node, str(sub), f"{dotted}."))
            continue
        out.append(Option(dotted, _value(cfg, key), help_text))
        element = _element_dataclass(annotation)
        if isinstance(node, ListConfig) and element is not None:
            out.extend(Option(f"{dotted}[].{name}", None, h) for name, (_, h) in _fields(element).items())
    return out


def _mapping_entries(node: DictConfig, key: str, prefix: str) -> list[Option]:
    """A mapping's entry, nested mappings flattened to dotted keys (`train_sft.sft.max_steps = 400`)."""
    child = node._get_node(key)
    if isinstance(child, DictConfig) and len(child) and not OmegaConf.is_interpolation(node, key):
        return [entry for sub in child for entry in _mapping_entries(child, str(sub), f"{prefix}{key}.")]
    return [Option(f"{prefix}{key}", _value(node, key), "")]


# --- the page ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageHelp:
    command: str
    purpose: str
    usage: list[str]
    groups: list[Group]
    options: list[Option]


def _yaml_header(config_name: str) -> list[str]:
    """The comment block at the top of conf/<config_name>.yaml, `# ` stripped (`# @package` lines left out)."""
    lines = []
    for line in (CONF_DIR / f"{config_name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            lines.append(line[1:].removeprefix(" "))
    return lines


def _first_sentence(header: list[str]) -> str:
    """The YAML header's opening sentence (its prose lines up to the first example or blank line), for a schema
    without a docstring of its own."""
    prose = []
    for line in header:
        if not line.strip() or line.startswith(" "):
            break
        prose.append(line.strip())
    text = " ".join(prose)
    end = text.find(". ")
    return text[: end + 1] if end >= 0 else text


def _examples(header: list[str]) -> list[str]:
    """The example command lines of the YAML's header (indented lines, `\\` continuations included): the
    usage examples each config file already keeps next to the settings they change."""
    out, continued = [], False
    for line in header:
        if continued or (
            line.startswith("  ") and line.split()[:1] in (["python"], ["bash"], ["accelerate"])
        ):
            out.append(line.strip() if not continued else "    " + line.strip())
            continued = line.rstrip().endswith("\\")
    return out


def stage_help(config_name: str, schema: type, overrides: list[str] | None = None) -> StageHelp:
    overrides = list(overrides or [])
    stage = stage_of(config_name)
    command = f"python -m {stage.module if stage else config_name}"
    header = _yaml_header(config_name)
    purpose = _doc(schema).removeprefix(f"`{command}`: ") or _first_sentence(header)
    usage = [f"{command} [KEY=VALUE ...] [GROUP=OPTION ...] [--help]", *_examples(header)]
    cfg = compose(config_name, overrides)
    return StageHelp(command, purpose, usage, stage_groups(config_name, overrides), options(cfg, schema))


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, max(width, 30), break_long_words=False, break_on_hyphens=False) or [""]


def render_help(
    config_name: str, schema: type, overrides: list[str] | None = None, width: int | None = None
) -> str:
    """The terminal help of a stage: purpose, usage, this stage's config groups, then every option as
    `dotted.key = value   help`, with the command line's overrides applied (see the module docstring)."""
    page = stage_help(config_name, schema, overrides)
    width = width or min(shutil.get_terminal_size((120, 24)).columns, 140)
    col = 48  # where help texts start; a longer `key = value` puts its help on the next lines
    lines = [*_wrap(f"{page.command}: {page.purpose}", width), "", "Usage:"]
    lines += [f"  {u}" for u in page.usage]
    if overrides:
        lines += ["", f"Values below include the overrides: {' '.join(overrides)}"]
    if page.groups:
        lines += [
            "",
            "Config groups (GROUP=OPTION picks conf/GROUP/OPTION.yaml; then GROUP.KEY=VALUE changes one key):",
        ]
        name_w = max(len(g.name) for g in page.groups)
        for g in page.groups:
            lines.append(f"  {g.name:<{name_w}} = {_scalar(g.choice):<14} options: {', '.join(g.options)}")
    lines += ["", "Options (KEY=VALUE; an option's current value, then what it does):"]
    previous = ""
    for opt in page.options:
        left = f"  {opt.key}" + (f" = {opt.value}" if opt.value is not None else "")
        top = opt.key.split(".")[0].split("[")[0]
        if previous and top != previous.split(".")[0].split("[")[0] and "." in opt.key + previous:
            lines.append("")  # a blank line around each section (model.*, sft.*, ...)
        previous = opt.key
        helps = _wrap(opt.help, width - col) if opt.help else []
        if not helps:
            lines.append(left)
        elif len(left) <= col - 2:
            lines.append(f"{left:<{col}}{helps[0]}")
            lines += [" " * col + h for h in helps[1:]]
        else:
            lines.append(left)
            lines += [" " * col + h for h in helps]
    lines += ["", *_wrap(HYDRA_FLAGS, width)]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text for a table cell: `|` would end the cell, a newline the row."""
    return text.replace("|", "\\|").replace("\n", " ")


def _md(text: str) -> str:
    """Prose for a table cell: also `<think>` would be an HTML tag and `*` emphasis."""
    return _cell(text).replace("<", "&lt;").replace("*", "\\*")


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{_cell(text)}{pad}{fence}"


def render_markdown(stage: Stage, page: StageHelp | None = None) -> str:
    """docs/options/<stage>.md: the stage's help (defaults, no overrides) as Markdown tables."""
    page = page or stage_help(stage.name, load_schema(stage))
    lines = [
        f"# `{page.command}`",
        "",
        f"<!-- Generated by `{REGENERATE}` from the schema ({stage.schema}) and conf/{stage.name}.yaml. "
        "Do not edit. -->",
        "",
        page.purpose,
        "",
        "```",
        *page.usage,
        "```",
    ]
    if page.groups:
        lines += ["", "## Config groups", "", "| group | default | options |", "|---|---|---|"]
        lines += [f"| `{g.name}` | `{_scalar(g.choice)}` | {', '.join(g.options)} |" for g in page.groups]
    lines += ["", "## Options", "", "| key | default | help |", "|---|---|---|"]
    for opt in page.options:
        value = _code(opt.value) if opt.value is not None else ""
        key = f"**`{opt.key}`**" if opt.value is None and opt.key.endswith(".*") else _code(opt.key)
        lines.append(f"| {key} | {value} | {_md(opt.help)} |")
    lines += ["", HYDRA_FLAGS, ""]
    return "\n".join(lines)


def render_index(pages: dict[Stage, StageHelp]) -> str:
    lines = [
        "# Options of every stage",
        "",
        f"<!-- Generated by `{REGENERATE}`. Do not edit. -->",
        "",
        "`python -m <stage> --help` prints the same with the command line's overrides applied.",
        "",
        "| stage | config | what it does |",
        "|---|---|---|",
    ]
    for stage, page in pages.items():
        lines.append(
            f"| [`{stage.module}`]({stage.module}.md) | conf/{stage.name}.yaml | {_md(page.purpose)} |"
        )
    return "\n".join(lines) + "\n"


def generate_docs() -> dict[str, str]:
    """file name -> content of every file docs/options/ should hold: a page per stage and an index."""
    pages = {s: stage_help(s.name, load_schema(s)) for s in STAGES}
    docs = {f"{s.module}.md": render_markdown(s, page) for s, page in pages.items()}
    docs["README.md"] = render_index(pages)
    return docs


def stale_docs(docs_dir: Path = DOCS_DIR, expected: dict[str, str] | None = None) -> list[str]:
    """Files of `docs_dir` that differ from what `generate_docs` writes now, are missing, or are extra."""
    expected = expected if expected is not None else generate_docs()
    present = {p.name for p in docs_dir.glob("*.md")} if docs_dir.is_dir() else set()
    stale = [n for n, text in expected.items() if n not in present or (docs_dir / n).read_text() != text]
    return sorted(stale + [n for n in present if n not in expected])


def write_docs(docs_dir: Path = DOCS_DIR, docs: dict[str, str] | None = None) -> list[Path]:
    """Write `docs` (default: `generate_docs()`) to docs_dir, removing *.md files it no longer holds."""
    docs = docs if docs is not None else generate_docs()
    docs_dir.mkdir(parents=True, exist_ok=True)
    for extra in docs_dir.glob("*.md"):
        if extra.name not in docs:
            extra.unlink()
    written = []
    for name, text in docs.items():
        path = docs_dir / name
        path.write_text(text)
        written.append(path)
    return written


def main_help(config_name: str, schema: type, argv: list[str]) -> int:
    """What `hydra_entry` runs for `--help` / `-h`: print the help, return the exit code (2 when the command
    line's overrides do not compose, with Hydra's message, which lists a group's options)."""
    try:
        text = render_help(config_name, schema, help_overrides(argv))
    except Exception as e:
        print(
            f"error: {e}\n(the overrides before --help must compose; drop them to see the defaults)",
            file=sys.stderr,
        )
        return 2
    sys.stdout.write(text)
    return 0


def main(argv: list[str]) -> int:
    usage = f"usage: {REGENERATE} [--check] | python -m core.help <stage> [overrides]   stages: " + ", ".join(
        s.module for s in STAGES
    )
    if argv[:1] == ["--markdown"]:
        if argv[1:] == ["--check"]:
            stale = stale_docs()
            if stale:
                print(f"docs/options/ out of date: {', '.join(stale)}; run `{REGENERATE}`", file=sys.stderr)
            return 1 if stale else 0
        for path in write_docs():
            print(path)
        return 0
    stage = next((s for s in STAGES if argv[:1] in ([s.module], [s.name])), None)
    if stage is None:
        print(usage, file=sys.stderr)
        return 0 if argv[:1] in (["--help"], ["-h"]) else 2
    return main_help(stage.name, load_schema(stage), argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
