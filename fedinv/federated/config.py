"""The configs of a multi-round run: the rounds and the nodes' local update (`FederateConfig`),
the server step's generator (`GeneratorConfig`), and the algorithm's own hyperparameters (the
`Params` dataclass its file registers, TOML table `[<algorithm name>]`), together in
`FederatedRunConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..config import DataConfig, PartitionConfig, at_least, check_choice, from_dict, load_toml, option, to_dict
from ..errors import ConfigError
from .registry import ALGORITHMS, algorithm_class, server_step_class


@dataclass(frozen=True)
class FederateConfig:
    """Multi-round federated training (`fedinv federate`): the rounds and the nodes' local update.
    Defaults follow the FedFTG reference code (DESIGN.md) where it has one, scaled to a 2-core CPU
    (1 local epoch instead of 5). The algorithm's own constants go in its table (e.g. [fedprox])."""

    algorithm: str = option("fedavg", "local update and aggregation: fedavg, fedprox, feddyn, scaffold (control "
                            "variates), moon (model-contrastive), feddistill (a personal model per node distills "
                            "into the global copy), feddistill-query (the server distills the nodes' models on a "
                            "held-out validation set instead of averaging); its constants in table [ALGORITHM]")
    server: str = option("none", "server step after aggregation: none, ftg (FedFTG: generator + fine-tuning), "
                         "feddf (ensemble distillation on generated images), fedgen (feature generator shared "
                         "with the nodes)")
    model: str = option("bncnn", "model name from the registry (see `fedinv models`)")
    rounds: int = option(50, "communication rounds (a finished run resumed with more rounds is extended: "
                                 "nothing in a round depends on the total)", runtime=True)
    participation: float = option(0.5, "fraction of the nodes taking part in each round (at least one)")
    local_epochs: int = option(1, "epochs over its split each participating node runs per round")
    batch_size: int = option(50, "local minibatch size")
    augment: bool = option(False, "random crop (and flip where the dataset allows) of the local batches")
    lr: float = option(0.05, "local SGD learning rate")
    lr_decay: float = option(0.998, "local learning rate multiplied by this every round")
    momentum: float = option(0.0, "local SGD momentum (0: plain SGD, as SCAFFOLD and FedDyn assume)")
    weight_decay: float = option(1e-3, "local SGD weight decay")
    server_lr: float = option(1.0, "global step size on the averaged update (1 = plain averaging)")
    eval_every: int = option(1, "evaluate the global model every k rounds (and after the last)", runtime=True)
    diagnose_images: int = option(0, "on every evaluated round, also the accuracy of the aggregate before the server "
                                  "step and of the round's class-level ensemble of local models (is there anything "
                                  "to distill?), on the first N test images; 0: off", runtime=True)
    precision: str = option("auto", "mixed precision: auto (fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16",
                            choices=("auto", "fp32", "bf16", "fp16"))
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps", runtime=True)
    seed: int = option(0, "random seed of initialization, node sampling and data order")

    def __post_init__(self) -> None:
        algorithm_class(self.algorithm)  # names the registered ones when unknown
        server_step_class(self.server)
        check_choice(self, "precision")
        at_least(self, 1, "rounds", "local_epochs", "batch_size", "eval_every")
        at_least(self, 0, "diagnose_images")
        if not 0 < self.participation <= 1:
            raise ConfigError(f"participation must be in (0, 1], got {self.participation}")
        if not self.lr > 0 or not self.server_lr > 0:
            raise ConfigError(f"lr and server_lr must be > 0, got {self.lr}, {self.server_lr}")


