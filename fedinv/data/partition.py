"""Non-IID partitions of a training set over nodes, deterministic by seed.

Each scheme is a pure function `(labels, num_classes, cfg, rng) -> list of index arrays`; the
`Partition` bundles the result with its config and a content hash, and round-trips a JSON
manifest that every later stage reads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from ..config import DataConfig, PartitionConfig, from_dict, to_dict
from ..errors import ConfigError
from ..runtime import save_json, save_png
from ..viz import label_count_plot

Indices = list[np.ndarray]


def iid(labels: np.ndarray, num_classes: int, cfg: PartitionConfig, rng: np.random.Generator) -> Indices:
    """A uniform random split into near-equal parts."""
    return np.array_split(rng.permutation(len(labels)), cfg.num_nodes)


def dirichlet(labels: np.ndarray, num_classes: int, cfg: PartitionConfig, rng: np.random.Generator,
              max_tries: int = 1000) -> Indices:
    """Per class, node shares drawn from Dir(alpha); redrawn until every node has `min_size` samples.

    As in the reference code of FedFTG/DENSE (after Hsu et al. 2019), a node already holding more
    than its fair share N/num_nodes gets no more of later classes, which keeps sizes bounded.
    """
    n, nodes = len(labels), cfg.num_nodes
    if nodes * cfg.min_size > n:
        raise ConfigError(f"{nodes} nodes x min_size {cfg.min_size} exceeds the {n} samples; "
                          f"lower --min-size or --num-nodes")
    by_class = [np.flatnonzero(labels == k) for k in range(num_classes)]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(nodes)]
        sizes = np.zeros(nodes, dtype=np.int64)
        for idx_k in by_class:
            idx_k = rng.permutation(idx_k)
            p = rng.dirichlet(np.full(nodes, cfg.alpha)) * (sizes < n / nodes)
            if not np.isfinite(p).all() or p.sum() <= 0:
                # A tiny alpha: the draw underflowed (NaN), or all of it fell on nodes that are full.
                # Its limit is one node per class: one of the nodes still below their fair share.
                open_nodes = np.flatnonzero(sizes < n / nodes)
                p = np.zeros(nodes)
                p[rng.choice(open_nodes if len(open_nodes) else np.arange(nodes))] = 1.0
            cuts = (np.cumsum(p / p.sum()) * len(idx_k)).astype(int)[:-1]
            for j, chunk in enumerate(np.split(idx_k, cuts)):
                parts[j].append(chunk)
                sizes[j] += len(chunk)
        if sizes.min() >= cfg.min_size:
            return [rng.permutation(np.concatenate(p)) for p in parts]
    raise ConfigError(f"dirichlet split with alpha={cfg.alpha} left a node below min_size={cfg.min_size} "
                      f"in {max_tries} draws; raise --alpha or lower --min-size")


def _by_owner(labels: np.ndarray, owners: list[list[int]], nodes: int, rng: np.random.Generator,
              pool: np.ndarray | None = None) -> Indices:
    """Give each class's samples (from `pool`, default all) in equal parts to the nodes owning it."""
    pool = np.arange(len(labels)) if pool is None else pool
    parts: list[list[np.ndarray]] = [[] for _ in range(nodes)]
    for k, holders in enumerate(owners):
        if holders:
            idx_k = rng.permutation(pool[labels[pool] == k])
            for j, chunk in zip(holders, np.array_split(idx_k, len(holders))):
                parts[j].append(chunk)
    return [np.concatenate(p) if p else np.empty(0, dtype=np.int64) for p in parts]


def classes_per_node(labels: np.ndarray, num_classes: int, cfg: PartitionConfig,
                     rng: np.random.Generator) -> Indices:
    """The pathological split: each node holds `classes_per_node` labels (feddistill.txt: 5 x 2).

    Labels are dealt from a shuffled class list in turn, so they are covered as evenly as the
    numbers allow; a label held by several nodes is split equally between them.
    """
    k = cfg.classes_per_node
    if k > num_classes:
        raise ConfigError(f"classes_per_node={k} exceeds the {num_classes} classes")
    order = rng.permutation(num_classes)
    owners: list[list[int]] = [[] for _ in range(num_classes)]
    for node in range(cfg.num_nodes):
        for j in range(k):
            owners[order[(node * k + j) % num_classes]].append(node)
    return _by_owner(labels, owners, cfg.num_nodes, rng)


def label_disjoint(labels: np.ndarray, num_classes: int, cfg: PartitionConfig,
                   rng: np.random.Generator) -> Indices:
    """Nodes hold disjoint label sets covering all labels (one-shot-dataset-distillation.txt §IV-E)."""
    if cfg.num_nodes > num_classes:
        raise ConfigError(f"label-disjoint needs num_nodes <= {num_classes} classes, got {cfg.num_nodes}")
    owners: list[list[int]] = [[] for _ in range(num_classes)]
    for node, group in enumerate(np.array_split(rng.permutation(num_classes), cfg.num_nodes)):
        for k in group:
            owners[k].append(node)
    return _by_owner(labels, owners, cfg.num_nodes, rng)


