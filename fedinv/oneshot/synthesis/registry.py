"""Where the synthesis methods register themselves by name, each with its own settings; the
config, the synthesis run and the adaptive student look them up here and never name one.

    @register_method
    class Fast(GeneratorSynthesizer):
        name = "fast"
        Params = FastParams        # its TOML table [synthesis.fast], its CLI options

The interface a method implements is `method.Synthesizer`; this module knows no method and no
other module of the stage, so every module may import it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ...errors import unknown

METHODS: dict[str, type["SynthesisMethod"]] = {}


class SynthesisMethod:
    """Base class of a registered method: its name, its settings, and what the run needs to know
    of it. Subclasses implement the `Synthesizer` protocol."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = type(None)
    summary: ClassVar[str] = ""  # one line for --help
    carries_state: ClassVar[bool] = False  # batches depend on earlier ones: one process, state saved
    # settings of older fedinv's flat [synthesis] table: old name -> Params field
    legacy: ClassVar[dict[str, str]] = {}

    @classmethod
    def check(cls, cfg: Any) -> None:
        """Refuse combinations of the shared settings and this method's (ConfigError)."""

    @classmethod
    def ensemble_path(cls, cfg: Any) -> str:
        """The multi-teacher path the method runs on (`--batched`)."""
        return cfg.batched

    @classmethod
    def legacy_params(cls, flat: dict[str, Any], saved: bool) -> dict[str, Any]:
        """This method's settings from an older fedinv's flat fields (where 0 meant "the method's
        default"); fields of other methods are not in `flat`. `saved`: from a saved config (which
        holds every field of its time), not a config a user wrote."""
        return {cls.legacy[k]: v for k, v in flat.items() if k in cls.legacy}


def register_method(cls: type[SynthesisMethod]) -> type[SynthesisMethod]:
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[SynthesisMethod]:
    if name not in METHODS:
        raise unknown("synthesis method", name, METHODS)
    return METHODS[name]
