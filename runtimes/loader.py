"""Open a bundle and build the runtime class its manifest names, with the caller's options checked against what the
bundle fixed when it was built (``runtimes.load`` and the server share these steps)."""
from __future__ import annotations

import inspect
import warnings
from pathlib import Path

from runtimes.bundle import open_bundle
from runtimes.cpu import int8_mismatch
from runtimes.errors import IncompatibleBundleError, InputError
from runtimes.options import split_options
from runtimes.registry import RUNTIME_APIS, runtime_class


def open_checked(path, *, verify: bool = True):
    """open_bundle, plus a RuntimeWarning when the bundle failed parity at build time."""
    bundle = open_bundle(path, verify=verify)
    parity = bundle.manifest.parity
    if parity is not None and not parity.get("passed", False):
        failed = [f"{c['metric']}={c['value']:.4g}" for c in parity.get("checks", []) if not c.get("passed", True)]
        warnings.warn(f"bundle {bundle.path} FAILED parity against {parity.get('reference')} at build time "
                      f"({', '.join(failed)}); its outputs may differ from FlagEmbedding", RuntimeWarning, stacklevel=3)
    why = int8_mismatch(bundle.manifest.data.get("build", {}).get("quantization"))
    if why:
        warnings.warn(f"bundle {bundle.path}: {why}", RuntimeWarning, stacklevel=3)
    return bundle


def checked_options(bundle, model_cls: type, options: dict, caller: str, known) -> dict:
    """runtimes.options.split_options, then the options bound to ``model_cls``: an unknown one is an InputError
    that lists ``known``."""
    options = split_options(bundle, options, caller)
    try:
        inspect.signature(model_cls).bind(bundle, **options)
    except TypeError as exc:
        raise InputError(f"{caller}: {exc} (the options it takes: {', '.join(known)})") from None
    return options


def load(path: str | Path, *, verify: bool = True, **options):
    """Open a bundle and return the model object with its family's FlagEmbedding API.

    ``options`` are the FlagEmbedding constructor arguments (``batch_size``, ``max_length``,
    ``normalize_embeddings``, ``query_instruction_for_retrieval``, ``truncate_dim``, ...). Options a bundle fixed
    when it was built (``use_fp16``, ``devices``, ``pooling_method``, ...) are accepted with a warning where they
    cannot change its result and refused where they contradict it (runtimes.options).
    """
    return load_bundle(open_checked(path, verify=verify), **options)


def load_bundle(bundle, **options):
    """:func:`load` on a bundle already opened (runtimes.open_bundle / open_checked)."""
    api = bundle.manifest.runtime.get("api")
    if api not in RUNTIME_APIS:
        raise IncompatibleBundleError(
            f"bundle API '{api}' (family {bundle.manifest.family}) has no runtime in this version (have: "
            f"{', '.join(sorted(RUNTIME_APIS))}); upgrade bge-export"
        )
    model_cls = runtime_class(api)
    known = list(inspect.signature(model_cls).parameters)[1:]
    return model_cls(bundle, **checked_options(bundle, model_cls, options, f"runtimes.load() of a {api} bundle", known))
