"""Core of the scaling-law laboratory: configs, corpus and tokens, accounting, training, the run store."""

from scaling.host_memory import keep_freed_memory

# Before anything starts JAX's threads; see scaling/host_memory.py for why and how to opt out.
keep_freed_memory()

from scaling.errors import UserError  # noqa: E402

__all__ = ["UserError"]
__version__ = "0.1.0"
