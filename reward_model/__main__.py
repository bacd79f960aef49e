"""`python -m reward_model [overrides]` (or `accelerate launch -m reward_model ...`): see conf/reward_model.yaml."""

from core.config import hydra_entry
from reward_model.config import RMStageConfig
from reward_model.stage import run

if __name__ == "__main__":
    hydra_entry("reward_model", RMStageConfig, run)
