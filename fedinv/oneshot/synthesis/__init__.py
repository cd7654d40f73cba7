"""The synthesis stage: sampling DeepInversion's objective (objective.py, losses.py, hooks.py,
labels.py, ensemble.py) descended by one of the registered methods (registry.py: deepinversion.py,
fast.py, dense.py), batch by batch into the HDF5 store (store.py, synthesize.py). Importing the
package registers every method."""

from . import coboost, deepinversion, dense, fast  # noqa: F401  (registration)
