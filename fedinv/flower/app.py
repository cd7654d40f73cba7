"""The multi-round mode as a Flower app (Message API: `ServerApp` / `ClientApp`).

The ServerApp runs the in-process engine's loop (`federated.rounds.federate`, round by round
`run_round`) with `FlowerNodes` as its node engine: a round's local updates travel as Flower
messages to the ClientApps, which run `Federation.node_update`; aggregation, the server step,
evaluation, checkpoints, metrics.jsonl and generated samples are the same code as in-process.
What travels:

  server -> node  TRAIN: ArrayRecord "arrays" (global model), ArrayRecord "broadcast" (SCAFFOLD's
                  c, a server step's generator), ConfigRecord "config" (round)
  node -> server  ArrayRecord "arrays" (local model), ArrayRecord "upload" (SCAFFOLD's delta c),
                  MetricRecord "metrics" (num-examples, partition-id, label-counts, loss, accuracy)
  EVALUATE        the node's own metrics (FedDistill's personal model on the test set)
  QUERY           once at the start: each node's partition-id and label counts

A node's own state between rounds (SCAFFOLD's c_i, FedDyn's g_i, MOON's previous model,
FedDistill's personal model) lives in its `Context.state`. Participants are drawn by partition id
with the in-process engine's seeded draw, and replies are used in partition order, so both
engines compute the same models and reports.

`client_app` and `server_app` below read the run's TOML from the file named by run config key
`fedinv-config` (the app folder apps/rounds names them for `flwr run`: fedinv.flower.simulation on one
machine, or across machines, README "Flower").
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from ..data.datasets import ImageTensors, load_dataset
from ..errors import ConfigError
from ..federated.config import FederatedRunConfig
from ..federated.local import LocalResult, State
from ..federated.rounds import Federation, NodeData, federate, mean_node_metrics, node_data
from .records import from_record, to_record

NODE_STATE = "fedinv-node-state"
ENGINE = "flower"


def config_from_json(text: str) -> FederatedRunConfig:
    return FederatedRunConfig.from_dict(json.loads(text))


@functools.lru_cache(maxsize=2)
def _node_side(cfg_json: str) -> tuple[Federation, NodeData, ImageTensors]:
    """(Federation, NodeData, test set) of a run, built once per process (data is loaded once)."""
    cfg = config_from_json(cfg_json)
    train = load_dataset(cfg.data, "train")
    data = node_data(cfg, train)
    return Federation(cfg, train.info, data.validation), data, load_dataset(cfg.data, "test")


def make_client_app() -> ClientApp:
    """The ClientApp: the run's TOML is the file named by run config `fedinv-config`."""
    app = ClientApp()

    def setting(context: Context) -> tuple[Federation, NodeData, ImageTensors, int]:
        c = FederatedRunConfig.from_toml(str(context.run_config["fedinv-config"]))
        fed, data, test = _node_side(json.dumps(c.to_dict(), sort_keys=True))
        k = int(context.node_config["partition-id"])
        if not 0 <= k < data.partition.num_nodes:
            raise ConfigError(f"partition-id {k} out of range; the run has {data.partition.num_nodes} nodes")
        return fed, data, test, k

    def node_state(context: Context) -> dict[str, Any]:
        return from_record(context.state[NODE_STATE]) if NODE_STATE in context.state else {}

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        _, data, _, k = setting(context)
        metrics = MetricRecord({"partition-id": k, "label-counts": data.counts[k].tolist()})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        fed, data, _, k = setting(context)
        rnd = int(msg.content["config"]["round"])
        global_state = dict(msg.content["arrays"].to_torch_state_dict())
        broadcast = from_record(msg.content["broadcast"])
        res = fed.node_update(k, rnd, data.splits[k], data.counts[k], global_state, node_state(context), broadcast)
        if res.node_state:
            context.state[NODE_STATE] = to_record(res.node_state)
        metrics = MetricRecord({"num-examples": res.num_samples, "partition-id": k,
                                "label-counts": data.counts[k].tolist(), "loss": float(res.metrics["loss"]),
                                "accuracy": float(res.metrics["accuracy"])})
        content = RecordDict({"arrays": ArrayRecord.from_torch_state_dict(res.state), "metrics": metrics,
                              "upload": to_record(res.upload)})
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        fed, data, test, k = setting(context)
        own = fed.algo.evaluate_node(k, node_state(context), test, fed.device, data.counts[k])
        metrics = MetricRecord({"partition-id": k, **{name: float(v) for name, v in own.items()}})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


