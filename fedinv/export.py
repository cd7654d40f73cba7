"""A trained model for use without fedinv: `torch.export`'s program (.pt2, loaded with
`torch.export.load(path).module()`, PyTorch alone), or ONNX where the `onnx` and `onnxscript`
packages are installed (`fedinv[onnx]`).

The exported model takes normalized images [B, C, H, W] (any batch size) and returns logits [B, K];
the file carries what a user needs to feed it (`fedinv.json`: the dataset's normalization, image
shape and class names, and where the model came from). TorchScript is not offered: PyTorch 2.13
deprecates `torch.jit.trace` and `torch.jit.load` in favour of `torch.export`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Collection

import torch

from . import __version__
from .checkpoint import MODEL_KINDS, ModelCheckpoint, load_checkpoint
from .errors import ConfigError
from .runtime import atomic_path

FORMATS = ("pt2", "onnx")


def load_model(path: str | Path, device: torch.device | str = "cpu", trust: Collection[str] = ()) -> torch.nn.Module:
    """The model of any fedinv checkpoint (teacher, student or a multi-round run's global model), built
    and in eval mode; `trust` as in `load_checkpoint`."""
    return load_checkpoint(path, kind=MODEL_KINDS, trust=trust).build(device)


def model_facts(ckpt: ModelCheckpoint, source: str) -> dict[str, Any]:
    """What the exported file says about its model: input, normalization, classes, origin."""
    dataset = ckpt.extra.get("dataset") or {}
    return {"fedinv_version": __version__, "source": source, "kind": ckpt.kind, "model": ckpt.model,
            "input": "normalized images [B, C, H, W] (x / 255 - mean) / std", "mean": dataset.get("mean"),
            "std": dataset.get("std"), "class_names": dataset.get("class_names"), "dataset": dataset.get("name")}


def export_model(checkpoint: str | Path | ModelCheckpoint, out: str | Path, fmt: str = "pt2",
                 trust: Collection[str] = ()) -> Path:
    """Write the checkpoint's model to `out` in format `fmt` (FORMATS); returns `out`. Its outputs equal
    the model's in fedinv (same weights, eval mode, on the CPU)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    ckpt = checkpoint if isinstance(checkpoint, ModelCheckpoint) else load_checkpoint(
        checkpoint, kind=MODEL_KINDS, trust=trust)
    model = ckpt.build("cpu").to(memory_format=torch.contiguous_format).eval()
    example = torch.zeros(2, *ckpt.image_shape)
    facts = model_facts(ckpt, str(checkpoint) if not isinstance(checkpoint, ModelCheckpoint) else "memory")
    out = Path(out)
    batch = torch.export.Dim("batch", min=1)
    with atomic_path(out) as tmp:
        if fmt == "pt2":
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
            buffer = io.BytesIO()  # torch.export.save wants a name ending in .pt2; the temporary one does not
            torch.export.save(program, buffer, extra_files={"fedinv.json": json.dumps(facts)})
            tmp.write_bytes(buffer.getvalue())
        else:
            try:
                import onnx
                import onnxscript  # noqa: F401  (torch.onnx's exporter writes through both)
            except ImportError as e:
                raise ConfigError("ONNX export needs the onnx and onnxscript packages: pip install 'fedinv[onnx]' "
                                  "(or pip install onnx onnxscript)") from e
            torch.onnx.export(model, (example,), str(tmp), input_names=["images"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), dynamo=True)
            model_proto = onnx.load(str(tmp))
            entry = model_proto.metadata_props.add()
            entry.key, entry.value = "fedinv.json", json.dumps(facts)
            onnx.save(model_proto, str(tmp))
    return out
