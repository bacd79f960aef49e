"""`python -m train_sft [overrides]` (or `accelerate launch -m train_sft ...`): see conf/train_sft.yaml."""

from core.stages import main

if __name__ == "__main__":
    main("train_sft")
