"""`python -m pipeline [overrides]` (what `bash train.sh` runs): see pipeline/run.py and conf/pipeline.yaml.

A stage-section override (`train_sft.sft.max_steps=800`, also written `++train_sft....`) is not merged into
the preset's section: it becomes its own entry `++cli_overrides.arg<i>.train_sft.sft.max_steps=800`, so it
can never replace a group choice the preset holds as a string (pipeline/config.py explains why).
"""

import sys

from core.config import hydra_entry
from pipeline.config import PipelineConfig, command_line_overrides
from pipeline.run import run

if __name__ == "__main__":
    sys.argv[1:] = command_line_overrides(sys.argv[1:])
    hydra_entry("pipeline", PipelineConfig, run, sweep_field="run_dir")
