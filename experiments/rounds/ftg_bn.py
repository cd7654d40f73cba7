"""Diagnosis: how FedFTG's server fine-tuning should treat the global model's BatchNorm.

From the global model of a finished FedAvg run of the rounds study, runs one more round of local
updates (round --round's participants), aggregates, and then distills the class-level ensemble of
the round's local models into the aggregate on *real* training images, so that only the BN
handling differs from one line to the next (no generator involved):

- eval: BN uses its running statistics (gradients scale with 1 / sqrt(running var));
- train-restore: BN normalizes each batch by its own statistics; the old running statistics are put
  back afterwards;
- train-update: the same, and the running statistics follow the batches (fedinv's FedFTG step).

Prints JSON: test accuracy of the aggregate, of the class-level and mean ensembles, of each local
model, and of the aggregate after --steps KD steps (SGD, --lr, T = 1, batch 64) per BN mode
(null: it diverged).

    python experiments/rounds/ftg_bn.py --run runs/experiments/rounds/base/seed-0/bncnn/fedavg
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import torch

from fedinv import __version__
from fedinv.data.batches import normalize
from fedinv.data.datasets import load_dataset
from fedinv.evaluate import accuracy, class_level_logits, predict_logits
from fedinv.federated.config import FederatedRunConfig
from fedinv.federated.ftg import FedFTG
from fedinv.federated.local import bn_statistics
from fedinv.federated.rounds import Federation, InProcessNodes, node_data, run_round
from fedinv.train.objectives import kd_loss


def distill(fed: Federation, state: dict, teacher, x: torch.Tensor, mode: str, steps: int, lr: float,
            seed: int) -> dict:
    """KD of `teacher` into a model loaded from `state` on batches of x; returns the new state."""
    model = fed.algo.build()
    model.load_state_dict(state)
    before = {k: v.clone() for k, v in bn_statistics(model.state_dict()).items()}
    model.eval() if mode == "eval" else model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = x[torch.randint(0, len(x), (64,), generator=gen)]
        with torch.no_grad():
            target = teacher(batch)
        loss = kd_loss(model(batch), target, 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    new = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if mode == "train-restore":
        new.update(before)
    return new


@click.command()
@click.option("--run", "run_dir", default="runs/rounds/fedavg", show_default=True,
              help="a finished FedAvg run folder of bench/rounds.py (checkpoint.pt, config.json)")
@click.option("--round", "rnd", default=None, type=int, help="0-based round whose participants update "
              "(default: the round after the run's last)")
@click.option("--steps", default=50, show_default=True, help="KD steps (FedFTG: 10 iterations x 5)")
@click.option("--lr", default=0.1, show_default=True, help="SGD learning rate (FedFTG's default)")
def main(run_dir: str, rnd: int | None, steps: int, lr: float) -> None:
    run = Path(run_dir)
    raw = json.loads((run / "config.json").read_text())
    cfg = FederatedRunConfig.from_dict(raw)
    cfg = dataclasses.replace(cfg, federate=dataclasses.replace(cfg.federate, server="ftg"))
    train, test = load_dataset(cfg.data, "train"), load_dataset(cfg.data, "test")
    data, fed = node_data(cfg, train), Federation(cfg, train.info)
    saved = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    global_state, server_state = saved["global"], fed.initial_states()[1]
    rnd = saved["round"] if rnd is None else rnd
    done = run_round(fed, rnd, data.partition.num_nodes, global_state, server_state, InProcessNodes(fed, data),
                     server_step=False)
    aggregate, who = done.aggregate, done.row["nodes"]
    step = fed.server_step
    assert isinstance(step, FedFTG)
    server = step.server_models(done.results, torch.device("cpu"))
    logits = torch.stack([predict_logits(m, test, torch.device("cpu")) for m in server.models])  # [M, N, K]
    out = {"run": str(run), "round": rnd + 1, "nodes": who, "steps": steps, "lr": lr,
           "fedinv_version": __version__, "aggregate": fed.test_accuracy(aggregate, test),
           "ensemble_class_level": accuracy(class_level_logits(logits, server.shares), test.labels),
           "ensemble_mean_logits": accuracy(logits.mean(0), test.labels),
           "local_models": [accuracy(z, test.labels) for z in logits], "after_kd": {}}
    def class_level(x: torch.Tensor) -> torch.Tensor:  # the ensemble FedFTG's "class" form distills
        return class_level_logits(torch.stack([m(x) for m in server.models]), server.shares)

    for mode in ("eval", "train-restore", "train-update"):
        new = distill(fed, aggregate, class_level, normalize(train.images, train.info), mode, steps, lr,
                      cfg.federate.seed)
        finite = all(torch.isfinite(v).all() for v in new.values() if v.is_floating_point())
        out["after_kd"][mode] = fed.test_accuracy(new, test) if finite else None  # diverged
    click.echo(json.dumps(out))


if __name__ == "__main__":
    main()
