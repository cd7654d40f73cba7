"""`fedinv federate`: the multi-round loop, resumable round by round, on any node engine.

Per round (`run_round`): sample the participating nodes, have them run the algorithm's local
update, aggregate, run the server step (FedFTG / FedDF / FedGen) if any, evaluate every k rounds.
`federate` appends each round's metrics to metrics.jsonl and checkpoints everything (global
model, server state, every node's kept state). Where the nodes run is a `NodeEngine`: in this
process (`InProcessNodes`) or on Flower (`fedinv.flower.app.FlowerNodes`); both engines run the
same rounds. Every random draw comes from (seed, stream, round, node), so a run resumed from its
checkpoint ends with the same model as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from .. import __version__
from ..aggregate import SELECTIVE, left_out
from ..attacks import flip_labels, inflate_counts, random_with_statistics
from ..checkpoint import GLOBAL, ModelCheckpoint, save_checkpoint
from ..data.datasets import DatasetInfo, ImageTensors, load_dataset
from ..data.partition import Partition, make_partition, save_partition
from ..errors import ConfigError, RunStateError
from ..evaluate import accuracy, class_level_logits, class_shares, ensemble_probs, per_class_accuracy, predict_logits
from ..models import place, seeded_model
from ..runtime import (RUN_RECORDS, MetricsLog, RoundStream, folder_lock, log_file, progress_bar, ran_on, read_torch,
                       remove_stale_temporaries, resolve_device, resolve_precision, rng, save_json, save_png,
                       save_torch)
from ..store import StoreWriter, store_meta
from ..train import round_decay
from ..train.resume import changes, comparable
from ..viz import epoch_curves
from .config import FederatedRunConfig, method_name, round_size
from .local import LocalContext, LocalResult, RoundInfo, State, cpu_state, param_names
from .registry import algorithm_class, server_step_class

log = logging.getLogger(__name__)

RUN_FORMAT = "fedinv.federated-run"


def split_validation(train: ImageTensors, size: int, seed: int) -> tuple[ImageTensors, ImageTensors]:
    """(the nodes' pool, the server's held-out validation set)."""
    if not 0 < size < len(train):
        raise ConfigError(f"validation_size must be in 1..{len(train) - 1}, got {size}")
    order = torch.randperm(len(train), generator=rng(seed, RoundStream.VALIDATION_SPLIT))
    return train.subset(order[size:].sort().values), train.subset(order[:size].sort().values)


def participants(num_nodes: int, fraction: float, seed: int, rnd: int) -> list[int]:
    """The nodes of round `rnd`: max(1, round(fraction * N)) of N, drawn from (seed, round)."""
    m = round_size(num_nodes, fraction)
    return sorted(torch.randperm(num_nodes, generator=rng(seed, RoundStream.PARTICIPANTS, rnd))[:m].tolist())


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


def left_out_counts(history: list[dict[str, Any]]) -> dict[str, list[int]] | None:
    """Per node a selective rule (Krum, multi-Krum) left out at least once: [rounds left out, rounds
    taken part in]; None where the rule weighs every participant (no round records `left_out`)."""
    rows = [r for r in history if "left_out" in r]
    if not rows:
        return None
    out: dict[str, list[int]] = {}
    for node in sorted({k for r in rows for k in r["left_out"]}):
        out[str(node)] = [sum(node in r["left_out"] for r in rows), sum(node in r["nodes"] for r in rows)]
    return out


def mean_node_metrics(per_node: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the nodes that report it (in node order)."""
    keys = sorted({k for m in per_node for k in m})
    return {k: sum(vals) / len(vals) for k in keys for vals in [[m[k] for m in per_node if k in m]]}


@dataclass(frozen=True)
class NodeData:
    """The training data as the nodes hold it: the partition of the pool, one split per node."""

    partition: Partition
    pool: ImageTensors  # what was split (the training set less the server's validation set)
    splits: tuple[ImageTensors, ...]
    counts: torch.Tensor  # [N, K] label counts
    validation: ImageTensors | None  # the server's held-out set, for algorithms that keep one


def node_data(cfg: FederatedRunConfig, train: ImageTensors) -> NodeData:
    fc = cfg.federate
    pool, validation = train, None
    holdout = algorithm_class(fc.algorithm).holdout(cfg.params)
    if holdout:
        pool, validation = split_validation(train, holdout, fc.seed)
    part = make_partition(pool.labels.numpy(), train.info.num_classes, cfg.partition, cfg.data)
    counts = torch.from_numpy(part.label_counts(pool.labels.numpy()))
    return NodeData(part, pool, tuple(pool.subset(idx) for idx in part.indices), counts, validation)


