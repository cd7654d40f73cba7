"""Flower's simulation runtime on one machine, through Flower's current interface: `fedinv federate
--engine flower` and `fedinv train-teachers --engine flower` start a SuperLink in simulation mode
on 127.0.0.1 for the run, `flwr run` one of fedinv's Flower apps (apps/rounds, apps/teachers)
against it, and stop the SuperLink when the run ends. Everything the apps need travels as files
named in the run config; what they write (the run folder) is read back from disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..config import to_toml
from ..errors import ConfigError
from ..federated.config import FederatedRunConfig

APPS = Path(__file__).parent / "apps"  # one folder per Flower app, each with the pyproject.toml `flwr run` reads
# Offline-friendly: no telemetry from Flower, no usage statistics from Ray.
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
             "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


def federate_flower(cfg: FederatedRunConfig, out_dir: str | Path, *, num_cpus: int | None = None
                    ) -> dict[str, Any]:
    """Run `cfg` as a Flower simulation (one virtual SuperNode per partition); writes the same
    metrics.jsonl, global.pt and report.json as the in-process engine, and returns the report.
    Each ClientApp uses `num_cpus` CPU cores (default: all, one node at a time)."""
    out = Path(out_dir).resolve()
    if (out / "checkpoint.pt").exists() or (out / "report.json").exists():
        raise ConfigError(f"{out} already holds a run; the Flower engine starts fresh runs only (it cannot "
                          f"continue one): use another --out folder")
    with tempfile.TemporaryDirectory(prefix="fedinv-flower-") as tmp:
        toml = Path(tmp) / "run.toml"
        toml.write_text(to_toml(cfg.to_dict()))
        run_app("rounds", {"fedinv-config": toml, "fedinv-out": out}, cfg.partition.num_nodes, num_cpus, Path(tmp))
    if not (out / "report.json").is_file():
        raise RuntimeError(f"the Flower simulation ended before its last round ({out} has no report.json); "
                           f"see the log above")
    return json.loads((out / "report.json").read_text())


def run_app(app: str, run_config: dict[str, Any], num_supernodes: int, num_cpus: int | None, home: Path) -> None:
    """`flwr run` fedinv's app `app` with `run_config` (values as strings) on `num_supernodes`
    simulated SuperNodes of `num_cpus` cores each (default: all), against a SuperLink in simulation
    mode started for it (its Flower home: `home`; its log: home/superlink.log, quoted on failure)."""
    import flwr  # noqa: F401  (the optional extra; a clear error when it is missing)

    bin_dir = Path(sys.executable).parent
    cpus = num_cpus or os.cpu_count() or 1
    port = free_port()
    (home / "config.toml").write_text(f'[superlink.local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**os.environ, **QUIET_ENV, "FLWR_HOME": str(home), "OMP_NUM_THREADS": str(cpus),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    log_path = home / "superlink.log"
    with open(log_path, "w") as log:
        # insecure is local only: the SuperLink listens on 127.0.0.1 and lives as long as this run
        link = subprocess.Popen(["flower-superlink", "--simulation", "--insecure", "--disable-runtime-dependency-"
                                 "installation", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_port(port, link, log_path)
            federation = (f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus} "
                          f"init-args-num-cpus={cpus} init-args-log-to-driver=false")
            settings = " ".join(f"{key}={json.dumps(str(value))}" for key, value in run_config.items())
            done = subprocess.run(["flwr", "run", str(APPS / app), "local", "--stream", "--federation-config",
                                   federation, "--run-config", settings], env=env)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(link.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                link.wait(timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"flwr run ended with exit status {done.returncode}; the SuperLink's log ends:\n"
                           f"{log_path.read_text()[-3000:]}")


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Block until something listens on 127.0.0.1:port (a cold start of the SuperLink takes a while)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Flower SuperLink exited during start-up; its log ends:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the Flower SuperLink did not listen on port {port} after {timeout:.0f} s")
