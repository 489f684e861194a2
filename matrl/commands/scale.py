"""`matrl scale --address RAY_ADDRESS [--job NAME] --rollout-workers N --reward-workers M`: change the
worker counts of a running `matrl train` job (effective at its next iteration)."""

from __future__ import annotations

import argparse
import json
import time


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "scale", help="change the rollout and reward worker counts of a running matrl train job",
        description="Asks a running `matrl train` job for new worker counts. The job applies them at the start of "
                    "its next iteration: new rollout workers get the current weights, removed ones finish their "
                    "rollout first, the reward pool grows or drains; no trajectory is lost. Counts outside the "
                    "job's min_workers/max_workers are refused.")
    parser.add_argument("--address", default=None,
                        help="Ray cluster of the job (HOST:PORT of the GCS, or 'auto'; default: RAY_ADDRESS)")
    parser.add_argument("--job", default=None,
                        help="the job's --job-name (default: the only matrl train job on the cluster)")
    parser.add_argument("--rollout-workers", type=int, default=None, help="new number of rollout workers")
    parser.add_argument("--reward-workers", type=int, default=None, help="new number of reward workers")
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="wait up to this long until the job reports the new counts live")
    parser.add_argument("--status", action="store_true", help="only print the job's desired and live counts")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os

    import ray

    from matrl.errors import UserError
    from matrl.jobs.control import ScaleError, find_control
    from matrl.jobs.ray_runtime import init_ray

    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError("--address: give the Ray cluster of the job (or set RAY_ADDRESS); `matrl scale` never "
                        "starts a cluster of its own")
    if not args.status and args.rollout_workers is None and args.reward_workers is None:
        raise UserError("nothing to change: give --rollout-workers and/or --reward-workers (or --status)")
    init_ray(address, log_to_driver=False, logging_level="ERROR")
    try:
        control = find_control(args.job)
        if args.status:
            print(json.dumps(ray.get(control.status.remote())))
            return 0
        try:
            status = ray.get(control.request.remote(args.rollout_workers, args.reward_workers))
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, ScaleError):
                raise UserError(str(cause)) from None
            raise
        deadline = time.monotonic() + args.wait
        while args.wait and status["live"] != status["desired"] and time.monotonic() < deadline:
            time.sleep(1.0)
            status = ray.get(control.status.remote())
        print(json.dumps(status))
        if args.wait and status["live"] != status["desired"]:
            print(f"scale: the job has not reached the new counts within {args.wait:g}s (it applies them at its "
                  "next iteration)")
            return 1
        return 0
    except ScaleError as err:
        raise UserError(str(err)) from None
    finally:
        ray.shutdown()
