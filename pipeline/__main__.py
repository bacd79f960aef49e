"""`python -m pipeline [overrides]` (what `bash train.sh` runs): see pipeline/run.py and conf/pipeline.yaml.

A stage-section override (`train_sft.sft.max_steps=800`, also written `++train_sft....`) is not merged into
the preset's section: it becomes its own entry `++cli_overrides.arg<i>.train_sft.sft.max_steps=800`, so it
can never replace a group choice the preset holds as a string (pipeline/config.py explains why).
"""

from core.stages import main

if __name__ == "__main__":
    main("pipeline")
