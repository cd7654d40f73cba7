"""The multi-round mode as a Flower app (Message API: `ServerApp` / `ClientApp`).

The same `Federation` code as the in-process engine does the work: a node's update runs in the
`ClientApp` (`Federation.node_update`), aggregation and the server step (FedFTG, FedDF, FedGen)
in `FedinvStrategy.aggregate_train` (`Federation.server_round`). What travels:

  server -> node  TRAIN: ArrayRecord "arrays" (global model), ArrayRecord "broadcast" (SCAFFOLD's
                  c, FedGen's generator), ConfigRecord "config" (round)
  node -> server  ArrayRecord "arrays" (local model), ArrayRecord "upload" (SCAFFOLD's delta c),
                  MetricRecord "metrics" (num-examples, partition-id, label-counts, loss, accuracy)
  QUERY           once at the start: each node's partition-id and label counts

A node's own state between rounds (SCAFFOLD's c_i, FedDyn's g_i, MOON's previous model,
FedDistill's personal model) lives in its `Context.state`. Participants are drawn by partition id
with the in-process engine's seeded draw, and replies are aggregated in partition order, so both
engines compute the same models.

Deployment (several machines): `client_app` and `server_app` below read the run's TOML from the
run config key `fedinv-config` (see README, "Flower").
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from ..data.datasets import ImageTensors, dataset_info, load_dataset
from ..errors import ConfigError
from ..federated.local import LocalResult
from ..federated.rounds import Federation, FederatedRunConfig, finish, node_data, participants, write_metrics
from ..runtime import save_json
from .records import from_record, to_record

NODE_STATE = "fedinv-node-state"


def config_from_json(text: str) -> FederatedRunConfig:
    return FederatedRunConfig.from_dict(json.loads(text))


@functools.lru_cache(maxsize=2)
def _node_side(cfg_json: str) -> tuple[Federation, Any]:
    """(Federation, NodeData) of a run, built once per process (a node's data is loaded once)."""
    cfg = config_from_json(cfg_json)
    train = load_dataset(cfg.data, "train")
    data = node_data(cfg, train)
    return Federation(cfg, train.info, data.validation), data


def make_client_app(cfg: FederatedRunConfig | None = None) -> ClientApp:
    """The ClientApp of run `cfg` (None: read the TOML named by run config `fedinv-config`)."""
    app = ClientApp()

    def setting(context: Context) -> tuple[Federation, Any, int]:
        c = cfg if cfg is not None else FederatedRunConfig.from_toml(str(context.run_config["fedinv-config"]))
        fed, data = _node_side(json.dumps(c.to_dict(), sort_keys=True))
        k = int(context.node_config["partition-id"])
        if not 0 <= k < data.partition.num_nodes:
            raise ConfigError(f"partition-id {k} out of range; the run has {data.partition.num_nodes} nodes")
        return fed, data, k

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        _, data, k = setting(context)
        metrics = MetricRecord({"partition-id": k, "label-counts": data.counts[k].tolist()})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        fed, data, k = setting(context)
        rnd = int(msg.content["config"]["round"])
        global_state = dict(msg.content["arrays"].to_torch_state_dict())
        broadcast = from_record(msg.content["broadcast"])
        node_state = from_record(context.state[NODE_STATE]) if NODE_STATE in context.state else {}
        res = fed.node_update(k, rnd, data.splits[k], data.counts[k], global_state, node_state, broadcast)
        if res.node_state:
            context.state[NODE_STATE] = to_record(res.node_state)
        metrics = MetricRecord({"num-examples": res.num_samples, "partition-id": k,
                                "label-counts": data.counts[k].tolist(), "loss": float(res.metrics["loss"]),
                                "accuracy": float(res.metrics["accuracy"])})
        content = RecordDict({"arrays": ArrayRecord.from_torch_state_dict(res.state), "metrics": metrics,
                              "upload": to_record(res.upload)})
        return Message(content, reply_to=msg)

    return app


class FedinvStrategy(Strategy):
    """Aggregation and the server step of `Federation`, as a Flower strategy."""

    def __init__(self, fed: Federation, num_nodes: int, test: ImageTensors | None, out: Path | None,
                 node_ids: dict[int, int], label_counts: dict[int, list[int]]):
        self.fed, self.num_nodes, self.test, self.out = fed, num_nodes, test, out
        self.node_ids, self.label_counts = node_ids, label_counts  # partition id -> Flower node id / counts
        self.global_state, self.server_state = fed.initial_states()
        self.history: list[dict[str, Any]] = []
        self._row: dict[str, Any] = {}

    def summary(self) -> None:
        pass

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        rnd, fc = server_round - 1, self.fed.fc
        who = participants(self.num_nodes, fc.participation, fc.seed, rnd)
        self._row = {"round": server_round, "nodes": who, "lr": self.fed.lr(rnd), "t0": time.perf_counter()}
        content = RecordDict({"arrays": ArrayRecord.from_torch_state_dict(self.global_state),
                              "broadcast": to_record(self.fed.broadcast(self.server_state)),
                              "config": ConfigRecord({"round": rnd})})
        return [Message(content, message_type=MessageType.TRAIN, dst_node_id=self.node_ids[k]) for k in who]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        errors = [m.error.reason for m in replies if m.has_error()]
        if errors or len(replies) != len(self._row["nodes"]):
            raise RuntimeError(f"round {server_round}: {len(replies)} replies for {len(self._row['nodes'])} nodes; "
                               f"errors: {errors}")
        results = []
        for m in sorted(replies, key=lambda m: int(m.content["metrics"]["partition-id"])):
            metrics = m.content["metrics"]
            results.append(LocalResult(dict(m.content["arrays"].to_torch_state_dict()), int(metrics["num-examples"]),
                                       upload=from_record(m.content["upload"]),
                                       metrics={"loss": metrics["loss"], "accuracy": metrics["accuracy"]},
                                       label_counts=torch.tensor(metrics["label-counts"])))
        t_local = time.perf_counter() - self._row["t0"]
        self.global_state, self.server_state, metrics = self.fed.server_round(
            server_round - 1, self.global_state, self.server_state, results, self.num_nodes)
        t0 = self._row.pop("t0")
        self._row.update(metrics, local_seconds=t_local, seconds=time.perf_counter() - t0)
        return ArrayRecord.from_torch_state_dict(self.global_state), MetricRecord(
            {"local-loss": metrics["local_loss"]})

    def configure_evaluate(self, server_round, arrays, config, grid) -> Iterable[Message]:
        return []  # the global model is evaluated centrally (evaluate below)

    def aggregate_evaluate(self, server_round, replies) -> MetricRecord | None:
        return None

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Central evaluation after each round; appends the round's row to the history."""
        fc = self.fed.fc
        if server_round == 0:
            return None
        row = self._row
        if self.test is not None and (server_round % fc.eval_every == 0 or server_round == fc.rounds):
            row["test_accuracy"] = self.fed.test_accuracy(self.global_state, self.test)
        self.history.append(row)
        if self.out is not None:
            write_metrics(self.history, self.out)
        return MetricRecord({"test-accuracy": row["test_accuracy"]}) if "test_accuracy" in row else None


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


def make_server_app(cfg: FederatedRunConfig | None = None, out: str | Path | None = None,
                    on_done: Callable[[dict[str, Any]], None] | None = None) -> ServerApp:
    """The ServerApp of run `cfg` (None: read the TOML named by run config `fedinv-config`, and the
    output folder from `fedinv-out`). After the last round it writes metrics.jsonl, global.pt and
    report.json to the output folder, as the in-process engine does; `on_done` receives the report."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        c = cfg if cfg is not None else FederatedRunConfig.from_toml(str(context.run_config["fedinv-config"]))
        folder = Path(out) if out is not None else Path(str(context.run_config.get("fedinv-out", "runs/flower")))
        folder.mkdir(parents=True, exist_ok=True)
        save_json(c.to_dict(), folder / "config.json")
        data = node_data(c, load_dataset(c.data, "train"))
        fed = Federation(c, dataset_info(c.data), data.validation if c.federate.algorithm == "feddistill-query" else None)
        node_ids, counts = discover(grid, c.partition.num_nodes)
        strategy = FedinvStrategy(fed, c.partition.num_nodes, load_dataset(c.data, "test"), folder, node_ids, counts)
        strategy.start(grid, ArrayRecord.from_torch_state_dict(strategy.global_state), num_rounds=c.federate.rounds,
                       evaluate_fn=strategy.evaluate)
        if len(strategy.history) != c.federate.rounds:
            raise RuntimeError(f"the Flower run ended after {len(strategy.history)} of {c.federate.rounds} rounds")
        report = finish(c, fed, strategy.global_state, strategy.history, strategy.test, folder,
                        data.partition.content_hash())
        report["engine"] = "flower"
        save_json(report, folder / "report.json")
        if on_done is not None:
            on_done(report)

    return app


client_app = make_client_app()
server_app = make_server_app()
