"""`fedinv synthesize`."""

from __future__ import annotations

from pathlib import Path

import click

from ..checkpoint import MODEL_KINDS, load_checkpoint
from ..config import choice_options, click_options, pick, pick_choice_params
from ..distributed import rank_device, world_from_env
from ..oneshot.synthesis.config import SynthesisConfig
from ..oneshot.synthesis.registry import METHODS, method_class
from ..oneshot.synthesis.synthesize import synthesize_distributed
from ..runtime import resolve_device, to_json
from .parsing import progress_option, tensorboard_option, trust_model_option


@click.command("synthesize")
@click.option("--teachers", "teachers_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="folder of node-K.pt teacher checkpoints (from `fedinv train-teachers`)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="HDF5 store to write (appended batch by batch)")
@click.option("--resume", is_flag=True, hidden=True, help="accepted for old scripts; continuing is the rule")
@click.option("--student", "student_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="adaptive mode: a model checkpoint to compete with (the --a-comp Jensen-Shannon term)")
@progress_option("a progress bar")
@tensorboard_option
@trust_model_option
@click_options(SynthesisConfig)
@choice_options(METHODS, "--method")
def synthesize_cmd(teachers_dir: Path, out: Path, resume: bool, student_path: Path | None, progress: bool,
                   tensorboard: bool, trust: tuple[str, ...], **kwargs) -> None:
    """Synthesize training images from the teachers by sampling DeepInversion.

    One objective, several methods (--method), each with its own options (their help names the
    methods that take them; one that the chosen method does not take is an error).
    deepinversion optimizes each batch's pixels with Adam for --iterations steps. fast refines a
    generator's meta-learned start for --steps steps per batch and moves the start towards the
    result (Fast-Datafree); dense trains one generator on, --steps steps per batch (DENSE). At
    each step --teachers-per-step of the N teachers are sampled and their losses averaged.
    Images, target labels, the teacher ensemble's soft labels and provenance go to the HDF5 store
    OUT, flushed per batch; fast and dense keep their generator in OUT.state.pt beside it (copy
    both to move a store that will be continued). Rerunning the same command continues an
    interrupted OUT (same settings and teachers; the result equals an uninterrupted run) and
    refuses an OUT made with other settings.

    Several processes (deepinversion): `torchrun --nproc-per-node K -m fedinv synthesize ...`
    splits the batches over K ranks (gloo on CPU, one GPU each on CUDA); rank 0 merges their
    shards into OUT, which then holds what one process would have written.
    """
    method = method_class(kwargs["method"]).name  # names the registered methods when unknown
    cfg = pick(SynthesisConfig, {**kwargs, "params": pick_choice_params(METHODS, method, kwargs, "--method")})
    world = world_from_env()
    student = None
    if student_path is not None:
        student = load_checkpoint(student_path, kind=MODEL_KINDS).build(
            resolve_device(rank_device(cfg.device, world)))
    stats = synthesize_distributed(teachers_dir, out, cfg, student=student, progress=progress,
                                   world=world, trust=trust, tensorboard=tensorboard)
    if world.rank == 0:
        click.echo(to_json({"out": str(out), **stats}, indent=2))
