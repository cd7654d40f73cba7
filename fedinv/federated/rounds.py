"""`fedinv federate`: the multi-round loop, resumable round by round.

Per round: sample the participating nodes, run the algorithm's local update on each, aggregate,
run the server step (FedFTG / FedDF / FedGen) if any, evaluate every k rounds, append the round's
metrics to metrics.jsonl and checkpoint everything (global model, server state, every node's
kept state). Every random draw comes from (seed, what, round, node), so a run resumed from its
checkpoint ends with the same model as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..checkpoint import GLOBAL, ModelCheckpoint, model_spec, save_checkpoint
from ..config import (DataConfig, FederateConfig, GeneratorConfig, PartitionConfig, from_dict, read_toml_tables,
                      to_dict)
from ..data.datasets import DatasetInfo, ImageTensors, load_dataset
from ..data.partition import Partition, make_partition, save_partition
from ..errors import ConfigError
from ..evaluate import accuracy, per_class_accuracy, predict_logits
from ..runtime import atomic_path, generator, resolve_device, resolve_precision, save_json, save_torch
from ..store import StoreWriter
from .feddistill import FedDistill, FedDistillQuery
from .feddyn import FedDyn
from .fedavg import FedAvg
from .fedgen import FedGenServer, feature_dim
from .fedprox import FedProx
from .ftg import GeneratorServer
from .local import LocalContext, LocalResult, RoundInfo, State, param_names, seeded_model
from .moon import Moon
from .scaffold import Scaffold

log = logging.getLogger(__name__)

ALGORITHM_CLASSES: dict[str, type[FedAvg]] = {c.name: c for c in (FedAvg, FedProx, FedDyn, Scaffold, Moon,
                                                                   FedDistill, FedDistillQuery)}
SECTIONS = {"data": DataConfig, "partition": PartitionConfig, "federate": FederateConfig,
            "generator": GeneratorConfig}
# Fields a resume may change: where a run computes, how often it evaluates, and how many rounds it
# runs in all (nothing in a round depends on the total, so a finished run can be extended).
_RUNTIME_FIELDS = {"federate": ("device", "eval_every", "rounds")}


@dataclass(frozen=True)
class FederatedRunConfig:
    """A multi-round run: TOML tables [data], [partition], [federate], [generator]; each may set
    any field of its config and leaves the rest at their defaults."""

    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=lambda: PartitionConfig(num_nodes=10, alpha=0.3))
    federate: FederateConfig = field(default_factory=FederateConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    @classmethod
    def from_toml(cls, path: str | Path) -> "FederatedRunConfig":
        default = cls()
        return cls(**read_toml_tables(path, {name: getattr(default, name) for name in SECTIONS}))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "FederatedRunConfig":
        """From `to_dict`'s form (a run folder's config.json, a checkpoint's "config")."""
        return cls(**{name: from_dict(sub, raw[name]) for name, sub in SECTIONS.items()})

    def to_dict(self) -> dict[str, Any]:
        return {name: to_dict(getattr(self, name)) for name in SECTIONS}


def _comparable(d: dict[str, Any]) -> dict[str, Any]:
    return {s: {k: v for k, v in fields.items() if k not in _RUNTIME_FIELDS.get(s, ())} for s, fields in d.items()}


def split_validation(train: ImageTensors, size: int, seed: int) -> tuple[ImageTensors, ImageTensors]:
    """(the nodes' pool, the server's held-out validation set) for feddistill-query."""
    if not 0 < size < len(train):
        raise ConfigError(f"validation_size must be in 1..{len(train) - 1}, got {size}")
    order = torch.randperm(len(train), generator=generator(seed, 9))
    return train.subset(order[size:].sort().values), train.subset(order[:size].sort().values)


def participants(num_nodes: int, fraction: float, seed: int, rnd: int) -> list[int]:
    """The nodes of round `rnd`: max(1, round(fraction * N)) of N, drawn from (seed, round)."""
    m = max(1, int(round(fraction * num_nodes)))
    return sorted(torch.randperm(num_nodes, generator=generator(seed, 3, rnd))[:m].tolist())


def rounds_to_target(history: list[dict[str, Any]], target: float) -> int | None:
    """The first round (1-based) whose evaluated accuracy reaches `target`, or None."""
    for row in history:
        if row.get("test_accuracy") is not None and row["test_accuracy"] >= target:
            return row["round"]
    return None


