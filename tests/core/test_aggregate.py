"""Tests of fedinv.aggregate."""

import pytest
import torch

from fedinv.aggregate import (apply_server_lr, capped_sizes, combine, coordinate_median, feddyn_aggregate, krum,
                              kept, krum_min_participants, krum_scores, left_out, multi_krum, trimmed_mean,
                              weighted_average)
from fedinv.evaluate import class_shares, confusion_matrix, ensemble_probs, per_class_accuracy
from tests.helpers import t


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


def states(*values, n=7):
    return [{"w": torch.tensor(v, dtype=torch.float32), "n": torch.tensor(n + i)} for i, v in enumerate(values)]


def test_trimmed_mean_and_median_by_hand():
    s = states([1.0, 10.0], [2.0, -5.0], [3.0, 0.0], [100.0, 1.0], [4.0, 2.0])
    # per coordinate, sorted: (1, 2, 3, 4, 100) and (-5, 0, 1, 2, 10); trim 0.2 of 5 drops one at each end
    out = trimmed_mean(s, 0.2)
    torch.testing.assert_close(out["w"], torch.tensor([(2 + 3 + 4) / 3, (0 + 1 + 2) / 3]))
    assert out["n"].item() == 11  # counters take the maximum
    torch.testing.assert_close(trimmed_mean(s, 0.1)["w"], torch.tensor([110 / 5, 8 / 5]))  # floor(0.5) = 0
    torch.testing.assert_close(coordinate_median(s)["w"], torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(coordinate_median(s[:4])["w"], torch.tensor([2.5, 0.5]))  # even: middle two
    with pytest.raises(ValueError, match="trim"):
        trimmed_mean(s, 0.5)


def test_krum_picks_the_state_closest_to_its_neighbours_by_hand():
    s = states([0.0], [1.0], [3.0], [100.0], [2.0])
    # f = 1: each state's squared distances to its 5 - 1 - 2 = 2 nearest others, summed
    torch.testing.assert_close(krum_scores(s, 1), torch.tensor([1 + 4, 1 + 1, 1 + 4, 97 ** 2 + 98 ** 2, 1 + 1],
                                                               dtype=torch.float64))
    assert krum(s, 1)["w"].item() == 1.0  # the first of the two best
    assert krum_min_participants(1) == len(s) == 5  # one state fewer is refused
    with pytest.raises(ValueError, match="more than 4"):
        krum(s[:4], 1)


def test_multi_krum_averages_all_but_the_f_most_outlying_states_by_hand():
    s = states([0.0, 2.0], [1.0, 2.0], [3.0, 5.0], [100.0, -50.0], [2.0, 3.0])
    # squared distances: 01 1, 02 18, 04 5, 12 13, 14 2, 24 5, state 3 over 12,000 from every other;
    # f = 1: each state's 5 - 1 - 2 = 2 nearest others summed: 0: 1+5, 1: 1+2, 2: 5+13, 4: 2+5
    torch.testing.assert_close(krum_scores(s, 1)[[0, 1, 2, 4]], torch.tensor([6.0, 3.0, 18.0, 7.0],
                                                                              dtype=torch.float64))
    out = multi_krum(s, 1)  # all but state 3, unweighted
    torch.testing.assert_close(out["w"], torch.tensor([(0 + 1 + 3 + 2) / 4, (2 + 2 + 5 + 3) / 4]))
    assert out["n"].item() == 11  # counters take the maximum of the kept states
    with pytest.raises(ValueError, match="more than 6"):
        multi_krum(s, 2)


def test_multi_krum_with_a_threshold_leaves_out_only_states_far_above_the_median_score():
    s = states([0.0], [1.0], [3.0], [2.0], [4.0])
    # f = 1, each state's 2 nearest others: 0: 1+4, 1: 1+1, 3: 1+1, 2: 1+1, 4: 1+4; median 2
    torch.testing.assert_close(krum_scores(s, 1), torch.tensor([5.0, 2.0, 2.0, 2.0, 5.0], dtype=torch.float64))
    paper = (0 + 1 + 3 + 2) / 4  # the last of the worst scores (state 4) left out
    assert multi_krum(s, 1)["w"].item() == paper
    assert multi_krum(s, 1, threshold=2.0)["w"].item() == paper  # 5 > 2 x 2: left out
    assert multi_krum(s, 1, threshold=3.0)["w"].item() == 2.0  # 5 <= 3 x 2: every state averaged
    outlier = states([0.0], [1.0], [3.0], [100.0], [2.0])
    assert combine(outlier, [1] * 5, "multi-krum", krum_threshold=3.0)["w"].item() == (0 + 1 + 3 + 2) / 4
    with pytest.raises(ValueError, match="threshold"):
        multi_krum(s, 1, threshold=-1.0)


def test_left_out_names_the_states_a_rule_drops_whole_by_hand():
    s = states([0.0], [1.0], [3.0], [2.0], [4.0])  # Krum scores 5, 2, 2, 2, 5 (test above)
    assert left_out(s, "krum") == [0, 2, 3, 4]  # keeps state 1, the first of the best
    assert left_out(s, "multi-krum") == [4]
    assert left_out(s, "multi-krum", krum_threshold=2.0) == [4]  # 5 > 2 x the median 2
    assert left_out(s, "multi-krum", krum_threshold=3.0) == []
    assert left_out(s, "multi-krum", byzantine=0) == []
    for rule in ("mean", "trimmed-mean", "median"):  # every state weighs (per coordinate for the last two)
        assert left_out(s, rule) == [] and kept(s, rule) == [0, 1, 2, 3, 4]
    assert kept(s, "krum") == [1] and kept(s, "multi-krum") == [0, 1, 2, 3]
    for rule in ("krum", "multi-krum"):  # what combine averages is what kept names, equally weighted
        keep = kept(s, rule)
        assert combine(s, [1.0] * 5, rule)["w"].item() == sum(s[i]["w"].item() for i in keep) / len(keep)


def test_capped_sizes_bound_an_inflated_claim_and_keep_honest_ones_by_hand():
    assert capped_sizes([100, 200, 300, 10 ** 6, 250], 2.0) == [100, 200, 300, 500, 250]  # median 250
    assert capped_sizes([4, 1, 3, 2], 1.0) == [2, 1, 2, 2]  # even count: the lower middle one (2)
    with pytest.raises(ValueError, match=">= 1"):
        capped_sizes([1, 2], 0.5)
    s = states([0.0], [1.0], [3.0], [100.0], [2.0])
    sizes = [100, 200, 300, 10 ** 6, 250]
    # the mean: the inflated claim weighs 500, not a million
    assert combine(s, sizes, "mean", size_cap=2.0)["w"].item() == pytest.approx((0 + 200 + 900 + 50000 + 500) / 1350)
    # multi-krum leaves state 3 out and weighs the others by their sizes instead of equally
    assert combine(s, sizes, "multi-krum", size_cap=2.0)["w"].item() == pytest.approx((0 + 200 + 900 + 500) / 850)
    honest = [100, 200, 300, 250, 250]  # every size within 2 x the median: the plain mean, exactly
    assert torch.equal(combine(s, honest, "mean", size_cap=2.0)["w"], combine(s, honest, "mean")["w"])


def test_robust_rules_ignore_the_reported_sizes_and_bound_one_outlier():
    s = states([1.0], [1.2], [0.8], [1.1], [1e6])
    weights = [10, 10, 10, 10, 10 ** 9]  # the outlier also claims to hold almost all the data
    assert combine(s, weights, "mean")["w"].item() > 9e5
    for rule in ("trimmed-mean", "median", "krum", "multi-krum"):
        assert 0.8 <= combine(s, weights, rule)["w"].item() <= 1.2, rule
    with pytest.raises(ValueError, match="one of mean, trimmed-mean"):
        combine(s, weights, "average")


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


def test_server_step_moves_by_the_server_lr():
    g, avg = {"w": t(1.0, 2.0), "n": torch.tensor(3)}, {"w": t(3.0, 0.0), "n": torch.tensor(5)}
    assert torch.allclose(apply_server_lr(g, avg, 1.0)["w"], t(3.0, 0.0))
    assert torch.allclose(apply_server_lr(g, avg, 0.5)["w"], t(2.0, 1.0))
    assert apply_server_lr(g, avg, 0.5)["n"] == 5


def test_feddyn_aggregate_by_hand():
    g = {"w": t(1.0), "bn": t(0.0)}
    states = [{"w": t(3.0), "bn": t(1.0)}, {"w": t(5.0), "bn": t(3.0)}]
    h = {"w": t(0.5)}
    alpha, n = 0.1, 4
    new, new_h = feddyn_aggregate(g, states, [1, 3], h, alpha, n)
    avg = 0.25 * 3 + 0.75 * 5  # 4.5
    h_expected = 0.5 - alpha * (2 / 4) * (avg - 1.0)  # 0.325
    assert new_h["w"].item() == pytest.approx(h_expected)
    assert new["w"].item() == pytest.approx(avg - h_expected / alpha)
    assert new["bn"].item() == pytest.approx(0.25 * 1 + 0.75 * 3)  # buffers: plain weighted average
