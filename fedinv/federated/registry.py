"""Where algorithms and server steps register themselves by name; the round loop and the config
look them up here and never name one.

    @register_algorithm
    class FedProx(FedAvg):
        name = "fedprox"
        Params = ProxParams
"""

from __future__ import annotations

from typing import Any

from ..errors import unknown

ALGORITHMS: dict[str, type] = {}
SERVER_STEPS: dict[str, type] = {}
NO_SERVER_STEP = "none"


def register_algorithm(cls: type) -> type:
    ALGORITHMS[cls.name] = cls
    return cls


def register_server_step(cls: type) -> type:
    SERVER_STEPS[cls.name] = cls
    return cls


def algorithm_class(name: str) -> Any:
    if name not in ALGORITHMS:
        raise unknown("algorithm", name, ALGORITHMS)
    return ALGORITHMS[name]


def server_step_class(name: str) -> Any:
    """The registered server step `name`, or None for "none"."""
    if name == NO_SERVER_STEP:
        return None
    if name not in SERVER_STEPS:
        raise unknown("server step", name, [NO_SERVER_STEP, *SERVER_STEPS])
    return SERVER_STEPS[name]
