"""`python -m reject_sampling [overrides]`: sample → score → select for one round; see conf/reject_sampling.yaml."""

from core.config import hydra_entry
from reject_sampling.config import RejectSamplingConfig
from reject_sampling.stage import run

if __name__ == "__main__":
    hydra_entry("reject_sampling", RejectSamplingConfig, run)