def mean_last_accuracy(history: list[dict[str, Any]], k: int = 5) -> float | None:
    """Mean test accuracy of the last k evaluated rounds: steadier than one round's figure when
    the global model swings from round to round (non-IID nodes, partial participation)."""
    evaluated = [r["test_accuracy"] for r in history if r.get("test_accuracy") is not None][-k:]
    return sum(evaluated) / len(evaluated) if evaluated else None


@dataclass(frozen=True)
class NodeData:
    """The training data as the nodes hold it: the partition of the pool, one split per node."""

    partition: Partition
    pool: ImageTensors  # what was split (the training set less the server's validation set)
    splits: tuple[ImageTensors, ...]
    counts: torch.Tensor  # [N, K] label counts
    validation: ImageTensors | None  # feddistill-query: the server's held-out set


def node_data(cfg: FederatedRunConfig, train: ImageTensors) -> NodeData:
    fc = cfg.federate
    pool, validation = train, None
    if fc.algorithm == "feddistill-query":
        pool, validation = split_validation(train, fc.validation_size, fc.seed)
    part = make_partition(pool.labels.numpy(), train.info.num_classes, cfg.partition, cfg.data)
    counts = torch.from_numpy(part.label_counts(pool.labels.numpy()))
    return NodeData(part, pool, tuple(pool.subset(idx) for idx in part.indices), counts, validation)


class Federation:
    """What runs the rounds, shared by the in-process and the Flower engines: the algorithm, the
    server step, and the two halves of a round (a node's update; the server's aggregation)."""

    def __init__(self, cfg: FederatedRunConfig, info: DatasetInfo, validation: ImageTensors | None = None):
        fc = cfg.federate
        self.cfg, self.fc, self.info = cfg, fc, info
        self.device = resolve_device(fc.device)
        self.amp_dtype = resolve_precision(fc.precision, self.device)
        self.algo = (FedDistillQuery(fc, info, validation) if fc.algorithm == "feddistill-query"
                     else ALGORITHM_CLASSES[fc.algorithm](fc, info))
        self.server_step: GeneratorServer | FedGenServer | None = None
        if fc.server in ("ftg", "feddf"):
            self.server_step = GeneratorServer(fc.server, fc, cfg.generator, info)
        elif fc.server == "fedgen":
            self.server_step = FedGenServer(fc, cfg.generator, info, feature_dim(self.algo.build()))

    def initial_states(self) -> tuple[State, dict[str, Any]]:
        """(global model state, server state) before round 1, both from the seed."""
        model = seeded_model(self.fc.model, self.info, self.fc.seed, 6)
        global_state = {k: v.clone() for k, v in model.state_dict().items()}
        server_state = self.algo.init_server(global_state, param_names(model))
        if self.server_step is not None:
            server_state["server_step"] = self.server_step.init_state()
        return global_state, server_state

    def broadcast(self, server_state: dict[str, Any]) -> dict[str, Any]:
        """What the nodes receive beside the global model (tensors only, nested dicts)."""
        out = self.algo.broadcast(server_state)
        if isinstance(self.server_step, FedGenServer):
            s = server_state["server_step"]
            out["fedgen"] = {"generator": s["generator"], "label_p": s["label_p"]}
        return out

    def lr(self, rnd: int) -> float:
        return self.fc.lr * self.fc.lr_decay ** rnd

    def node_update(self, k: int, rnd: int, data: ImageTensors, label_counts: torch.Tensor, global_state: State,
                    node_state: dict[str, Any], broadcast: dict[str, Any]) -> LocalResult:
        """Node k's part of round `rnd` (0-based); its random stream is (seed, round, k)."""
        gen = generator(self.fc.seed, 4, rnd, k)
        extra = (self.server_step.node_loss(broadcast["fedgen"], self.device, gen)
                 if isinstance(self.server_step, FedGenServer) else None)
        ctx = LocalContext(node=k, round=rnd, data=data, global_state=global_state, node_state=node_state,
                           broadcast=broadcast, lr=self.lr(rnd), cfg=self.fc, device=self.device,
                           amp_dtype=self.amp_dtype, gen=gen, label_counts=label_counts, extra_loss=extra)
        result = self.algo.local_update(ctx)
        result.label_counts = label_counts.clone()
        return result

    def server_round(self, rnd: int, global_state: State, server_state: dict[str, Any],
                     results: list[LocalResult], num_nodes: int) -> tuple[State, dict[str, Any], dict[str, Any]]:
        """Aggregate the round's results (in node order) and run the server step; returns
        (global state, server state, metrics of the round)."""
        info_r = RoundInfo(rnd, num_nodes, self.device, generator(self.fc.seed, 5, rnd))
        t0 = time.perf_counter()
        global_state, server_state = self.algo.aggregate(global_state, results, server_state, info_r)
        row: dict[str, Any] = {"local_loss": float(np.mean([r.metrics["loss"] for r in results])),
                               "local_accuracy": float(np.mean([r.metrics["accuracy"] for r in results])),
                               "aggregate_seconds": time.perf_counter() - t0}
        if self.server_step is not None:
            t1 = time.perf_counter()
            counts = torch.stack([r.label_counts for r in results])
            global_state, server_state["server_step"], metrics = self.server_step.step(
                self.algo.build, global_state, [r.state for r in results], counts, server_state["server_step"],
                info_r)
            row.update(metrics, server_seconds=time.perf_counter() - t1)
        return global_state, server_state, row

    def test_accuracy(self, global_state: State, test: ImageTensors) -> float:
        model = self.algo.build()
        model.load_state_dict(global_state)
        return accuracy(predict_logits(model.to(self.device), test, self.device), test.labels)


