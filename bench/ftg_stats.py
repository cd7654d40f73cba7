"""Diagnosis: where FedFTG's fine-tuning loses accuracy on a model with BatchNorm.

From a finished FedFTG run of bench/rounds.py (its checkpoint holds the trained generator), runs
one more round: the participants' local updates, aggregation, then the real server step (the run's
generator, fidelity / hard-sample mining / diversity, then the fine-tuning) at each of --model-lrs,
and evaluates the fine-tuned global model with three sets of BN running statistics:

- batches: as the step leaves them (bn_stats = "batches": they followed the generated batches);
- aggregate: the aggregate's put back (bn_stats = "aggregate": the nodes' averaged statistics of
  real data, from before the fine-tuning);
- real: re-estimated on --calibration real training images (an oracle: a server has no data).

The weights are the same in all three; only the statistics differ. Prints JSON.

    python bench/ftg_stats.py --run runs/rounds2/fedavg-ftg
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import click
import torch
from torch import nn

from fedinv import __version__
from fedinv.data.batches import normalize
from fedinv.data.datasets import ImageTensors, load_dataset
from fedinv.federated.ftg import GeneratorServer
from fedinv.federated.local import RoundInfo, State, bn_statistics
from fedinv.federated.rounds import FederatedRunConfig, Federation, node_data, participants
from fedinv.runtime import generator

@torch.no_grad()
def real_statistics(fed: Federation, state: State, images: ImageTensors, batch: int = 500) -> State:
    """`state` with every BN layer's running statistics recomputed as plain averages over `images`."""
    model = fed.algo.build()
    model.load_state_dict(state)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average, not an exponential one
    x = normalize(images.images, images.info)
    for i in range(0, len(x), batch):
        model(x[i:i + batch])
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@click.command()
@click.option("--run", "run_dir", default="runs/rounds/fedavg-ftg", show_default=True,
              help="a FedFTG run folder of bench/rounds.py (checkpoint.pt, config.json)")
@click.option("--model-lrs", default="0.1,0.03,0.01", show_default=True,
              help="comma-separated learning rates of the global model's fine-tuning")
@click.option("--calibration", default=5000, show_default=True,
              help="real training images for the oracle statistics")
def main(run_dir: str, model_lrs: str, calibration: int) -> None:
    run = Path(run_dir)
    cfg = FederatedRunConfig.from_dict(json.loads((run / "config.json").read_text()))
    if cfg.federate.server != "ftg":
        raise click.BadParameter(f"{run} is a server={cfg.federate.server!r} run; this needs an ftg run",
                                 param_hint="--run")
    cfg = dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, bn_stats="batches"))
    train, test = load_dataset(cfg.data, "train"), load_dataset(cfg.data, "test")
    data, fed = node_data(cfg, train), Federation(cfg, train.info)
    saved = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    global_state, server_state, rnd = saved["global"], saved["server"], saved["round"]
    who = participants(data.partition.num_nodes, cfg.federate.participation, cfg.federate.seed, rnd)
    results = [fed.node_update(k, rnd, data.splits[k], data.counts[k], global_state, {}, fed.broadcast(server_state))
               for k in who]

    def info() -> RoundInfo:  # the same random stream for every learning rate
        return RoundInfo(rnd, data.partition.num_nodes, fed.device, generator(cfg.federate.seed, 5, rnd))

    aggregate, _ = fed.algo.aggregate(global_state, results, server_state, info())
    kept = bn_statistics(aggregate)
    calib = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:calibration])
    out = {"run": str(run), "round": rnd + 1, "nodes": who, "calibration": calibration,
           "fedinv_version": __version__, "aggregate": fed.test_accuracy(aggregate, test),
           "aggregate_real_stats": fed.test_accuracy(real_statistics(fed, aggregate, calib), test),
           "after_fine_tuning": {}}
    counts = torch.stack([r.label_counts for r in results])
    for lr in (float(v) for v in model_lrs.split(",")):
        step = GeneratorServer("ftg", cfg.federate, dataclasses.replace(cfg.generator, model_lr=lr), train.info)
        new, _, _ = step.step(fed.algo.build, aggregate, [r.state for r in results], counts,
                              copy.deepcopy(server_state["server_step"]), info())  # Adam's state is updated in place
        out["after_fine_tuning"][str(lr)] = {
            "batches": fed.test_accuracy(new, test),
            "aggregate": fed.test_accuracy({**new, **kept}, test),
            "real": fed.test_accuracy(real_statistics(fed, new, calib), test)}
    click.echo(json.dumps(out))


if __name__ == "__main__":
    main()
