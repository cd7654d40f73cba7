"""fedinv: one-shot, data-free federated learning by sampling DeepInversion.

The stages under the names of the commands, importable from here (loaded on first use, so that
`import fedinv` stays light):

    from fedinv import (DataConfig, PartitionConfig, TeacherConfig, SynthesisConfig, StudentConfig,
                        load_dataset, make_partition, train_teachers, synthesize, train_student,
                        evaluate_checkpoint, load_model, export_model, run_pipeline, RunConfig,
                        federate, FederatedRunConfig)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.0"

# name -> the module that defines it
API = {
    "DataConfig": "fedinv.config", "PartitionConfig": "fedinv.config",
    "load_dataset": "fedinv.data.datasets", "dataset_info": "fedinv.data.datasets",
    "make_partition": "fedinv.data.partition", "save_partition": "fedinv.data.partition",
    "load_partition": "fedinv.data.partition",
    "TeacherConfig": "fedinv.oneshot.teachers", "train_teachers": "fedinv.oneshot.teachers",
    "import_teacher": "fedinv.oneshot.teacher_files", "TeacherModels": "fedinv.oneshot.teacher_files",
    "SynthesisConfig": "fedinv.oneshot.synthesis.config", "synthesize": "fedinv.oneshot.synthesis.synthesize",
    "StudentConfig": "fedinv.oneshot.student.config", "train_student": "fedinv.oneshot.student.train",
    "RunConfig": "fedinv.oneshot.pipeline", "run_pipeline": "fedinv.oneshot.pipeline",
    "evaluate_checkpoint": "fedinv.evaluate", "load_checkpoint": "fedinv.checkpoint",
    "load_model": "fedinv.export", "export_model": "fedinv.export",
    "FederatedRunConfig": "fedinv.federated.config", "federate": "fedinv.federated.rounds",
}
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name not in API:
        raise AttributeError(f"module 'fedinv' has no attribute {name!r}")
    value = getattr(importlib.import_module(API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
