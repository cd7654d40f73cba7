"""The configs of a multi-round run: the rounds and the nodes' local update (`FederateConfig`),
the server step's generator (`GeneratorConfig`), and the algorithm's own hyperparameters (the
`Params` dataclass its file registers, TOML table `[<algorithm name>]`), together in
`FederatedRunConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..aggregate import AGGREGATIONS, SELECTIVE, krum_min_participants
from ..attacks import AttackConfig
from ..config import (COUNT, FRACTION, LEARNING_RATE, MOMENTUM, SEED, SIZE, WEIGHT, DataConfig, PartitionConfig, Range,
                      check_fields, device_option, from_dict, load_toml, option, precision_option, table, to_dict)
from ..errors import ConfigError
from .registry import ALGORITHMS, SERVER_STEPS, algorithm_class, server_step_class


@dataclass(frozen=True)
class FederateConfig:
    """Multi-round federated training (`fedinv federate`): the rounds and the nodes' local update.
    Defaults follow the FedFTG reference code (ZhangLin-PKU/FedFTG) where it has one, scaled to a 2-core CPU
    (1 local epoch instead of 5). The algorithm's own constants go in its table (e.g. [fedprox])."""

    algorithm: str = option("fedavg", "local update and aggregation: fedavg, fedprox, feddyn, scaffold (control "
                            "variates), moon (model-contrastive), feddistill (a personal model per node distills "
                            "into the global copy), feddistill-query (the server distills the nodes' models on a "
                            "held-out validation set instead of averaging); its constants in table [ALGORITHM]")
    server: str = option("none", "server step after aggregation: none, ftg (FedFTG: generator + fine-tuning), "
                         "feddf (ensemble distillation on generated images), fedgen (feature generator shared "
                         "with the nodes)")
    model: str = option("bncnn", "model: a registry name (see `fedinv models`) or a MODULE:FACTORY such as "
                        "torchvision.models:resnet18 (with --trust-model naming it)")
    rounds: int = option(50, "communication rounds (a finished run resumed with more rounds is extended: "
                                 "nothing in a round depends on the total)", runtime=True, valid=COUNT)
    participation: float = option(0.5, "fraction of the nodes taking part in each round (at least one)",
                                  valid=FRACTION)
    local_epochs: int = option(1, "epochs over its split each participating node runs per round", valid=COUNT)
    batch_size: int = option(50, "local minibatch size", valid=COUNT)
    augment: bool = option(False, "random crop (and flip where the dataset allows) of the local batches")
    lr: float = option(0.05, "local SGD learning rate", valid=LEARNING_RATE)
    lr_decay: float = option(0.998, "local learning rate multiplied by this every round", valid=FRACTION)
    momentum: float = option(0.0, "local SGD momentum (0: plain SGD, as SCAFFOLD and FedDyn assume)", valid=MOMENTUM)
    weight_decay: float = option(1e-3, "local SGD weight decay", valid=WEIGHT)
    server_lr: float = option(1.0, "global step size on the averaged update (1 = plain averaging)", valid=LEARNING_RATE)
    aggregation: str = option("mean", "how the participants' models are combined: mean (weighted by the sizes the "
                              "nodes report), or a rule that ignores the reported sizes and bounds what one poisoned "
                              "model can do: trimmed-mean (per coordinate, drop the `trim` fraction at each end), "
                              "median (per coordinate), krum (the model closest to its neighbours), multi-krum (the "
                              "mean of all but the `byzantine` models farthest from their neighbours)",
                              choices=AGGREGATIONS)
    trim: float = option(0.2, "trimmed-mean: fraction of the participants dropped at each end, per coordinate",
                         valid=Range(0, 0.5, high_open=True))
    byzantine: int = option(1, "krum, multi-krum: how many malicious participants it tolerates (needs more than "
                            "2f + 2 participants)", valid=SIZE)
    krum_threshold: float = option(0.0, "multi-krum: leave out one of the `byzantine` farthest models only where its "
                                   "Krum score is above this many times the participants' median score, so that an "
                                   "honest round averages every model (0: always leave them out, the paper's rule)",
                                   valid=WEIGHT)
    size_cap: float = option(0.0, "mean, multi-krum: cap each participant's reported size at this many times the "
                             "participants' median before it weighs the mean, and have multi-krum weigh the models it "
                             "keeps by those sizes instead of equally (0: no cap; multi-krum unweighted, the paper's "
                             "rule; else at least 1)", valid=WEIGHT)
    eval_every: int = option(1, "evaluate the global model every k rounds (and after the last)", runtime=True,
                             valid=COUNT)
    diagnose_images: int = option(0, "on every evaluated round, also the accuracy of the aggregate before the server "
                                  "step and of the round's class-level ensemble of local models (is there anything "
                                  "to distill?), on the first N test images; 0: off", runtime=True, valid=SIZE)
    precision: str = precision_option()
    device: str = device_option()
    seed: int = option(0, "random seed of initialization, node sampling and data order", valid=SEED)

    def __post_init__(self) -> None:
        algorithm_class(self.algorithm)  # names the registered ones when unknown
        server_step_class(self.server)
        check_fields(self)
        if 0 < self.size_cap < 1:
            raise ConfigError(f"size_cap = {self.size_cap}: 0 (no cap) or at least 1 (x the median reported size)")


