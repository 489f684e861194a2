"""Start or join Ray for a job.

With an address (`auto`, `ray://...`, `HOST:PORT`) the job joins that cluster. Without one it
starts a local, single-machine Ray bound to the loopback interface: the GCS, raylet, object
manager and dashboard agent then listen on 127.0.0.1 only, not on every interface with only
Ray's token between them and the network. `RAY_ADDRESS` in the environment (set by
`ray job submit`) counts as an address.
"""

from __future__ import annotations

import os
from typing import Any

LOOPBACK = "127.0.0.1"


def init_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
             dashboard: bool = False, log_to_driver: bool = True, **kwargs: Any) -> dict[str, Any]:
    """`ray.init` for a job; returns Ray's context info. Does nothing if Ray is already up."""
    import ray

    if ray.is_initialized():
        return {"address": ray.get_runtime_context().gcs_address, "started": False}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        context = ray.init(address=address, log_to_driver=log_to_driver, **kwargs)
        return {"address": context.address_info.get("gcs_address"), "started": False}
    context = ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=dashboard,
                       dashboard_host=LOOPBACK, _node_ip_address=LOOPBACK, log_to_driver=log_to_driver,
                       **kwargs)
    return {"address": context.address_info.get("gcs_address"), "started": True}
