"""fedinv: one-shot, data-free federated learning by sampling DeepInversion."""

__version__ = "0.2.0"
