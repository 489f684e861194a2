"""The reward service on a fresh local Ray for a test module's fixture: Ray with 2 CPUs, servers
started through `start(server)`, and everything stopped afterwards, however the module ends."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import ray

from reward_service.server import BackgroundServer


@contextmanager
def local_ray_service() -> Iterator[Callable[[BackgroundServer], BackgroundServer]]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    started: list[BackgroundServer] = []

    def start(server: BackgroundServer) -> BackgroundServer:
        started.append(server)
        server.start(timeout_s=300)
        return server

    try:
        yield start
    finally:
        for server in reversed(started):
            server.stop()
        ray.shutdown()
