"""`python -m pipeline [overrides]` (what `bash train.sh` runs): see pipeline/run.py and conf/pipeline.yaml.

Stage sections are free-form, so Hydra would ask for `++train_sft.sft.learning_rate=...` to add a key to
one; `train_sft.sft.learning_rate=...` is accepted here and rewritten to that.
"""

import re
import sys

from core.config import hydra_entry
from pipeline.config import PipelineConfig
from pipeline.run import SECTIONS, run

if __name__ == "__main__":
    section = re.compile(rf"^({'|'.join(SECTIONS)})\.")
    sys.argv = [f"++{a}" if section.match(a) else a for a in sys.argv]
    hydra_entry("pipeline", PipelineConfig, run, sweep_field="run_dir")
