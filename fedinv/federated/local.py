"""What every local update shares: the context a node trains in, its result, and local SGD.

An algorithm (one file each: fedavg, fedprox, feddyn, scaffold, moon, feddistill) supplies the
objective of a batch, optionally a gradient correction, and the state it keeps per node; the
steps themselves are the training core's (`fedinv.train`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..data.batches import batches
from ..data.datasets import ImageTensors
from ..models import place
from ..train import Stepper, train_epoch
from ..train.core import Objective
from .config import FederateConfig

State = dict[str, torch.Tensor]


@dataclass
class LocalContext:
    """Everything a node's update may read. Tensors of states live on the CPU."""

    node: int
    round: int
    data: ImageTensors
    global_state: State
    node_state: dict[str, Any]  # what this node kept from earlier rounds ({} at first)
    broadcast: dict[str, Any]  # what the server sends beside the model (SCAFFOLD's c, FedGen's generator)
    lr: float
    cfg: FederateConfig
    device: torch.device
    amp_dtype: torch.dtype | None
    gen: torch.Generator  # data order of this node in this round
    label_counts: torch.Tensor  # [K] of this node
    extra_loss: Callable[[nn.Module, int], torch.Tensor] | None = None  # a server step's term, given (model, batch size)


@dataclass(frozen=True)
class RoundInfo:
    """What the server's aggregation and server step may read about the round."""

    round: int
    num_nodes: int
    device: torch.device
    amp_dtype: torch.dtype | None
    gen: torch.Generator  # the server's random stream of this round


@dataclass
class LocalResult:
    state: State  # the node's model after the update (CPU)
    num_samples: int
    node_state: dict[str, Any] = field(default_factory=dict)
    upload: dict[str, Any] = field(default_factory=dict)  # extra to the server (SCAFFOLD's delta c)
    metrics: dict[str, float] = field(default_factory=dict)
    label_counts: torch.Tensor | None = None  # [K] of the node; read by server steps


def cpu_state(model: nn.Module) -> State:
    """A copy of the model's weights and buffers on the CPU, in the plain (contiguous) layout whatever
    the model's own (`models.place`), so that every state sent or aggregated has one layout."""
    return {k: v.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
            for k, v in model.state_dict().items()}


def bn_statistics(state: State) -> State:
    """The BatchNorm running statistics (and batch counters) of a state dict."""
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def param_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def local_sgd(model: nn.Module, ctx: LocalContext, objective: Objective,
              correct_grads: Callable[[], None] | None = None) -> dict[str, float]:
    """`cfg.local_epochs` of SGD over the node's data; returns mean loss, accuracy and steps.

    `correct_grads` runs after backward and before the step (SCAFFOLD adds c - c_i there); a
    server step's `extra_loss` is added to every batch's loss.
    """
    cfg = ctx.cfg
    stepper = Stepper(torch.optim.SGD(model.parameters(), lr=ctx.lr, momentum=cfg.momentum,
                                      weight_decay=cfg.weight_decay), ctx.device, ctx.amp_dtype)
    if ctx.extra_loss is not None:
        objective = _with_extra(objective, ctx.extra_loss)
    epochs = (batches(ctx.data, cfg.batch_size, device=ctx.device, generator=ctx.gen, shuffle=True, augment=cfg.augment)
              for _ in range(cfg.local_epochs))  # lazy: each epoch draws its order when it starts
    return train_epoch(model, itertools.chain.from_iterable(epochs), objective, stepper, correct_grads=correct_grads,
                       what=f"node {ctx.node}, round {ctx.round + 1}")


def _with_extra(objective: Objective, extra: Callable[[nn.Module, int], torch.Tensor]) -> Objective:
    def combined(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        out = objective(model, x, y)
        return {**out, "loss": out["loss"] + extra(model, len(y))}
    return combined


def load_global(build: Callable[[], nn.Module], ctx: LocalContext) -> nn.Module:
    """A fresh model holding the global weights, on the node's device."""
    model = build()
    model.load_state_dict(ctx.global_state)
    return place(model, ctx.device)


def head_of(model: nn.Module) -> nn.Linear:
    """The model's last linear layer (its classifier head)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear layer to serve as the head")
    return linears[-1]


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input of the head [B, D], logits [B, K]) in one forward pass."""
    seen: list[torch.Tensor] = []
    handle = head_of(model).register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return seen[-1].flatten(1), logits
