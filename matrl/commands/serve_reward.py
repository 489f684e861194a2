"""`matrl serve-reward --port 50051 --workers K [--address RAY_ADDRESS]`: the gRPC reward service.

Binds 127.0.0.1 unless --host says otherwise; a non-loopback host needs TLS (--tls-cert and
--tls-key) or an explicit --insecure. --token-file turns on shared-token auth; Resize needs the
token in --admin-token-file (without one it is refused). Prints
"reward service listening on HOST:PORT" once it serves (with --port 0, the port it picked).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

from pydantic import ValidationError

log = logging.getLogger("matrl.serve_reward")


def register(subparsers) -> None:
    p = subparsers.add_parser("serve-reward", help="run the gRPC reward service over a Ray pool of reward workers",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    p.add_argument("--workers", type=int, default=2, help="reward worker actors (1 CPU each)")
    p.add_argument("--address", default=None, help="Ray cluster address; default: start a local Ray")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (non-loopback needs TLS or --insecure)")
    p.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain")
    p.add_argument("--tls-key", type=Path, default=None, help="PEM private key")
    p.add_argument("--insecure", action="store_true", help="allow plaintext on a non-loopback host")
    p.add_argument("--token-file", type=Path, default=None,
                   help="file holding a shared token; clients send 'authorization: Bearer <token>'")
    p.add_argument("--admin-token-file", type=Path, default=None,
                   help="file holding the admin token that Resize needs; without it Resize is refused")
    p.add_argument("--max-message-mb", type=float, default=64.0, help="largest request/response accepted")
    p.add_argument("--chunk-samples", type=int, default=64, help="rows per worker task")
    p.add_argument("--reward-config", type=Path, default=None, help="YAML of RewardConfig fields")
    p.add_argument("--res", type=int, default=None, help="executor resolution (overrides --reward-config)")
    p.add_argument("--max-restarts", type=int, default=3, help="Ray restarts per worker before it is replaced")
    p.add_argument("--gpu-workers", type=int, default=0,
                   help="GPU reward workers beside the CPU ones (RewardConfig device cuda, big tasks)")
    p.add_argument("--num-gpus-per-worker", type=float, default=0.25,
                   help="GPU share Ray reserves per GPU worker (fractions share a GPU)")
    p.add_argument("--gpu-task-samples", type=int, default=4096, help="rows per task sent to a GPU worker")
    p.add_argument("--gpu-reward-config", type=Path, default=None,
                   help="YAML of RewardConfig fields that differ on GPU workers (e.g. compile: true)")
    p.set_defaults(run=lambda args: run(args, p))


def _check_readable(path: Path, what: str) -> bytes:
    """The bytes of a file the server reads at start, read now: a bad file is found before Ray starts."""
    if not path.exists():
        raise ValueError(f"{what} {path} does not exist")
    try:
        return path.read_bytes()
    except OSError as err:
        raise ValueError(f"{what} {path}: cannot read ({err.strerror or err})") from None


def build_configs(args):
    """Typed configs from the arguments, with every file they name read once (token, TLS, reward
    config); raises ValueError/ValidationError (ConfigError is a ValueError) on a bad one."""
    from matrl.config import build, read_yaml
    from reward_service.api import read_token
    from reward_service.config import RewardConfig
    from reward_service.pool import PoolConfig
    from reward_service.server import ServerConfig

    if not 0 < args.max_message_mb < 2048:  # also refuses nan and inf
        raise ValueError(f"--max-message-mb {args.max_message_mb}: must be in (0, 2048)")
    server = ServerConfig(host=args.host, port=args.port, max_message_bytes=int(args.max_message_mb * (1 << 20)),
                          chunk_samples=args.chunk_samples, tls_cert=args.tls_cert, tls_key=args.tls_key,
                          insecure=args.insecure, token_file=args.token_file,
                          admin_token_file=args.admin_token_file)
    for path, what in ((args.tls_cert, "--tls-cert"), (args.tls_key, "--tls-key")):
        if path is not None and not _check_readable(path, what).strip():
            raise ValueError(f"{what} {path} is empty")
    if args.token_file is not None:
        _check_readable(args.token_file, "--token-file")
        read_token(args.token_file)  # the server's own reader: an empty or blank file is an error naming it
    if args.admin_token_file is not None:
        _check_readable(args.admin_token_file, "--admin-token-file")
        read_token(args.admin_token_file)
    fields = read_yaml(args.reward_config) if args.reward_config else {}
    if args.res is not None:
        fields = {**fields, "res": args.res}
    reward = build(RewardConfig, fields, str(args.reward_config or ""))
    gpu_overrides = read_yaml(args.gpu_reward_config) if args.gpu_reward_config else {}
    build(RewardConfig, {**reward.model_dump(), **gpu_overrides}, str(args.gpu_reward_config or ""))
    pool = PoolConfig(workers=args.workers, max_restarts=args.max_restarts, gpu_workers=args.gpu_workers,
                      num_gpus_per_worker=args.num_gpus_per_worker, gpu_task_samples=args.gpu_task_samples,
                      gpu_overrides=gpu_overrides)
    return reward, pool, server


def _message(err: Exception) -> str:
    """One line naming the flag: pydantic's field names are the flags' (`workers` -> --workers)."""
    if isinstance(err, ValidationError):
        return "; ".join((f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: " if e["loc"] else "")
                         + e["msg"].removeprefix("Value error, ") for e in err.errors())
    return str(err)


def run(args, parser: argparse.ArgumentParser) -> int:
    try:
        configs = build_configs(args)
    except (ValueError, ValidationError) as err:
        parser.error(_message(err))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import ray

    from matrl.jobs.ray_runtime import init_ray
    from matrl.jobs.reward import serve

    init_ray(args.address, num_cpus=max(args.workers, os.cpu_count() or 1))
    try:
        asyncio.run(serve(*configs))
    finally:
        ray.shutdown()
    return 0
