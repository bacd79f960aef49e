"""tiny_model: build the offline default's policy, reward model and tokenizer (tiny_model/model.py) once per
shape; skipped when its manifest matches."""

from __future__ import annotations

from pathlib import Path

from core.artifacts import Manifest
from core.lifecycle import StageRun
from tiny_model.config import TinyModelStageConfig
from tiny_model.model import build


def identify(cfg: TinyModelStageConfig) -> StageRun:
    """Its identity is the shape alone: where the run writes its logs is no reason to rebuild."""
    return StageRun("tiny_model", cfg, Path(cfg.output_dir), inputs={}, hashed=cfg.shape)


def run(cfg: TinyModelStageConfig) -> Manifest:
    stage = identify(cfg)
    if (done := stage.begin()) is not None:
        return done
    dirs = build(cfg.shape, stage.out)
    return stage.finish(
        dirs={name: Path(d) for name, d in dirs.items()},
        metrics={"policy_dir": "policy", "reward_model_dir": "reward_model"},
    )
