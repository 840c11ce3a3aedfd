"""`bge-export parity BUNDLE`: re-run parity on an existing bundle.

With the source checkpoint and FlagEmbedding at hand this is the full parity of the build. Without them (a
serving host), the bundle is checked against the reference sample it carries.
"""
from __future__ import annotations

import json

from bge_export import parity, parity_run
from bge_export.compile import GOLDEN
from bge_export.errors import BgeExportError
from bge_export.families import family_from_manifest, get_family
from runtimes._optional import available
from runtimes.bundle import open_bundle
from runtimes.loader import load


def rerun_parity(bundle_path, *, log=print) -> tuple[bool, str, dict]:
    bundle = open_bundle(bundle_path)
    m = bundle.manifest
    device = parity_run.parity_device(m.engine).name
    skip = parity_run.unrunnable(m.precision, m.engine)
    if skip:
        raise BgeExportError(f"cannot check {bundle.path} here: {skip} (`bge-export parity` there)")
    reason = None
    try:
        family = family_from_manifest(m.data)
        if family.ckpt.weights_sha256() != m.data["source"]["weights_sha256"]:
            reason = f"the checkpoint at {family.ckpt.path} changed since the build (weights sha256 differs)"
    except BgeExportError as exc:
        reason = f"the source checkpoint is not available ({exc})"
    if reason is None and not available("FlagEmbedding"):
        reason = "FlagEmbedding is not installed (pip install 'bge-export[reference]')"
    if reason is None:
        gated = (m.parity or {}).get("retrieval_gated", True)  # as decided at build time
        checks, _ = family.run_parity(bundle.path, m.precision, parity_run.parity_texts(), log=log, gate_retrieval=gated)
        title = f"{m.family} / {m.target} vs FlagEmbedding {m.runtime['api']}"
        reference = f"FlagEmbedding {m.runtime['api']} fp32 CPU"
        n = sum(len(v) for v in parity_run.parity_texts().values())
    else:
        log(f"note: {reason}; checking against the reference sample stored in the bundle instead")
        checks, n = golden_checks(bundle)
        title = f"{m.family} / {m.target} vs the bundle's stored reference sample"
        reference = "stored reference sample"
    ok, text = parity.report(checks, f"{title} (on {device})")
    return ok, text, parity.report_json(checks, reference, n, device=device)


def golden_checks(bundle) -> tuple[list, int]:
    path = bundle.path / GOLDEN
    if not path.is_file():
        raise BgeExportError(f"{bundle.path} has no {GOLDEN} (built with --no-parity) and the full reference is not "
                             "available; install bge-export[reference] and keep the source checkpoint")
    sample = json.loads(path.read_text(encoding="utf-8"))
    backend = parity_run.parity_device(bundle.manifest.engine).backend_options
    model = load(bundle.path, verify=False, backend_options=backend)  # open_bundle already hashed files
    values = get_family(bundle.manifest.family).golden_values(model, sample)
    return parity.gate(bundle.manifest.family, "golden", bundle.manifest.precision, values), len(sample["reference"])
