"""Student training on the synthetic store: KD losses (distill.py) and the training loop (train.py)."""
