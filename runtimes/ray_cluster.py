"""Joining a Ray cluster for ``--ray`` (bge-export embed and bge-export serve): one place for the address rules and
the error a user gets when no cluster is there. Imports Ray only when called (the ray extra)."""
from __future__ import annotations

from runtimes._optional import require
from runtimes.errors import InputError


def connect(address: str):
    """``ray`` after joining the cluster at ``address`` ('auto', a cluster address, or 'local': a new cluster on this
    machine), unless this process already is in one."""
    ray = require("ray")
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "local" else address, log_to_driver=False, logging_level="warning")
        except ConnectionError as exc:
            raise InputError(f"--ray {address}: no Ray cluster there ({exc}); start one with `ray start --head`, or "
                             "use --ray local for a cluster on this machine") from None
    return ray
