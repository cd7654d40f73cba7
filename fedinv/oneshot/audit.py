"""Synthetic-data audit (fedftg-supplementary.txt §1.1, Figure 2): does a reference classifier
agree with the labels the images were synthesized for, and how sure is the teacher ensemble?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..checkpoint import load_checkpoint
from ..errors import ConfigError
from ..store import read_meta, read_rows


@torch.no_grad()
def audit_store(store: str | Path, reference: str | Path, device: torch.device, teachers=None,
                batch_size: int = 512) -> dict[str, Any]:
    """Per class: the share of images the reference assigns to their label, and the ensemble's
    mean probability of that label (from `teachers`, a TeacherEnsemble, if given, else the stored soft
    labels)."""
    meta = read_meta(store)
    ref = load_checkpoint(reference, num_classes=meta["num_classes"], image_shape=tuple(meta["image_shape"]))
    trained_on = ref.dataset_info.name if ref.dataset_info is not None else None
    if trained_on is not None and trained_on != meta["dataset"]["name"]:
        raise ConfigError(f"the reference {reference} was trained on {trained_on}, the store holds "
                          f"{meta['dataset']['name']} images: an audit needs a reference of the store's dataset")
    model = ref.build(device)
    images, labels, soft = read_rows(store)
    if len(labels) == 0:
        raise ConfigError(f"{store} holds no images yet")
    mean = torch.tensor(meta["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"], device=device).view(1, -1, 1, 1)
    agree, confidence = [], []
    for start in range(0, len(labels), batch_size):
        x = (images[start:start + batch_size].to(device).float() / 255 - mean) / std
        y = labels[start:start + batch_size].to(device)
        agree.append((model(x).argmax(1) == y).cpu())
        probs = (teachers.ensemble_probs(x) if teachers is not None
                 else stored_probs(soft[start:start + batch_size].to(device)))
        confidence.append(probs.gather(1, y[:, None]).squeeze(1).cpu())
    agree_t, conf_t = torch.cat(agree).float(), torch.cat(confidence)
    k = meta["num_classes"]
    per_class = []
    for c in range(k):
        sel = labels == c
        n = int(sel.sum())
        per_class.append({"class": c, "name": meta["dataset"]["class_names"][c], "images": n,
                          "reference_agreement": float(agree_t[sel].mean()) if n else float("nan"),
                          "ensemble_confidence": float(conf_t[sel].mean()) if n else float("nan")})
    return {"fedinv_version": __version__, "store": str(store), "reference": str(reference),
            "images": int(len(labels)), "reference_agreement": float(agree_t.mean()),
            "ensemble_confidence": float(conf_t.mean()),
            "ensemble_source": "teachers" if teachers is not None else "stored soft labels",
            "per_class": per_class}


def stored_probs(soft: torch.Tensor) -> torch.Tensor:
    """The probabilities [B, K] of stored soft labels. Stores hold normalized log-probabilities;
    stores written before that fix hold the logs of the unnormalized class-level ensemble. softmax
    reads both the same way (as KD does, which only sees differences within a row)."""
    return soft.float().softmax(-1)
