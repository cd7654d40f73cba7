"""The training core: every optimization loop in fedinv (teachers, local SGD, the student, the
server's fine-tuning and generator training, image inversion) steps through `Stepper`, takes its
learning rate from `schedule`, and decides whether a saved run may be continued with `resume`."""

from .core import Stepper, autocast, train_epoch
from .schedule import SCHEDULES, lr_at, lr_at_epoch, round_decay

__all__ = ["Stepper", "autocast", "train_epoch", "SCHEDULES", "lr_at", "lr_at_epoch", "round_decay"]