def mixed(labels: np.ndarray, num_classes: int, cfg: PartitionConfig, rng: np.random.Generator) -> Indices:
    """Half the data uniformly at random, half by class (one-shot-dataset-distillation.txt §IV-D).

    In the by-class half, class k goes to node k mod num_nodes (with more nodes than classes,
    class k is shared by the nodes n with n mod num_classes == k).
    """
    nodes = cfg.num_nodes
    perm = rng.permutation(len(labels))
    uniform, by_class = perm[: len(perm) // 2], perm[len(perm) // 2:]
    if nodes <= num_classes:
        owners = [[k % nodes] for k in range(num_classes)]
    else:
        owners = [[n for n in range(nodes) if n % num_classes == k] for k in range(num_classes)]
    skewed = _by_owner(labels, owners, nodes, rng, pool=by_class)
    return [rng.permutation(np.concatenate([u, s])) for u, s in zip(np.array_split(uniform, nodes), skewed)]


PARTITIONS: dict[str, Callable[..., Indices]] = {
    "iid": iid, "dirichlet": dirichlet, "classes-per-node": classes_per_node,
    "label-disjoint": label_disjoint, "mixed": mixed,
}


@dataclass(frozen=True)
class Partition:
    """Indices into the training split, one array per node, and where they came from."""

    config: PartitionConfig
    data: DataConfig
    num_classes: int
    indices: tuple[np.ndarray, ...]

    @property
    def num_nodes(self) -> int:
        return len(self.indices)

    def label_counts(self, labels: np.ndarray) -> np.ndarray:
        """int64 [num_nodes, num_classes]: how many samples of each label every node holds."""
        return np.stack([np.bincount(labels[idx], minlength=self.num_classes) for idx in self.indices])

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for idx in self.indices:
            h.update(np.asarray(idx, dtype="<i8").tobytes())
            h.update(b"|")
        return h.hexdigest()


def make_partition(labels: np.ndarray | "torch.Tensor", num_classes: int, cfg: PartitionConfig,  # noqa: F821
                   data: DataConfig | None = None) -> Partition:
    """Split sample indices over `cfg.num_nodes` nodes with `cfg.scheme`, seeded by `cfg.seed`."""
    labels = np.asarray(labels)
    if cfg.num_nodes > len(labels):
        raise ConfigError(f"{cfg.num_nodes} nodes but only {len(labels)} samples")
    rng = np.random.default_rng(cfg.seed)
    parts = PARTITIONS[cfg.scheme](labels, num_classes, cfg, rng)
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ConfigError(f"scheme {cfg.scheme!r} left node(s) {empty} empty; use fewer nodes or another scheme")
    return Partition(cfg, data or DataConfig(), num_classes,
                     tuple(np.sort(p).astype(np.int64) for p in parts))


def save_partition(part: Partition, labels: np.ndarray, path: str | Path,
                   class_names: tuple[str, ...] = ()) -> dict:
    """Write the JSON manifest (config, indices, label counts, hash) and, beside it, a PNG of the
    label counts per node; returns the manifest."""
    counts = part.label_counts(np.asarray(labels))
    manifest = {
        "format": "fedinv.partition", "schema_version": 1, "fedinv_version": __version__,
        "config": to_dict(part.config), "data": to_dict(part.data), "seed": part.config.seed,
        "num_nodes": part.num_nodes, "num_classes": part.num_classes, "num_samples": int(len(labels)),
        "class_names": list(class_names), "node_sizes": [int(len(i)) for i in part.indices],
        "label_counts": counts.tolist(), "sha256": part.content_hash(),
        "indices": [i.tolist() for i in part.indices],
    }
    save_json(manifest, path)
    cfg = part.config
    title = f"{part.data.dataset}: {cfg.scheme}" + (f" alpha={cfg.alpha}" if cfg.scheme == "dirichlet" else "")
    save_png(label_count_plot(counts, class_names, title), Path(path).with_suffix(".png"))
    return manifest


def load_partition(path: str | Path) -> Partition:
    """Read a manifest written by `save_partition`, checking its format and hash."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"partition manifest {path} not found; create it with `fedinv partition`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not a JSON partition manifest: {e}") from e
    if manifest.get("format") != "fedinv.partition":
        raise ConfigError(f"{path} is not a fedinv partition manifest (format={manifest.get('format')!r})")
    part = Partition(from_dict(PartitionConfig, manifest["config"]), from_dict(DataConfig, manifest["data"]),
                     manifest["num_classes"], tuple(np.asarray(i, dtype=np.int64) for i in manifest["indices"]))
    if part.content_hash() != manifest["sha256"]:
        raise ConfigError(f"{path}: indices do not match the recorded sha256; the manifest was modified")
    return part
