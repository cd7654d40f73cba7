"""Tests of fedinv.train."""

import dataclasses

import pytest
import torch

from fedinv.errors import DivergedError
from fedinv.federated.config import FederateConfig, FederatedRunConfig
from fedinv.oneshot.pipeline import RunConfig
from fedinv.oneshot.student.config import StudentConfig
from fedinv.oneshot.synthesis.config import SynthesisConfig
from fedinv.oneshot.teachers import TeacherConfig
from fedinv.train import Stepper, lr_at_epoch, round_decay, train_epoch
from fedinv.train.resume import changes, comparable


def test_a_diverging_loss_stops_with_the_step_named():
    model = torch.nn.Linear(2, 2)
    stepper = Stepper(torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"))
    batches = [(torch.ones(4, 2), torch.zeros(4, dtype=torch.long))] * 3

    def objective(m, x, y):
        return {"loss": m(x).sum() * float("inf")}

    with pytest.raises(DivergedError, match="student epoch 2: the loss is .* at step 1"):
        train_epoch(model, batches, objective, stepper, what="student epoch 2")


def test_train_epoch_matches_a_hand_written_sgd_loop():
    torch.manual_seed(0)
    x, y = torch.randn(12, 3), torch.randint(0, 2, (12,))
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 12, 4)]
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())

    def objective(model, xb, yb):
        logits = model(xb)
        return {"loss": torch.nn.functional.cross_entropy(logits, yb), "correct": (logits.argmax(1) == yb).sum()}

    stepper = Stepper(torch.optim.SGD(a.parameters(), lr=0.1), torch.device("cpu"))
    lrs = []
    metrics = train_epoch(a, batches, objective, stepper, lr=lambda i: lrs.append(0.1 / (i + 1)) or lrs[-1])
    opt = torch.optim.SGD(b.parameters(), lr=0.1)
    losses = []
    for i, (xb, yb) in enumerate(batches):
        opt.param_groups[0]["lr"] = 0.1 / (i + 1)
        loss = torch.nn.functional.cross_entropy(b(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert metrics["steps"] == 3 and metrics["loss"] == pytest.approx(sum(losses) / 3)
    assert stepper.scaler is None and stepper.state_dict()["scaler"] is None  # fp32: no loss scaling


def test_correct_grads_runs_between_backward_and_step():
    w = torch.nn.Parameter(torch.zeros(2))
    stepper = Stepper(torch.optim.SGD([w], lr=1.0), torch.device("cpu"))
    stepper.step((w * torch.tensor([1.0, 2.0])).sum(), correct_grads=lambda: w.grad.add_(torch.tensor([10.0, 0.0])))
    assert w.tolist() == [-11.0, -2.0]


def test_schedules():
    assert lr_at_epoch(0.5, 1, 0.2, "cosine") == pytest.approx(0.1)
    assert round_decay(0.1, 0.5, 3) == pytest.approx(0.0125)
    with pytest.raises(ValueError, match="cosine, step, constant"):
        lr_at_epoch(0.0, 1, 0.1, "linear")


def test_the_same_run_rule_ignores_run_time_fields_only():
    cfg = StudentConfig(epochs=3)
    assert changes(dataclasses.asdict(StudentConfig(epochs=3, device="cuda")), cfg) == []  # another device
    assert changes(dataclasses.asdict(StudentConfig(epochs=4)), cfg) == ["epochs"]
    assert "batched" not in comparable(SynthesisConfig.of()) and "device" not in comparable(TeacherConfig())
    saved = dataclasses.asdict(TeacherConfig())
    del saved["augment"]  # a field added since that run, at its default
    assert changes(saved, TeacherConfig()) == []
    assert changes({**saved, "colour": 1}, TeacherConfig())[0].startswith("unreadable")
    run = RunConfig()
    other = dataclasses.replace(run, student=dataclasses.replace(run.student, lr=0.5, device="cpu"))
    assert changes(other.to_dict(), run) == ["student.lr"]  # nested configs, dotted names
    fed = FederatedRunConfig()
    longer = dataclasses.replace(fed, federate=FederateConfig(rounds=99, eval_every=7))
    assert changes(longer.to_dict(), fed) == []  # rounds and eval_every are run-time in the multi-round mode
    assert changes(fed.with_algorithm("fedprox").to_dict(), fed) == ["federate.algorithm", "params.mu"]