class Federation:
    """What runs the rounds, whichever engine the nodes run on: the algorithm, the server step, and
    the two halves of a round (a node's update; the server's aggregation and step)."""

    def __init__(self, cfg: FederatedRunConfig, info: DatasetInfo, validation: ImageTensors | None = None,
                 trust: Collection[str] = ()):
        fc = cfg.federate
        self.cfg, self.fc, self.info, self.trust = cfg, fc, info, tuple(trust)
        self.device = resolve_device(fc.device)
        self.amp_dtype = resolve_precision(fc.precision, self.device)
        self.algo = algorithm_class(fc.algorithm)(fc, cfg.params, info, validation, trust=self.trust)
        step = server_step_class(fc.server)
        self.server_step = (step(fc, cfg.generator, cfg.server_params, info, self.algo.build) if step is not None
                            else None)

    def initial_states(self) -> tuple[State, dict[str, Any]]:
        """(global model state, server state) before round 1, both from the seed."""
        model = seeded_model(self.fc.model, self.info, self.fc.seed, RoundStream.GLOBAL_INIT, trust=self.trust)
        global_state = {k: v.clone() for k, v in model.state_dict().items()}
        server_state = self.algo.init_server(global_state, param_names(model))
        if self.server_step is not None:
            server_state["server_step"] = self.server_step.init_state()
        return global_state, server_state

    def broadcast(self, server_state: dict[str, Any]) -> dict[str, Any]:
        """What the nodes receive beside the global model (tensors only, nested dicts)."""
        out = self.algo.broadcast(server_state)
        if self.server_step is not None:
            sent = self.server_step.broadcast(server_state["server_step"])
            if sent:
                out["server_step"] = sent
        return out

    def lr(self, rnd: int) -> float:
        return round_decay(self.fc.lr, self.fc.lr_decay, rnd)

    def node_update(self, k: int, rnd: int, data: ImageTensors, label_counts: torch.Tensor, global_state: State,
                    node_state: dict[str, Any], broadcast: dict[str, Any]) -> LocalResult:
        """Node k's part of round `rnd` (0-based); its random stream is (seed, round, k)."""
        gen = rng(self.fc.seed, RoundStream.NODE_ROUND, rnd, k)
        extra = (self.server_step.node_loss(broadcast.get("server_step", {}), self.device, gen)
                 if self.server_step is not None else None)
        ctx = LocalContext(node=k, round=rnd, data=data, global_state=global_state, node_state=node_state,
                           broadcast=broadcast, lr=self.lr(rnd), cfg=self.fc, device=self.device,
                           amp_dtype=self.amp_dtype, gen=gen, label_counts=label_counts, extra_loss=extra)
        attack = self.cfg.attack
        if attack.attacks(k) and attack.kind == "flip":  # it trains on, and reports, flipped labels
            data = ImageTensors(data.images, flip_labels(data.labels, self.info.num_classes), data.info, data.split)
            ctx = dataclasses.replace(ctx, data=data)
            label_counts = torch.bincount(data.labels, minlength=self.info.num_classes)
        result = self.algo.local_update(ctx)
        result.label_counts = label_counts.clone()
        if attack.attacks(k) and attack.kind == "inflate":
            result.num_samples = int(result.num_samples * attack.factor)
            result.label_counts = inflate_counts(label_counts, attack.factor)
        if attack.attacks(k) and attack.kind == "random":
            fresh = seeded_model(self.fc.model, self.info, self.fc.seed, RoundStream.ATTACK_INIT, rnd, k,
                                 trust=self.trust)
            result.state = random_with_statistics(cpu_state(fresh), result.state)
        return result

    def round_info(self, rnd: int, num_nodes: int) -> RoundInfo:
        """The server's view of round `rnd`, with its random stream (seed, round)."""
        return RoundInfo(rnd, num_nodes, self.device, self.amp_dtype, rng(self.fc.seed, RoundStream.SERVER_ROUND, rnd))

    def aggregate(self, rnd: int, global_state: State, server_state: dict[str, Any], results: list[LocalResult],
                  num_nodes: int) -> tuple[State, dict[str, Any], dict[str, Any], RoundInfo]:
        """The algorithm's aggregation of the round's results (in node order); returns (aggregate,
        server state, metrics, the round's info, whose random stream the server step continues)."""
        info = self.round_info(rnd, num_nodes)
        t0 = time.perf_counter()
        global_state, server_state = self.algo.aggregate(global_state, results, server_state, info)
        row: dict[str, Any] = {"local_loss": float(np.mean([r.metrics["loss"] for r in results])),
                               "local_accuracy": float(np.mean([r.metrics["accuracy"] for r in results])),
                               "aggregate_seconds": time.perf_counter() - t0}
        return global_state, server_state, row, info

    def left_out(self, results: Sequence[LocalResult]) -> list[int] | None:
        """Which of the round's results (in node order) the aggregation left out whole (Krum,
        multi-Krum); None where the rule weighs every participant."""
        fc = self.fc
        if self.algo.replaces_aggregation or fc.aggregation not in SELECTIVE:
            return None
        return left_out([r.state for r in results], fc.aggregation, fc.byzantine, fc.krum_threshold)

    def test_accuracy(self, global_state: State, test: ImageTensors) -> float:
        return accuracy(self.logits(global_state, test), test.labels)

    def logits(self, state: State, test: ImageTensors) -> torch.Tensor:
        model = self.algo.build()
        model.load_state_dict(state)
        return predict_logits(place(model, self.device), test, self.device)

    def diagnose(self, results: Sequence[LocalResult], aggregate: State, new_state: State,
                 test: ImageTensors) -> dict[str, float]:
        """Is there anything for a server step to distill? On `test` (a subset): the accuracy of
        the round's class-level ensemble of the local models (probabilities weighted per class by
        each node's share of it, `evaluate.ensemble_probs`; and logits weighted so, the teacher
        FedFTG distills, `evaluate.class_level_logits`), of the aggregate before the server step
        and of the global model after it."""
        shares = class_shares(torch.stack([r.label_counts for r in results]))
        logits = [self.logits(r.state, test) for r in results]
        before = self.test_accuracy(aggregate, test)
        return {"diagnose_ensemble_accuracy": accuracy(ensemble_probs(logits, shares), test.labels),
                "diagnose_logit_ensemble_accuracy": accuracy(class_level_logits(torch.stack(logits), shares),
                                                             test.labels),
                "diagnose_aggregate_accuracy": before,
                "diagnose_global_accuracy": before if new_state is aggregate else self.test_accuracy(new_state, test)}


