"""One optimizer step under one precision, and one pass over minibatches.

`Stepper` owns what every loop shares: autocast for the forward pass, the GradScaler that fp16
needs (constructed here and nowhere else), zeroing, backward, an optional gradient correction and
the step. `train_epoch` is the minibatch loop (torchvision's `train_one_epoch`): the caller
supplies the batches and an objective, a pure function of (model, *batch) that returns
`{"loss": ..., "correct": ..., <named parts>}`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..errors import DivergedError

Objective = Callable[..., dict[str, torch.Tensor]]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.amp autocast for `dtype`, or a no-op when dtype is None (full fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class Stepper:
    """An optimizer with its precision: `with stepper.autocast(): loss = ...; stepper.step(loss)`.

    amp_dtype None runs in fp32; bf16 needs no loss scaling; fp16 gets a GradScaler, whose state
    travels with the optimizer's in `state_dict`. Autocast changes only the forward's compute: the
    weights, their gradients and the optimizer's states (SGD momentum, the synthesis images' and
    generators' Adam moments) stay fp32, as do BatchNorm's running statistics.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device, amp_dtype: torch.dtype | None = None):
        self.optimizer, self.device, self.amp_dtype = optimizer, device, amp_dtype
        self.scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp_dtype)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, loss: torch.Tensor, correct_grads: Callable[[], None] | None = None) -> None:
        """Backward and step. `correct_grads` edits the (unscaled) gradients before the step
        (SCAFFOLD adds c - c_i there)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            if correct_grads is not None:
                correct_grads()
            self.optimizer.step()
            return
        self.scaler.scale(loss).backward()
        if correct_grads is not None:
            self.scaler.unscale_(self.optimizer)
            correct_grads()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def train_epoch(model: nn.Module, batches: Iterable[tuple], objective: Objective, stepper: Stepper, *,
                lr: Callable[[int], float] | None = None, correct_grads: Callable[[], None] | None = None,
                on_batch: Callable[[int, dict[str, float]], None] | None = None, what: str = "training"
                ) -> dict[str, float]:
    """One pass of `objective(model, *batch)` over `batches` (each a tuple whose first item is the
    images [B, ...]); returns the mean loss, the accuracy (when the objective counts "correct"),
    the number of steps and of samples seen.

    `lr(i)` gives the learning rate of the i-th step of this pass; `on_batch(i, running)` sees the
    running means after each step (progress bars). A loss that is not finite stops the pass
    with a `DivergedError` naming `what` and the step.
    """
    model.train()
    loss_sum = correct = seen = 0.0
    steps = 0
    for batch in batches:
        if lr is not None:
            stepper.set_lr(lr(steps))
        with stepper.autocast():
            out = objective(model, *batch)
        stepper.step(out["loss"], correct_grads)
        steps += 1
        n, loss = len(batch[0]), out["loss"].item()
        if not math.isfinite(loss):
            raise DivergedError(f"{what}: the loss is {loss} at step {steps}; lower the learning rate, or check "
                                f"the inputs (a model with non-finite weights?)")
        loss_sum += loss * n
        correct += out["correct"].item() if "correct" in out else 0
        seen += n
        if on_batch is not None:
            on_batch(steps, {"loss": loss_sum / seen, "accuracy": correct / seen})
    return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1), "steps": steps, "samples": int(seen)}
