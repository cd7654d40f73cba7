"""Sampling DeepInversion: losses, the BN-statistics hook, label samplers and the engine."""
