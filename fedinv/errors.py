"""Exceptions fedinv raises for bad input; the CLI turns them into one-line messages."""


class FedinvError(Exception):
    """Base class: a user-facing error whose message says what to do."""


class ConfigError(FedinvError, ValueError):
    """A parameter is out of range or names something unknown."""


class FieldError(ConfigError):
    """A config field holds a value outside its declared choices or range. `field` names it and
    `problem` says what is wrong, so that the CLI can name the option (`--momentum ...`) and a
    TOML reader the table (`[teachers] momentum ...`)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


class RunStateError(FedinvError):
    """What is on disk does not fit the request: an output folder or store that holds another
    run, a store that cannot be continued with these settings. Not a problem of the config itself."""


class DivergedError(FedinvError, FloatingPointError):
    """A loss became NaN or infinite: the run stops where it is (what was saved before stays)."""


class DatasetNotFoundError(FedinvError, FileNotFoundError):
    """A dataset is not on disk and cannot be downloaded here."""


class CheckpointError(FedinvError):
    """A checkpoint is missing, corrupted, foreign or does not match what is expected."""


def unknown(kind: str, name: str, known) -> ConfigError:
    """The house error for an unknown name: says what was asked and lists the valid options."""
    return ConfigError(f"unknown {kind} {name!r}; known: {', '.join(sorted(known))}")
