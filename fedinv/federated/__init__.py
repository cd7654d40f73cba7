"""Multi-round federated learning: one file per algorithm and per server step, each registering
itself (`registry`); `rounds` drives them without naming any. Importing the package registers all."""

from . import fedavg, feddistill, feddyn, fedgen, fedprox, ftg, moon, scaffold  # noqa: F401  (registration)
