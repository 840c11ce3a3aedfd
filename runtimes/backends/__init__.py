"""Backends only move tensors: feeds in, named outputs out. Heavy libraries are imported lazily."""
from __future__ import annotations

from runtimes.backends.base import Backend, get_backend_class

__all__ = ["Backend", "get_backend_class"]
