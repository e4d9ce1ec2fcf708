"""Joining Ray: one function, used by serve, training and the embedding pool."""

from __future__ import annotations

import os

OBJECT_STORE_BYTES = (
    256 * 1024 * 1024
)  # reports, settings and embeddings are small; Ray's default takes GBs


def init_ray(
    *, address: str | None = None, num_cpus: float | None = None, log_to_driver: bool = True
) -> None:
    """Join RAY_ADDRESS (a cluster) when set, else start a small local Ray of this process's
    own (never one found running on the machine); no-op when already up.

    `log_to_driver=False` keeps actors' output out of this terminal (the demo's summary
    would drown in Ray Train's per-epoch lines); errors still reach the caller as exceptions.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
        return
    ray.init(
        address="local",  # not a cluster someone started with `ray start` on this machine
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        log_to_driver=log_to_driver,
    )
