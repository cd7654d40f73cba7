"""`fedinv federate --engine flower`: the Flower app on Flower's simulation engine, on one machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..federated.config import FederatedRunConfig
from .app import make_client_app, make_server_app

# Offline-friendly: no telemetry from Flower, no usage statistics from Ray.
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}


def federate_flower(cfg: FederatedRunConfig, out_dir: str | Path, *, num_cpus: int | None = None
                    ) -> dict[str, Any]:
    """Run `cfg` as a Flower simulation (one virtual SuperNode per partition); writes the same
    metrics.jsonl, global.pt and report.json as the in-process engine, and returns the report.
    Each ClientApp uses `num_cpus` CPU cores (default: all, one node at a time)."""
    from flwr.simulation import run_simulation  # the optional extra

    out = Path(out_dir)
    if (out / "checkpoint.pt").exists() or (out / "report.json").exists():
        raise ConfigError(f"{out} already holds a run; the Flower engine starts fresh runs only (it cannot "
                          f"continue one): "
                          f"use another --out folder")
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    done: dict[str, dict[str, Any]] = {}
    cpus = num_cpus or os.cpu_count() or 1
    run_simulation(server_app=make_server_app(cfg, out, on_done=lambda r: done.update(report=r)),
                   client_app=make_client_app(cfg), num_supernodes=cfg.partition.num_nodes,
                   backend_config={"client_resources": {"num_cpus": cpus, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": cpus, "include_dashboard": False,
                                                 "log_to_driver": False}})
    if "report" not in done:
        raise RuntimeError("the Flower simulation ended before its last round; see the log above")
    return done["report"]
