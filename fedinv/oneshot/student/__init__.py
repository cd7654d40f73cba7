"""The student stage: its config (config.py) and its training on the synthetic store (train.py)."""
