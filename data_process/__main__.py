"""`python -m data_process [overrides]`: see conf/data_process.yaml."""

from core.config import hydra_entry
from data_process.config import DataProcessConfig
from data_process.stage import run

if __name__ == "__main__":
    hydra_entry("data_process", DataProcessConfig, run)
