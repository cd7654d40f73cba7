"""The teachers' label claims checked (fedinv.oneshot.synthesis.claims)."""

import pytest
import torch

from fedinv.oneshot.student.train import train_student
from fedinv.oneshot.student.config import StudentConfig
from fedinv.oneshot.synthesis import claims as C
from fedinv.oneshot.synthesis.ensemble import TeacherEnsemble
from fedinv.oneshot.synthesis.synthesize import synthesize
from fedinv.store import read_meta
from tests.helpers import CPU, INFO, random_teachers, small_cfg, write_teachers


def test_bound_claims_scales_a_node_over_the_cap_by_hand():
    counts = torch.tensor([[10, 10], [20, 0], [4000, 4000], [30, 10]])
    # totals 20, 20, 8000, 40; median 20 (the lower middle); cap 2 x 20 = 40
    out = C.bound_claims(counts, 2.0)
    torch.testing.assert_close(out, torch.tensor([[10, 10], [20, 0], [20, 20], [30, 10]], dtype=torch.float64))


def logits_of(predictions, k=4):
    """[N, B] predicted classes -> [N, B, K] logits that pick them (10 vs 0)."""
    return torch.nn.functional.one_hot(torch.tensor(predictions), k).float() * 10


def test_peer_agreement_by_hand():
    truth = [0, 0, 1, 1, 2, 2, 3, 3]
    flipped = [3 - y for y in truth]
    constant = [1] * 8
    counts = torch.tensor([[5, 5, 5, 5]] * 4)
    # nodes 0-2 see the truth; node 3 is tested against them
    agree = C.peer_agreement(logits_of([truth, truth, truth, flipped]), counts, min_images=2)
    assert agree[:3].eq(1).all()  # honest teachers: recall = precision = 1 on every class
    assert agree[3].eq(0).all()
    agree = C.peer_agreement(logits_of([truth, truth, truth, constant]), counts, min_images=2)
    # the constant teacher: on class 1, recall 2/2, precision 2/8 -> 2 * 1 * 0.25 / 1.25 = 0.4; others 0
    torch.testing.assert_close(agree[3], torch.tensor([0.0, 0.4, 0.0, 0.0], dtype=torch.float64))
    # a class the others claim less than a quarter of is untested; so is one i does not claim
    lone = torch.tensor([[5, 5, 5, 5], [5, 5, 5, 0], [5, 5, 5, 0], [0, 5, 5, 50]])
    agree = C.peer_agreement(logits_of([truth, truth, truth, truth]), lone, min_images=2)
    assert agree[3, 0].isnan() and agree[3, 3].isnan() and agree[3, 1] == 1


def test_node_scores_and_who_is_dropped_by_hand():
    nan = float("nan")
    agreement = torch.tensor([[1.0, 0.5, nan], [0.8, nan, nan], [0.0, 0.1, 0.0], [nan, nan, nan]],
                             dtype=torch.float64)
    counts = torch.tensor([[30, 10, 99], [5, 5, 5], [10, 10, 10], [7, 7, 7]], dtype=torch.float64)
    scores = C.node_scores(agreement, counts)
    torch.testing.assert_close(scores[:3], torch.tensor([(30 + 5) / 40, 0.8, 0.1 / 3], dtype=torch.float64))
    assert scores[3].isnan()
    kept = C.keep_nodes(counts, scores, 0.5)  # median of (0.875, 0.8, 0.033) = 0.8
    assert kept[2].eq(0).all() and torch.equal(kept[[0, 1, 3]], counts[[0, 1, 3]])


