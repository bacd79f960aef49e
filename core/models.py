"""Loading local models and tokenizers with clear errors, and saving provenance beside outputs.

Paths are local directories: a name that looks like a hub id is refused with a message, never fetched.
`trust_remote_code` is off unless the model config turns it on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from core.artifacts import first_line
from core.chat import ChatRenderer, TemplateError, ensure_pad_token, resolve_chat_template
from core.config import ModelConfig


class ModelDirError(ValueError):
    """A directory that exists but cannot serve as the model (or tokenizer) a stage was given."""


def require_model_dir(path: str | Path, what: str = "model") -> Path:
    """The directory of a Hugging Face model (it has a config.json), or an error that says what was expected
    there: a FileNotFoundError for a path that is not a directory, a ModelDirError for a PEFT adapter alone
    or a directory without config.json. Checked at every stage's door, before any model loads."""
    p = Path(path)
    if not p.is_dir():
        hint = (
            " It looks like a hub id: this pipeline runs offline, download the model once "
            "(e.g. `huggingface-cli download NAME --local-dir DIR`) and pass the directory."
            if re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)) and not p.parent.exists()
            else ""
        )
        raise FileNotFoundError(f"{what} directory '{path}' does not exist.{hint}")
    if not (p / "config.json").is_file():
        if (p / ADAPTER_CONFIG).is_file():
            raise ModelDirError(
                f"{what} directory '{path}' holds a PEFT adapter only ({ADAPTER_CONFIG}, no config.json; its base "
                f"model is {adapter_base(p)!r}): a stage loads a whole model. Pass the merged model (model/ beside "
                f"adapter/ in a training stage's output), or the base model with the adapter given on its own "
                f"(sample.py: adapter=<dir>)"
            )
        raise ModelDirError(
            f"{what} directory '{path}' has no config.json: not a Hugging Face model directory "
            f"(found {sorted(f.name for f in p.iterdir())[:10]})"
        )
    return p


ADAPTER_CONFIG = "adapter_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def adapter_base(adapter_dir: Path) -> str | None:
    """The base model an adapter directory names (`base_model_name_or_path`), if it can be read."""
    try:
        return json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8")).get(
            "base_model_name_or_path"
        )
    except (OSError, ValueError, AttributeError):
        return None


def load_tokenizer(model: ModelConfig) -> Any:
    """The model's tokenizer with its chat template (or `model.chat_template`) and a pad token that is neither
    eos nor the end of turn. Fails before any model loads when the directory cannot serve this pipeline (the
    directory's files are checked before transformers is imported, so those errors cost no import)."""
    path = Path(model.tokenizer_dir)
    if not path.is_dir():
        require_model_dir(path, "tokenizer")  # raises, with the hub-id hint
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        adapter = (
            f" It holds a PEFT adapter only ({ADAPTER_CONFIG}, no tokenizer): pass the merged model or the base "
            f"model ({adapter_base(path)!r})."
            if (path / ADAPTER_CONFIG).is_file()
            else ""
        )
        raise FileNotFoundError(
            f"{path} has no tokenizer files (none of {list(TOKENIZER_FILES)}); copy the tokenizer of the base "
            f"model there or set model.tokenizer_path.{adapter}"
        )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=model.trust_remote_code, local_files_only=True
        )
    except Exception as e:
        # A corrupt tokenizer.json, a tokenizer class this transformers lacks, ...: the library's message,
        # said of the directory, not a traceback from inside transformers or tokenizers.
        raise ModelDirError(
            f"cannot load the tokenizer in {path}: {type(e).__name__}: {first_line(e)}"
        ) from None
    if model.chat_template is not None:
        tokenizer.chat_template = resolve_chat_template(model.chat_template)
    if tokenizer.chat_template is None:
        raise TemplateError(
            f"tokenizer in {path} has no chat template (a base model?): set model.chat_template=chatml (or r1, "
            f"or a Jinja file); every example is rendered with it and it is saved with the trained model"
        )
    check_vocab(model.path, len(tokenizer), path)
    renderer = ChatRenderer(tokenizer, model.instruction_suffix, model.chat_template_kwargs)
    return ensure_pad_token(tokenizer, renderer.eot)


def chat_renderer(model: ModelConfig, tokenizer: Any) -> ChatRenderer:
    """The renderer every stage formats this model's text with (see core.chat.ChatRenderer)."""
    return ChatRenderer(tokenizer, model.instruction_suffix, model.chat_template_kwargs)


def check_vocab(model_path: str | Path, tokenizer_length: int, tokenizer_dir: Path) -> None:
    """A tokenizer larger than the model's embedding table would index past it: refuse before training."""
    config_file = Path(model_path) / "config.json"
    if not config_file.exists():
        return
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{config_file} is not valid JSON ({first_line(e)})") from None
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    if vocab is not None and tokenizer_length > vocab:
        raise ValueError(
            f"the tokenizer in {tokenizer_dir} has {tokenizer_length} tokens but the model in {model_path} has "
            f"vocab_size {vocab}: they do not belong together. Point model.tokenizer_path at the model's own "
            f"tokenizer (or resize the model's embeddings and save it)"
        )