@dataclass(frozen=True)
class GeneratorConfig:
    """The generator every server step trains (FedFTG, FedDF, FedGen), table [generator]; what a step
    does with it is in the step's own table ([ftg], [feddf], [fedgen]). Defaults from the FedFTG
    reference code: 10 iterations per round of 1 generator step, generator Adam 0.01 decayed by
    0.998 per round."""

    iterations: int = option(10, "server iterations per round", valid=COUNT)
    generator_steps: int = option(1, "generator updates per iteration", valid=COUNT)
    batch_size: int = option(64, "generated samples per step", valid=COUNT)
    nz: int = option(100, "noise dimension", valid=Range(1, 65536))
    generator_lr: float = option(0.01, "generator Adam learning rate", valid=LEARNING_RATE)
    lr_decay: float = option(0.998, "the server step's learning rates multiplied by this every round",
                             valid=FRACTION)
    lambda_div: float = option(1.0, "weight of the diversity term (divided by the number of local models)",
                               valid=WEIGHT)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class NoParams:
    """An algorithm without constants of its own."""


SECTIONS = {"data": DataConfig, "partition": PartitionConfig, "federate": FederateConfig,
            "generator": GeneratorConfig, "attack": AttackConfig}


def round_size(num_nodes: int, participation: float) -> int:
    """How many of the N nodes take part in a round: max(1, round(participation * N))."""
    return max(1, int(round(participation * num_nodes)))


