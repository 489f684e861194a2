"""Start or join Ray for a job.

With an address (`auto`, `ray://...`, `HOST:PORT`) the job joins that cluster. Without one it
starts a local, single-machine Ray bound to the loopback interface: the GCS, raylet, object
manager, dashboard and runtime-env agents, driver and workers then listen on 127.0.0.1 only, not on
every interface with only Ray's token between them and the network. `RAY_ADDRESS` in the
environment (set by `ray job submit`) counts as an address.

How: Ray's components bind loopback exactly when the node's IP is 127.0.0.1 (its gRPC servers
take `listen_to_localhost_only = node_ip == "127.0.0.1"`), but `ray.init(_node_ip_address=
"127.0.0.1")` alone is not enough: Ray replaces a loopback node IP by the machine's outward
address unless clustering is off, which is Ray's single-machine mode on Windows and macOS
(`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read into `ray._private.ray_constants.ENABLE_RAY_CLUSTER`
when `ray` is imported). `init_ray` turns that mode on for the local start only (the environment
variable for the processes Ray spawns, the constant for this already-imported driver) and restores
both afterwards, so a later `init_ray(address)` joins a cluster normally. tests/test_ray_loopback.py
checks the real sockets of every Ray process.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

LOOPBACK = "127.0.0.1"
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def single_machine() -> Iterator[None]:
    """Ray's single-machine (no cluster) mode for the `ray.init` inside the block."""
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = saved_env


def init_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
             dashboard: bool = False, log_to_driver: bool = True, **kwargs: Any) -> dict[str, Any]:
    """`ray.init` for a job; returns {"address": GCS address, "started": whether this call started a
    local Ray (the caller then shuts it down)}. Does nothing if Ray is already up."""
    import ray

    if ray.is_initialized():
        return {"address": ray.get_runtime_context().gcs_address, "started": False}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        context = ray.init(address=address, log_to_driver=log_to_driver, **kwargs)
        return {"address": context.address_info.get("gcs_address"), "started": False}
    with single_machine():
        context = ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=dashboard,
                           dashboard_host=LOOPBACK, _node_ip_address=LOOPBACK, log_to_driver=log_to_driver,
                           **kwargs)
    return {"address": context.address_info.get("gcs_address"), "started": True}
