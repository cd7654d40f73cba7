"""The multi-round mode on Flower's simulation engine, and in its deployment runtime, gives the
in-process engine's models."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="the Flower extra is not installed (pip install 'fedinv[flower]')")

from fedinv.config import DataConfig, PartitionConfig  # noqa: E402
from fedinv.federated.config import FederateConfig, FederatedRunConfig, GeneratorConfig  # noqa: E402
from fedinv.federated.ftg import FTGParams  # noqa: E402
from fedinv.federated.rounds import federate  # noqa: E402
from fedinv.flower.records import flatten, from_record, to_record, unflatten  # noqa: E402
from fedinv.flower.simulation import federate_flower, free_port, wait_for_port  # noqa: E402
from tests.helpers import REPO  # noqa: E402


def test_records_round_trip():
    tree = {"c": {"conv.weight": torch.randn(2, 3), "bn.num_batches_tracked": torch.tensor(4)},
            "label_p": torch.rand(10)}
    back = from_record(to_record(tree))
    assert set(flatten(back)) == set(flatten(tree))
    assert all(torch.equal(a, b) for a, b in zip(flatten(back).values(), flatten(tree).values()))
    assert unflatten(flatten(tree)).keys() == tree.keys()
    assert from_record(to_record({})) == {}


TIMINGS = ("seconds", "local_seconds", "aggregate_seconds", "server_seconds", "seconds_per_round",
           "server_seconds_per_round", "engine")


def without_timings(report: dict) -> dict:
    """A report less what differs between engines by nature: wall times and the engine's name."""
    out = {k: v for k, v in report.items() if k not in TIMINGS and k != "history"}
    out["history"] = [{k: v for k, v in row.items() if k not in TIMINGS} for row in report["history"]]
    return out


