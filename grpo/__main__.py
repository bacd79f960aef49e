"""`python -m grpo [overrides]` (or `accelerate launch -m grpo ...`): see conf/grpo.yaml."""

from core.config import hydra_entry
from grpo.config import GRPOStageConfig
from grpo.stage import run

if __name__ == "__main__":
    hydra_entry("grpo", GRPOStageConfig, run)
