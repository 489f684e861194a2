"""Reward-service wiring: a Ray pool of reward workers behind the gRPC server.

`serve` runs the service in the foreground until SIGINT/SIGTERM (`matrl serve-reward`);
`start_background` runs it on its own event loop in this process and returns the running
`BackgroundServer` (jobs that also drive training: `matrl train`, `matrl demo`).
"""

from __future__ import annotations

import asyncio
import signal

from reward_service.config import RewardConfig
from reward_service.pool import PoolConfig, RewardPool
from reward_service.server import BackgroundServer, RewardServer, ServerConfig


async def serve(reward_config: RewardConfig, pool_config: PoolConfig, server_config: ServerConfig) -> None:
    """Serve until SIGINT or SIGTERM; prints the bound address once serving."""
    pool = RewardPool(reward_config, pool_config)
    await pool.start()
    server = RewardServer(pool, server_config)
    port = await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"reward service listening on {server_config.host}:{port} (workers={pool_config.workers}, "
          f"tls={'on' if server_config.tls else 'off'}, auth={'token' if server_config.token_file else 'off'})",
          flush=True)
    await stop.wait()
    await server.stop(5.0)
    await pool.close()


def start_background(reward_config: RewardConfig, pool_config: PoolConfig,
                     server_config: ServerConfig = ServerConfig(port=0), timeout_s: float = 600) -> BackgroundServer:
    """Pool and server on a daemon thread of this process; `.address` is where clients connect."""
    server = BackgroundServer(RewardPool(reward_config, pool_config), server_config)
    server.start(timeout_s=timeout_s)
    return server