@pytest.mark.parametrize("algorithm,server", [("fedavg", "ftg"), ("feddistill", "none")])
def test_flower_simulation_matches_in_process(tmp_path, tiny_train, algorithm, server):
    """Same models and the same reports: FedDistill's personal accuracy (evaluated on the nodes under
    Flower) and FedFTG's generated samples (save_every) included."""
    cfg = FederatedRunConfig(
        DataConfig("synthetic-tiny"), PartitionConfig(num_nodes=3, alpha=1.0),
        FederateConfig(algorithm=algorithm, server=server, model="lenet5", rounds=2, participation=0.67,
                       batch_size=32, device="cpu"),
        GeneratorConfig(iterations=2, batch_size=16, nz=16), None,
        FTGParams(model_steps=2, save_every=1) if server == "ftg" else None)
    # One CPU thread on both sides (Ray gives each ClientApp one): the reductions then run in the
    # same order and the models agree exactly. With other thread counts they agree to ~1e-8 without
    # FTG, while FedFTG's generator training (Adam) amplifies such differences to ~1e-4.
    torch.set_num_threads(1)
    local = federate(cfg, tmp_path / "inprocess", progress=False, train=tiny_train)
    flower = federate_flower(cfg, tmp_path / "flower", num_cpus=1)
    a = torch.load(tmp_path / "inprocess" / "global.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "flower" / "global.pt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert without_timings(flower) == without_timings(local)
    assert flower["engine"] == "flower" and local["engine"] == "in-process"
    if algorithm == "feddistill":
        assert 0 <= flower["personal_accuracy"] <= 1 and "personal_accuracy" in flower["history"][-1]
    if server == "ftg":
        from fedinv.store import read_rows
        assert all(torch.equal(x, y) for x, y in zip(read_rows(tmp_path / "flower" / "generated.h5"),
                                                     read_rows(tmp_path / "inprocess" / "generated.h5")))
    for name in ("metrics.jsonl", "checkpoint.pt", "partition.json", "config.json", "report.json"):
        assert (tmp_path / "flower" / name).is_file(), name


def test_teachers_over_flower_equal_in_process_teachers(tmp_path, tiny_partition):
    from tests.helpers import tiny_teacher_config

    from fedinv.data.partition import load_partition
    from fedinv.flower.teacher_upload import train_teachers_flower
    from fedinv.oneshot.teachers import train_teachers

    torch.set_num_threads(1)  # as each Flower ClientApp (one CPU): the same reductions, the same weights
    part, cfg = load_partition(tiny_partition), tiny_teacher_config(epochs=1)
    local = train_teachers(part, cfg, tmp_path / "inprocess", progress=False)
    flower = train_teachers_flower(part, cfg, tmp_path / "flower", num_cpus=1)
    for k in range(part.num_nodes):
        a = torch.load(tmp_path / "inprocess" / f"node-{k}.pt", weights_only=True)
        b = torch.load(tmp_path / "flower" / f"node-{k}.pt", weights_only=True)
        assert a["label_counts"] == b["label_counts"]
        assert all(torch.equal(a["state_dict"][n], b["state_dict"][n]) for n in a["state_dict"])
    assert flower["ensemble_accuracy"] == local["ensemble_accuracy"] and flower["engine"] == "flower"


DEPLOY_TOML = """
[data]
dataset = "synthetic-tiny"
[partition]
num_nodes = 2
alpha = 1.0
[federate]
algorithm = "fedavg"
server = "ftg"
model = "lenet5"
rounds = 2
participation = 1.0
batch_size = 32
device = "cpu"
[generator]
iterations = 2
model_steps = 2
batch_size = 16
nz = 16
"""


def supernode(link: int, k: int, env: dict, log, *tls: str) -> subprocess.Popen:
    return subprocess.Popen(["flower-supernode", *tls, "--superlink", f"127.0.0.1:{link}", "--port", str(free_port()),
                             "--max-retries", "3", "--node-config", f"partition-id={k} num-partitions=2"],
                            env=env, stdout=log, stderr=log, start_new_session=True)


@pytest.mark.slow
def test_deployment_runtime_matches_in_process(tmp_path):
    """The README's deployment recipe, encrypted and authenticated: credentials from
    `fedinv.flower.credentials`, a SuperLink with TLS and SuperNode authentication, two registered
    SuperNodes (separate processes, as on separate machines) and `flwr run assets/flower-app`; the
    ServerApp writes the in-process engine's model. A SuperNode with a key the SuperLink does not know,
    and one that speaks plaintext, are refused."""
    from fedinv.flower.credentials import make_credentials

    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "flower-superlink").exists():
        pytest.skip("flower-superlink is not installed beside this Python")
    (tmp_path / "run.toml").write_text(DEPLOY_TOML)
    creds = tmp_path / "creds"
    make_credentials(creds, nodes=3)
    home = tmp_path / "flwr-home"
    home.mkdir()
    link = free_port()
    (home / "config.toml").write_text(f'[superlink.fedinv]\naddress = "127.0.0.1:{link}"\n'
                                      f'root-certificates = "{creds / "ca.crt"}"\n')
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FLWR_HOME": str(home),
           "FLWR_TELEMETRY_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "flower.log", "w")
    procs = [subprocess.Popen(["flower-superlink", "--ssl-ca-certfile", str(creds / "ca.crt"),
                               "--ssl-certfile", str(creds / "server.pem"), "--ssl-keyfile", str(creds / "server.key"),
                               "--enable-supernode-auth", "--disable-runtime-dependency-installation",
                               "--port", str(link)], env=env, stdout=log, stderr=log, start_new_session=True)]
    try:
        wait_for_port(link, procs[0], tmp_path / "flower.log")
        for k in range(2):
            reg = subprocess.run(["flwr", "supernode", "register", str(creds / f"node-{k}.pub"), "fedinv"],
                                 env=env, capture_output=True, text=True, timeout=120)
            assert reg.returncode == 0, reg.stdout[-2000:] + reg.stderr[-2000:]
        tls = ("--root-certificates", str(creds / "ca.crt"))
        for k in range(2):
            procs.append(supernode(link, k, env, log, *tls, "--auth-supernode-private-key", str(creds / f"node-{k}")))
        logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("intruder", "plaintext")}
        intruder = supernode(link, 0, env, logs["intruder"], *tls, "--auth-supernode-private-key",
                             str(creds / "node-2"))
        plaintext = supernode(link, 1, env, logs["plaintext"], "--insecure")
        procs += [intruder, plaintext]
        assert intruder.wait(timeout=120) != 0 and plaintext.wait(timeout=120) != 0  # both refused
        for f in logs.values():
            f.close()
        assert "Failed to activate SuperNode" in (tmp_path / "intruder.log").read_text()  # TLS fine, key unknown
        assert "Connection attempt failed" in (tmp_path / "plaintext.log").read_text()
        out = tmp_path / "deployed"
        app = REPO / "assets" / "flower-app"
        res = subprocess.run(["flwr", "run", str(app), "fedinv", "--stream", "--run-config",
                              f"fedinv-config='{tmp_path / 'run.toml'}' fedinv-out='{out}'"],
                             env=env, capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert (out / "report.json").is_file(), (tmp_path / "flower.log").read_text()[-3000:]
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=20)
        log.close()
        shutil.rmtree(home, ignore_errors=True)
    torch.set_num_threads(1)
    local = federate(FederatedRunConfig.from_toml(tmp_path / "run.toml"), tmp_path / "inprocess", progress=False)
    a = torch.load(tmp_path / "inprocess" / "global.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "global.pt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=1e-6, rtol=0), k
    deployed = json.loads((out / "report.json").read_text())
    assert deployed["engine"] == "flower" and deployed["final_accuracy"] == local["final_accuracy"]