@dataclass(frozen=True)
class GeneratorConfig:
    """The server's generator step (FedFTG, FedDF, FedGen). Defaults from the FedFTG reference code:
    10 iterations per round of 1 generator step and 5 global-model steps, generator Adam 0.01,
    global SGD 0.1 on a loss averaged over the classes (0.01 on fedinv's per-sample KL), both decayed
    by 0.998 per round; its class-level ensemble weighs the models by their share of the sample's label."""

    iterations: int = option(10, "server iterations per round")
    generator_steps: int = option(1, "generator updates per iteration")
    model_steps: int = option(5, "global-model updates per iteration (ftg, feddf)")
    batch_size: int = option(64, "generated samples per step")
    nz: int = option(100, "noise dimension")
    generator_lr: float = option(0.01, "generator Adam learning rate")
    model_lr: float = option(0.01, "global-model SGD learning rate of the fine-tuning (the reference code's 0.1 "
                             "on a loss averaged over the classes as well as the batch is 0.1 / K on ours: "
                             "0.01 for 10 classes)")
    lr_decay: float = option(0.998, "both learning rates multiplied by this every round")
    per_model_steps: bool = option(False, "ftg, feddf: each generator update is one Adam step per local model on "
                                          "its part of the loss (its CE and hard-sample mining weighted by its "
                                          "share of each sample's label), as the reference code does, instead of "
                                          "one step on the whole ensemble's")
    lambda_md: float = option(1.0, "ftg: weight of hard-sample mining (maximize KL(ensemble || global))")
    lambda_div: float = option(1.0, "weight of the diversity term (divided by the number of local models)")
    temperature: float = option(1.0, "KD temperature of the fine-tuning")
    ensemble: str = option("label", "ftg: the class-level ensemble the generator and the fine-tuning use: label "
                           "(each model's probabilities weighted by its share of the sample's label, and the "
                           "fidelity the share-weighted sum of the models' own CEs, as the reference code) or "
                           "class (each model's logit for class k weighted by its share of class k)",
                           choices=("class", "label"), before="class")
    bn_stats: str = option("batches", "ftg, feddf: the global model's BN running statistics after the fine-tuning: "
                           "batches (they follow the generated batches, as in the reference code's train mode), "
                           "aggregate (the aggregate's, i.e. the nodes' averaged real-data statistics, are "
                           "put back) or eval (the fine-tuning runs in eval mode: the aggregate's statistics "
                           "normalize the generated batches and stay)", choices=("batches", "aggregate", "eval"))
    generator_ema: float = option(0.0, "ftg, feddf: the fine-tuning draws its samples from an exponential moving "
                                       "average of the generator's weights, updated after every generator step with "
                                       "this decay and kept across rounds (DFRD's EMA generator); 0 = from the "
                                       "generator itself, as the reference code")
    fedgen_weight: float = option(1.0, "fedgen: weight of the nodes' CE on generated features")
    save_every: int = option(0, "ftg, feddf: append a batch of generated images (with the round's ensemble "
                                "soft labels) to OUT/generated.h5 every k rounds, for `fedinv view` (0 = never)")

    def __post_init__(self) -> None:
        check_choice(self, "bn_stats")
        check_choice(self, "ensemble")
        at_least(self, 1, "iterations", "generator_steps", "batch_size", "nz")
        at_least(self, 0, "model_steps", "save_every")
        if not 0.0 <= self.generator_ema < 1.0:
            raise ConfigError(f"generator_ema must be in [0, 1), got {self.generator_ema}")
        if not self.generator_lr > 0 or not self.model_lr > 0 or not self.temperature > 0:
            raise ConfigError("generator_lr, model_lr and temperature must be > 0")


@dataclass(frozen=True)
class NoParams:
    """An algorithm without constants of its own."""


SECTIONS = {"data": DataConfig, "partition": PartitionConfig, "federate": FederateConfig,
            "generator": GeneratorConfig}


