"""Loading local models and tokenizers with clear errors, and saving provenance beside outputs.

Paths are local directories: a name that looks like a hub id is refused with a message, never fetched.
`trust_remote_code` is off unless the model config turns it on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from core.chat import ensure_pad_token
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


def load_tokenizer(model: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    path = require_model_dir(model.tokenizer_dir, "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(
        path, trust_remote_code=model.trust_remote_code, local_files_only=True
    )
    if tokenizer.chat_template is None:
        raise ValueError(
            f"tokenizer in {path} has no chat template; set one (tokenizer.chat_template) and save it, "
            f"this pipeline formats every example with it"
        )
    return ensure_pad_token(tokenizer)
