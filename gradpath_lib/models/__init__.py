"""Building blocks and network families, all reachable through one registry."""

from .registry import create_model, get_entry, model_kwargs, model_names, register

__all__ = ["create_model", "get_entry", "model_kwargs", "model_names", "register"]
