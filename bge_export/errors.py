"""Typed errors of the compiler. All derive from runtimes.errors.BgeError, so the CLI shows them as one line."""
from __future__ import annotations

from runtimes.errors import BgeError, BundleError, InputError, MissingDependencyError  # noqa: F401  (re-exported)


class BgeExportError(BgeError):
    """A build-side user error."""


class CheckpointError(BgeExportError):
    """The --model argument does not point at a usable checkpoint."""


class UnsupportedFamilyError(BgeExportError):
    """The checkpoint is readable but is no BGE family bge-export supports."""


class UnsupportedTargetError(BgeExportError):
    """Unknown target, or a target that cannot serve this family."""


class OutputError(BgeExportError):
    """The --out location cannot be written."""


class ExportCheckError(BgeExportError):
    """The exported or built graph does not reproduce torch; the message gives the numbers."""

    exit_code = 1


class BuildError(BgeExportError):
    """An engine builder (TensorRT) refused the graph or the machine cannot build the target."""


class ParityError(BgeExportError):
    """The engine does not match the FlagEmbedding reference within tolerance."""

    exit_code = 1


class InternalError(Exception):
    """A broken invariant inside bge-export (a bug): shown with a traceback."""
