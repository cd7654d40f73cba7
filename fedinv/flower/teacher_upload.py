"""The one-shot upload over Flower: each node trains its teacher in a `ClientApp`, the `ServerApp`
collects the models into the teachers folder (node-K.pt with label counts) and writes the report.

The ClientApp runs `nodes.train_node` (the same code as `fedinv train-teachers`) in a scratch
folder of its own and sends back the weights, its label counts and its metrics; only the model
leaves the node. `fedinv train-teachers --engine flower` runs it on Flower's simulation runtime
(fedinv.flower.simulation; the app folder apps/teachers). Both apps read the run from files named in
the run config: `fedinv-partition` (the partition manifest), `fedinv-teachers` (the TeacherConfig as
JSON) and `fedinv-out` (the teachers folder the ServerApp writes).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from ..checkpoint import TEACHER, ModelCheckpoint, load_checkpoint, save_checkpoint
from ..config import from_dict, to_dict
from ..data.datasets import load_dataset
from ..data.partition import Partition, load_partition, save_partition
from ..errors import RunStateError
from ..oneshot.teachers import TeacherConfig, train_node, write_teacher_report
from .app import discover
from .simulation import run_app


def setting(context: Context) -> tuple[Partition, TeacherConfig]:
    """The run's partition and teacher config, from the files its run config names."""
    teachers = json.loads(Path(str(context.run_config["fedinv-teachers"])).read_text())
    return load_partition(str(context.run_config["fedinv-partition"])), from_dict(TeacherConfig, teachers)


def make_teacher_client_app() -> ClientApp:
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        partition, _ = setting(context)
        k = int(context.node_config["partition-id"])
        labels = load_dataset(partition.data, "train").labels[partition.indices[k]]
        counts = labels.bincount(minlength=partition.num_classes).tolist()
        return Message(RecordDict({"metrics": MetricRecord({"partition-id": k, "label-counts": counts})}),
                       reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition, cfg = setting(context)
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


def make_teacher_server_app() -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        partition, cfg = setting(context)
        out = Path(str(context.run_config["fedinv-out"]))
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

    return app


teacher_client_app = make_teacher_client_app()
teacher_server_app = make_teacher_server_app()


def train_teachers_flower(partition: Partition, cfg: TeacherConfig, out_dir: str | Path, *,
                          num_cpus: int | None = None) -> dict[str, Any]:
    """Train every node's teacher in a Flower simulation; writes OUT/node-K.pt and OUT/report.json."""
    out = Path(out_dir).resolve()
    existing = sorted(out.glob("node-*.pt"))
    if existing:
        raise RunStateError(f"{out} already holds teachers ({existing[0].name}, ...); the Flower engine trains all "
                            f"nodes afresh: use another --out folder")
    out.mkdir(parents=True, exist_ok=True)
    train = load_dataset(partition.data, "train")
    with tempfile.TemporaryDirectory(prefix="fedinv-flower-") as tmp:
        manifest, teachers = Path(tmp) / "partition.json", Path(tmp) / "teachers.json"
        save_partition(partition, train.labels.numpy(), manifest, train.info.class_names)
        teachers.write_text(json.dumps(to_dict(cfg)))
        run_app("teachers", {"fedinv-partition": manifest, "fedinv-teachers": teachers, "fedinv-out": out},
                partition.num_nodes, num_cpus, Path(tmp))
    missing = [k for k in range(partition.num_nodes) if not (out / f"node-{k}.pt").is_file()]
    if missing:
        raise RuntimeError(f"the Flower simulation ended without the teachers of nodes {missing}; see the log above")
    for p in sorted(out.glob("node-*.pt")):
        load_checkpoint(p)  # what arrived is a valid teacher checkpoint
    return write_teacher_report(out, load_dataset(partition.data, "test"), cfg, partition.content_hash(),
                                engine="flower")
