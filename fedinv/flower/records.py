"""Nested dicts of tensors <-> Flower ArrayRecords ("a/b/c" keys; state-dict keys use dots)."""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord

SEP = "/"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in tree.items():
        if SEP in k:
            raise ValueError(f"key {k!r} contains {SEP!r}")
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + SEP))
        elif isinstance(v, torch.Tensor):
            out[key] = v
        else:
            raise TypeError(f"{key}: only tensors and dicts of them travel, got {type(v).__name__}")
    return out


def unflatten(flat: dict[str, torch.Tensor]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, v in flat.items():
        *path, leaf = key.split(SEP)
        node = tree
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def to_record(tree: dict[str, Any]) -> ArrayRecord:
    return ArrayRecord.from_torch_state_dict(flatten(tree))


def from_record(record: ArrayRecord) -> dict[str, Any]:
    # from_numpy shares memory with the record's buffer: clone so later in-place updates are ours
    return unflatten({k: v.clone() for k, v in record.to_torch_state_dict().items()})