@dataclass(frozen=True)
class FederatedRunConfig:
    """A multi-round run: TOML tables [data], [partition], [federate], [generator], [attack] (simulated
    dishonest nodes, none by default), the chosen algorithm's table (e.g. [fedprox] mu = 1e-4) and the
    chosen server step's (e.g. [ftg] lambda_md = 1.0); each may set any field of its config and
    leaves the rest at their defaults. `params` / `server_params` None mean the algorithm's / the
    server step's defaults."""

    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=lambda: PartitionConfig(num_nodes=10, alpha=0.3))
    federate: FederateConfig = field(default_factory=FederateConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    params: Any = None
    server_params: Any = None
    attack: AttackConfig = field(default_factory=AttackConfig)

    def __post_init__(self) -> None:
        algo = algorithm_class(self.federate.algorithm)
        if self.params is None:
            object.__setattr__(self, "params", algo.Params())
        if not isinstance(self.params, algo.Params):
            raise ConfigError(f"{algo.name} takes {algo.Params.__name__}, not {type(self.params).__name__}")
        step = server_step_class(self.federate.server)
        if step is None:
            if self.server_params is not None:
                raise ConfigError(f"server none takes no settings, got {type(self.server_params).__name__}")
        else:
            if self.server_params is None:
                object.__setattr__(self, "server_params", step.Params())
            if not isinstance(self.server_params, step.Params):
                raise ConfigError(f"server step {step.name} takes {step.Params.__name__}, not "
                                  f"{type(self.server_params).__name__}")
        if algo.replaces_aggregation and self.federate.server != "none":
            raise ConfigError(f"{algo.name} replaces aggregation by distillation; server must be none")
        if algo.replaces_aggregation and self.federate.aggregation != "mean":
            raise ConfigError(f"{algo.name} replaces aggregation by distillation; aggregation must be mean")
        m, f = round_size(self.partition.num_nodes, self.federate.participation), self.federate.byzantine
        if self.federate.aggregation in SELECTIVE and m < krum_min_participants(f):
            raise ConfigError(f"{self.federate.aggregation} with byzantine = {f} needs more than "
                              f"{krum_min_participants(f) - 1} "
                              f"participants a round, and participation {self.federate.participation} of "
                              f"{self.partition.num_nodes} nodes gives {m}: raise participation or num_nodes, or "
                              f"lower byzantine")

    @classmethod
    def from_toml(cls, path: str | Path, overrides: Sequence[str] = ()) -> "FederatedRunConfig":
        """From a TOML file, with "table.field=value" `overrides` on top."""
        raw = load_toml(path, overrides)
        extra = set(raw) - set(SECTIONS) - set(ALGORITHMS) - set(SERVER_STEPS)
        if extra:
            raise ConfigError(f"{path}: unknown table(s) {sorted(extra)}; known: "
                              f"{', '.join([*SECTIONS, *sorted(ALGORITHMS), *sorted(SERVER_STEPS)])}")
        for name, cls_ in [*ALGORITHMS.items(), *SERVER_STEPS.items()]:  # every table is checked, used or not
            if name in raw:
                with table(name):
                    from_dict(cls_.Params, raw[name])
        return cls.from_dict(raw, defaults=cls())

    @classmethod
    def from_dict(cls, raw: dict[str, Any], defaults: "FederatedRunConfig | None" = None) -> "FederatedRunConfig":
        """From `to_dict`'s form (a run folder's config.json, a checkpoint's "config"), or a TOML's
        tables over `defaults`. Constants that older fedinv kept in [federate] (mu, feddyn_alpha,
        distill_temperature, ...) go to the algorithm they belong to, and those it kept in
        [generator] (lambda_md, bn_stats, fedgen_weight, ...) to the server step; in a saved config
        they are dropped for others (they did nothing there), in a TOML they are an error naming
        where they belong."""
        saved, base = defaults is None, defaults or cls()

        def section(name: str, given: dict[str, Any]) -> Any:
            # a saved config without a field added later stands for the field's `before`, not its default
            fields = {f.name: f for f in dataclasses.fields(SECTIONS[name])}
            under = {k: v for k, v in to_dict(getattr(base, name)).items()
                     if not (saved and k not in given and "before" in fields[k].metadata)}
            with table(name):
                return from_dict(SECTIONS[name], {**under, **given})

        federate, generator = dict(raw.get("federate", {})), dict(raw.get("generator", {}))
        legacy = {k: federate.pop(k) for k in LEGACY_KEYS if k in federate}
        legacy_step = {k: generator.pop(k) for k in LEGACY_GENERATOR_KEYS if k in generator}
        sections = {name: section(name, raw.get(name) or {}) for name in ("data", "partition")}
        sections["federate"] = section("federate", federate)
        sections["generator"] = section("generator", generator)
        sections["attack"] = section("attack", raw.get("attack") or {})
        algo = algorithm_class(sections["federate"].algorithm)
        step = server_step_class(sections["federate"].server)
        values = legacy_values(algo, legacy, "federate", f"algorithm {algo.name}", strict=not saved)
        values.update(raw.get(algo.name) or {})
        with table(algo.name):
            params = from_dict(algo.Params, values)
        config = cls(**sections, params=params)
        if step is None:
            legacy_values(None, legacy_step, "generator", "server none", strict=not saved)
            return config
        step_values = legacy_values(step, legacy_step, "generator", f"server step {step.name}", strict=not saved)
        given = {**step_values, **(raw.get(step.name) or {})}
        # a saved config stands for `before` where it lacks a field; a TOML's tables go over the defaults
        with table(step.name):
            params = from_dict(step.Params, given if saved else {**to_dict(step.Params()), **given})
        return dataclasses.replace(config, server_params=params)

    def to_dict(self) -> dict[str, Any]:
        out = {name: to_dict(getattr(self, name)) for name in SECTIONS}
        out[self.federate.algorithm] = to_dict(self.params)
        if self.server_params is not None:
            out[self.federate.server] = to_dict(self.server_params)
        return out

    def with_algorithm(self, algorithm: str, **federate: Any) -> "FederatedRunConfig":
        """The same run with another algorithm (at its default constants) and `federate` changes."""
        fc = dataclasses.replace(self.federate, algorithm=algorithm, **federate)
        step = server_step_class(fc.server)
        params = self.server_params if fc.server == self.federate.server else (step.Params() if step else None)
        return dataclasses.replace(self, federate=fc, params=algorithm_class(algorithm).Params(), server_params=params)


# [federate] keys of fedinv before per-algorithm tables, and the algorithm field each became.
LEGACY_KEYS = ("mu", "feddyn_alpha", "moon_temperature", "distill_temperature", "distill_weight", "personal_model",
               "validation_size", "server_epochs")


# [generator] keys of fedinv before per-server-step tables (each step's `legacy` says what it became).
LEGACY_GENERATOR_KEYS = ("model_steps", "model_lr", "temperature", "per_model_steps", "lambda_md", "ensemble",
                         "bn_stats", "generator_ema", "save_every", "fedgen_weight")


def legacy_values(owner: Any, legacy: dict[str, Any], table: str, what: str, strict: bool) -> dict[str, Any]:
    """The fields of `owner` (an algorithm or server step class; None: none) from keys an older fedinv
    kept in [table]; a key `owner` does not take is dropped, or, with `strict`, an error."""
    renames = getattr(owner, "legacy", {}) if owner is not None else {}
    foreign = sorted(k for k in legacy if k not in renames)
    if strict and foreign:
        owners = [*ALGORITHMS.items(), *SERVER_STEPS.items()]
        homes = [name for name, c in owners if foreign[0] in getattr(c, "legacy", {})]
        raise ConfigError(f"{table}.{foreign[0]} does not apply to {what}; it is a setting of "
                          f"{' and '.join(f'[{h}]' for h in homes) or 'no other'}")
    return {renames[k]: v for k, v in legacy.items() if k in renames}


def method_name(fc: FederateConfig) -> str:
    """"fedavg+ftg", "scaffold", ...: the algorithm and its server step."""
    return fc.algorithm + ("" if fc.server == "none" else "+" + fc.server)


__all__ = ["FederateConfig", "GeneratorConfig", "FederatedRunConfig", "NoParams", "method_name"]
