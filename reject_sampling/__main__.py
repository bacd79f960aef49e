"""`python -m reject_sampling [overrides]`: sample → score → select for one round; see conf/reject_sampling.yaml."""

from core.stages import main

if __name__ == "__main__":
    main("reject_sampling")
