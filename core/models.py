"""Loading local models and tokenizers with clear errors, and saving provenance beside outputs.

Paths are local directories: a name that looks like a hub id is refused with a message, never fetched.
`trust_remote_code` is off unless the model config turns it on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from core.chat import ChatRenderer, TemplateError, ensure_pad_token, resolve_chat_template
from core.config import ModelConfig


def require_model_dir(path: str | Path, what: str = "model") -> Path:
    """The directory, or a FileNotFoundError that says what was expected there."""
    p = Path(path)
    if not p.is_dir():
        hint = (
            " It looks like a hub id: this pipeline runs offline, download the model once "
            "(e.g. `huggingface-cli download NAME --local-dir DIR`) and pass the directory."
            if re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)) and not p.parent.exists()
            else ""
        )
        raise FileNotFoundError(f"{what} directory '{path}' does not exist.{hint}")
    return p


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def load_tokenizer(model: ModelConfig) -> Any:
    """The model's tokenizer with its chat template (or `model.chat_template`) and a pad token that is neither
    eos nor the end of turn. Fails before any model loads when the directory cannot serve this pipeline."""
    from transformers import AutoTokenizer

    path = require_model_dir(model.tokenizer_dir, "tokenizer")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{path} has no tokenizer files (none of {list(TOKENIZER_FILES)}); copy the tokenizer of the base "
            f"model there or set model.tokenizer_path"
        )
    tokenizer = AutoTokenizer.from_pretrained(
        path, trust_remote_code=model.trust_remote_code, local_files_only=True
    )
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
    config = json.loads(config_file.read_text())
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    if vocab is not None and tokenizer_length > vocab:
        raise ValueError(
            f"the tokenizer in {tokenizer_dir} has {tokenizer_length} tokens but the model in {model_path} has "
            f"vocab_size {vocab}: they do not belong together. Point model.tokenizer_path at the model's own "
            f"tokenizer (or resize the model's embeddings and save it)"
        )