class FlowerNodes:
    """The node engine of `federate` on Flower: each call is one exchange of messages."""

    def __init__(self, grid: Grid, node_ids: dict[int, int]):
        self.grid, self.node_ids = grid, node_ids  # partition id -> Flower node id

    def _exchange(self, messages: list[Message], what: str) -> list[Message]:
        replies = list(self.grid.send_and_receive(messages))
        errors = [m.error.reason for m in replies if m.has_error()]
        if errors or len(replies) != len(messages):
            raise RuntimeError(f"{what}: {len(replies)} replies for {len(messages)} nodes; errors: {errors}")
        return sorted(replies, key=lambda m: int(m.content["metrics"]["partition-id"]))

    def update(self, who: list[int], rnd: int, global_state: State, broadcast: dict[str, Any]) -> list[LocalResult]:
        content = RecordDict({"arrays": ArrayRecord.from_torch_state_dict(global_state),
                              "broadcast": to_record(broadcast), "config": ConfigRecord({"round": rnd})})
        messages = [Message(content, message_type=MessageType.TRAIN, dst_node_id=self.node_ids[k]) for k in who]
        results = []
        for m in self._exchange(messages, f"round {rnd + 1}"):
            metrics = m.content["metrics"]
            results.append(LocalResult(dict(m.content["arrays"].to_torch_state_dict()), int(metrics["num-examples"]),
                                       upload=from_record(m.content["upload"]),
                                       metrics={"loss": metrics["loss"], "accuracy": metrics["accuracy"]},
                                       label_counts=torch.tensor(metrics["label-counts"])))
        return results

    def evaluate(self, test: ImageTensors) -> dict[str, float]:
        messages = [Message(RecordDict(), message_type=MessageType.EVALUATE, dst_node_id=n)
                    for _, n in sorted(self.node_ids.items())]
        replies = self._exchange(messages, "node evaluation")
        return mean_node_metrics([{k: float(v) for k, v in m.content["metrics"].items() if k != "partition-id"}
                                  for m in replies])

    def states(self) -> dict[int, dict[str, Any]]:
        return {}  # every node keeps its own, in its Context


def discover(grid: Grid, num_nodes: int, timeout: float = 600.0) -> tuple[dict[int, int], dict[int, list[int]]]:
    """Ask every connected node for its partition id and label counts (waits until all N are up)."""
    start = time.monotonic()
    while len(ids := list(grid.get_node_ids())) < num_nodes:
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{len(ids)} of {num_nodes} nodes connected after {timeout:.0f} s")
        time.sleep(1.0)
    replies = grid.send_and_receive([Message(RecordDict(), message_type=MessageType.QUERY, dst_node_id=n)
                                     for n in ids], timeout=timeout)
    node_ids, counts = {}, {}
    for m in replies:
        if m.has_error():
            raise RuntimeError(f"node {m.metadata.src_node_id}: {m.error.reason}")
        k = int(m.content["metrics"]["partition-id"])
        if k in node_ids:
            raise ConfigError(f"two nodes claim partition-id {k}")
        node_ids[k], counts[k] = m.metadata.src_node_id, list(m.content["metrics"]["label-counts"])
    missing = sorted(set(range(num_nodes)) - set(node_ids))
    if missing:
        raise ConfigError(f"no node holds partition(s) {missing}")
    return node_ids, counts


def make_server_app() -> ServerApp:
    """The ServerApp: the run's TOML is the file named by run config `fedinv-config`, its output
    folder `fedinv-out`. It writes what the in-process engine writes (metrics.jsonl, checkpoint.pt,
    generated.h5, global.pt, report.json)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        c = FederatedRunConfig.from_toml(str(context.run_config["fedinv-config"]))
        folder = Path(str(context.run_config.get("fedinv-out", "runs/flower")))
        node_ids, _ = discover(grid, c.partition.num_nodes)
        federate(c, folder, progress=False, engine=lambda fed, data, states: FlowerNodes(grid, node_ids),
                 engine_name=ENGINE)

    return app


client_app = make_client_app()
server_app = make_server_app()