def federate(cfg: FederatedRunConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
             train: ImageTensors | None = None, test: ImageTensors | None = None,
             stop_after: int | None = None) -> dict[str, Any]:
    """Run (or with `resume`, continue) a multi-round run in `out_dir`; returns the report.

    `stop_after` ends the call after that many rounds in all (the run can be resumed), for
    tests and for splitting a long run over sessions.
    """
    out = Path(out_dir)
    fc = cfg.federate
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists() and not resume:
        raise ConfigError(f"{out} already holds a run ({ckpt_path}); pass --resume to continue it, "
                          f"or use another --out folder")
    train = train if train is not None else load_dataset(cfg.data, "train")
    test = test if test is not None else load_dataset(cfg.data, "test")
    data = node_data(cfg, train)
    fed = Federation(cfg, train.info, data.validation)
    phash = data.partition.content_hash()

    start, history = 0, []
    global_state, server_state = fed.initial_states()
    node_states: dict[int, dict[str, Any]] = {}
    if ckpt_path.exists():
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        # Through from_dict, so that a field added since (at its default) still matches.
        same = _comparable(FederatedRunConfig.from_dict(saved["config"]).to_dict()) == _comparable(cfg.to_dict())
        if not same or saved["partition_sha256"] != phash:
            raise ConfigError(f"{ckpt_path} was made with another config or partition; use another --out folder")
        start, history = saved["round"], saved["history"]
        if start > fc.rounds:
            raise ConfigError(f"{out} has already run {start} rounds, more than rounds = {fc.rounds}; "
                              f"resume with rounds >= {start}")
        global_state, server_state = saved["global"], saved["server"]
        node_states = {int(k): v for k, v in saved["nodes"].items()}
        log.info("resuming %s after round %d of %d", out, start, fc.rounds)
    else:
        out.mkdir(parents=True, exist_ok=True)
        save_partition(data.partition, data.pool.labels.numpy(), out / "partition.json", train.info.class_names)
        save_json(cfg.to_dict(), out / "config.json")

    end = fc.rounds if stop_after is None else min(fc.rounds, stop_after)
    bar = tqdm(range(start, end), initial=start, total=fc.rounds, desc=method_name(fc), unit="round",
               disable=not progress)
    for rnd in bar:
        t0 = time.perf_counter()
        who = participants(data.partition.num_nodes, fc.participation, fc.seed, rnd)
        broadcast = fed.broadcast(server_state)
        results = []
        for k in who:
            res = fed.node_update(k, rnd, data.splits[k], data.counts[k], global_state, node_states.get(k, {}),
                                  broadcast)
            if res.node_state:
                node_states[k] = res.node_state
            results.append(res)
        t_local = time.perf_counter() - t0
        global_state, server_state, metrics = fed.server_round(rnd, global_state, server_state, results,
                                                               data.partition.num_nodes)
        row = {"round": rnd + 1, "nodes": who, "lr": fed.lr(rnd), **metrics,
               "local_seconds": t_local, "seconds": time.perf_counter() - t0}
        if (rnd + 1) % fc.eval_every == 0 or rnd + 1 == fc.rounds:
            row["test_accuracy"] = fed.test_accuracy(global_state, test)
            row.update(fed.algo.evaluate_nodes(node_states, test, fed.device, data.counts))
            bar.set_postfix(acc=f"{row['test_accuracy']:.4f}")
        history.append(row)
        log.info("round %d/%d: %s", rnd + 1, fc.rounds, row)
        gcfg = cfg.generator
        if isinstance(fed.server_step, GeneratorServer) and gcfg.save_every and (rnd + 1) % gcfg.save_every == 0:
            save_samples(fed, out / "generated.h5", rnd)
        save_torch({"format": "fedinv.federated-run", "fedinv_version": __version__, "round": rnd + 1,
                    "config": cfg.to_dict(), "seed": fc.seed, "partition_sha256": phash,
                    "global": global_state, "server": server_state,
                    "nodes": {str(k): v for k, v in node_states.items()}, "history": history}, ckpt_path)
        write_metrics(history, out)
    return finish(cfg, fed, global_state, history, test, out, phash)


