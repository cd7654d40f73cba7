"""The bad-input sweep (issue 37): every numeric option of every command, every numeric TOML field
of `run` and `federate`, and a set of hostile files and paths, tried on tiny generated data.

    python -m tests.sweep_bad_inputs [--out sweep.json]

Each case runs in-process through the CLI and is classed as
- clear:    exit 2 with one line starting "error:" (or click's usage error), and nothing new under the
            output, or only work that a plain rerun (the valid command into the same output) continues;
- accepted: exit 0 (listed, to be judged by eye: an odd but valid value is fine);
- defect:   anything else (a traceback, another exit code, a file left under the output).
Not a test (it takes minutes): the classes it found each have a test under tests/.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import tempfile
import traceback
from collections import Counter
from pathlib import Path

import click
import torch
from click.testing import CliRunner

from fedinv.cli.main import cli

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "assets" / "configs" / "tiny.toml"
ROUNDS = ["[data]", 'dataset = "synthetic-tiny"', "[partition]", "num_nodes = 3", "alpha = 1.0", "[federate]",
          'model = "lenet5"', "rounds = 1", "batch_size = 32"]
NUMBERS = ["-1", "0", "nan", "inf", "1e20", "abc", "1000000000000"]


def invoke(args: list[str], out: Path | None, seconds: int = 120, rerun: list[str] | None = None) -> dict:
    before = set(out.parent.rglob("*")) if out is not None else set()

    def alarm(*_):
        raise TimeoutError(f"ran past {seconds} s")

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        res = CliRunner().invoke(cli, ["-q", *args], catch_exceptions=True)
        code, output, exc = res.exit_code, res.output, res.exception
    except TimeoutError as e:
        code, output, exc = -1, str(e), e
    finally:
        signal.alarm(0)
    left = sorted(str(p) for p in set(out.parent.rglob("*")) - before) if out is not None else []
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    one_line = code == 2 and (len(lines) == 1 and lines[0].startswith("error:") or "Error:" in output)
    if one_line and left and rerun is not None:  # kept work (teachers, a store) is fine if a plain rerun takes it
        if invoke(rerun, None, seconds)["exit"] == 0:
            left = []
    if one_line and not left:
        verdict = "clear"
    elif code == 0:
        verdict = "accepted"
    else:
        verdict = "defect"
    tb = "".join(traceback.format_exception(exc))[-600:] if exc is not None and code not in (0, 2) else None
    return {"args": args, "exit": code, "verdict": verdict, "output": output.strip()[-300:], "left": left[:5],
            "traceback": tb}


def fixtures(root: Path) -> dict[str, Path]:
    """A finished tiny one-shot run (partition, teachers, store, student) and a tiny federate TOML."""
    run = root / "run"
    res = CliRunner().invoke(cli, ["-q", "run", str(TINY), "--out", str(run), "--no-progress"])
    assert res.exit_code == 0, res.output
    (root / "rounds.toml").write_text("\n".join(ROUNDS) + "\n")
    return {"run": run, "partition": run / "partition.json", "teachers": run / "teachers",
            "store": run / "synthetic.h5", "student": run / "student" / "student.pt", "rounds": root / "rounds.toml"}


def base_args(command: str, f: dict[str, Path], out: Path) -> list[str] | None:
    """A valid invocation of `command` on the fixtures, writing to `out` (None: not swept by option)."""
    common = ["--device", "cpu"]
    return {
        "partition": ["partition", "--dataset", "synthetic-tiny", "--num-nodes", "3", "--out", str(out / "p.json")],
        "train-teachers": ["train-teachers", "--partition", str(f["partition"]), "--out", str(out), "--epochs", "1",
                           "--model", "lenet5", "--no-progress", *common],
        "synthesize": ["synthesize", "--teachers", str(f["teachers"]), "--out", str(out / "s.h5"), "--num-images",
                       "8", "--batch-size", "8", "--iterations", "1", "--no-progress", *common],
        "train-student": ["train-student", "--store", str(f["store"]), "--teachers", str(f["teachers"]), "--out",
                          str(out), "--epochs", "1", "--model", "lenet5", "--no-progress", *common],
        "evaluate": ["evaluate", str(f["student"]), "--out", str(out / "e.json"), *common],
        "audit": ["audit", "--store", str(f["store"]), "--reference", str(f["student"]), "--out", str(out / "a.json"),
                  *common],
        "view": ["view", str(f["store"]), "--out", str(out / "v.png")],
        "federate": ["federate", str(f["rounds"]), "--out", str(out), "--no-progress"],
        "run": ["run", str(TINY), "--out", str(out), "--no-progress"],
    }.get(command)


def numeric_options(command: str) -> list[str]:
    params = cli.commands[command].params
    return [p.opts[-1] for p in params if isinstance(p, click.Option) and not p.is_flag
            and isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType, click.IntRange,
                                    click.FloatRange))]


def toml_fields(command: str) -> list[str]:
    """TABLE.FIELD of every numeric field of the command's config."""
    from fedinv.federated.config import FederatedRunConfig
    from fedinv.oneshot.pipeline import RunConfig
    import dataclasses

    def walk(cfg_type, prefix):
        for fld in dataclasses.fields(cfg_type):
            value = fld.default_factory() if callable(fld.default_factory) else fld.default
            if dataclasses.is_dataclass(value):
                yield from walk(type(value), f"{prefix}{fld.name}.")
            elif fld.type in ("int", "float", int, float):
                yield f"{prefix}{fld.name}"

    return list(walk(RunConfig if command == "run" else FederatedRunConfig, ""))


