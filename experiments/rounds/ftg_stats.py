"""Diagnosis: where FedFTG's fine-tuning loses accuracy on a model with BatchNorm.

From a finished FedFTG run of the rounds study (its checkpoint holds the trained generator), runs
one more round: the participants' local updates, aggregation, then the real server step (the run's
generator, fidelity / hard-sample mining / diversity, then the fine-tuning) at each of --model-lrs,
and evaluates the fine-tuned global model with three sets of BN running statistics:

- batches: as the step leaves them (bn_stats = "batches": they followed the generated batches);
- aggregate: the aggregate's put back (bn_stats = "aggregate": the nodes' averaged statistics of
  real data, from before the fine-tuning);
- real: re-estimated on --calibration real training images (an oracle: a server has no data).

The weights are the same in all three; only the statistics differ. Prints JSON.

    python experiments/rounds/ftg_stats.py --run runs/rounds2/fedavg-ftg
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import click
import torch

from bench.setting import real_bn_statistics
from fedinv import __version__
from fedinv.data.datasets import ImageTensors, load_dataset
from fedinv.federated.config import FederatedRunConfig
from fedinv.federated.ftg import FedFTG
from fedinv.federated.local import State, bn_statistics
from fedinv.federated.rounds import Federation, InProcessNodes, node_data, run_round


@torch.no_grad()
def real_statistics(fed: Federation, state: State, images: ImageTensors, batch: int = 500) -> State:
    """`state` with every BN layer's running statistics recomputed as plain averages over `images`."""
    model = fed.algo.build()
    model.load_state_dict(state)
    real_bn_statistics(model, images, batch)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@click.command()
@click.option("--run", "run_dir", default="runs/rounds/fedavg-ftg", show_default=True,
              help="a FedFTG run folder of the rounds study (checkpoint.pt, config.json)")
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
    cfg = dataclasses.replace(cfg, server_params=dataclasses.replace(cfg.server_params, bn_stats="batches"))
    train, test = load_dataset(cfg.data, "train"), load_dataset(cfg.data, "test")
    data, fed = node_data(cfg, train), Federation(cfg, train.info)
    saved = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    global_state, server_state, rnd = saved["global"], saved["server"], saved["round"]
    done = run_round(fed, rnd, data.partition.num_nodes, global_state, copy.deepcopy(server_state),
                     InProcessNodes(fed, data), server_step=False)
    aggregate, results, who = done.aggregate, done.results, done.row["nodes"]
    kept = bn_statistics(aggregate)
    calib = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:calibration])
    out = {"run": str(run), "round": rnd + 1, "nodes": who, "calibration": calibration,
           "fedinv_version": __version__, "aggregate": fed.test_accuracy(aggregate, test),
           "aggregate_real_stats": fed.test_accuracy(real_statistics(fed, aggregate, calib), test),
           "after_fine_tuning": {}}
    for lr in (float(v) for v in model_lrs.split(",")):
        step = FedFTG(cfg.federate, cfg.generator, dataclasses.replace(cfg.server_params, model_lr=lr), train.info,
                      fed.algo.build)
        # the same random stream for every learning rate; Adam's state is updated in place, hence the copy
        new, _, _ = step.step(aggregate, results, copy.deepcopy(server_state["server_step"]),
                              fed.round_info(rnd, data.partition.num_nodes))
        out["after_fine_tuning"][str(lr)] = {
            "batches": fed.test_accuracy(new, test),
            "aggregate": fed.test_accuracy({**new, **kept}, test),
            "real": fed.test_accuracy(real_statistics(fed, new, calib), test)}
    click.echo(json.dumps(out))


if __name__ == "__main__":
    main()