@dataclass(frozen=True)
class FederatedRunConfig:
    """A multi-round run: TOML tables [data], [partition], [federate], [generator] and the chosen
    algorithm's table (e.g. [fedprox] mu = 1e-4); each may set any field of its config and leaves
    the rest at their defaults. `params` None means the algorithm's defaults."""

    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=lambda: PartitionConfig(num_nodes=10, alpha=0.3))
    federate: FederateConfig = field(default_factory=FederateConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    params: Any = None

    def __post_init__(self) -> None:
        algo = algorithm_class(self.federate.algorithm)
        if self.params is None:
            object.__setattr__(self, "params", algo.Params())
        if not isinstance(self.params, algo.Params):
            raise ConfigError(f"{algo.name} takes {algo.Params.__name__}, not {type(self.params).__name__}")
        if algo.replaces_aggregation and self.federate.server != "none":
            raise ConfigError(f"{algo.name} replaces aggregation by distillation; server must be none")

    @classmethod
    def from_toml(cls, path: str | Path, overrides: Sequence[str] = ()) -> "FederatedRunConfig":
        """From a TOML file, with "table.field=value" `overrides` on top."""
        raw = load_toml(path, overrides)
        extra = set(raw) - set(SECTIONS) - set(ALGORITHMS)
        if extra:
            raise ConfigError(f"{path}: unknown table(s) {sorted(extra)}; known: "
                              f"{', '.join([*SECTIONS, *sorted(ALGORITHMS)])}")
        for name in set(raw) & set(ALGORITHMS):  # every algorithm table is checked, used or not
            from_dict(ALGORITHMS[name].Params, raw[name])
        return cls.from_dict(raw, defaults=cls())

    @classmethod
    def from_dict(cls, raw: dict[str, Any], defaults: "FederatedRunConfig | None" = None) -> "FederatedRunConfig":
        """From `to_dict`'s form (a run folder's config.json, a checkpoint's "config"), or a TOML's
        tables over `defaults`. Constants that older fedinv kept in [federate] (mu, feddyn_alpha,
        distill_temperature, ...) go to the algorithm they belong to, and are dropped for others."""
        saved, base = defaults is None, defaults or cls()

        def section(name: str, given: dict[str, Any]) -> Any:
            # a saved config without a field added later stands for the field's `before`, not its default
            fields = {f.name: f for f in dataclasses.fields(SECTIONS[name])}
            under = {k: v for k, v in to_dict(getattr(base, name)).items()
                     if not (saved and k not in given and "before" in fields[k].metadata)}
            return from_dict(SECTIONS[name], {**under, **given})

        federate = dict(raw.get("federate", {}))
        legacy = {k: federate.pop(k) for k in LEGACY_KEYS if k in federate}
        sections = {name: section(name, raw.get(name) or {}) for name in SECTIONS if name != "federate"}
        sections["federate"] = section("federate", federate)
        algo = algorithm_class(sections["federate"].algorithm)
        values = {new: legacy[old] for old, new in getattr(algo, "legacy", {}).items() if old in legacy}
        values.update(raw.get(algo.name) or {})
        return cls(**sections, params=from_dict(algo.Params, values))

    def to_dict(self) -> dict[str, Any]:
        return {**{name: to_dict(getattr(self, name)) for name in SECTIONS}, self.federate.algorithm: to_dict(self.params)}

    def with_algorithm(self, algorithm: str, **federate: Any) -> "FederatedRunConfig":
        """The same run with another algorithm (at its default constants) and `federate` changes."""
        fc = dataclasses.replace(self.federate, algorithm=algorithm, **federate)
        return dataclasses.replace(self, federate=fc, params=algorithm_class(algorithm).Params())


# [federate] keys of fedinv before per-algorithm tables, and the algorithm field each became.
LEGACY_KEYS = ("mu", "feddyn_alpha", "moon_temperature", "distill_temperature", "distill_weight", "personal_model",
               "validation_size", "server_epochs")


def method_name(fc: FederateConfig) -> str:
    """"fedavg+ftg", "scaffold", ...: the algorithm and its server step."""
    return fc.algorithm + ("" if fc.server == "none" else "+" + fc.server)


__all__ = ["FederateConfig", "GeneratorConfig", "FederatedRunConfig", "NoParams", "method_name"]
