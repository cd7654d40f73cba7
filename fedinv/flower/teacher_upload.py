"""The one-shot upload over Flower: each node trains its teacher in a `ClientApp`, the `ServerApp`
collects the models into the teachers folder (node-K.pt with label counts) and writes the report.

The ClientApp runs `nodes.train_node` (the same code as `fedinv train-teachers`) in a scratch
folder of its own and sends back the weights, its label counts and its metrics; only the model
leaves the node. `fedinv train-teachers --engine flower` runs it on Flower's simulation engine.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from ..checkpoint import TEACHER, ModelCheckpoint, load_checkpoint, save_checkpoint
from ..config import to_dict
from ..data.datasets import load_dataset
from ..data.partition import Partition
from ..errors import RunStateError
from ..oneshot.teachers import TeacherConfig, train_node, write_teacher_report
from .app import discover
from .simulation import QUIET_ENV


def make_teacher_client_app(partition: Partition, cfg: TeacherConfig) -> ClientApp:
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        k = int(context.node_config["partition-id"])
        labels = load_dataset(partition.data, "train").labels[partition.indices[k]]
        counts = labels.bincount(minlength=partition.num_classes).tolist()
        return Message(RecordDict({"metrics": MetricRecord({"partition-id": k, "label-counts": counts})}),
                       reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        k = int(context.node_config["partition-id"])
        train_set = load_dataset(partition.data, "train")
        test = load_dataset(partition.data, "test")
        with tempfile.TemporaryDirectory(prefix=f"fedinv-node-{k}-") as scratch:
            ckpt = train_node(k, train_set.subset(partition.indices[k]), test, cfg, scratch,
                              partition_hash=partition.content_hash(), progress=False)
        metrics = MetricRecord({"partition-id": k, "label-counts": list(ckpt.label_counts),
                                "test-accuracy": float(ckpt.metrics["test_accuracy"]),
                                "train-seconds": float(ckpt.metrics["train_seconds"])})
        content = RecordDict({"arrays": ArrayRecord.from_torch_state_dict(ckpt.state_dict), "metrics": metrics,
                              "extra": ConfigRecord({"metrics": json.dumps(ckpt.metrics)})})
        return Message(content, reply_to=msg)

    return app


def make_teacher_server_app(partition: Partition, cfg: TeacherConfig, out: Path,
                            done: dict[str, Any]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        node_ids, _ = discover(grid, partition.num_nodes)
        messages = [Message(RecordDict({"config": ConfigRecord({"node": k})}), message_type=MessageType.TRAIN,
                            dst_node_id=node_ids[k]) for k in range(partition.num_nodes)]
        replies = list(grid.send_and_receive(messages))
        errors = [m.error.reason for m in replies if m.has_error()]
        if errors or len(replies) != partition.num_nodes:
            raise RuntimeError(f"{len(replies)} teachers for {partition.num_nodes} nodes; errors: {errors}")
        info = load_dataset(partition.data, "test").info
        for m in replies:
            k = int(m.content["metrics"]["partition-id"])
            counts = [int(c) for c in m.content["metrics"]["label-counts"]]
            ckpt = ModelCheckpoint.of(
                TEACHER, cfg.model, info, dict(m.content["arrays"].to_torch_state_dict()), label_counts=counts,
                config=to_dict(cfg), seed=cfg.seed, metrics=json.loads(str(m.content["extra"]["metrics"])),
                extra={"node": k, "num_samples": sum(counts), "partition_sha256": partition.content_hash(),
                       "engine": "flower"})
            save_checkpoint(ckpt, out / f"node-{k}.pt")
        done["ok"] = True

    return app


def train_teachers_flower(partition: Partition, cfg: TeacherConfig, out_dir: str | Path, *,
                          num_cpus: int | None = None) -> dict[str, Any]:
    """Train every node's teacher in a Flower simulation; writes OUT/node-K.pt and OUT/report.json."""
    from flwr.simulation import run_simulation

    out = Path(out_dir)
    existing = sorted(out.glob("node-*.pt"))
    if existing:
        raise RunStateError(f"{out} already holds teachers ({existing[0].name}, ...); the Flower engine trains all "
                            f"nodes afresh: use another --out folder")
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    out.mkdir(parents=True, exist_ok=True)
    done: dict[str, Any] = {}
    cpus = num_cpus or os.cpu_count() or 1
    run_simulation(server_app=make_teacher_server_app(partition, cfg, out, done),
                   client_app=make_teacher_client_app(partition, cfg), num_supernodes=partition.num_nodes,
                   backend_config={"client_resources": {"num_cpus": cpus, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": cpus, "include_dashboard": False,
                                                 "log_to_driver": False}})
    if not done.get("ok"):
        raise RuntimeError("the Flower simulation ended before every teacher arrived; see the log above")
    for p in sorted(out.glob("node-*.pt")):
        load_checkpoint(p)  # what arrived is a valid teacher checkpoint
    return write_teacher_report(out, load_dataset(partition.data, "test"), cfg, partition.content_hash(),
                                engine="flower")
