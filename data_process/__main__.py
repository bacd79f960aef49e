"""`python -m data_process [overrides]`: see conf/data_process.yaml."""

from core.stages import main

if __name__ == "__main__":
    main("data_process")
