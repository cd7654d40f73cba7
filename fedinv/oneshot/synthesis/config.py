"""The synthesis stage's config: the one objective every method descends (sampled teachers, head
masking, CE, BN statistics, priors, competition), the run's size, and the chosen method's own
settings (`params`: the `Params` its file registers; TOML table [synthesis.METHOD])."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ...config import (COUNT, SEED, SIZE, TEMPERATURE, WEIGHT, Range, check_fields, device_option, from_fields, option,
                       option_table, precision_option)
from ...errors import ConfigError
from .registry import METHODS, method_class

# the fields of fedinv's flat [synthesis] table before per-method tables (every saved config of
# then holds all of them, whatever its method; a method ignored the others)
LEGACY_FIELDS = ("iterations", "lr", "steps", "lr_g", "lr_z", "meta_lr", "bn_momentum", "nz", "generator_width",
                 "conditional")


@dataclass(frozen=True)
class SynthesisConfig:
    """How images are synthesized from the teachers: one objective (sampled teachers, head masking,
    CE, BN statistics, priors, competition), several ways to descend it (`method`, with its own
    settings in `params`).

    Defaults follow the DeepInversion reference code and one-shot-dataset-distillation.txt:
    batch 256, a_bn 10, a_tv(l2) 1e-3, a_l2 0, a_comp 10, 3 teachers per step, jitter 2 px; each
    method's own defaults are in its file (deepinversion.py, fast.py, dense.py).
    """

    method: str = option("deepinversion", "deepinversion: every batch's pixels optimized from noise "
                         "(Sampling DeepInversion); fast: a generator whose meta-learned start is refined for a few "
                         "steps per batch (Fast-Datafree); dense: one generator trained on, batch after batch "
                         "(DENSE); its own settings in table [synthesis.METHOD]")
    num_images: int = option(2560, "how many images to synthesize in all; asked of a store made for fewer with "
                                   "the same settings, the store grows to it (what one run of this many writes)",
                             valid=COUNT)
    batch_size: int = option(256, "images optimized together (one batch = one optimizer run)", valid=COUNT)
    teachers_per_step: int = option(3, "teachers sampled at each step and averaged (Algorithm 1); "
                                       "0 = all; 1 = cycling (batch b uses teacher b mod N throughout); more than "
                                       "the N teachers is an error, except the default 3 (all when N < 3)",
                                   valid=SIZE)
    fixed_teachers: bool = option(False, "sample the teachers_per_step teachers once per batch and keep them for "
                                         "all its steps, instead of at every step (the report's open idea, §VI)")
    label_sampler: str = option("uniform", "target labels: uniform, proportional (to the nodes' class counts, "
                                "FedFTG), balanced (equal share per teacher over the labels it knows), local (in "
                                "proportion to the class counts of the batch's own teachers, so that the targets "
                                "describe the data whose BN statistics the batch matches; needs teachers fixed for "
                                "the batch: teachers_per_step 1 or 0, or fixed_teachers)",
                                choices=("uniform", "proportional", "balanced", "local"))
    head_mask: bool = option(True, "leave out each teacher's logits for labels it never saw")
    claims: str = option("trusted", "how the nodes' label counts weigh each teacher per class: trusted (as "
                         "sent); checked (a node claiming over twice the median node's samples is scaled down, "
                         "and a node whose teacher disagrees with the others' on probe images of the classes it "
                         "claims is dropped; the run logs each change and the store records the check); median "
                         "(claims ignored: per class the median of the teachers' probabilities, for many nodes of "
                         "similar data). A student given --teachers weighs them as its store's synthesis did",
                         choices=("trusted", "checked", "median"))
    weighted_ce: bool = option(False, "weight each teacher's CE by the share of the label in its data (eq. 5)")
    a_bn: float = option(10.0, "weight of the BN-statistic loss", valid=WEIGHT)
    first_bn_multiplier: float = option(1.0, "extra factor on the first BN layer's term", valid=WEIGHT)
    a_tv_l1: float = option(0.0, "weight of the l1 total variation prior", valid=WEIGHT)
    a_tv_l2: float = option(1e-3, "weight of the l2 total variation prior", valid=WEIGHT)
    a_l2: float = option(0.0, "weight of the image l2 prior", valid=WEIGHT)
    a_comp: float = option(10.0, "weight of the Jensen-Shannon competition term (adaptive mode, with a student)",
                           valid=WEIGHT)
    comp_temperature: float = option(3.0, "temperature of the competition term", valid=TEMPERATURE)
    jitter: int = option(2, "random roll of the images by up to this many pixels per step", valid=Range(0, 64))
    flip: bool = option(True, "random horizontal flip per step (off for datasets where flips change labels)")
    precision: str = precision_option()
    batched: str = option("auto", "multi-teacher path: batched (one vmapped call for teachers of one "
                          "architecture), loop (per teacher), auto (batched on CUDA, loop on CPU where it "
                          "measured faster)", choices=("auto", "batched", "loop"), runtime=True)
    device: str = device_option()
    seed: int = option(0, "random seed; batch b is drawn from (seed, b), so it can be regenerated exactly", valid=SEED)
    params: Any = option_table("method", "the method's own settings (its Params; None: their defaults)")

    def __post_init__(self) -> None:
        method = method_class(self.method)  # names the registered ones when unknown
        if self.params is None:
            object.__setattr__(self, "params", method.Params())
        if not isinstance(self.params, method.Params):
            raise ConfigError(f"--method {self.method} takes {method.Params.__name__}, not "
                              f"{type(self.params).__name__}")
        check_fields(self)
        if self.label_sampler == "local" and self.teachers_per_step not in (0, 1) and not self.fixed_teachers:
            raise ConfigError(f"label_sampler local draws each batch's labels from its own teachers' class counts, "
                              f"so it needs the teachers fixed for the batch: teachers_per_step 1 (cycling) or 0 "
                              f"(all), or fixed_teachers; got teachers_per_step {self.teachers_per_step}")
        method.check(self)

    @property
    def per_batch(self) -> bool:
        """Whether every batch is drawn from (seed, batch) alone (deepinversion), so batches can be
        split over processes; the generator methods carry a generator from batch to batch."""
        return not method_class(self.method).carries_state

    def with_method(self, method: str, **settings: Any) -> "SynthesisConfig":
        """The same config with `method`: its settings as this config holds them when it is this
        config's method, else at their defaults; `settings` over them."""
        params = self.params if method == self.method else method_class(method).Params()
        return dataclasses.replace(self, method=method, params=dataclasses.replace(params, **settings))

    @classmethod
    def of(cls, method: str = "deepinversion", **settings: Any) -> "SynthesisConfig":
        """A config from keywords: the shared fields and the method's own settings side by side, e.g.
        `SynthesisConfig.of("fast", num_images=512, steps=3)`; a keyword that neither takes is an error."""
        params_cls = method_class(method).Params
        own = {f.name for f in dataclasses.fields(params_cls)}
        shared = {f.name for f in dataclasses.fields(cls)} - {"params"}
        extra = sorted(set(settings) - own - shared)
        if extra:
            raise ConfigError(f"{extra[0]} is no setting of the synthesis config or of method {method!r} "
                              f"(its settings: {', '.join(sorted(own))})")
        return cls(method=method, **{k: v for k, v in settings.items() if k in shared},
                   params=params_cls(**{k: v for k, v in settings.items() if k in own}))

    @classmethod
    def from_dict(cls, values: dict[str, Any], strict: bool = False) -> "SynthesisConfig":
        """From `to_dict`'s form ({"method": "fast", ..., "fast": {...}}), a TOML table, or the flat
        form of older fedinv (one field set for all methods, 0 meaning "the method's default").

        Tables of other methods are checked and left unused (a config may hold each method's
        settings and choose by `method`). A flat field of older fedinv that the chosen method does
        not take is dropped from a saved config (the method ignored it then) and refused with
        `strict` (a config a user wrote: it would be silently ignored)."""
        values = dict(values)
        name = values.get("method", cls.method)
        method = method_class(name) if isinstance(name, str) else None
        tables = {k: values.pop(k) for k in list(values) if k in METHODS}
        for k, table in tables.items():
            if not isinstance(table, dict):
                raise ConfigError(f"synthesis.{k} must be a table of {k}'s settings, got {table!r}")
            from_fields(METHODS[k].Params, table)  # every method's table is checked, used or not
        flat = {k: values.pop(k) for k in LEGACY_FIELDS if k in values}
        shared = [f.name for f in dataclasses.fields(cls) if f.name != "params"]
        extra = sorted(set(values) - set(shared))
        if extra:
            raise ConfigError(f"unknown SynthesisConfig field(s) {extra}; known: {', '.join(sorted(shared))}; "
                              f"a method's own settings go in its table [synthesis.METHOD] "
                              f"({', '.join(METHODS)})")
        if method is None:
            return from_fields(cls, values)  # the type error names the field
        foreign = sorted(k for k in flat if k not in method.legacy)
        if strict and foreign:
            raise ConfigError(f"synthesis.{foreign[0]} does not apply to method {name!r}; its settings: "
                              f"{', '.join(f.name for f in dataclasses.fields(method.Params))} "
                              f"(table [synthesis.{name}])")
        own = {k: v for k, v in flat.items() if k in method.legacy}
        params = {**tables.get(name, {}), **(method.legacy_params(own, saved=not strict) if flat else {})}
        return from_fields(cls, {**values, "params": from_fields(method.Params, params)})


__all__ = ["SynthesisConfig", "LEGACY_FIELDS"]
