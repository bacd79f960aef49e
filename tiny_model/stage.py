"""tiny_model: build the offline default's policy, reward model and tokenizer (tiny_model/model.py) once per
shape; skipped when its manifest matches."""

from __future__ import annotations

from pathlib import Path

from core.artifacts import Manifest
from core.lifecycle import StageRun
from tiny_model.config import TinyModelStageConfig
from tiny_model.model import build


def run(cfg: TinyModelStageConfig) -> Manifest:
    out = Path(cfg.output_dir)
    stage = StageRun("tiny_model", cfg, out, inputs={}, hashed=cfg.shape)
    if (done := stage.begin()) is not None:
        return done
    dirs = build(cfg.shape, out)
    return stage.finish(
        dirs={name: Path(d) for name, d in dirs.items()},
        metrics={"policy_dir": "policy", "reward_model_dir": "reward_model"},
    )
