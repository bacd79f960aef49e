"""`python -m reward_model [overrides]` (or `accelerate launch -m reward_model ...`): see conf/reward_model.yaml."""

from core.stages import main

if __name__ == "__main__":
    main("reward_model")
