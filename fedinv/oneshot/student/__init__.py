"""The student stage: its config (config.py), its minibatches (batches.py), its loss (objective.py),
adaptive rounds of new batches (adaptive.py), the training loop (train.py) and its record
(report.py)."""
