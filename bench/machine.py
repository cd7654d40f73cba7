"""Which machine a benchmark ran on: seeded figures move by about a point between CPU types and
speeds by about 2x, so every record says where it was measured."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from fedinv.runtime import cpu_computes_bf16, resolve_device


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what `platform` knows), with ", AVX-512" where
    the CPU has it (what moves seeded results between Intel and AMD machines)."""
    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.is_file() else ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    name = names[0] if names else (platform.processor() or platform.machine())
    return f"{name}, AVX-512" if "avx512f" in text.split() else name


def describe(device: str | torch.device) -> dict:
    """The record's `machine` field: CPU, cores, threads torch uses, whether the CPU computes bf16
    natively (what --precision auto chooses by), the device ("auto" resolved), platform and torch."""
    return {"cpu": cpu_name(), "cpu_cores": os.cpu_count(), "cpu_threads": torch.get_num_threads(),
            "cpu_bf16": cpu_computes_bf16(),
            "device": str(resolve_device(device) if device == "auto" else device), "platform": platform.platform(), "torch": torch.__version__}