class NodeEngine(Protocol):
    """Where the nodes run. `update` returns the participants' results in node order."""

    def update(self, who: list[int], rnd: int, global_state: State, broadcast: dict[str, Any]) -> list[LocalResult]:
        ...

    def evaluate(self, test: ImageTensors) -> dict[str, float]:
        """The nodes' own metrics (`evaluate_node`), averaged over the nodes that report them."""
        ...

    def states(self) -> dict[int, dict[str, Any]]:
        """What each node kept, for the run's checkpoint ({} where nodes keep it themselves)."""
        ...


class InProcessNodes:
    """The nodes as function calls in this process; their kept state lives here."""

    def __init__(self, fed: Federation, data: NodeData, states: dict[int, dict[str, Any]] | None = None):
        self.fed, self.data, self.node_states = fed, data, dict(states or {})

    def update(self, who: list[int], rnd: int, global_state: State, broadcast: dict[str, Any]) -> list[LocalResult]:
        results = []
        for k in who:
            res = self.fed.node_update(k, rnd, self.data.splits[k], self.data.counts[k], global_state,
                                       self.node_states.get(k, {}), broadcast)
            if res.node_state:
                self.node_states[k] = res.node_state
            results.append(res)
        return results

    def evaluate(self, test: ImageTensors) -> dict[str, float]:
        fed = self.fed
        return mean_node_metrics([fed.algo.evaluate_node(k, s, test, fed.device, self.data.counts[k])
                                  for k, s in sorted(self.node_states.items())])

    def states(self) -> dict[int, dict[str, Any]]:
        return self.node_states


@dataclass
class RoundOutcome:
    global_state: State
    server_state: dict[str, Any]
    row: dict[str, Any]  # the round's line of metrics.jsonl
    results: list[LocalResult]
    aggregate: State  # the global state after aggregation, before the server step


