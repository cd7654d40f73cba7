"""fedinv: one-shot, data-free federated learning by sampling DeepInversion."""

__version__ = "0.3.0"
