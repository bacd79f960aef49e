"""`python -m tiny_model [overrides]`: build the tiny offline model; see conf/tiny_model.yaml."""

from core.stages import main

if __name__ == "__main__":
    main("tiny_model")