def run_round(fed: Federation, rnd: int, num_nodes: int, global_state: State, server_state: dict[str, Any],
              nodes: NodeEngine, test: ImageTensors | None = None, *, server_step: bool = True) -> RoundOutcome:
    """Round `rnd` (0-based): participants' updates, aggregation, the server step (unless
    `server_step` is False), and, when the round is due and `test` given, evaluation."""
    fc, t0 = fed.fc, time.perf_counter()
    who = participants(num_nodes, fc.participation, fc.seed, rnd)
    results = nodes.update(who, rnd, global_state, fed.broadcast(server_state))
    t_local = time.perf_counter() - t0
    aggregate, server_state, metrics, info = fed.aggregate(rnd, global_state, server_state, results, num_nodes)
    if (left := fed.left_out(results)) is not None:
        metrics["left_out"] = [who[i] for i in left]
    new_state = aggregate
    if fed.server_step is not None and server_step:
        t1 = time.perf_counter()
        new_state, server_state["server_step"], step_metrics = fed.server_step.step(
            aggregate, results, server_state["server_step"], info)
        metrics.update(step_metrics, server_seconds=time.perf_counter() - t1)
    row = {"round": rnd + 1, "nodes": who, "lr": fed.lr(rnd), **metrics, "local_seconds": t_local,
           "seconds": time.perf_counter() - t0}
    if test is not None and ((rnd + 1) % fc.eval_every == 0 or rnd + 1 == fc.rounds):
        row["test_accuracy"] = fed.test_accuracy(new_state, test)
        if fed.algo.reports_nodes:
            row.update(nodes.evaluate(test))
        if fc.diagnose_images:
            row.update(fed.diagnose(results, aggregate, new_state,
                                    test.subset(range(min(fc.diagnose_images, len(test))))))
    return RoundOutcome(new_state, server_state, row, results, aggregate)


EngineFactory = Callable[[Federation, NodeData, dict[int, dict[str, Any]]], NodeEngine]


def federate(cfg: FederatedRunConfig, out_dir: str | Path, *, resume: bool = True, progress: bool = True,
             train: ImageTensors | None = None, test: ImageTensors | None = None,
             stop_after: int | None = None, engine: EngineFactory = InProcessNodes,
             engine_name: str = "in-process", tensorboard: bool = False,
             trust: Collection[str] = ()) -> dict[str, Any]:
    """Run a multi-round run in `out_dir`, continuing the one there (same config and partition) from
    its last finished round; returns the report. `resume=False` refuses a folder that holds a run.

    `stop_after` ends the call after that many rounds in all (the run can be resumed), for
    tests and for splitting a long run over sessions. `engine` makes the node engine from the
    federation, the nodes' data and the node states of a resumed run. `tensorboard`: the round
    metrics also go to OUT/tensorboard. `trust`: the `module:factory` models (`models.build_model`)
    the global (and personal) model may be.
    """
    out = Path(out_dir)
    train = train if train is not None else load_dataset(cfg.data, "train")
    test = test if test is not None else load_dataset(cfg.data, "test")
    data = node_data(cfg, train)
    fed = Federation(cfg, train.info, data.validation, trust)
    with folder_lock(out, RUN_RECORDS), log_file(out):  # a second run into `out` is refused
        return _rounds(cfg, fed, data, out, train, test, resume, progress, stop_after, engine, engine_name,
                       tensorboard)


def _rounds(cfg: FederatedRunConfig, fed: Federation, data: NodeData, out: Path, train: ImageTensors,
            test: ImageTensors, resume: bool, progress: bool, stop_after: int | None, engine: EngineFactory,
            engine_name: str, tensorboard: bool = False) -> dict[str, Any]:
    fc, phash = cfg.federate, data.partition.content_hash()
    start, history, (global_state, server_state), node_states = 0, [], fed.initial_states(), {}
    saved = load_run_checkpoint(out, cfg, phash, resume, engine_name)
    if saved is not None:
        start, history, global_state, server_state = saved["round"], saved["history"], saved["global"], saved["server"]
        node_states = {int(k): v for k, v in saved["nodes"].items()}
        log.info("resuming %s after round %d of %d", out, start, fc.rounds)
    else:
        out.mkdir(parents=True, exist_ok=True)
        save_partition(data.partition, data.pool.labels.numpy(), out / "partition.json", train.info.class_names)
        save_json(cfg.to_dict(), out / "config.json")
    nodes = engine(fed, data, node_states)
    metrics_log = MetricsLog(out / "metrics.jsonl", out / "tensorboard" if tensorboard else None).start(
        keep=lambda line: line.get("round", 0) <= start)
    end = fc.rounds if stop_after is None else min(fc.rounds, stop_after)
    bar = progress_bar(range(start, end), initial=start, total=fc.rounds, desc=method_name(fc), unit="round",
                       show=progress)
    for rnd in bar:
        done = run_round(fed, rnd, data.partition.num_nodes, global_state, server_state, nodes, test)
        global_state, server_state = done.global_state, done.server_state
        history.append(done.row)
        metrics_log.append(done.row)  # before the checkpoint: a round it lacks is redone and its line replaced
        if "test_accuracy" in done.row:
            bar.set_postfix(acc=f"{done.row['test_accuracy']:.4f}")
        log.info("round %d/%d: %s", rnd + 1, fc.rounds, done.row)
        samples = fed.server_step.samples() if fed.server_step is not None else None
        if samples is not None and (rnd + 1) % fed.server_step.save_every == 0:
            save_samples(cfg, fed.info, samples, out / "generated.h5", rnd)
        save_torch({"format": RUN_FORMAT, "fedinv_version": __version__, "round": rnd + 1, "engine": engine_name,
                    "config": cfg.to_dict(), "seed": fc.seed, "partition_sha256": phash,
                    "global": global_state, "server": server_state,
                    "nodes": {str(k): v for k, v in nodes.states().items()}, "history": history}, out / "checkpoint.pt")
    metrics_log.close()
    return finish(cfg, fed, global_state, history, test, out, phash, engine_name)


