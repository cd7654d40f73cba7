"""Devices, precision, named random streams and atomic file writes: the small pieces every stage shares."""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import hashlib
import json
import logging
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable, Collection, Iterator

import torch

from .errors import CheckpointError, ConfigError, RunStateError, unknown

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


STEP_KEYS = ("epoch", "round", "batch")  # what counts a metrics line's step, first found


def tensorboard_writer(folder: str | os.PathLike) -> Any:
    """A `torch.utils.tensorboard.SummaryWriter` into `folder`; a clear error where the optional
    `tensorboard` package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'fedinv[tensorboard]' "
                          "(or pip install tensorboard)") from e
    return SummaryWriter(str(folder))


class MetricsLog:
    """A stage's metrics.jsonl: one JSON line per epoch, round or batch as it finishes, flushed at
    each line, so that `tail -f` follows a run and a killed run keeps what it did. `start(keep)`
    rewrites the file with the lines a resumed run keeps (those of work it will not redo), so a
    resume neither duplicates nor loses a line.

    With `tensorboard` (a folder), every numeric field of every appended line is mirrored there as a
    TensorBoard scalar at the line's step (its epoch, round or batch), under `node-K/` for a line of
    node K; `image` adds a picture at a step."""

    def __init__(self, path: str | os.PathLike, tensorboard: str | os.PathLike | None = None):
        self.path = Path(path)
        self.board = tensorboard_writer(tensorboard) if tensorboard is not None else None

    def lines(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # the line a kill cut short
                continue
        return out

    def start(self, keep: Callable[[dict[str, Any]], bool] = lambda line: False) -> "MetricsLog":
        """Keep the lines `keep` says; the file appears with the first line (a run that fails before
        finishing anything leaves none)."""
        kept = [line for line in self.lines() if keep(line)]
        if not kept:
            self.path.unlink(missing_ok=True)
            return self
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(to_json(line) + "\n" for line in kept))
        return self

    def append(self, line: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(to_json(line) + "\n")
            f.flush()
        if self.board is not None:
            step = next((int(line[k]) for k in STEP_KEYS if k in line), None)
            prefix = f"node-{line['node']}/" if "node" in line else ""
            for key, value in line.items():
                if key not in STEP_KEYS and key != "node" and isinstance(value, (int, float)) \
                        and not isinstance(value, bool) and math.isfinite(value):
                    self.board.add_scalar(prefix + key, value, step)
            self.board.flush()

    def image(self, tag: str, picture: torch.Tensor, step: int) -> None:
        """A [C, H, W] picture in [0, 1] to TensorBoard (nothing without it)."""
        if self.board is not None:
            self.board.add_image(tag, picture, step)
            self.board.flush()

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def progress_bar(iterable: Any = None, *, show: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar, shown only when asked for (`show`) and stderr is a terminal: in a log file (nohup,
    SLURM, CI) a bar would print a stale line with cursor codes at every update."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=None if show else True, **kwargs)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; an explicit choice must exist on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise unknown("device", name, DEVICES)
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but torch sees no CUDA device; use --device cpu or auto")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' asked for, but it is not available; use --device cpu or auto")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `name` on `device`, or None for full fp32.

    'auto' means fp16 with a GradScaler on CUDA, bf16 on a CPU that computes it natively (AMX or
    AVX-512 BF16: 1.5-3x faster than fp32 there) and fp32 on any other CPU (where bf16 is emulated
    and measured 10x slower) or on MPS. Explicit choices run as asked (bf16 on CUDA too).
    """
    if name not in PRECISIONS:
        raise unknown("precision", name, PRECISIONS)
    if name == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_computes_bf16() else None
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs CUDA; on CPU use bf16 or fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """The name of a resolved precision (what artifacts record): fp32, bf16 or fp16."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]


def ran_on(device: torch.device, amp_dtype: torch.dtype | None) -> dict[str, str]:
    """What every artifact records of how it was computed: the device and the precision that ran
    (a config's 'auto' resolved on this machine)."""
    return {"device": str(device), "precision": precision_name(amp_dtype)}


@functools.cache
def cpu_computes_bf16() -> bool:
    """Does this CPU compute bf16 natively (AMX-BF16 or AVX512-BF16 instructions)?

    Read from PyTorch's own CPU feature detection (the instructions oneDNN dispatches on), else
    from /proc/cpuinfo's flags; unknown counts as no. Cached: the CPU does not change.
    """
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        try:
            found = caps()
            return bool(found.get("amx_bf16") or found.get("avx512_bf16"))
        except Exception:  # noqa: BLE001 - a failed detection must not stop a run: read the flags
            pass
    try:
        return bf16_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def bf16_flags(cpuinfo: str) -> bool:
    """Does a /proc/cpuinfo text list a native bf16 instruction set (amx_bf16 or avx512_bf16)?"""
    flags = set(cpuinfo.split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


@enum.unique
class Stream(enum.IntEnum):
    """The one-shot stages' random streams: `rng(seed, Stream.X, ...)`. The numbers are part of every
    seeded result (they are hashed with the seed), so they never change; `enum.unique` refuses two
    names with one number at import, so no two streams of the one-shot mode can meet by accident."""

    TEACHER_INIT_SHARED = 0  # (seed): every node's initial weights when same_init
    TEACHER_INIT = 1  # (seed, node): a node's own initial weights
    TEACHER_DATA = 2  # (seed, node, epoch): data order and augmentation of a teacher's epoch
    SYNTHESIS_BATCH = 3  # (seed, batch): labels, noise, teacher sampling, jitter of one synthetic batch
    STUDENT_EPOCH = 4  # (seed, epoch): store order, augmentation and mixup of a student epoch
    STUDENT_LOCAL_DATA = 5  # (seed, pass): order of a student's local real data
    STUDENT_INIT = 6  # (seed): the student's initial weights
    SYNTHESIS_GENERATOR = 7  # (seed): the initial weights of a fast / dense synthesis generator
    SYNTHESIS_FIXED_TEACHERS = 8  # (seed, batch): the one teacher sample of a batch with fixed_teachers
    STUDENT_RANK_AUGMENT = 9  # (seed, epoch, rank): augmentation of one rank under torchrun (6 before
    # fedinv 0.2, shared with STUDENT_INIT; students trained under torchrun draw other augmentations since)
    SYNTHESIS_BATCH_GENERATOR = 10  # (seed, batch): the fresh generator of one coboost batch
    STUDENT_ODS = 11  # (seed, epoch): the random directions of a student epoch's ODS perturbations
    STUDENT_NODE_WEIGHTS = 12  # (seed, epoch): the pool rows a student epoch learns the node weights on
    ATTACK_INIT = 13  # (seed, node): a simulated dishonest node's random weights (fedinv.attacks)
    CLAIMS_PROBE = 14  # (seed): the probe images the teachers' label claims are checked on


@enum.unique
class RoundStream(enum.IntEnum):
    """The multi-round mode's random streams (`rng(seed, RoundStream.X, ...)`); fixed numbers, as `Stream`."""

    PARTICIPANTS = 3  # (seed, round): which nodes take part
    NODE_ROUND = 4  # (seed, round, node): a node's data order (and FedGen draws) in a round
    SERVER_ROUND = 5  # (seed, round): the server's draws in a round
    GLOBAL_INIT = 6  # (seed): the global model's initial weights
    PERSONAL_INIT = 7  # (seed, node): FedDistill's personal model
    GENERATOR_INIT = 8  # (seed): a server step's generator
    VALIDATION_SPLIT = 9  # (seed): feddistill-query's held-out validation set
    ATTACK_INIT = 10  # (seed, round, node): a simulated dishonest node's random weights (fedinv.attacks)


def rng(seed: int, stream: int, *parts: int) -> torch.Generator:
    """A CPU random generator seeded from `seed`, a `Stream` and further integers (node, epoch, batch...).

    Deriving every stream from (seed, stream, parts) makes a resumed job draw exactly what an
    uninterrupted one would.
    """
    digest = hashlib.sha256(repr((seed, int(stream), *map(int, parts))).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds.

    Nothing half-written is ever left under the final name. One rule for every output: a symlink
    at `path` is replaced (not followed), something that is not a regular file (a folder, a device
    such as /dev/full, a pipe) is refused, and the file gets the mode the umask gives new files.
    """
    path = Path(path)
    if path.exists() and not path.is_symlink() and not path.is_file():
        raise ConfigError(f"{path} exists and is not a regular file (a folder, device or pipe); choose another "
                          f"output path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # as any file this process creates, not mkstemp's 0600
    try:
        yield Path(tmp)
        os.replace(tmp, path)  # a symlink at `path` is replaced, never followed
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, records: Collection[str] = ()) -> Iterator[None]:
    """Hold FOLDER/.fedinv.lock while a command writes into `folder`: a second writer is refused,
    naming the holder's pid (as a store refuses a second `synthesize`). An advisory `flock`, so a
    killed holder releases it with its last breath; the file goes when the holder is done, and so
    does the folder when this call made it and nothing was written into it, or when the command
    failed having written only `records` (files naming the run's settings, such as config.json,
    which would make a corrected rerun into the folder be refused)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".fedinv.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunStateError(f"{folder} is being written by another fedinv process (pid {holder}); wait for it "
                                f"to finish, or choose another output folder") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder before us removed the file as we opened it: lock the new one
    failed = True
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
        failed = False
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)
        if created:
            remove_if_only(folder, records if failed else ())


RUN_RECORDS = ("config.json", "partition.json", "partition.png", "run.log")  # what a run folder gets before any work


@contextlib.contextmanager
def log_file(folder: str | os.PathLike) -> Iterator[None]:
    """While the block runs, what fedinv's loggers print (at the level the command runs at) is also
    appended to FOLDER/run.log, timestamped: a run folder keeps what its commands said."""
    handler = logging.FileHandler(Path(folder) / "run.log", mode="a", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    logger = logging.getLogger("fedinv")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def remove_if_only(folder: Path, records: Collection[str]) -> None:
    """Remove `folder` when it holds no file but those named `records` (at its top; empty
    subfolders go too): a command that failed before it finished any work leaves no folder."""
    files = [p for p in folder.rglob("*") if not p.is_dir()]
    if any(p.parent != folder or p.name not in records for p in files):
        return
    for p in files:
        p.unlink()
    for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        d.rmdir()
    folder.rmdir()


def current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Delete what `atomic_path` left beside `path` when its writer was killed mid-write. Only the
    one writer of `path`, when it starts (or resumes), may call this."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def finite(obj: Any) -> Any:
    """`obj` (nested dicts, lists, tuples) with every NaN or infinite float replaced by None: JSON has
    no such numbers, and `NaN` / `Infinity` in a file breaks every strict reader."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def to_json(obj: Any, **kwargs: Any) -> str:
    """Strict JSON of `obj`: non-finite floats written as null (`finite`)."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)


def save_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(to_json(obj, indent=2) + "\n")


def read_torch(path: str | os.PathLike, what: str = "checkpoint", map_location: Any = "cpu",
               keys: tuple[str, ...] = ()) -> Any:
    """`torch.load(weights_only=True)`: tensors and plain values, never code; every way the file can
    be wrong (missing, empty, not a PyTorch file, truncated, holding Python objects, or, with `keys`,
    a dict without them) is a `CheckpointError` naming the file and `what` it should have been."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} not found")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":  # torch.save's zip, or its legacy pickle
        found = "an empty file" if not head else "no PyTorch file (neither torch.save's zip nor its pickle format)"
        raise CheckpointError(f"{path} is not a readable {what}: {found}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():  # not a refusal: a damaged file
            raise CheckpointError(f"{path} is not a readable {what} (corrupted, truncated or not made by "
                                  f"fedinv): {str(e).strip()[:200]}") from e
        raise CheckpointError(f"{path} is refused as untrusted: it holds Python objects that could run code "
                              f"when loaded, and fedinv reads only files of tensors and plain values "
                              f"(a file from a node is never unpickled in full)") from e
    except Exception as e:  # corrupted zip, truncated file
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path} is not a readable {what} (corrupted, truncated or not made by "
                              f"fedinv): {type(e).__name__}: {first}") from e
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise CheckpointError(f"{path} is not fedinv's {what} (no {', '.join(missing)}); delete it to start "
                              f"over, or choose another output folder")
    return obj


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except (RuntimeError, OSError) as e:  # torch reports a full disk as a RuntimeError of its zip writer
            if isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left" in str(e):
                raise RunStateError(f"the disk holding {path} is full; nothing was written under that name (what "
                                    f"was saved before is intact): free space and run the command again") from e
            raise


def save_png(image: Any, path: str | os.PathLike) -> None:
    """A PIL image to `path` as PNG, atomically (a failed write leaves no 0-byte picture behind)."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
