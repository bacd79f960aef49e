"""`python -m grpo [overrides]` (or `accelerate launch -m grpo ...`): see conf/grpo.yaml."""

from core.stages import main

if __name__ == "__main__":
    main("grpo")