def load_run_checkpoint(out: Path, cfg: FederatedRunConfig, phash: str, resume: bool,
                        engine_name: str) -> dict[str, Any] | None:
    """The checkpoint of the run in `out` to continue (None: a fresh run); refuses another run's."""
    path = out / "checkpoint.pt"
    if not path.exists():
        return None
    if not resume:
        raise RunStateError(f"{out} already holds a run ({path}) and resume=False asks for a fresh one; "
                            f"use another --out folder")
    saved = read_torch(path, "run checkpoint", keys=("config", "partition_sha256", "round", "global", "server",
                                                     "nodes", "history"))
    for written in (path, out / "metrics.jsonl"):  # a run killed while writing left these
        remove_stale_temporaries(written)
    diff = changes(saved["config"], cfg)
    if diff or saved["partition_sha256"] != phash:
        raise RunStateError(f"{path} was made with another config or partition "
                            f"({', '.join(diff) or 'partition'}); use another --out folder")
    if saved.get("engine", "in-process") != engine_name:
        raise RunStateError(f"{path} was run on the {saved.get('engine')} engine, whose nodes keep their own "
                            f"state; it cannot be continued on the {engine_name} engine")
    if saved["round"] > cfg.federate.rounds:
        raise RunStateError(f"{out} has already run {saved['round']} rounds, more than rounds = "
                            f"{cfg.federate.rounds}; resume with rounds >= {saved['round']}")
    return saved


def save_samples(cfg: FederatedRunConfig, info: DatasetInfo, rows: tuple[torch.Tensor, ...], path: Path,
                 rnd: int) -> None:
    """Append a server step's generated batch to the store `path` (source = round, -1)."""
    images, labels, soft = rows
    meta = store_meta(info, seed=cfg.federate.seed, config=comparable(cfg), teachers={})
    with StoreWriter(path, meta, resume=path.exists(), chunk_rows=len(labels)) as store:
        store.append(images, labels, soft, torch.tensor([[rnd + 1, -1]] * len(labels), dtype=torch.int32))


def finish(cfg: FederatedRunConfig, fed: Federation, global_state: State, history: list[dict[str, Any]],
           test: ImageTensors, out: Path, phash: str, engine_name: str) -> dict[str, Any]:
    """The report; when every round is done, also global.pt and report.json."""
    fc, info = cfg.federate, fed.info
    done = len(history) == fc.rounds
    report = round_report(cfg, history, done)
    report["engine"] = engine_name
    report["ran_on"] = ran_on(fed.device, fed.amp_dtype)
    if history:
        save_png(round_curves(history, report["method"]), out / "curves.png")
    if done:
        model = fed.algo.build()
        model.load_state_dict(global_state)
        logits = predict_logits(place(model, fed.device), test, fed.device)
        report["per_class_accuracy"] = per_class_accuracy(logits, test.labels, info.num_classes)
        save_checkpoint(ModelCheckpoint.of(GLOBAL, fc.model, info, global_state, config=cfg.to_dict(), seed=fc.seed,
                                           metrics={"test_accuracy": report["final_accuracy"]},
                                           extra={"rounds": fc.rounds, "partition_sha256": phash,
                                                  "ran_on": report["ran_on"]}),
                        out / "global.pt")
        save_json(report, out / "report.json")
    return report


def round_curves(history: list[dict[str, Any]], method: str) -> Image.Image:
    """The run's curves.png: per round the nodes' mean local training accuracy and loss, and the
    global model's test accuracy where measured."""
    return epoch_curves({"": history}, ("local_accuracy", "test_accuracy"),
                        f"{method}: nodes' local training and the global model's test accuracy", x_label="round",
                        loss_key="local_loss")


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
    if (left := left_out_counts(history)) is not None:
        report["left_out"] = left  # node -> [rounds left out, rounds taken part in]
    for key in ("personal_accuracy", "personal_accuracy_all_classes"):
        if evaluated and key in evaluated[-1]:
            report[key] = evaluated[-1][key]
    report["history"] = history
    return report
