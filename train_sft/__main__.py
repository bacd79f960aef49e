"""`python -m train_sft [overrides]` (or `accelerate launch -m train_sft ...`): see conf/train_sft.yaml."""

from core.config import hydra_entry
from train_sft.config import SFTStageConfig
from train_sft.stage import run

if __name__ == "__main__":
    hydra_entry("train_sft", SFTStageConfig, run)