def cases(f: dict[str, Path], scratch: Path):
    n = 0
    for command in ("partition", "train-teachers", "synthesize", "train-student", "evaluate", "audit", "view",
                    "federate", "run"):
        for opt in numeric_options(command):
            for value in NUMBERS:
                out = scratch / f"c{n}" / "out"
                out.parent.mkdir(parents=True)
                n += 1
                base = base_args(command, f, out)
                yield command, f"{opt} {value}", base + [opt, value], out, base
        if command in ("run", "federate"):
            for field in toml_fields(command):
                for value in ("-1", "nan", "inf", "1e20"):
                    out = scratch / f"c{n}" / "out"
                    out.parent.mkdir(parents=True)
                    n += 1
                    args = base_args(command, f, out) + ["--set", f"{field}={value}"]
                    yield command, f"--set {field}={value}", args, out, base_args(command, f, out)
    # files that are not what they claim, outputs that are not files
    junk = scratch / "junk"
    junk.mkdir()
    (junk / "random.pt").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    (junk / "empty.pt").write_bytes(b"")
    (junk / "text.h5").write_text("not HDF5")
    (junk / "notutf8.toml").write_bytes(b"\xff\xfe[data]\n")
    (junk / "scalar.toml").write_text("teachers = 3\n")
    for i, (command, what, args) in enumerate([
        ("evaluate", "random .pt", ["evaluate", str(junk / "random.pt"), "--device", "cpu"]),
        ("evaluate", "empty .pt", ["evaluate", str(junk / "empty.pt"), "--device", "cpu"]),
        ("view", "text as store", ["view", str(junk / "text.h5")]),
        ("audit", "text as store", ["audit", "--store", str(junk / "text.h5"), "--reference", str(f["student"])]),
        ("run", "TOML not UTF-8", ["run", str(junk / "notutf8.toml")]),
        ("run", "scalar for a table", ["run", str(junk / "scalar.toml")]),
        ("train-student", "text as store", ["train-student", "--store", str(junk / "text.h5"), "--out",
                                            str(scratch / "j-student" / "out")]),
        ("synthesize", "random .pt as teachers", ["synthesize", "--teachers", str(junk), "--out",
                                                  str(scratch / "j-synth" / "s.h5")]),
        ("view", "--out /dev/full", ["view", str(f["store"]), "--out", "/dev/full"]),
        ("train-student", "onto a finished student of other settings",
         ["train-student", "--store", str(f["store"]), "--out", str(f["run"] / "student"), "--epochs", "2",
          "--device", "cpu", "--no-progress"]),
    ]):
        out = scratch / f"j{i}" / "out"
        out.parent.mkdir(parents=True, exist_ok=True)
        yield command, what, args, out, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("sweep.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        f = fixtures(root)
        records = []
        for command, what, args, out, rerun in cases(f, root / "cases"):
            r = invoke(args, out, rerun=rerun)
            records.append({"command": command, "case": what, **r})
            print(f"{r['verdict']:8} {command:14} {what}", flush=True)
    per = {}
    for r in records:
        per.setdefault(r["command"], Counter())[r["verdict"]] += 1
    summary = {c: dict(v) for c, v in per.items()}
    total = Counter(r["verdict"] for r in records)
    a.out.write_text(json.dumps({"summary": summary, "total": dict(total), "records": records}, indent=1,
                                default=lambda x: None if isinstance(x, float) and not math.isfinite(x) else str(x)))
    print(json.dumps({"total": dict(total), "per_command": summary}, indent=1))


if __name__ == "__main__":
    main()
