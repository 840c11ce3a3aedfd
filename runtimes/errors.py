"""Typed errors shared by the runtime and the compiler.

Every user-facing error says what was wrong, what was expected and how to fix it. The CLI prints
``str(error)`` on one line and exits non-zero; it never shows a traceback for these.
"""
from __future__ import annotations


class BgeError(Exception):
    """Base of every error bge-export raises for a user's mistake or an unusable input."""

    exit_code = 2


class MissingDependencyError(BgeError):
    """An optional dependency is not installed; the message names the pip extra."""


class BundleError(BgeError):
    """A bundle folder is missing, incomplete, tampered with or built for something else."""


class IncompatibleBundleError(BundleError):
    """The bundle is intact but cannot run here (schema, family API, machine)."""


class InputError(BgeError, TypeError):
    """Bad arguments to a runtime API call (wrong types, empty batches, bad options). ``item``: the index of the
    offending input in the call, where one input is at fault (callers that know where it came from, such as the
    corpus embedder, name its file and row)."""

    def __init__(self, message: str = "", *, item: int | None = None):
        super().__init__(message)
        self.item = item
