"""`python -m evaluation [overrides]`: evaluate a model on held-out prompts or a benchmark; see conf/evaluate.yaml.

`benchmark=FILE.jsonl` is rewritten before Hydra parses the command line (evaluation.benchmarks)."""

from core.stages import main

if __name__ == "__main__":
    main("evaluate")