def save_samples(fed: Federation, path: Path, rnd: int) -> None:
    """Append the server step's latest generated batch to the store `path` (source = round, -1)."""
    images, labels, soft = fed.server_step.last_samples
    info, cfg = fed.info, fed.cfg
    meta = {"num_classes": info.num_classes, "image_shape": list(info.image_shape), "mean": list(info.mean),
            "std": list(info.std), "seed": fed.fc.seed, "config": _comparable(cfg.to_dict()), "teachers": {},
            "dataset": {"name": info.name, "class_names": list(info.class_names), "hflip": info.hflip}}
    with StoreWriter(path, meta, resume=path.exists(), chunk_rows=len(labels)) as store:
        store.append(images, labels, soft, torch.tensor([[rnd + 1, -1]] * len(labels), dtype=torch.int32))


def method_name(fc: FederateConfig) -> str:
    return fc.algorithm + ("" if fc.server == "none" else "+" + fc.server)


def write_metrics(history: list[dict[str, Any]], out: Path) -> None:
    """metrics.jsonl: one line per finished round (rewritten whole, so a resume never duplicates)."""
    with atomic_path(out / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in history))


def finish(cfg: FederatedRunConfig, fed: Federation, global_state: State, history: list[dict[str, Any]],
           test: ImageTensors, out: Path, phash: str) -> dict[str, Any]:
    """The report; when every round is done, also global.pt and report.json."""
    fc, info = cfg.federate, fed.info
    done = len(history) == fc.rounds
    report = round_report(cfg, history, done)
    if done:
        model = fed.algo.build()
        model.load_state_dict(global_state)
        logits = predict_logits(model.to(fed.device), test, fed.device)
        report["per_class_accuracy"] = per_class_accuracy(logits, test.labels, info.num_classes)
        save_checkpoint(ModelCheckpoint(GLOBAL, model_spec(fc.model, info.channels, info.num_classes, info.image_size),
                                        {k: v.detach().cpu() for k, v in global_state.items()},
                                        config=cfg.to_dict(), seed=fc.seed,
                                        metrics={"test_accuracy": report["final_accuracy"]},
                                        extra={"dataset": info.name, "rounds": fc.rounds,
                                               "partition_sha256": phash}), out / "global.pt")
        save_json(report, out / "report.json")
    return report


def round_report(cfg: FederatedRunConfig, history: list[dict[str, Any]], done: bool,
                 targets: tuple[float, ...] = (0.8, 0.85)) -> dict[str, Any]:
    """Final accuracy, rounds to each target, mean wall time per round (and of its server step)."""
    fc = cfg.federate
    evaluated = [r for r in history if r.get("test_accuracy") is not None]
    server = [r["server_seconds"] for r in history if "server_seconds" in r]
    report: dict[str, Any] = {
        "fedinv_version": __version__, "config": cfg.to_dict(), "seed": fc.seed, "complete": done,
        "method": method_name(fc),
        "rounds": len(history), "final_accuracy": evaluated[-1]["test_accuracy"] if evaluated else None,
        "best_accuracy": max((r["test_accuracy"] for r in evaluated), default=None),
        "mean_last_5_accuracy": mean_last_accuracy(history, 5),
        "seconds_per_round": float(np.mean([r["seconds"] for r in history])) if history else None,
        "server_seconds_per_round": float(np.mean(server)) if server else None,
    }
    for t in targets:
        report[f"rounds_to_{round(t * 100)}"] = rounds_to_target(history, t)
    for key in ("personal_accuracy", "personal_accuracy_all_classes"):
        if evaluated and key in evaluated[-1]:
            report[key] = evaluated[-1][key]
    report["history"] = history
    return report
