"""Tests of fedinv.data.partition."""

import json

import numpy as np
import pytest

from fedinv.config import DataConfig, PartitionConfig
from fedinv.data.partition import PARTITIONS, load_partition, make_partition, save_partition
from fedinv.errors import ConfigError


def labels_with_classes(n: int, classes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n)


LABELS = labels_with_classes(2000, 10)


def split(scheme, **kw):
    return make_partition(LABELS, 10, PartitionConfig(scheme=scheme, **kw))


def test_a_tiny_dirichlet_alpha_gives_each_class_to_one_node_without_warnings():
    import warnings

    from fedinv.config import DataConfig, PartitionConfig
    from fedinv.data.partition import make_partition

    labels = np.repeat(np.arange(10), 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value encountered in cast" was the symptom
        part = make_partition(labels, 10, PartitionConfig(num_nodes=5, alpha=0.001, min_size=1), DataConfig())
    counts = part.label_counts(labels)
    assert (counts.max(0) >= 95).all()  # every class (almost) whole on one node
    assert counts[-1].sum() < 1000  # not everything dumped on the last node


@pytest.mark.parametrize("scheme", list(PARTITIONS))
def test_counts_add_up_and_no_sample_twice(scheme):
    part = split(scheme, num_nodes=5, seed=3)
    every = np.concatenate(part.indices)
    assert len(every) == len(set(every.tolist())), "a sample went to two nodes"
    counts = part.label_counts(LABELS)
    assert counts.shape == (5, 10)
    assert counts.sum() == len(every)
    if scheme != "classes-per-node" or 5 * 2 >= 10:  # every label is covered here
        assert len(every) == len(LABELS)
        assert (counts.sum(0) == np.bincount(LABELS, minlength=10)).all()


@pytest.mark.parametrize("scheme", list(PARTITIONS))
def test_same_seed_same_split_other_seed_other_split(scheme):
    a, b, c = split(scheme, seed=7), split(scheme, seed=7), split(scheme, seed=8)
    assert a.content_hash() == b.content_hash()
    assert all((x == y).all() for x, y in zip(a.indices, b.indices))
    assert a.content_hash() != c.content_hash()


def test_iid_sizes_are_balanced():
    sizes = [len(i) for i in split("iid", num_nodes=6).indices]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_skew_follows_alpha_and_min_size():
    def skew(alpha):  # mean over nodes of the largest label share
        c = split("dirichlet", alpha=alpha, num_nodes=5, seed=1).label_counts(LABELS)
        return (c.max(1) / c.sum(1)).mean()
    assert skew(0.1) > skew(100.0) + 0.2
    part = split("dirichlet", alpha=0.1, num_nodes=5, min_size=50)
    assert min(len(i) for i in part.indices) >= 50


def test_classes_per_node_is_the_pathological_split():
    counts = split("classes-per-node", num_nodes=5, classes_per_node=2).label_counts(LABELS)
    assert ((counts > 0).sum(1) == 2).all()
    assert ((counts > 0).sum(0) == 1).all(), "5 x 2 over 10 classes: each class on exactly one node"


def test_label_disjoint_nodes_share_no_label():
    counts = split("label-disjoint", num_nodes=3).label_counts(LABELS)
    assert ((counts > 0).sum(0) == 1).all()
    assert sorted((counts > 0).sum(1).tolist()) == [3, 3, 4]


def test_mixed_is_half_uniform_half_by_class():
    counts = split("mixed", num_nodes=10).label_counts(LABELS)
    n = len(LABELS)
    # node k holds all of class k's by-class half plus a tenth of the uniform half
    dominant = counts.argmax(1)
    assert sorted(dominant.tolist()) == list(range(10))
    assert abs(counts.sum() - n) == 0
    share = counts.max(1) / counts.sum(1)
    assert ((share > 0.45) & (share < 0.65)).all(), share


@pytest.mark.parametrize("kw,match", [
    (dict(scheme="dirichlet", alpha=0.0), "alpha must be > 0"),
    (dict(scheme="dirichlet", alpha=-1.0), "alpha must be > 0"),
    (dict(scheme="nope"), "scheme must be one of iid, dirichlet"),
    (dict(num_nodes=0), r"num_nodes must be in \[1, 1e6\], got 0"),
])
def test_bad_parameters_are_clear_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        PartitionConfig(**kw)


def test_more_nodes_than_samples_is_an_error():
    with pytest.raises(ConfigError, match="only 5 samples"):
        make_partition(LABELS[:5], 10, PartitionConfig(scheme="iid", num_nodes=6))


def test_a_node_left_empty_is_an_error():
    only_two_labels = np.array([0, 1] * 50)
    with pytest.raises(ConfigError, match=r"left node\(s\) .* empty"):
        make_partition(only_two_labels, 10, PartitionConfig(scheme="classes-per-node", num_nodes=5,
                                                            classes_per_node=1))


def test_impossible_min_size_is_an_error():
    with pytest.raises(ConfigError, match="min_size"):
        make_partition(LABELS, 10, PartitionConfig(num_nodes=5, min_size=1000))


def test_label_disjoint_needs_enough_classes():
    with pytest.raises(ConfigError, match="num_nodes <= 10"):
        make_partition(LABELS, 10, PartitionConfig(scheme="label-disjoint", num_nodes=11))


def test_manifest_round_trip_and_tamper_check(tmp_path):
    part = split("dirichlet", num_nodes=4, seed=5)
    path = tmp_path / "p.json"
    manifest = save_partition(part, LABELS, path, tuple("abcdefghij"))
    assert manifest["label_counts"] == part.label_counts(LABELS).tolist()
    assert manifest["config"]["seed"] == 5 and manifest["fedinv_version"]
    back = load_partition(path)
    assert back.content_hash() == part.content_hash() and back.config == part.config
    assert back.data == DataConfig()
    manifest["indices"][0][0] += 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="sha256"):
        load_partition(path)
