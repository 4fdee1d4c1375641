"""Core of the scaling-law laboratory: configs, corpus and tokens, accounting, training, the run store."""

from scaling.errors import UserError

__all__ = ["UserError"]
__version__ = "0.1.0"
