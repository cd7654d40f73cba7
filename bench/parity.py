"""Parity check for refactors: run every stage on synthetic-tiny through the CLI and print the
sha256 of what each wrote, as JSON. Run it before and after a change on the same machine; the
two outputs must be equal (`--compare BEFORE.json` names what differs).

What is hashed is the content, not the file: the tensors of a checkpoint (state_dict, in key
order) and the rows of a store (images, labels, soft labels, source). Files also record the config
and fedinv version that made them, which a refactor may legitimately spell differently.

    python bench/parity.py --out /tmp/parity > before.json
    ... change the code ...
    python bench/parity.py --out /tmp/parity2 --compare before.json

Covers: the teachers, the store of every synthesis method, the student plain / from stored soft
labels / online / with a node's local data, and every multi-round algorithm and server step after
2 rounds. Takes a few minutes on 2 cores (one thread).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import torch

TEACHERS = ["--model", "lenet5", "--epochs", "2", "--batch-size", "32", "--device", "cpu"]
SYNTHESIS = {
    "deepinversion": ["--method", "deepinversion", "--iterations", "8"],
    "fast": ["--method", "fast", "--steps", "3"],
    "dense": ["--method", "dense", "--steps", "3"],
}
STUDENT = ["--model", "lenet5", "--epochs", "2", "--batch-size", "32", "--device", "cpu", "--no-test"]
STUDENTS = {  # name: (store, extra options)
    "plain": ("deepinversion", ["--teachers", "{run}/teachers"]),
    "soft-labels": ("dense", []),
    "online": ("fast", ["--teachers", "{run}/teachers", "--adaptive-batches", "1"]),
    "local": ("deepinversion", ["--teachers", "{run}/teachers", "--local-partition", "{run}/partition.json",
                                "--local-node", "1", "--local-weight", "0.5"]),
}
ALGORITHMS = ["fedavg", "fedprox", "feddyn", "scaffold", "moon", "feddistill", "feddistill-query"]
SERVER_STEPS = ["ftg", "feddf", "fedgen"]
ROUNDS_TOML = """
[data]
dataset = "synthetic-tiny"
[partition]
num_nodes = 3
alpha = 1.0
[federate]
algorithm = "{algorithm}"
server = "{server}"
model = "{model}"
rounds = 2
participation = 1.0
batch_size = 32
device = "cpu"
[generator]
iterations = 2
batch_size = 16
{extra}"""
# where a server step's own settings go: [generator] before fedinv 0.2, the step's table since
STEP_TABLE = "model_steps = 2\nsave_every = 1\n"


@functools.cache
def per_step_tables() -> bool:
    """Whether the fedinv of this checkout (what `python -m fedinv` runs here) keeps a server step's
    settings in its own table ([ftg]) rather than in [generator]."""
    probe = "import fedinv.federated.config as c; print(hasattr(c, 'LEGACY_GENERATOR_KEYS'))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          cwd=os.getcwd()).stdout.strip() == "True"


def step_table(server: str) -> str:
    """The fine-tuning's settings of the runs: in [ftg] / [feddf], or (older fedinv) in [generator]."""
    if not per_step_tables():
        return STEP_TABLE  # goes on under [generator], the last table
    return f"[{server}]\n{STEP_TABLE}" if server in ("ftg", "feddf") else ""


def fedinv(*args: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    cmd = [sys.executable, "-m", "fedinv", "-q", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")


def tensor_digest(h: "hashlib._Hash", t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(str((t.dtype, tuple(t.shape))).encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def checkpoint_hash(path: Path) -> str:
    """sha256 over the tensors of a checkpoint's state_dict (a fedinv model checkpoint or round checkpoint)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    h = hashlib.sha256()

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            h.update(prefix.encode())
            tensor_digest(h, value)
        elif isinstance(value, dict):
            for k in sorted(value, key=str):
                walk(f"{prefix}/{k}", value[k])
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{prefix}/{i}", v)

    walk("", obj["state_dict"] if "state_dict" in obj else obj.get("global", obj))
    return h.hexdigest()


def store_hash(path: Path) -> str:
    """sha256 over the valid rows of a store."""
    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        n = int(f["n_valid"][()])
        for name in ("images", "labels", "soft_labels", "source"):
            h.update(name.encode())
            h.update(f[name][:n].tobytes())
    return h.hexdigest()


def run_all(out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    hashes: dict[str, str] = {}
    fedinv("partition", "--dataset", "synthetic-tiny", "--num-nodes", "3", "--alpha", "1.0",
           "--out", str(out / "partition.json"))
    fedinv("train-teachers", "--partition", str(out / "partition.json"), "--out", str(out / "teachers"),
           "--no-progress", *TEACHERS)
    for p in sorted((out / "teachers").glob("node-*.pt")):
        hashes[f"teacher/{p.name}"] = checkpoint_hash(p)
    for method, options in SYNTHESIS.items():
        store = out / f"{method}.h5"
        fedinv("synthesize", "--teachers", str(out / "teachers"), "--out", str(store), "--num-images", "64",
               "--batch-size", "32", "--device", "cpu", "--no-progress", *options)
        hashes[f"store/{method}"] = store_hash(store)
    for name, (method, extra) in STUDENTS.items():
        store = out / f"student-{name}.h5"
        store.write_bytes((out / f"{method}.h5").read_bytes())
        state = out / f"{method}.h5.state.pt"
        if state.is_file():
            (out / f"student-{name}.h5.state.pt").write_bytes(state.read_bytes())
        fedinv("train-student", "--store", str(store), "--out", str(out / f"student-{name}"), "--no-progress",
               *STUDENT, *[e.format(run=out) for e in extra])
        hashes[f"student/{name}"] = checkpoint_hash(out / f"student-{name}" / "student.pt")
        if name == "online":
            hashes["store/online"] = store_hash(store)
    runs = [(a, "none") for a in ALGORITHMS] + [("fedavg", s) for s in SERVER_STEPS]
    for algorithm, server in runs:
        name = algorithm if server == "none" else f"{algorithm}+{server}"
        model = "lenet5" if server in ("ftg", "feddf") or algorithm == "fedavg" else "gncnn"
        toml = out / f"{name}.toml"
        extra = step_table(server)
        if algorithm == "feddistill-query":
            extra += "[feddistill-query]\nvalidation_size = 100\n"
        toml.write_text(ROUNDS_TOML.format(algorithm=algorithm, server=server, model=model, extra=extra))
        fedinv("federate", str(toml), "--out", str(out / name), "--no-progress")
        hashes[f"rounds/{name}"] = checkpoint_hash(out / name / "global.pt")
        if (out / name / "generated.h5").is_file():
            hashes[f"rounds/{name}/generated"] = store_hash(out / name / "generated.h5")
    return hashes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="scratch folder for the runs (made anew)")
    ap.add_argument("--compare", type=Path, default=None, help="an earlier output of this script to compare with")
    args = ap.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty; choose a new folder")
    torch.set_num_threads(1)
    hashes = run_all(args.out)
    record = {"hashes": hashes, "count": len(hashes)}
    if args.compare is not None:
        before = json.loads(args.compare.read_text())["hashes"]
        record["differ"] = sorted(k for k in set(before) | set(hashes) if before.get(k) != hashes.get(k))
        record["equal"] = len(hashes) - len([k for k in record["differ"] if k in hashes])
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
