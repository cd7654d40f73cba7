import pytest
import torch

from fedinv.aggregate import weighted_average
from fedinv.evaluate import class_shares, confusion_matrix, ensemble_probs, per_class_accuracy


def test_weighted_average_by_hand():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([4.0, 8.0]), "n": torch.tensor(5)}
    out = weighted_average([a, b], [1, 3])  # weights 0.25, 0.75
    torch.testing.assert_close(out["w"], torch.tensor([0.25 * 1 + 0.75 * 4, 0.25 * 2 + 0.75 * 8]))
    assert out["n"].item() == 5 and out["n"].dtype == a["n"].dtype


def test_weighted_average_rejects_bad_input():
    a = {"w": torch.ones(2)}
    with pytest.raises(ValueError, match="different keys"):
        weighted_average([a, {"v": torch.ones(2)}], [1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        weighted_average([a, a], [1, -1])


def test_class_shares_and_weighted_ensemble_by_hand():
    counts = torch.tensor([[30, 0, 0], [10, 5, 0]])
    w = class_shares(counts)
    torch.testing.assert_close(w, torch.tensor([[0.75, 0.0, 0.5], [0.25, 1.0, 0.5]], dtype=torch.float64))
    l1, l2 = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    p1, p2 = l1.exp() / l1.exp().sum(), l2.exp() / l2.exp().sum()  # softmax by hand
    torch.testing.assert_close(ensemble_probs([l1, l2]), (p1 + p2) / 2)
    weighted = p1 * w[0].float() + p2 * w[1].float()  # per class; the row is then normalized
    torch.testing.assert_close(ensemble_probs([l1, l2], w), weighted / weighted.sum())
    assert ensemble_probs([l1, l2], w).sum().item() == pytest.approx(1.0)


def test_confusion_and_per_class_accuracy():
    logits = torch.eye(3)[[0, 1, 1, 2]]
    labels = torch.tensor([0, 1, 2, 2])
    assert confusion_matrix(logits, labels, 3).tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert per_class_accuracy(logits, labels, 3) == [1.0, 1.0, 0.5]
