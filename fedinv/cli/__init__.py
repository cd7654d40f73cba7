"""The `fedinv` command: thin click commands over the library."""

from .main import main

__all__ = ["main"]