def test_a_checked_synthesis_records_the_check_and_the_student_weighs_by_it(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "PROBE_PER_CLASS", 2)
    monkeypatch.setattr(C, "PROBE_ITERATIONS", 2)
    models, counts = random_teachers(3)
    counts[2] = 10 ** 6  # node 2 claims a million of every class
    write_teachers(tmp_path / "teachers", models, counts)
    stats = synthesize(tmp_path / "teachers", tmp_path / "s.h5", small_cfg(num_images=12, claims="checked"),
                       progress=False)
    check = read_meta(tmp_path / "s.h5")["claims"]
    assert check == stats["claims"] and check["claimed"] == counts.tolist()
    used = torch.tensor(check["used"], dtype=torch.float64)
    # bounded to twice the median node's total
    assert used[2].sum().item() == pytest.approx(2 * counts.sum(1).double().median().item())
    assert any("node 2" in line for line in check["changes"])
    trusted = synthesize(tmp_path / "teachers", tmp_path / "t.h5", small_cfg(num_images=12), progress=False)
    assert "claims" not in trusted and "claims" not in read_meta(tmp_path / "t.h5")

    seen = {}
    real = TeacherEnsemble.use_counts

    def spy(self, label_counts):
        seen["counts"] = label_counts.clone()
        real(self, label_counts)
    monkeypatch.setattr(TeacherEnsemble, "use_counts", spy)
    train_student(tmp_path / "s.h5", tmp_path / "student", StudentConfig(model="lenet5", epochs=1, batch_size=12,
                  device="cpu"), teachers_dir=tmp_path / "teachers", progress=False)
    torch.testing.assert_close(seen["counts"], used.double())


def test_apply_claims_weighs_the_ensemble_by_what_stands(monkeypatch):
    monkeypatch.setattr(C, "PROBE_PER_CLASS", 2)
    monkeypatch.setattr(C, "PROBE_ITERATIONS", 2)
    models, counts = random_teachers(3)
    ens = TeacherEnsemble(models, counts, CPU, INFO)
    assert C.apply_claims(ens, "trusted", 0) is None and torch.equal(ens.counts, counts)
    check = C.apply_claims(ens, "checked", 0)
    assert check.agreement.shape == counts.shape and check.scores.shape == (3,)
    assert torch.equal(ens.counts, check.used) and torch.equal(ens.seen, check.used > 0)
    assert C.check_claims(ens, 0).record() == check.record()  # seeded: the same probe, the same result


def test_median_probs_by_hand_and_one_teacher_cannot_move_it():
    from fedinv.evaluate import median_probs

    probs = [torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([[0.6, 0.3, 0.1]]), torch.tensor([[0.0, 0.0, 1.0]])]
    out = median_probs([p.clamp_min(1e-9).log() for p in probs])
    med = torch.tensor([[0.6, 0.2, 0.1]])  # per class, the middle of three
    torch.testing.assert_close(out, med / med.sum(), atol=1e-6, rtol=0)
    four = median_probs([p.clamp_min(1e-9).log() for p in [*probs, torch.tensor([[0.5, 0.4, 0.1]])]])
    med = torch.tensor([[0.55, 0.25, 0.1]])  # even: the mean of the two middle ones
    torch.testing.assert_close(four, med / med.sum(), atol=1e-6, rtol=0)


def test_claims_median_ignores_the_claims_in_synthesis_and_student(tmp_path, monkeypatch):
    models, counts = random_teachers(3)
    counts[2] = 10 ** 6
    write_teachers(tmp_path / "teachers", models, counts)
    ens = TeacherEnsemble(models, counts, CPU, INFO)
    assert C.apply_claims(ens, "median", 0) is None and ens.median and ens.seen.all()
    x = torch.randn(4, *INFO.image_shape)
    from fedinv.evaluate import median_probs
    torch.testing.assert_close(ens.ensemble_probs(x), median_probs(list(ens.logits(x))))
    synthesize(tmp_path / "teachers", tmp_path / "s.h5", small_cfg(num_images=12, claims="median"), progress=False)
    assert read_meta(tmp_path / "s.h5")["config"]["claims"] == "median"
    seen = []
    monkeypatch.setattr(C, "ignore_claims", lambda e: seen.append(e) or setattr(e, "median", True))
    train_student(tmp_path / "s.h5", tmp_path / "student", StudentConfig(model="lenet5", epochs=1, batch_size=12,
                  device="cpu"), teachers_dir=tmp_path / "teachers", progress=False)
    assert len(seen) == 1
